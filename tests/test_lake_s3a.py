"""Spark reads and writes the MinIO lake through Hadoop's S3A connector (hadoop-aws + the AWS SDK modules of
``ops/spark/s3a-pom.xml``): a real MinIO server, a real Spark session in its own process (as spark-submit jobs run),
results compared with pyarrow's reading of the same objects."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import uuid

import pyarrow as pa
import pytest

from core.settings import ConfigError

# in its own process (the first SparkSession of a process fixes its classpath): read the two files of one
# partition through S3A, aggregate per store, write the result back through S3A, report what it read
JOB = textwrap.dedent("""
    import json, sys
    from pyspark.sql import functions as F
    from core.lake import Lake
    from core.spark import build_spark
    lake = Lake()
    spark = build_spark("s3a-check", lake=True, master="local[2]", shuffle_partitions=2)
    try:
        src = lake.spark_uri(lake.settings.lake_raw_bucket, "sales_transaction", "date=2026-12-01")
        df = spark.read.parquet(src)
        agg = (df.groupBy("store_id").agg(F.sum("quantity").alias("units"), F.sum("unit_price").alias("price_sum"),
                                          F.count("*").alias("lines"), F.count("customer_id").alias("customers")))
        dst = lake.spark_uri(lake.settings.lake_features_bucket, "s3a-check", "per_store")
        agg.write.mode("overwrite").parquet(dst)
        ids = sorted(r[0] for r in df.select("transaction_id").collect())
        print(json.dumps({"src": src, "dst": dst, "rows": df.count(), "ids": ids,
                          "schema": {f.name: f.dataType.simpleString() for f in df.schema.fields}}))
    finally:
        spark.stop()
""")


def _part(lo: int, hi: int) -> pa.Table:
    return pa.table({
        "transaction_id": [f"T-{i:05d}" for i in range(lo, hi)],
        "store_id": [["UCI-GB", "UCI-FR", "Zürich-1"][i % 3] for i in range(lo, hi)],
        "quantity": pa.array([(i % 7) - 1 for i in range(lo, hi)], pa.int32()),   # returns (< 0) and zeros too
        "unit_price": [round(0.05 * i, 2) for i in range(lo, hi)],
        "customer_id": [None if i % 4 == 0 else f"C{i}" for i in range(lo, hi)],
        "timestamp": pa.array([1_764_547_200_000 + 1000 * i for i in range(lo, hi)], pa.timestamp("ms", tz="UTC")),
    })


@pytest.mark.integration
def test_spark_reads_and_writes_the_minio_lake_through_s3a(native_stack):
    from core.lake import Lake

    lake = Lake(native_stack)
    assert native_stack.lake_is_s3
    raw = native_stack.lake_raw_bucket
    parts = [_part(0, 700), _part(700, 1000)]
    for i, t in enumerate(parts):
        lake.write_table(t, raw, "sales_transaction", "date=2026-12-01", f"part-{i}.parquet")
    lake.write_table(_part(5000, 5010), raw, "sales_transaction", "date=2026-12-02", "part-0.parquet")  # not read

    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    r = subprocess.run([sys.executable, "-c", JOB], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["src"] == f"s3a://{raw}/sales_transaction/date=2026-12-01"

    # what Spark read = both files of the partition, nothing of the other date, types as written
    expected = pa.concat_tables(parts).to_pandas()
    assert out["rows"] == 1000 and out["ids"] == sorted(expected["transaction_id"])
    assert out["schema"] == {"transaction_id": "string", "store_id": "string", "quantity": "int",
                             "unit_price": "double", "customer_id": "string", "timestamp": "timestamp"}

    # what Spark wrote through S3A, read back by pyarrow, against pandas on the source rows
    got = lake.read_table(native_stack.lake_features_bucket, "s3a-check", "per_store").to_pandas()
    got = got.set_index("store_id").sort_index()
    ref = expected.groupby("store_id").agg(units=("quantity", "sum"), price_sum=("unit_price", "sum"),
                                           lines=("transaction_id", "size"), customers=("customer_id", "count"))
    assert list(got.index) == list(ref.index) == ["UCI-FR", "UCI-GB", "Zürich-1"]
    for c in ("units", "lines", "customers"):
        assert got[c].astype("int64").tolist() == ref[c].astype("int64").tolist(), c
    assert all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(got["price_sum"], ref["price_sum"]))


def test_s3a_settings_name_the_missing_key(monkeypatch):
    from core.settings import Settings
    from core.spark import s3a_conf

    for k in ("LAKE_ACCESS_KEY", "LAKE_SECRET_KEY"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ConfigError, match="LAKE_SECRET_KEY"):
        s3a_conf(Settings(_env_file=None, lake_url="http://127.0.0.1:9", lake_access_key="someone"))
    key = uuid.uuid4().hex  # generated: no credential-like literal in the repo
    conf = s3a_conf(Settings(_env_file=None, lake_url="https://lake.example:9443", lake_access_key="someone",
                             lake_secret_key=key))
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "https://lake.example:9443"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "true"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.access.key"] == "someone" and conf["spark.hadoop.fs.s3a.secret.key"] == key
    assert s3a_conf(Settings(_env_file=None, lake_url="/tmp/some-folder")) == {}   # a local-folder lake: files


def test_lake_spark_uri_by_lake_kind(tmp_path, monkeypatch):
    from core.lake import Lake
    from core.settings import get_settings

    monkeypatch.setenv("LAKE_URL", str(tmp_path))
    get_settings.cache_clear()
    try:
        assert Lake(get_settings()).spark_uri("raw-data", "sales", "date=2026-12-01") == \
            f"file://{tmp_path.resolve()}/raw-data/sales/date=2026-12-01"
    finally:
        get_settings.cache_clear()


def test_connector_jars_by_lake_kind(tmp_path):
    """What a spark-submit launch gets as --jars: the S3A connector only for an S3 lake, a clear error when it was
    never resolved, nothing for a folder lake (Spark reads file:// itself)."""
    from core.settings import Settings, get_settings
    from core.spark import connector_jars

    key = uuid.uuid4().hex
    s3 = dict(_env_file=None, lake_url="http://127.0.0.1:9", lake_access_key="someone", lake_secret_key=key)
    assert connector_jars(Settings(_env_file=None, lake_url=str(tmp_path), retail_cache_dir=str(tmp_path)),
                          lake=True) == []
    with pytest.raises(ConfigError, match="S3A connector is missing.*make setup"):
        connector_jars(Settings(**s3, retail_cache_dir=str(tmp_path)), lake=True)
    jars = connector_jars(Settings(**s3, retail_cache_dir=get_settings().retail_cache_dir), lake=True)
    names = [os.path.basename(j) for j in jars]
    assert any(n.startswith("hadoop-aws-") for n in names) and any(n.startswith("s3-2.") for n in names), names
    assert connector_jars(Settings(**s3, retail_cache_dir=str(tmp_path))) == []   # lake=False: none looked up


def test_lake_json_files_are_strict_json(local_lake):
    """JSON written to the lake (model meta, registry metrics, staged job records) holds no NaN/Infinity tokens:
    a strict parser reads it, with non-finite numbers as null; numpy numbers stay numbers; absent files read as
    None."""
    import datetime as dt

    import numpy as np

    from core.lake import json_text

    def strict(token):
        raise ValueError(f"non-standard JSON token {token}")

    obj = {"wape": float("nan"), "per_h": [float("inf"), -float("inf"), 1.5, (np.float32("nan"), np.float64(2.5))],
           "n": np.int64(3), "ok": np.bool_(True), "flag": True, "day": dt.date(2026, 12, 4), "none": None}
    want = {"wape": None, "per_h": [None, None, 1.5, [None, 2.5]], "n": 3, "ok": True, "flag": True,
            "day": "2026-12-04", "none": None}
    assert json.loads(json_text(obj), parse_constant=strict) == want
    path = local_lake.write_json(obj, "models", "demand-forecast", "v9", "meta.json")
    with open(path) as f:
        assert json.loads(f.read(), parse_constant=strict) == want
    assert local_lake.read_json("models", "demand-forecast", "v9", "meta.json") == want
    assert local_lake.read_json("models", "demand-forecast", "v9", "absent.json") is None
    with pytest.raises(FileNotFoundError, match="models/demand-forecast/v9/absent.json"):
        local_lake.read_json("models", "demand-forecast", "v9", "absent.json", required=True)
    with pytest.raises(ValueError, match="NaN"):
        json.loads(json.dumps({"wape": float("nan")}), parse_constant=strict)   # what json.dumps alone writes


def test_lake_delete_file(local_lake):
    """delete_file removes one file and reports it, is a no-op (False) on an absent path, leaves the folder's other
    files, and refuses a folder (OSError) rather than removing it."""
    local_lake.write_json({"a": 1}, "staging", "d", "x_error.json")
    local_lake.write_json({"b": 2}, "staging", "d", "x_result.json")
    assert local_lake.delete_file("staging", "d", "x_error.json") is True
    assert not local_lake.exists("staging", "d", "x_error.json")
    assert local_lake.delete_file("staging", "d", "x_error.json") is False
    assert local_lake.read_json("staging", "d", "x_result.json") == {"b": 2}
    with pytest.raises(OSError):
        local_lake.delete_file("staging", "d")
    assert local_lake.exists("staging", "d", "x_result.json")

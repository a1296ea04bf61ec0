"""The Spark feature job (ml/spark_features.py, ml/jobs/build_features.py) against the pandas feature code.

The pandas :func:`ml.features.build_daily_features` is the independent oracle: on a small realistic daily
demand table both must give the same feature table, column by column (same rows and order, the same nulls,
floats equal to 1e-9, flags exactly). The table has 3 stores x 4 SKUs with
* gaps (days without a row: zero demand), a series whose first rows have demand but no price (no back fill),
  rows with zero units and a price, a price of 0 (undefined price ratios), promotions (price drops);
* demand from sale lines with returns (a day's returns never net into demand: the ``units`` column is the
  sum of sold quantities, as ``ml.pipeline.load_daily_demand`` computes it for lines without a customer, whose
  same-day cancellations cannot be matched; a day with only a return is a row with units 0 and no price);
* a series that is never active (zero units, no price: dropped), one sold but never priced, one sold once on the
  last day, rows after the end date (ignored);
* stores in GB, the US, an unknown country code and without one (the default country), over Good Friday,
  the May bank holidays, Memorial Day and Juneteenth;
* in a second variant weather per country and input promo / snap flags, no default country.
The spark-submit job is run on a lake in a local folder (no MinIO, no ClickHouse: the job never opens it), for
good staged data (exit 0, the feature table and result record) and for a contract violation (exit 3, an error
record).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
END = dt.date(2024, 6, 10)
FIRST = dt.date(2024, 2, 1)
H = 14


def sale_lines(seed: int = 3) -> pd.DataFrame:
    """Sale lines (date, store_id, product_id, quantity, unit_price) with returns (negative quantities)."""
    rng = np.random.default_rng(seed)
    days = pd.date_range(FIRST, END + dt.timedelta(days=3), freq="D")  # 3 days after END: ignored
    lines = []
    plan = {("S1", "A"): (6.0, 2.5, 0.95), ("S1", "B"): (0.4, 12.0, 0.6), ("S1", "C"): (2.0, 4.0, 0.9),
            ("S2", "A"): (5.0, 2.6, 0.9), ("S2", "D"): (1.2, 7.5, 0.8), ("S3", "A"): (3.0, 2.4, 0.85),
            ("S3", "B"): (0.2, 11.0, 0.5), ("S4", "C"): (1.5, 4.2, 0.9)}
    for (st, sku), (rate, price, p_row) in plan.items():
        start = 0 if (st, sku) != ("S2", "D") else 40                 # a series starting later
        for i, d in enumerate(days[start:]):
            if rng.random() > p_row:                                   # gap: no row that day
                continue
            p = price * (0.8 if d.dayofweek == 4 and d.day > 14 else 1.0)  # Friday promotions in the 2nd half
            q = int(rng.poisson(rate * (1.6 if d.dayofweek >= 5 else 1.0)))
            for _ in range(q):
                lines.append((d, st, sku, 1, p))
            if rng.random() < 0.06:                                    # a return, on its own or with sales
                lines.append((d, st, sku, -int(rng.integers(1, 3)), p))
    return pd.DataFrame(lines, columns=["date", "store_id", "product_id", "quantity", "unit_price"])


def daily_demand(lines: pd.DataFrame) -> pd.DataFrame:
    """The daily demand table as ml.pipeline.load_daily_demand builds it for lines without a customer: units =
    sold quantity (returns excluded), price = revenue / units of the sold lines (null when none), country_code of the store."""
    sold = lines.assign(q=lines["quantity"].clip(lower=0),
                        rev=lines["quantity"].clip(lower=0) * lines["unit_price"])
    g = sold.groupby(["date", "store_id", "product_id"], as_index=False).agg(units=("q", "sum"), rev=("rev", "sum"))
    g["units"] = g["units"].astype("float64")
    g["price"] = (g["rev"] / g["units"].where(g["units"] > 0)).astype("float64")
    g = g.drop(columns="rev")
    # a series that is never active: zero units and no price (dropped by both implementations)
    g = pd.concat([g, pd.DataFrame({"date": pd.to_datetime([FIRST, END]), "store_id": "S4", "product_id": "Z",
                                    "units": 0.0, "price": np.nan})], ignore_index=True)
    # S4/N sold without ever a known price; S4/O sold once, on the last day
    n_days = pd.date_range(FIRST, END, freq="3D")
    g = pd.concat([g, pd.DataFrame({"date": n_days, "store_id": "S4", "product_id": "N", "units": 2.0, "price": np.nan}),
                   pd.DataFrame({"date": pd.to_datetime([END]), "store_id": "S4", "product_id": "O", "units": 5.0,
                                 "price": 3.0})], ignore_index=True)
    # a free day of S1/C in March (price 0: the price ratios of the next days are undefined)
    free = g[(g["store_id"] == "S1") & (g["product_id"] == "C") & (g["units"] > 0) & (g["date"].dt.month == 3)].index[0]
    g.loc[free, "price"] = 0.0
    # S3/B's first day has demand but no price (price 0 there: never filled back from the next priced day)
    first = g[(g["store_id"] == "S3") & (g["product_id"] == "B") & (g["units"] > 0)].index[0]
    g.loc[first, "price"] = np.nan
    cc = {"S1": "GB", "S2": "US", "S3": None, "S4": "XX"}             # XX: no holiday calendar
    g["country_code"] = g["store_id"].map(cc)
    return g.sort_values(["store_id", "product_id", "date"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def demand() -> pd.DataFrame:
    d = daily_demand(sale_lines())
    assert (d["units"] == 0).any() and d["price"].isna().any() and (d["price"] == 0).any()
    assert (d["date"].dt.date > END).any()
    return d


def spark_table(spark, demand: pd.DataFrame, **kw) -> pd.DataFrame:
    from ml import spark_features as sf

    sdf = spark.createDataFrame(sf.demand_arrow(pa.Table.from_pandas(demand, preserve_index=False)))
    return sf.to_arrow(sf.build_features_df(spark, sdf, **kw)).to_pandas()


def assert_same_table(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Column by column: identical keys and order, identical nulls, floats to 1e-9, integers exactly."""
    from ml.spark_features import BYTE_COLUMNS, OUTPUT_COLUMNS

    assert len(got) == len(want) > 0
    assert list(got.columns) == OUTPUT_COLUMNS
    for c in OUTPUT_COLUMNS:
        g = got[c].reset_index(drop=True)
        w = want[c].reset_index(drop=True) if c in want.columns else pd.Series(np.nan, index=g.index)
        if c in ("date", "store_id", "product_id"):
            assert g.tolist() == w.tolist(), c
        elif c in BYTE_COLUMNS:
            assert g.dtype == np.int8 and w.dtype == np.int8, (c, g.dtype, w.dtype)
            assert (g.to_numpy() == w.to_numpy()).all(), (c, int((g != w).sum()))
        else:
            gv, wv = g.to_numpy(dtype="float64"), w.to_numpy(dtype="float64")
            assert (np.isnan(gv) == np.isnan(wv)).all(), (c, int((np.isnan(gv) != np.isnan(wv)).sum()))
            np.testing.assert_allclose(gv, wv, rtol=1e-9, atol=1e-9, err_msg=c)


def test_spark_features_equal_pandas_with_holidays(spark, demand):
    from ml.features import build_daily_features

    want = build_daily_features(demand, end_date=pd.Timestamp(END), extend_days=H, default_country="GB")
    got = spark_table(spark, demand, end_date=END, extend_days=H, default_country="GB")
    assert_same_table(got, want)
    # the table is what it claims, independently of both implementations
    keys = ["store_id", "product_id"]
    assert ("S4", "Z") not in set(map(tuple, got[keys].drop_duplicates().to_numpy()))
    assert got.groupby(keys).size().min() > H and (got["date"].max() == pd.Timestamp(END + dt.timedelta(days=H)))
    known = got[got["units"].notna()]
    assert known["date"].max() == pd.Timestamp(END) and got[got["date"] > pd.Timestamp(END)]["units"].isna().all()
    src = demand[demand["date"] <= pd.Timestamp(END)]
    assert known["units"].sum() == src["units"].sum()                # zero-filled gaps add nothing
    # a series never priced: price 0 and neutral ratios throughout; a series sold once, on END: its day + H days
    s4n = got[(got["store_id"] == "S4") & (got["product_id"] == "N")]
    assert len(s4n) > H and (s4n["price"] == 0).all() and (s4n["price_rel_28"] == 1).all() and (s4n["promo"] == 0).all()
    s4o = got[(got["store_id"] == "S4") & (got["product_id"] == "O")]
    assert s4o["date"].tolist() == list(pd.date_range(END, periods=H + 1, freq="D"))
    assert s4o["units"].iloc[0] == 5 and s4o["units"].iloc[1:].isna().all()
    assert np.isnan(s4o["lag_1"].iloc[0]) and s4o["lag_1"].iloc[1] == 5 and s4o["rmean_7"].iloc[1] == 5
    # S3/B's first day has demand and no price: no price of a later day is filled back into it
    s3b = got[(got["store_id"] == "S3") & (got["product_id"] == "B")]
    first_priced = demand[(demand["store_id"] == "S3") & (demand["product_id"] == "B") & demand["price"].notna()]
    assert s3b["date"].iloc[0] < first_priced["date"].min()
    assert (s3b.loc[s3b["date"] < first_priced["date"].min(), "price"] == 0).all()
    s1a = got[(got["store_id"] == "S1") & (got["product_id"] == "A")].set_index("date")
    # UK-wide holidays on a GB store (Good Friday, early May and spring bank holidays; Easter Monday is not
    # UK-wide), the US ones on a US store
    gb = ["2024-03-29", "2024-05-06", "2024-05-27"]
    assert s1a.loc[pd.to_datetime(gb), "holiday"].tolist() == [1, 1, 1]
    assert s1a["holiday"].sum() == 3
    s2a = got[(got["store_id"] == "S2") & (got["product_id"] == "A")].set_index("date")
    assert s2a.loc[pd.to_datetime(["2024-05-27", "2024-06-19"]), "holiday"].tolist() == [1, 1]  # Memorial, Juneteenth
    assert got[got["store_id"] == "S4"]["holiday"].sum() == 0          # unknown country: no calendar
    s3 = got[got["store_id"] == "S3"].set_index("date")
    assert s3.loc[pd.to_datetime(gb), "holiday"].eq(1).all()           # no country code: the default (GB)
    # lag_7 and rmean_7 of a row, recomputed from the source rows
    d = pd.Timestamp("2024-04-20")
    y = src[(src["store_id"] == "S1") & (src["product_id"] == "A")].set_index("date")["units"]
    assert s1a.loc[d, "lag_7"] == y.get(d - pd.Timedelta(days=7), 0.0)
    assert s1a.loc[d, "rmean_7"] == pytest.approx(sum(y.get(d - pd.Timedelta(days=k), 0.0) for k in range(1, 8)) / 7)


def test_spark_features_equal_pandas_with_weather_and_flags(spark, demand):
    from ml.features import build_daily_features

    d = demand.copy()
    d["promo"] = (d["date"].dt.dayofweek == 4).astype(int)
    d["snap"] = ((d["date"].dt.day <= 10) & (d["store_id"] == "S2")).astype(int)
    dates = pd.date_range(FIRST, END + dt.timedelta(days=5), freq="D")   # weather forecast ends before the horizon
    weather = pd.concat([pd.DataFrame({"date": dates.strftime("%Y-%m-%d"), "country_code": c,
                                       "temp_c": 5 + 10 * np.sin(np.arange(len(dates)) / 20) + o,
                                       "precip_mm": (np.arange(len(dates)) % 5) * 0.7})
                         for c, o in (("GB", 0.0), ("US", 4.5))], ignore_index=True)
    want = build_daily_features(d, end_date=pd.Timestamp(END), extend_days=H, default_country=None, weather=weather)
    got = spark_table(spark, d, end_date=END, extend_days=H, default_country=None, weather=weather)
    assert_same_table(got, want)
    # no default country: holidays only for the stores with a country calendar (S1 GB, S2 US), none for S3 / S4
    assert got.groupby("store_id")["holiday"].sum().gt(0).to_dict() == {"S1": True, "S2": True, "S3": False, "S4": False}
    assert got["promo"].sum() > 0 and got["snap"].sum() > 0
    assert got["temp_c"].notna().any() and got["temp_c"].isna().any()  # S3/S4 have no weather, nor the last days


def window_oracle(units: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, sample standard deviation (0 with < 2 values) and zero share of units[d-n..d-1] per row d, NaN
    skipped: a plain two-pass numpy loop over each window (independent of pandas' and Spark's algorithms)."""
    mean, std, zero = (np.full(len(units), np.nan) for _ in range(3))
    for i in range(len(units)):
        x = units[max(0, i - n):i]
        x = x[~np.isnan(x)]
        if len(x):
            mean[i], zero[i] = x.mean(), (x == 0).mean()
        std[i] = np.sqrt(((x - x.mean()) ** 2).sum() / (len(x) - 1)) if len(x) >= 2 else 0.0
    return mean, std, zero


def test_trailing_statistics_hold_at_a_high_fractional_level(spark):
    """The trailing means, standard deviations and zero shares come from differences of running sums: checked
    against a two-pass oracle on two long series where that could lose precision.

    * Integer units (an intermittent series starting later): exact to 1e-12.
    * Fractional units (kg) at a level of 20,000 with a standard deviation of 0.5 over 2 years, with a week of
      zero demand: the running sums are shifted by the series' rounded mean (19,808 here, ~400 standard
      deviations below the level), which bounds the loss to 7e-7 relative in the 7-day standard deviation
      (measured; unshifted, running sums of squares near 3e11 lose 3e-4). The bound asserted is 2e-6."""
    from ml import spark_features as sf
    from ml.features import WINDOWS

    rng = np.random.default_rng(11)
    days = pd.date_range("2022-06-01", periods=730, freq="D")
    heavy = np.round(20_000 + rng.normal(0, 0.5, len(days)), 3)
    heavy[400:407] = 0.0
    slow = rng.poisson(0.3, len(days)).astype(float)
    slow[:100] = 0.0
    slow[100] = 2.0
    d = pd.concat([pd.DataFrame({"date": days, "store_id": "S1", "product_id": p, "units": u, "price": 3.25})
                   for p, u in (("KG", heavy), ("SLOW", slow))], ignore_index=True)
    d = d[d["units"] > 0]                                             # zero days as gaps, filled by the grid
    end = days[-1].date()
    got = sf.to_arrow(sf.build_features_df(
        spark, spark.createDataFrame(sf.demand_arrow(pa.Table.from_pandas(d, preserve_index=False))),
        end_date=end, extend_days=H, default_country=None)).to_pandas()
    for sku, first in (("KG", 0), ("SLOW", 100)):
        g = got[got["product_id"] == sku].reset_index(drop=True)
        units = np.concatenate([(heavy if sku == "KG" else slow)[first:], np.full(H, np.nan)])
        assert len(g) == len(units) and np.array_equal(np.isnan(g["units"]), np.isnan(units))
        for n in WINDOWS:
            mean, std, zero = window_oracle(units, n)
            np.testing.assert_allclose(g[f"rmean_{n}"], mean, rtol=1e-12, atol=1e-12, err_msg=f"{sku} rmean_{n}")
            np.testing.assert_allclose(g[f"rstd_{n}"], std, rtol=2e-6 if sku == "KG" else 1e-12, atol=1e-12,
                                       err_msg=f"{sku} rstd_{n}")
        np.testing.assert_allclose(g["zero_share_28"], window_oracle(units, 28)[2], rtol=0, atol=1e-15)
    kg = got[got["product_id"] == "KG"].set_index("date")
    assert 0.4 < kg.loc["2023-01-01", "rstd_90"] < 0.6 and kg.loc[days[408], "zero_share_28"] == pytest.approx(7 / 28)



def test_contract_violations_are_named(spark, demand):
    from ml import spark_features as sf

    def build(df):
        sdf = spark.createDataFrame(sf.demand_arrow(pa.Table.from_pandas(df, preserve_index=False)))
        return sf.build_features_df(spark, sdf, end_date=END, extend_days=H)

    neg = demand.copy()
    neg.loc[neg.index[:3], "units"] = -1.0
    with pytest.raises(sf.FeatureError, match="3 row.s. with negative units"):
        build(neg)
    with pytest.raises(sf.FeatureError, match="2 duplicate"):
        build(pd.concat([demand, demand.iloc[5:7]], ignore_index=True))
    with pytest.raises(sf.FeatureError, match="lacks column"):
        sf.demand_arrow(pa.Table.from_pandas(demand.drop(columns="price")))


def test_write_features_leaves_nothing_for_an_empty_table(spark, local_lake, demand):
    """No active series (every day zero units, no price, no country for holidays): write_features raises and
    removes what Spark wrote, so no empty table is left for load_features."""
    from ml import spark_features as sf

    dead = demand.drop(columns="country_code").assign(units=0.0, price=np.nan)
    sdf = spark.createDataFrame(sf.demand_arrow(pa.Table.from_pandas(dead, preserve_index=False)))
    feats = sf.build_features_df(spark, sdf, end_date=END, extend_days=H, default_country=None)
    day = END - dt.timedelta(days=40)
    parts = sf.features_path(local_lake, day)
    with pytest.raises(sf.FeatureError, match="no active series"):
        sf.write_features(feats, local_lake, parts)
    assert not local_lake.exists(*parts)


def test_spark_submit_job_writes_the_feature_table_and_exit_codes(local_lake, demand):
    """The spark-submit application on staged inputs: exit 0 with the feature table (equal to the pandas one) at
    ``features/daily/run_date=<d>/`` and a result record, re-run identical; exit 3 and an error record for
    staged demand breaking the contract."""
    from ml import spark_features as sf
    from ml.features import build_daily_features
    from ml.pipeline import read_features

    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    submit = str(Path(sys.executable).parent / "spark-submit")
    app = str(REPO / "ml" / "jobs" / "build_features.py")

    def run(day):
        return subprocess.run([submit, "--master", "local[2]", "--conf", "spark.ui.enabled=false", app,
                               "--run-date", day.isoformat()], env=env, capture_output=True, text=True, timeout=900)

    sf.stage_inputs(local_lake, END, demand, END, H, "GB")
    want = build_daily_features(demand, end_date=pd.Timestamp(END), extend_days=H, default_country="GB")
    folder = local_lake.path(*sf.features_path(local_lake, END))
    # a single file left at the path by the in-process pandas path is replaced by the job's folder
    local_lake.write_table(pa.table({"x": [1]}), *sf.features_path(local_lake, END))
    listings = []
    for attempt in range(2):   # a re-run replaces the folder: the same files, the same table, nothing twice
        r = run(END)
        assert r.returncode == 0, r.stderr[-3000:]
        res = local_lake.read_json(*sf.staging(local_lake, END, sf.RESULT_NAME))
        assert res["rows"] == len(want) and res["series"] == 10 and res["last_date"] == END.isoformat()
        assert res["first_date"] == want["date"].min().date().isoformat()
        assert res["lake_path"] == f"features/daily/run_date={END}"
        files = sorted(f for f in os.listdir(folder) if f.endswith(".parquet"))   # written by Spark's executors
        listings.append(files)
        pieces = [pq.read_table(os.path.join(folder, f)) for f in files]
        assert all(t.schema.field("date").type == pa.date32() and t.schema.field("dow").type == pa.int8()
                   for t in pieces)
        for t in pieces:   # whole series per file, each sorted by store_id, product_id, date
            keys = t.select(["store_id", "product_id", "date"]).to_pandas()
            assert keys.equals(keys.sort_values(["store_id", "product_id", "date"]).reset_index(drop=True))
        got = pa.concat_tables(pieces).to_pandas().sort_values(["store_id", "product_id", "date"])
        got["date"] = pd.to_datetime(got["date"]).astype("datetime64[ns]")
        assert_same_table(got, want)
    assert len(listings[0]) == len(listings[1]) >= 1
    # what the train job reads (ml.pipeline.read_features) is the pandas path's table too
    f = read_features(local_lake, res["lake_path"])
    assert f["date"].dtype == "datetime64[ns]" and len(f) == len(want)
    assert_same_table(f.reindex(columns=sf.OUTPUT_COLUMNS), want)

    bad_day = END - dt.timedelta(days=1)
    bad = demand.copy()
    bad.loc[bad.index[0], "units"] = -2.0
    sf.stage_inputs(local_lake, bad_day, bad, bad_day, H, "GB")
    r = run(bad_day)
    assert r.returncode == 3, r.stderr[-3000:]
    err = local_lake.read_json(*sf.staging(local_lake, bad_day, sf.ERROR_NAME))
    assert err["error"] == "FeatureError" and "1 row(s) with negative units" in err["message"]
    assert not local_lake.exists(*sf.features_path(local_lake, bad_day))

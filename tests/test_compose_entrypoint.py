"""The entrypoint's composite role ``airflow-init`` run for real (natively, SQLite metadata DB).

Compose runs the same role against PostgreSQL; here it migrates a fresh SQLite database, creates the
DAGs' ClickHouse pool and writes the simple auth manager's password file, twice (idempotent).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.integration
@pytest.mark.airflow
def test_airflow_init_role_migrates_creates_pool_and_admin(tmp_path):
    from core.dagconf import CLICKHOUSE_POOL

    home = tmp_path / "airflow"
    pwfile = tmp_path / "auth" / "passwords.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    admin_pw, writer_pw = "pw-" + os.urandom(12).hex(), "pw-" + os.urandom(12).hex()
    env.update({
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW_ADMIN_USER": "ops", "AIRFLOW_ADMIN_PASSWORD": admin_pw,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "ops:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(pwfile),
        "CLICKHOUSE_URL": f"http://platform_writer:{writer_pw}@clickhouse:8123",   # a server: 4 pool slots
    })
    for attempt in range(2):
        r = subprocess.run([sys.executable, "-m", "ops.entrypoint", "airflow-init"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (attempt, r.stdout[-2000:], r.stderr[-3000:])
    assert json.loads(pwfile.read_text()) == {"ops": admin_pw}
    assert oct(pwfile.stat().st_mode & 0o777) == oct(0o600)
    pools = subprocess.run([str(Path(sys.executable).parent / "airflow"), "pools", "list", "--output", "json"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert pools.returncode == 0, pools.stderr[-2000:]
    by_name = {p["pool"]: p for p in json.loads(pools.stdout)}
    assert int(by_name[CLICKHOUSE_POOL]["slots"]) == 4
    # without the admin variables the role fails fast and names them
    bad = {k: v for k, v in env.items() if k != "AIRFLOW_ADMIN_PASSWORD"}
    r = subprocess.run([sys.executable, "-m", "ops.entrypoint", "airflow-init"], env=bad, cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "AIRFLOW_ADMIN_PASSWORD" in r.stderr


MC = REPO / ".cache" / "bin" / "mc" / "mc"
MINIO_INIT = REPO / "ops" / "docker" / "minio" / "minio-init.sh"
LAKE_SERVICES = ("producer", "stream", "airflow", "loadtest")


def _minio_init_env(s, home: Path) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """(environment of minio-init.sh against the native MinIO, {service: (access key, secret key)}) with fresh
    random keys per service (MinIO: keys of 3-20 characters, secrets of at least 8)."""
    keys = {svc: (f"{svc[:8]}-{os.urandom(3).hex()}", "pw-" + os.urandom(12).hex()) for svc in LAKE_SERVICES}
    env = {"PATH": f"{MC.parent}:{os.environ['PATH']}", "HOME": str(home),
           "MINIO_URL": s.lake_url, "MINIO_ROOT_USER": s.minio_root_user,
           "MINIO_ROOT_PASSWORD": s.minio_root_password}
    for svc, (key, secret) in keys.items():
        env[f"LAKE_{svc.upper()}_ACCESS_KEY"], env[f"LAKE_{svc.upper()}_SECRET_KEY"] = key, secret
    return env, keys


def _allowed(fn) -> bool:
    """True when the S3 call succeeds, False when MinIO refuses it with AccessDenied (any other error raises)."""
    from minio.error import S3Error

    try:
        fn()
        return True
    except S3Error as exc:
        if exc.code != "AccessDenied":
            raise
        return False


@pytest.mark.integration
def test_minio_init_script_grants_least_privilege_per_service(native_stack, tmp_path):
    """ops/docker/minio/minio-init.sh run with the real `mc` against the real (native) MinIO, twice (idempotent):
    each service's own key can do what its policy (ops/docker/minio/policies/lake-<service>.json) allows and
    MinIO refuses everything else (AccessDenied), checked operation by operation:

    ========  ====================  ==============================  ================================
    service   raw-data              models / features               other
    ========  ====================  ==============================  ================================
    producer  read, write, list     no read/write/list (exists)     no bucket creation
    stream    read, write, list     nothing                         no bucket creation
    airflow   read, list; no write  read, write, delete, list       no bucket creation
    loadtest  nothing (exists)      nothing (exists)                create/delete bench-raw-data
    ========  ====================  ==============================  ================================

    "exists": HeadBucket only (pyarrow's ``create_dir(bucket)`` in ``Lake.ensure_buckets``), no listing."""
    if not MC.exists():
        pytest.skip(f"MinIO client not built at {MC} (go install github.com/minio/mc)")
    import io

    import pyarrow.fs as pafs
    from minio import Minio

    s = native_stack
    env, keys = _minio_init_env(s, tmp_path)
    for _ in range(2):
        r = subprocess.run(["sh", str(MINIO_INIT)], env=env, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
    host = s.lake_url.split("://", 1)[1]
    root = Minio(host, access_key=s.minio_root_user, secret_key=s.minio_root_password, secure=False)
    probe = f"probe-{os.urandom(3).hex()}.txt"
    for b in ("raw-data", "models", "features"):
        root.put_object(b, probe, io.BytesIO(b"root"), 4)
    client = {svc: Minio(host, access_key=k, secret_key=sk, secure=False) for svc, (k, sk) in keys.items()}

    def can(svc: str, op: str, bucket: str) -> bool:
        c = client[svc]
        name = f"{svc}-{op}-{os.urandom(3).hex()}.txt"
        ops = {
            "read": lambda: c.get_object(bucket, probe).read(),
            "write": lambda: c.put_object(bucket, name, io.BytesIO(b"ok"), 2),
            "list": lambda: list(c.list_objects(bucket, prefix="probe-")),
            "delete": lambda: c.remove_object(bucket, probe),
        }
        ok = _allowed(ops[op])
        if ok and op == "write":
            root.remove_object(bucket, name)
        if ok and op == "delete":
            root.put_object(bucket, probe, io.BytesIO(b"root"), 4)
        return ok

    expected = {  # (service, bucket): set of allowed operations among read, write, list, delete
        ("producer", "raw-data"): {"read", "write", "list"},
        ("stream", "raw-data"): {"read", "write", "list"},
        ("airflow", "raw-data"): {"read", "list"},
        ("airflow", "models"): {"read", "write", "list", "delete"},
        ("airflow", "features"): {"read", "write", "list", "delete"},
    }
    seen = {}
    for svc in LAKE_SERVICES:
        for b in ("raw-data", "models", "features"):
            seen[(svc, b)] = {op for op in ("read", "write", "list", "delete") if can(svc, op, b)}
    assert seen == {k: expected.get(k, set()) for k in seen}
    try:
        for svc in LAKE_SERVICES:  # nobody creates buckets beyond the scratch bucket, nobody deletes lake buckets
            assert not _allowed(lambda: client[svc].make_bucket("not-allowed-" + os.urandom(3).hex())), svc
            assert not _allowed(lambda: client[svc].remove_bucket("models")), svc
        # the load test owns the scratch bucket: create, write, read, delete it; the stream cannot touch it
        if root.bucket_exists("bench-raw-data"):
            for o in root.list_objects("bench-raw-data", recursive=True):
                root.remove_object("bench-raw-data", o.object_name)
            root.remove_bucket("bench-raw-data")
        assert not _allowed(lambda: client["stream"].make_bucket("bench-raw-data"))
        lt = client["loadtest"]
        lt.make_bucket("bench-raw-data")
        lt.put_object("bench-raw-data", "x.txt", io.BytesIO(b"ok"), 2)
        assert lt.get_object("bench-raw-data", "x.txt").read() == b"ok"
        assert not _allowed(lambda: client["stream"].get_object("bench-raw-data", "x.txt").read())
        lt.remove_object("bench-raw-data", "x.txt")
        lt.remove_bucket("bench-raw-data")
        # Lake.ensure_buckets (pyarrow HeadBucket) works for the services that call it, without listing
        for svc in ("producer", "loadtest"):
            k, sk = keys[svc]
            fs = pafs.S3FileSystem(access_key=k, secret_key=sk, endpoint_override=s.lake_url,
                                   allow_bucket_creation=True, region="us-east-1")
            for b in ("raw-data", "models", "features") if svc == "producer" else ("models", "features"):
                fs.create_dir(b, recursive=True)
    finally:
        for b in ("raw-data", "models", "features"):
            root.remove_object(b, probe)


@pytest.mark.integration
def test_minio_init_script_names_a_missing_key_and_refuses_shared_keys(native_stack, tmp_path):
    """minio-init.sh fails before changing anything when a service's key is missing ("<VAR> is required") or
    two services share one key. Both checks come before the script's first ``mc`` call, so this needs no MinIO
    client (the test runs where it is not built)."""
    env, keys = _minio_init_env(native_stack, tmp_path)
    missing = {k: v for k, v in env.items() if k != "LAKE_STREAM_SECRET_KEY"}
    r = subprocess.run(["sh", str(MINIO_INIT)], env=missing, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "LAKE_STREAM_SECRET_KEY is required" in r.stderr
    shared = {**env, "LAKE_AIRFLOW_ACCESS_KEY": env["LAKE_STREAM_ACCESS_KEY"]}
    r = subprocess.run(["sh", str(MINIO_INIT)], env=shared, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "LAKE_AIRFLOW_ACCESS_KEY repeats" in r.stderr

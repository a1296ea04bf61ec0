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


@pytest.mark.integration
def test_minio_init_script_grants_least_privilege(native_stack, tmp_path):
    """ops/docker/minio/minio-init.sh run with the real `mc` against the real (native) MinIO, twice:
    the platform key can read/write objects in the lake buckets, create/delete only the scratch bucket,
    and cannot create other buckets."""
    if not MC.exists():
        pytest.skip(f"MinIO client not built at {MC} (go install github.com/minio/mc)")
    from minio import Minio
    from minio.error import S3Error

    s = native_stack
    key, secret = "platform-" + os.urandom(3).hex(), "pw-" + os.urandom(12).hex()
    env = {"PATH": f"{MC.parent}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "MINIO_URL": s.lake_url, "MINIO_ROOT_USER": s.minio_root_user,
           "MINIO_ROOT_PASSWORD": s.minio_root_password, "LAKE_ACCESS_KEY": key, "LAKE_SECRET_KEY": secret}
    for _ in range(2):
        r = subprocess.run(["sh", str(REPO / "ops" / "docker" / "minio" / "minio-init.sh")], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
    host = s.lake_url.split("://", 1)[1]
    user = Minio(host, access_key=key, secret_key=secret, secure=False)
    import io

    user.put_object("raw-data", "probe/x.txt", io.BytesIO(b"ok"), 2)
    assert user.get_object("raw-data", "probe/x.txt").read() == b"ok"
    user.remove_object("raw-data", "probe/x.txt")
    with pytest.raises(S3Error) as err:
        user.make_bucket("not-allowed-" + os.urandom(3).hex())
    assert err.value.code == "AccessDenied"
    with pytest.raises(S3Error):
        user.remove_bucket("models")
    if user.bucket_exists("bench-raw-data"):
        user.remove_bucket("bench-raw-data")
    user.make_bucket("bench-raw-data")
    user.remove_bucket("bench-raw-data")

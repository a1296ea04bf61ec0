"""Airflow on the native stack: environment, metadata DB, standalone UI, nightly runs; shared DAG conventions.

CLI (typer): ``python -m ops.airflow {env,init,standalone,nightly}``

* ``env`` prints the environment as ``export`` lines (``eval "$(python -m ops.airflow env)"``).
* ``init`` runs ``airflow db migrate`` and creates the DAGs' ``clickhouse`` pool.
* ``standalone`` = init + ``airflow standalone`` (API server + UI, scheduler, DAG processor, triggerer)
  with our dags folder; waits for ``/api/v2/monitor/health``, prints the UI URL and where the generated
  admin password is, and stops cleanly on Ctrl-C / SIGTERM (it forwards SIGINT to Airflow's parent
  process: SIGTERM orphans or hangs its children).
* ``nightly --date YYYY-MM-DD`` runs ``airflow dags test`` for daily_etl, demand_forecast_training and
  batch_predictions in sequence (each DAG whose file exists in dags/), stopping at the first failure.

The environment: AIRFLOW_HOME = $RETAIL_STATE_DIR/airflow (SQLite metadata DB), dags folder = <repo>/dags,
no example DAGs, parallelism 4 (2-core machine), ``spark_default`` connection from SPARK_MASTER,
the venv's bin on PATH (pyspark's ``spark-submit``), the repo on PYTHONPATH.

DAG files import their conventions from :mod:`core.dagconf`, never from here.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from core.settings import REPO_ROOT, Settings, get_settings
from core.dagconf import CLICKHOUSE_POOL, clickhouse_pool_slots

#: DAGs run by ``nightly``, in order (file dags/<dag_id>.py)
NIGHTLY_DAGS = ("daily_etl", "demand_forecast_training", "batch_predictions")
DAGS_FOLDER = REPO_ROOT / "dags"



# ------------------------------------------------------------------------------ environment --------
def airflow_home(s: Settings | None = None) -> Path:
    """$RETAIL_STATE_DIR/airflow."""
    s = s or get_settings()
    return Path(s.retail_state_dir) / "airflow"


def spark_connection(master: str) -> dict:
    """The ``spark_default`` connection (JSON form of AIRFLOW_CONN_SPARK_DEFAULT) for a master URL.

    ``local[N]`` -> host ``local[N]``; ``spark://h:7077`` -> host ``spark://h``, port 7077.
    """
    conn: dict = {"conn_type": "spark", "extra": {"deploy-mode": "client", "spark-binary": "spark-submit"}}
    u = urlparse(master)
    if u.scheme in ("spark", "k8s") and u.port:
        conn.update(host=f"{u.scheme}://{u.hostname}", port=u.port)
    else:
        conn["host"] = master
    return conn


def airflow_env(s: Settings | None = None, home: Path | None = None, port: int | None = None) -> dict[str, str]:
    """Environment variables for every Airflow process of the platform (added to os.environ by callers)."""
    s = s or get_settings()
    home = Path(home or airflow_home(s))
    venv_bin = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    pythonpath = os.environ.get("PYTHONPATH", "")
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps(spark_connection(s.spark_master)),
        "PATH": path if path.split(os.pathsep)[0] == venv_bin else venv_bin + (os.pathsep + path if path else ""),
        "PYTHONPATH": str(REPO_ROOT) + (os.pathsep + pythonpath if pythonpath else ""),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    if port:
        # the API server on AIRFLOW_HOST (loopback by default, as every native service; Airflow's default is
        # 0.0.0.0), its log servers on ports of the settings (Airflow's defaults 8793/8794 were neither configurable
        # nor checked by `down`)
        env["AIRFLOW__API__HOST"] = s.airflow_host
        env["AIRFLOW__API__PORT"] = str(port)
        env["AIRFLOW__API__BASE_URL"] = f"http://{_client_host(s.airflow_host)}:{port}"
        env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(s.airflow_worker_log_port)
        env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(s.airflow_trigger_log_port)
    return env


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host`` (URL form; a wildcard -> localhost)."""
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return "localhost"
    return f"[{host}]" if ":" in host else host


def _run(cmd: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, env={**os.environ, **env}, text=True, capture_output=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def _airflow() -> str:
    exe = Path(sys.executable).parent / "airflow"
    return str(exe) if exe.exists() else "airflow"


def init(s: Settings | None = None, home: Path | None = None) -> Path:
    """``airflow db migrate`` (idempotent) and the ``clickhouse`` pool. Returns AIRFLOW_HOME."""
    env = airflow_env(s, home)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    _run([_airflow(), "db", "migrate"], env)
    _run([_airflow(), "pools", "set", CLICKHOUSE_POOL, str(clickhouse_pool_slots(s or get_settings())),
          "ClickHouse tasks of the DAGs"], env)
    return Path(env["AIRFLOW_HOME"])


def configure_in_process(home: Path, s: Settings | None = None) -> None:
    """For tests running DAGs with ``dag.test()`` in the current process (chDB already open here):
    set the Airflow environment, create the SQLite metadata DB and the ``clickhouse`` pool.

    Must run before the first ``import airflow`` of the process when possible; when Airflow is already
    imported, its configuration is kept (its AIRFLOW_HOME stays in force) and the DB is still created.
    """
    env = airflow_env(s, home)
    env.pop("PATH"), env.pop("PYTHONPATH")
    if "airflow" not in sys.modules:
        os.environ.update(env)
    else:
        for k in ("AIRFLOW_CONN_SPARK_DEFAULT", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):
            os.environ[k] = env[k]
    Path(home).mkdir(parents=True, exist_ok=True)
    venv_bin = str(Path(sys.executable).parent)
    if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    from airflow.models.pool import Pool
    from airflow.utils import db

    db.initdb()
    Pool.create_or_update_pool(CLICKHOUSE_POOL, clickhouse_pool_slots(s or get_settings()),
                                "ClickHouse tasks of the DAGs", include_deferred=False)


# ---------------------------------------------------------------------------- standalone -------------
def health(port: int) -> dict | None:
    """JSON of ``GET /api/v2/monitor/health`` or None when the API server does not answer."""
    import httpx

    try:
        r = httpx.get(f"http://localhost:{port}/api/v2/monitor/health", timeout=2)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


def password_file(home: Path) -> Path:
    """Where ``airflow standalone`` (simple auth manager) writes the generated admin password."""
    return Path(home) / "simple_auth_manager_passwords.json.generated"


def api_token(port: int, home: Path, username: str = "admin") -> str:
    """A JWT for the REST API of a standalone Airflow (simple auth manager): POST /auth/token with the
    generated admin password; use it as ``Authorization: Bearer <token>``."""
    import httpx

    password = json.loads(password_file(home).read_text())[username]
    r = httpx.post(f"http://localhost:{port}/auth/token", json={"username": username, "password": password},
                   timeout=10)
    r.raise_for_status()
    return r.json()["access_token"]


def start_standalone(s: Settings | None = None, port: int | None = None, timeout: float = 180,
                     log_path: Path | None = None) -> subprocess.Popen:
    """init, then start ``airflow standalone`` in its own session (on ``port``, default AIRFLOW_PORT) and wait
    until healthy.

    Raises:
        RuntimeError: not healthy within ``timeout`` seconds (the process is stopped; see the log).
    """
    s = s or get_settings()
    port = port or s.airflow_port
    home = init(s)
    env = {**os.environ, **airflow_env(s, home, port)}
    log_path = log_path or home / "standalone.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen([_airflow(), "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_default_sigint)
    (home / "standalone.pid").write_text(str(proc.pid))
    deadline = time.time() + timeout
    while time.time() < deadline:
        h = health(port)
        if h and all(v.get("status") == "healthy" for k, v in h.items() if isinstance(v, dict) and "status" in v
                     and k in ("metadatabase", "scheduler")):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(1)
    stop_standalone(proc)
    raise RuntimeError(f"airflow standalone not healthy on port {port} within {timeout:.0f}s; log {log_path}")


def _default_sigint() -> None:
    # a background job of a non-interactive shell starts with SIGINT ignored, and children inherit
    # that: airflow standalone would then ignore the SIGINT that stops it cleanly
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def stop_standalone(proc: subprocess.Popen, timeout: float = 60) -> int:
    """SIGINT to the standalone parent (it shuts its children down), then SIGTERM/SIGKILL to its process
    group if it has not exited within ``timeout``. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    deadline = time.time() + 20  # children that outlive the parent (same process group)
    while _group_alive(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_alive(proc.pid):
            break
        os.killpg(proc.pid, sig)
        time.sleep(5)
    return proc.returncode


# ------------------------------------------------------------------------------ nightly --------------
def available_dags(names=NIGHTLY_DAGS) -> list[str]:
    """The DAG ids of ``names`` whose file dags/<dag_id>.py exists."""
    return [n for n in names if (DAGS_FOLDER / f"{n}.py").exists()]


def dags_test(dag_id: str, day: dt.date, s: Settings | None = None, home: Path | None = None) -> float:
    """``airflow dags test <dag_id> <day>`` in a subprocess (streams its output). Returns seconds taken.

    A ``day`` before daily_etl's start_date (ETL_START_DATE, else ETL_CATCHUP_DAYS before today) is run with
    ETL_START_DATE = ``day`` in the subprocess: Airflow creates no task instance for a manual run before the
    DAG's start_date, and the run would "succeed" without loading anything.

    Raises:
        RuntimeError: the DAG run failed.
    """
    env = {**os.environ, **airflow_env(s, home)}
    from core.dagconf import etl_catchup_start

    if day < etl_catchup_start(s or get_settings()):
        env["ETL_START_DATE"] = day.isoformat()
    t0 = time.time()
    r = subprocess.run([_airflow(), "dags", "test", dag_id, day.isoformat()], env=env)
    if r.returncode != 0:
        raise RuntimeError(f"airflow dags test {dag_id} {day} failed (exit {r.returncode})")
    return time.time() - t0


def nightly(day: dt.date, s: Settings | None = None, backfill_days: int = 0) -> dict[str, float]:
    """init, then ``daily_etl`` for the ``backfill_days`` dates before ``day`` (the forecast needs history),
    then each available nightly DAG for ``day`` in order, all with ``airflow dags test``.

    Starts the native MinIO and ClickHouse endpoint under the supervisor when they are not running.
    Returns {"<dag_id> <date>": seconds}.

    Raises:
        RuntimeError: a DAG run failed (later DAGs are not run).
    """
    from ops import local

    s = s or get_settings()
    local.up(s, ["minio", "clickhouse"])  # no-op when they run; the supervisor keeps them for later use
    home = init(s)
    timings: dict[str, float] = {}
    for back in range(backfill_days, 0, -1):
        d = day - dt.timedelta(days=back)
        timings[f"daily_etl {d}"] = dags_test("daily_etl", d, s, home)
    for dag_id in available_dags():
        timings[f"{dag_id} {day}"] = dags_test(dag_id, day, s, home)
    return timings


# ---------------------------------------------------------------------------------- CLI ---------------
def _cli():
    import typer

    app = typer.Typer(help="Airflow on the native stack (dags folder, SQLite metadata DB under RETAIL_STATE_DIR).",
                      no_args_is_help=True, pretty_exceptions_enable=False)

    @app.command("env")
    def env_cmd() -> None:
        """Print the Airflow environment as shell export lines."""
        import shlex

        for k, v in airflow_env().items():
            typer.echo(f"export {k}={shlex.quote(v)}")

    @app.command("init")
    def init_cmd() -> None:
        """airflow db migrate + the clickhouse pool."""
        typer.echo(f"AIRFLOW_HOME={init()} ready")

    @app.command("standalone")
    def standalone_cmd(port: Optional[int] = typer.Option(None, help="API server / UI port (default: AIRFLOW_PORT, "
                                                                     "8080).")) -> None:
        """Start airflow standalone; Ctrl-C (or SIGTERM) stops it cleanly."""
        s = get_settings()
        port = port or s.airflow_port
        proc = start_standalone(s, port)
        home = airflow_home(s)
        typer.echo(f"Airflow UI: http://localhost:{port}  (user admin; password in {password_file(home)})")
        typer.echo(f"REST API: POST http://localhost:{port}/auth/token {{username, password}} -> Bearer token")
        typer.echo(f"DAGs are paused at creation: unpause them in the UI. Log: {home / 'standalone.log'}")
        stopping = {"flag": False}

        def _stop(*_):
            stopping["flag"] = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)  # explicit: also when started with SIGINT ignored
        while not stopping["flag"] and proc.poll() is None:
            time.sleep(1)
        code = stop_standalone(proc)
        typer.echo(f"airflow standalone stopped (exit {code})")

    @app.command("nightly")
    def nightly_cmd(date: str = typer.Option(..., "--date", help="UTC date YYYY-MM-DD to process."),
                    backfill_days: int = typer.Option(0, "--backfill-days", min=0,
                                                      help="Run daily_etl for this many earlier dates first.")) -> None:
        """Run daily_etl, demand_forecast_training, batch_predictions for DATE with `airflow dags test`."""
        try:
            day = dt.date.fromisoformat(date)
        except ValueError:
            raise typer.BadParameter(f"--date must be YYYY-MM-DD, got {date!r}") from None
        present = available_dags()
        missing = [d for d in NIGHTLY_DAGS if d not in present]
        if missing:
            typer.echo(f"note: no DAG file for {missing} in {DAGS_FOLDER}; running {present}")
        timings = nightly(day, backfill_days=backfill_days)
        typer.echo(json.dumps({"date": day.isoformat(), "seconds": {k: round(v, 1) for k, v in timings.items()}}))

    return app


def main() -> None:
    """Entry point of ``python -m ops.airflow``."""
    _cli()()


if __name__ == "__main__":
    main()

"""``python -m ops.entrypoint <role> [args...]``: the one entrypoint of the platform image, a role per service.

Every role dispatches to the *same native command* the native stack and its tests run, so what the
compose stack starts is what CI exercises::

    producer               python -m producers.cli <args>          (POS simulator / replay)
    topics                 python -m producers.cli topics <args>   (idempotent topic creation)
    stream                 python -m streaming.job run <args>      (Spark Structured Streaming driver)
    migrate                python -m ops.cli migrate             (ClickHouse migrations, idempotent)
    load-test              python -m ops.bench_stream load <args>   (fixed-rate load test, JSON report)
    dashboard              python -m dashboard <args>              (live browser dashboard, Streamlit)
    airflow-init           airflow db migrate + admin password file for the simple auth manager
    airflow-api-server     airflow api-server <args>
    airflow-scheduler      airflow scheduler <args>
    airflow-dag-processor  airflow dag-processor <args>
    airflow-triggerer      airflow triggerer <args>

Extra arguments are appended to the native command (``--help`` therefore prints the native help).
Two meta commands serve the container runtime:

* ``python -m ops.entrypoint --dry-run <role> [args]`` prints the resolved argv as JSON and exits 0.
* ``python -m ops.entrypoint healthcheck <role>`` exits 0 when the role's process is healthy (used by
  compose healthchecks: the image has no curl).

Configuration contract. Each role declares the *settings groups* it needs; a group is the set of
:class:`core.settings.Settings` fields with given prefixes, derived from ``Settings.model_fields`` (so a
new setting is covered automatically). :func:`required_env` gives the environment variables a container
of that role must receive; ``tests/test_compose.py`` checks docker-compose.yml against it. With
``RETAIL_ENTRYPOINT_STRICT=1`` (set in the image) a role refuses to start when one of them is missing and
names it, instead of silently falling back to the defaults of the *native* stack (e.g. localhost:9092).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core.settings import CROSS_CHECKS, Settings

# ------------------------------------------------------------------------------ settings groups --
#: Settings only the *native* stack uses (it runs its own broker, MinIO, ClickHouse endpoint over chDB and
#: Airflow under the supervisor); containers never need them (compose's ClickHouse server gets its users'
#: passwords itself, our containers reach it through CLICKHOUSE_URL), except the dashboard, which receives
#: the read-only ``bi_reader`` password explicitly (its role's ``extra_env``) and no writer credential.
#: (The airflow-api-server healthcheck probes AIRFLOW_PORT's default, 8080: the port compose starts it on.)
NATIVE_ONLY: frozenset[str] = frozenset({
    "kafka_controller_port", "kafka_version", "kafka_heap",
    "minio_version", "minio_port", "minio_console_port", "minio_root_user", "minio_root_password",
    "clickhouse_http_host", "clickhouse_http_port", "clickhouse_chdb_path", "clickhouse_admin_password",
    "clickhouse_writer_password", "clickhouse_bi_password", "clickhouse_max_body_mb", "airflow_port",
    "airflow_host", "airflow_worker_log_port", "airflow_trigger_log_port",
})

#: group name -> field-name prefixes. Every Settings field must fall in exactly one group or NATIVE_ONLY.
GROUP_PREFIXES: dict[str, tuple[str, ...]] = {
    "paths": ("retail_",),
    "kafka": ("kafka_",),
    "clickhouse": ("clickhouse_",),
    "lake": ("lake_",),
    "spark": ("spark_",),
    "streaming": ("stream_", "risk_"),
    "dashboard": ("dashboard_",),
    "airflow": ("airflow_",),   # airflow_port is NATIVE_ONLY: AIRFLOW_CLICKHOUSE_POOL_SLOTS (airflow-init)
    "batch": ("etl_", "training_", "predictions_", "store_country_", "service_level", "lead_time_",
              "weather_", "order_cost", "order_max_cover_", "order_count_open_", "holding_cost_", "forecast_"),
}


def settings_group(group: str) -> list[str]:
    """Settings field names (lower case) of one group, in declaration order.

    Raises:
        KeyError: unknown group name.
    """
    prefixes = GROUP_PREFIXES[group]
    return [f for f in Settings.model_fields if f not in NATIVE_ONLY and f.startswith(prefixes)]


#: Settings whose ``None`` default means "feature off" or "derived without a native default" (the pool's slots
#: follow CLICKHOUSE_URL): compose passes them as ``${VAR:-}`` (an empty value counts as unset, see
#: ``env_ignore_empty`` in core.settings), the strict check skips them.
OPTIONAL_SETTINGS: frozenset[str] = frozenset({"predictions_schedule", "weather_file",
                                                "airflow_clickhouse_pool_slots", "etl_start_date"})


def unclassified_settings() -> list[str]:
    """Settings fields in no group and not NATIVE_ONLY (must be empty; a test enforces it)."""
    grouped = {f for g in GROUP_PREFIXES for f in settings_group(g)}
    return [f for f in Settings.model_fields if f not in grouped and f not in NATIVE_ONLY]


# ------------------------------------------------------------------------------------- roles --
#: Environment every Airflow component of the compose stack needs besides our settings.
AIRFLOW_ENV: tuple[str, ...] = (
    "AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__LOAD_EXAMPLES", "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__CORE__PARALLELISM", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
    "AIRFLOW_CONN_SPARK_DEFAULT", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON",
)
_AIRFLOW_GROUPS = ("paths", "clickhouse", "lake", "spark", "batch")


@dataclass(frozen=True)
class Role:
    """One service role: the native command it runs and the configuration it needs."""

    name: str
    argv: tuple[str, ...]
    description: str
    groups: tuple[str, ...] = ()
    #: single Settings fields (lower case) the role reads outside its groups, e.g. the producers' future bound
    settings: tuple[str, ...] = ()
    extra_env: tuple[str, ...] = ()
    long_running: bool = True
    runner: Callable[[list[str]], int] | None = field(default=None, compare=False)


def _airflow_init(args: list[str]) -> int:
    """``airflow db migrate``, the DAGs' ClickHouse pool, and the simple auth manager's admin password file.

    Env: AIRFLOW_ADMIN_USER, AIRFLOW_ADMIN_PASSWORD (required), and
    AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE (the file the api-server reads; JSON {user: password});
    the settings CLICKHOUSE_URL and AIRFLOW_CLICKHOUSE_POOL_SLOTS (the pool's slots,
    :func:`core.dagconf.clickhouse_pool_slots`).
    Idempotent: re-running migrates nothing new and rewrites the same file.
    """
    if "--help" in args or "-h" in args:
        print("usage: python -m ops.entrypoint airflow-init\n\n"
              "Migrates the Airflow metadata database (airflow db migrate), creates the DAGs' ClickHouse pool\n"
              "(AIRFLOW_CLICKHOUSE_POOL_SLOTS slots, default from CLICKHOUSE_URL: 4 for a server, 1 for chdb://),\n"
              "writes the admin user's password (AIRFLOW_ADMIN_USER / AIRFLOW_ADMIN_PASSWORD) into\n"
              "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE for the simple auth manager.")
        return 0
    missing = [v for v in ("AIRFLOW_ADMIN_USER", "AIRFLOW_ADMIN_PASSWORD",
                           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE") if not os.environ.get(v)]
    if missing:
        print(f"airflow-init: required environment variable(s) not set: {', '.join(missing)}", file=sys.stderr)
        return 2
    rc = subprocess.call([_airflow_exe(), "db", "migrate"])
    if rc != 0:
        return rc
    # the DAGs' ClickHouse tasks run in this pool (ops.airflow.CLICKHOUSE_POOL): AIRFLOW_CLICKHOUSE_POOL_SLOTS,
    # else one slot for the embedded engine (one process per data path) and 4 for a server (core.dagconf)
    from core.dagconf import CLICKHOUSE_POOL, clickhouse_pool_slots
    from core.settings import ConfigError, get_settings

    try:
        slots = str(clickhouse_pool_slots(get_settings()))
    except ConfigError as exc:
        print(f"airflow-init: {exc}", file=sys.stderr)
        return 2
    rc = subprocess.call([_airflow_exe(), "pools", "set", CLICKHOUSE_POOL, slots, "ClickHouse writers of the DAGs"])
    if rc != 0:
        return rc
    path = Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({os.environ["AIRFLOW_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}))
    tmp.chmod(0o600)
    tmp.replace(path)
    print(f"airflow-init: metadata database migrated; admin user {os.environ['AIRFLOW_ADMIN_USER']!r} written to {path}")
    return 0


def _airflow_exe() -> str:
    """The ``airflow`` script next to this interpreter (the venv's), else the one on PATH."""
    cand = Path(sys.executable).parent / "airflow"
    return str(cand) if cand.exists() else (shutil.which("airflow") or "airflow")


PY = "{python}"  # placeholder replaced by sys.executable when resolving
AIRFLOW = "{airflow}"

ROLES: dict[str, Role] = {r.name: r for r in (
    Role("producer", (PY, "-m", "producers.cli"), "POS event producers (synthetic simulator or UCI replay)",
         groups=("paths", "kafka", "lake"),   # paths: the alerts reader's seen ids under RETAIL_STATE_DIR
         # the producers dead-letter events dated beyond the stream's future bound (validated below the watermark)
         settings=("stream_max_future_minutes", "stream_watermark")),
    Role("topics", (PY, "-m", "producers.cli", "topics"), "create the platform's topics idempotently",
         groups=("kafka",), long_running=False),
    Role("stream", (PY, "-m", "streaming.job", "run"), "Spark Structured Streaming driver",
         groups=("paths", "kafka", "clickhouse", "lake", "spark", "streaming"),
         # a restock alert's recommended quantity covers the lead time (ORDER_MAX_COVER_DAYS: checked against it)
         settings=("lead_time_days", "order_max_cover_days"),
         extra_env=("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")),
    Role("migrate", (PY, "-m", "ops.cli", "migrate"), "apply ClickHouse migrations (idempotent)",
         groups=("clickhouse",), long_running=False),
    Role("load-test", (PY, "-m", "ops.bench_stream", "load"), "fixed-rate load test writing a JSON report",
         groups=("paths", "kafka", "clickhouse", "lake", "spark", "streaming"),
         settings=("lead_time_days", "order_max_cover_days"),
         extra_env=("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"), long_running=False),
    Role("dashboard", (PY, "-m", "dashboard"), "live browser dashboard (Streamlit) reading ClickHouse as bi_reader",
         groups=("clickhouse", "dashboard"),
         # the store manager page's caption of the restock quantity's rule (ORDER_MAX_COVER_DAYS: checked against it)
         settings=("lead_time_days", "order_max_cover_days"),
         extra_env=("CLICKHOUSE_BI_PASSWORD",)),
    Role("airflow-init", (), "migrate the Airflow metadata DB and create the admin user",
         groups=("clickhouse", "airflow"),   # the pool's slots: AIRFLOW_CLICKHOUSE_POOL_SLOTS, else from CLICKHOUSE_URL
         extra_env=AIRFLOW_ENV + ("AIRFLOW_ADMIN_USER", "AIRFLOW_ADMIN_PASSWORD"), long_running=False,
         runner=_airflow_init),
    Role("airflow-api-server", (AIRFLOW, "api-server"), "Airflow REST API and UI",
         groups=_AIRFLOW_GROUPS, extra_env=AIRFLOW_ENV),
    Role("airflow-scheduler", (AIRFLOW, "scheduler"), "Airflow scheduler (LocalExecutor runs the tasks)",
         groups=_AIRFLOW_GROUPS, extra_env=AIRFLOW_ENV),
    Role("airflow-dag-processor", (AIRFLOW, "dag-processor"), "Airflow DAG processor",
         groups=_AIRFLOW_GROUPS, extra_env=AIRFLOW_ENV),
    Role("airflow-triggerer", (AIRFLOW, "triggerer"), "Airflow triggerer",
         groups=_AIRFLOW_GROUPS, extra_env=AIRFLOW_ENV),
)}


def required_env(role: str) -> list[str]:
    """Environment variables a container running ``role`` must receive (settings upper-cased + extras).

    Raises:
        KeyError: unknown role.
    """
    r = ROLES[role]
    fields = [f for g in r.groups for f in settings_group(g)] + list(r.settings)
    # a setting validated against others (core.settings.CROSS_CHECKS) brings them: else the check runs against
    # their defaults (CLICKHOUSE_STREAM_RETENTION_DAYS=5 with KAFKA_RETENTION_MS of 2 days refused by migrate)
    grown = True
    while grown:   # transitively: STREAM_WATERMARK is checked against two others
        extra = [p for f in fields for check in CROSS_CHECKS if f in check for p in sorted(check)
                 if p not in NATIVE_ONLY and p not in fields]
        fields += list(dict.fromkeys(extra))
        grown = bool(extra)
    return list(dict.fromkeys([f.upper() for f in fields] + list(r.extra_env)))


def resolve(role: str, args: list[str]) -> list[str]:
    """The native argv a role runs, with ``args`` appended.

    Raises:
        KeyError: unknown role (message lists the known ones).
    """
    if role not in ROLES:
        raise KeyError(f"unknown role {role!r}; known roles: {', '.join(ROLES)}")
    r = ROLES[role]
    if r.runner is not None:
        return [sys.executable, "-m", "ops.entrypoint", role, *args]
    subst = {PY: sys.executable, AIRFLOW: _airflow_exe()}
    return [subst.get(a, a) for a in r.argv] + list(args)


# ------------------------------------------------------------------------------- healthchecks --
def _http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=5).status_code < 400
    except httpx.HTTPError:
        return False


def _tcp_ok(hostport: str) -> bool:
    host, _, port = hostport.strip().rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return True
    except OSError:
        return False


def _cmdline_running(needle: str) -> bool:
    """True when a process of this container (other than ourselves) has ``needle`` in its command line."""
    me = os.getpid()
    for p in Path("/proc").glob("[0-9]*"):
        if int(p.name) == me:
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd:
            return True
    return False


def _airflow_job_alive(job: str) -> bool:
    return subprocess.call([_airflow_exe(), "jobs", "check", "--job-type", job, "--local"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0


def _stream_healthy() -> bool:
    from core.settings import get_settings
    from streaming.job import stream_healthy

    return stream_healthy(get_settings())


def _producer_healthy() -> bool:
    from core.settings import get_settings

    return _cmdline_running("producers.cli") and _tcp_ok(get_settings().kafka_bootstrap_servers.split(",")[0])


#: Airflow's own configuration of the scheduler's health server port, and Airflow's default for it
SCHEDULER_HEALTH_PORT_ENV = "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT"
SCHEDULER_HEALTH_PORT_DEFAULT = 8974


def scheduler_health_port(environ: dict[str, str] | None = None) -> int:
    """Port of the scheduler's health server: AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT (the
    scheduler reads the same variable), else Airflow's default 8974.

    Raises:
        ValueError: the variable is not a port number (1..65535); the message names it.
    """
    raw = (os.environ if environ is None else environ).get(SCHEDULER_HEALTH_PORT_ENV, "").strip()
    if not raw:
        return SCHEDULER_HEALTH_PORT_DEFAULT
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ValueError(f"{SCHEDULER_HEALTH_PORT_ENV} must be a port number (1..65535), got {raw!r}")
    return int(raw)


def _api_server_healthy() -> bool:
    from core.settings import get_settings

    return _http_ok(f"http://localhost:{get_settings().airflow_port}/api/v2/monitor/health")


def _dashboard_healthy() -> bool:
    from core.settings import get_settings

    from ops.services import local_address

    s = get_settings()
    return _http_ok(f"http://{local_address(s.dashboard_host)}:{s.dashboard_port}/_stcore/health")


#: role -> probe of that role's process in *this* container (compose healthchecks call these):
#: * airflow-api-server: ``GET http://localhost:$AIRFLOW_PORT/api/v2/monitor/health`` answers 2xx (AIRFLOW_PORT's
#:   default 8080 is the port compose starts the api-server on);
#: * airflow-scheduler: its health server ``GET http://localhost:<port>/health`` answers 2xx
#:   (AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=True; port :func:`scheduler_health_port`, default 8974);
#: * airflow-dag-processor / airflow-triggerer: ``airflow jobs check --local`` finds a live job on this host;
#: * stream: the job's heartbeat file ($RETAIL_STATE_DIR/streaming.heartbeat), touched every second while both
#:   streaming queries are active, is younger than STREAM_HEARTBEAT_MAX_AGE_S (the job runs without a Spark UI);
#: * producer: the producer process runs and the first Kafka bootstrap server accepts TCP connections;
#: * dashboard: Streamlit's ``GET http://<DASHBOARD_HOST>:$DASHBOARD_PORT/_stcore/health`` answers 2xx
#:   (localhost when DASHBOARD_HOST is 0.0.0.0, as in compose).
HEALTHCHECKS: dict[str, Callable[[], bool]] = {
    "airflow-api-server": _api_server_healthy,
    "airflow-scheduler": lambda: _http_ok(f"http://localhost:{scheduler_health_port()}/health"),
    "airflow-dag-processor": lambda: _airflow_job_alive("DagProcessorJob"),
    "airflow-triggerer": lambda: _airflow_job_alive("TriggererJob"),
    "stream": lambda: _stream_healthy(),
    "producer": _producer_healthy,
    "dashboard": _dashboard_healthy,
}


def healthcheck(role: str) -> bool:
    """Health of a long-running role in this container (see :data:`HEALTHCHECKS`).

    Raises:
        KeyError: the role has no healthcheck (it is a one-shot role).
    """
    if role not in HEALTHCHECKS:
        raise KeyError(f"role {role!r} has no healthcheck (long-running roles: {', '.join(HEALTHCHECKS)})")
    return HEALTHCHECKS[role]()


# ------------------------------------------------------------------------------------- main --
def _usage() -> str:
    lines = ["usage: python -m ops.entrypoint [--dry-run] <role> [args...]",
             "       python -m ops.entrypoint healthcheck <role>", "", "roles:"]
    lines += [f"  {r.name:<22} {r.description}" for r in ROLES.values()]
    return "\n".join(lines)


def check_env(role: str, environ: dict[str, str] | None = None) -> list[str]:
    """Names from :func:`required_env` missing (unset or empty) in ``environ`` (default os.environ)."""
    env = os.environ if environ is None else environ
    optional = {f.upper() for f in OPTIONAL_SETTINGS}
    return [v for v in required_env(role) if v not in env or (not env[v] and v not in optional)]


def main(argv: list[str] | None = None) -> int:
    """Dispatch; returns an exit code (``exec`` replaces this process for native commands)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "healthcheck":
        if len(argv) != 2:
            print("usage: python -m ops.entrypoint healthcheck <role>", file=sys.stderr)
            return 2
        try:
            ok = healthcheck(argv[1])
        except KeyError as exc:
            print(exc.args[0], file=sys.stderr)
            return 2
        except ValueError as exc:   # ConfigError, a bad Airflow port variable: names the variable
            print(f"unhealthy: {exc}", file=sys.stderr)
            return 1
        print("healthy" if ok else "unhealthy")
        return 0 if ok else 1
    dry = argv[0] == "--dry-run"
    if dry:
        argv = argv[1:]
        if not argv:
            print(_usage(), file=sys.stderr)
            return 2
    role, args = argv[0], argv[1:]
    try:
        cmd = resolve(role, args)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    if dry:
        print(json.dumps({"role": role, "argv": cmd, "required_env": required_env(role)}))
        return 0
    is_help = "--help" in args or "-h" in args
    if os.environ.get("RETAIL_ENTRYPOINT_STRICT") == "1" and not is_help:
        missing = check_env(role)
        if missing:
            print(f"role {role}: required environment variable(s) not set: {', '.join(missing)} "
                  "(see .env.example and docker-compose.yml)", file=sys.stderr)
            return 2
    r = ROLES[role]
    if r.runner is not None:
        return r.runner(args)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(cmd[0], cmd)  # never returns
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())

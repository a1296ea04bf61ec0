"""Consistency checks of the container stack without a Docker engine.

* docker-compose.yml validates against the Compose Specification (check-jsonschema's vendored schema);
  when the real Compose CLI is present (built from the Go module proxy into .cache/bin/compose),
  ``docker-compose config`` must accept the file too.
* every service of our image gets every environment variable its role needs (derived from
  ``core.settings.Settings.model_fields`` through ``ops.entrypoint.required_env``);
* no secret literal: secrets are interpolated from .env, and each required variable is in .env.example;
* every image (compose and Dockerfile) is pinned to a version;
* every long-running service has a healthcheck; one-shot services are the ones others wait for;
* every command of our image names a role the entrypoint implements, and runs natively with ``--help``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from ops import entrypoint
from core.settings import Settings
from core.spark import hadoop_version

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "ops" / "docker" / "requirements.lock"
USERS_XML = REPO / "ops" / "docker" / "clickhouse" / "users.d" / "platform-users.xml"
COMPOSE_CLI = REPO / ".cache" / "bin" / "compose" / "docker-compose"

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate_defaults(value: str) -> str:
    """Resolve compose interpolation as if .env set nothing optional: ``${V:-d}`` -> d, ``${V:?m}`` -> "x"."""
    def sub(m: re.Match) -> str:
        op = m.group("op") or ""
        if op.endswith("-"):
            return m.group("arg")
        if op.endswith("?"):
            return "x"
        return ""
    return _VAR.sub(sub, value).replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def our_services(compose: dict) -> dict[str, dict]:
    """Services built from our Dockerfile (the platform image; MinIO's own build context is not ours)."""
    return {n: s for n, s in compose["services"].items()
            if "build" in s and (s["build"] if isinstance(s["build"], str) else s["build"].get("context", ".")) in (".", "./")}


def role_of(svc: dict) -> str:
    return svc["command"][0]


def env_of(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form of environment"
    return {k: str(v) for k, v in env.items()}


def one_shot_services(compose: dict) -> set[str]:
    """Services some other service waits for with ``service_completed_successfully``."""
    out = set()
    for svc in compose["services"].values():
        for dep, cond in (svc.get("depends_on") or {}).items():
            if cond.get("condition") == "service_completed_successfully":
                out.add(dep)
    return out


# ------------------------------------------------------------------------------------ (a) schema --
def test_compose_file_validates_against_compose_spec():
    exe = Path(sys.executable).parent / "check-jsonschema"
    r = subprocess.run([str(exe), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_real_compose_cli_accepts_the_file(tmp_path):
    """`docker-compose config` of the real Compose CLI (built from the Go module proxy when available)."""
    if not COMPOSE_CLI.exists():
        pytest.skip(f"Compose CLI not built at {COMPOSE_CLI}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CLICKHOUSE_", "LAKE_"))}
    r = subprocess.run([str(COMPOSE_CLI), "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE),
                        "--profile", "scale", "--profile", "loadtest", "config", "--format", "json"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert set(cfg["services"]) == set(yaml.safe_load(COMPOSE_FILE.read_text())["services"])
    # the required variables really fail when missing
    env_missing = {k: v for k, v in env.items() if k != "CLICKHOUSE_BI_PASSWORD"}
    empty = tmp_path / "empty.env"
    empty.write_text("\n".join(line for line in ENV_EXAMPLE.read_text().splitlines()
                               if not line.startswith("CLICKHOUSE_BI_PASSWORD")))
    r = subprocess.run([str(COMPOSE_CLI), "-f", str(COMPOSE_FILE), "--env-file", str(empty), "config"],
                       capture_output=True, text=True, env=env_missing, cwd=tmp_path)
    assert r.returncode != 0 and "CLICKHOUSE_BI_PASSWORD is required" in r.stderr


# -------------------------------------------------------------------------------- (b) environment --
def test_every_setting_is_classified():
    """Each Settings field is in a settings group or NATIVE_ONLY, so required_env covers new settings."""
    assert entrypoint.unclassified_settings() == []
    assert set(entrypoint.OPTIONAL_SETTINGS) <= set(Settings.model_fields)
    for name in entrypoint.OPTIONAL_SETTINGS:
        assert Settings.model_fields[name].default is None


def test_each_service_of_our_image_gets_the_env_its_role_needs(compose):
    fields = {f.upper() for f in Settings.model_fields}
    checked = 0
    for name, svc in our_services(compose).items():
        role = role_of(svc)
        required = entrypoint.required_env(role)
        env = env_of(svc)
        missing = [v for v in required if v not in env]
        assert not missing, f"service {name} (role {role}) lacks {missing}"
        # the settings part really is derived from Settings (not a hand list)
        for group in entrypoint.ROLES[role].groups:
            for f in entrypoint.settings_group(group):
                assert f.upper() in fields and f.upper() in env
        # strict mode of the entrypoint accepts the resolved environment
        resolved = {k: interpolate_defaults(v) for k, v in env.items()}
        assert entrypoint.check_env(role, resolved) == [], name
        checked += 1
    assert checked >= 8


def test_settings_load_from_each_service_environment(compose, monkeypatch):
    """The resolved environment of every service parses with the real Settings (validators included)."""
    from core.settings import get_settings

    for name, svc in our_services(compose).items():
        env = {k: interpolate_defaults(v) for k, v in env_of(svc).items()}
        for k in list(os.environ):
            if k.lower() in Settings.model_fields:
                monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        get_settings.cache_clear()
        s = get_settings()
        if name == "dashboard":   # least privilege: no writer credential, bi_reader's password only
            assert s.clickhouse_url == "http://clickhouse:8123" and s.clickhouse_bi_password
            assert not any("WRITER" in k or "ADMIN" in k or k.startswith("LAKE_") for k in env)
            assert "KAFKA_BOOTSTRAP_SERVERS" not in env   # (KAFKA_RETENTION_MS: the retention's cross-check)
        elif "CLICKHOUSE_URL" in env:
            assert s.clickhouse_url.startswith("http://platform_writer:"), name
            assert s.clickhouse_database == "retail"
        if "LAKE_URL" in env:
            assert s.lake_is_s3 and s.lake_url == "http://minio:9000"
        if "KAFKA_BOOTSTRAP_SERVERS" in env:
            assert s.kafka_bootstrap_servers == "kafka:9092"
        if name == "streaming":
            assert s.spark_master == "local[2]" and s.spark_checkpoint_dir == "/var/lib/retail/checkpoints"
        if name.startswith("airflow"):
            assert s.predictions_schedule is None and s.weather_file is None
            conn = json.loads(env["AIRFLOW_CONN_SPARK_DEFAULT"])
            assert conn["conn_type"] == "spark" and conn["extra"]["deploy-mode"] == "client"
            assert conn["host"] == s.spark_master == "spark://spark-master:7077"
            assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/retail/dags"
    get_settings.cache_clear()


def test_compose_pass_through_defaults_equal_the_settings_defaults(compose):
    """`NAME: ${NAME:-d}` forwards an operator's .env value; its fallback d must be the settings default
    (parsed with the field's type), so compose and native runs agree unless configured otherwise."""
    from pydantic import TypeAdapter

    container_endpoints = {"KAFKA_BOOTSTRAP_SERVERS"}  # compose network names instead of localhost
    checked = 0
    for name, svc in our_services(compose).items():
        for k, v in env_of(svc).items():
            if k in container_endpoints:
                continue
            m = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", v)
            field = Settings.model_fields.get(k.lower())
            if not m or m.group(1) != k or field is None:
                continue
            default = field.default
            if m.group(2) == "":
                assert default is None, f"{name}.{k}: empty fallback but settings default {default!r}"
            else:
                parsed = TypeAdapter(field.annotation).validate_python(m.group(2))
                assert parsed == default, f"{name}.{k}: compose falls back to {m.group(2)!r}, settings to {default!r}"
            checked += 1
    assert checked >= 20


def test_strict_entrypoint_names_a_missing_variable():
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env["RETAIL_ENTRYPOINT_STRICT"] = "1"
    r = subprocess.run([sys.executable, "-m", "ops.entrypoint", "migrate"], capture_output=True,
                       text=True, env=env, cwd=REPO)
    assert r.returncode == 2
    assert "CLICKHOUSE_URL" in r.stderr and "CLICKHOUSE_DATABASE" in r.stderr


def test_no_secret_literals_and_required_vars_documented(compose):
    secretish = re.compile(r"PASSWORD|SECRET|_KEY$|TOKEN|FERNET")
    for name, svc in compose["services"].items():
        for k, v in env_of(svc).items():
            if secretish.search(k) and not k.endswith("_FILE"):
                assert "${" in v, f"{name}.{k} must come from .env, not a literal"
            if "://" in v and "@" in v:
                assert "${" in v.split("@")[0], f"{name}.{k}: credentials in a URL must be interpolated"
    text = COMPOSE_FILE.read_text()
    required = {m.group("name") for m in _VAR.finditer(text) if (m.group("op") or "").endswith("?")}
    example = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines()
               if line and not line.startswith("#") and "=" in line}
    assert required <= example, f"required but not in .env.example: {sorted(required - example)}"
    assert {"CLICKHOUSE_BI_PASSWORD", "LAKE_STREAM_SECRET_KEY", "AIRFLOW_FERNET_KEY"} <= required
    ignored = (REPO / ".gitignore").read_text().split()
    assert ".env" in ignored


def test_clickhouse_users_match_compose(compose):
    root = ET.parse(USERS_XML).getroot()
    users = {u.tag: u for u in root.find("users")}
    assert {"admin", "platform_writer", "bi_reader"} <= set(users)
    ch_env = env_of(compose["services"]["clickhouse"])
    for u in ("admin", "platform_writer", "bi_reader"):
        var = users[u].find("password").get("from_env")
        assert var in ch_env and "${" in ch_env[var]
    db = env_of(our_services(compose)["migrate"])["CLICKHOUSE_DATABASE"]
    assert [q.text for q in users["bi_reader"].find("grants")] == [f"GRANT SELECT ON {db}.*"]
    assert [q.text for q in users["platform_writer"].find("grants")] == [f"GRANT ALL ON {db}.*",
                                                                          f"GRANT ALL ON {db}_bench.*"]
    profile = root.find("profiles").find(users["bi_reader"].find("profile").text)
    assert profile.find("readonly").text == "1"  # no writes, no DDL, no setting changes
    assert "platform_writer:" in env_of(our_services(compose)["migrate"])["CLICKHOUSE_URL"]


def test_each_lake_service_has_its_own_key_and_policy(compose):
    """Lake least privilege, statically (tests/test_compose_entrypoint.py checks the policies on a real MinIO):
    every service with LAKE_URL gets LAKE_ACCESS_KEY / LAKE_SECRET_KEY from its own LAKE_<SERVICE>_* variables,
    minio-init creates a user for exactly those services with ops/docker/minio/policies/lake-<service>.json
    (valid S3 policy JSON, Allow statements only, no admin or wildcard action), nobody but MinIO and minio-init
    sees the root account, and the dashboard has no lake access."""
    svcs = compose["services"]
    init = env_of(svcs["minio-init"])
    lake_services = init["LAKE_SERVICES"].split()
    policy_dir = REPO / "ops" / "docker" / "minio" / "policies"
    assert sorted(p.stem for p in policy_dir.glob("lake-*.json")) == sorted(f"lake-{s}" for s in lake_services)
    for svc in lake_services:
        doc = json.loads((policy_dir / f"lake-{svc}.json").read_text())
        assert doc["Version"] == "2012-10-17" and doc["Statement"]
        for st in doc["Statement"]:
            assert st["Effect"] == "Allow"
            assert all(a.startswith("s3:") and "*" not in a for a in st["Action"]), (svc, st["Action"])
            assert all(r.startswith("arn:aws:s3:::") and r != "arn:aws:s3:::*" for r in st["Resource"]), svc
        for kind in ("ACCESS", "SECRET"):
            assert f"${{LAKE_{svc.upper()}_{kind}_KEY:?" in init[f"LAKE_{svc.upper()}_{kind}_KEY"]
    used = {}
    for name, svc in svcs.items():
        env = env_of(svc)
        if name not in ("minio", "minio-init"):
            assert not any(k.startswith("MINIO_ROOT") or "MINIO_ROOT" in v for k, v in env.items()), name
        if "LAKE_URL" in env:
            m = re.fullmatch(r"\$\{LAKE_([A-Z]+)_ACCESS_KEY:\?[^}]*\}", env["LAKE_ACCESS_KEY"])
            assert m, f"{name}: LAKE_ACCESS_KEY must come from its own LAKE_<SERVICE>_ACCESS_KEY"
            assert f"${{LAKE_{m.group(1)}_SECRET_KEY:?" in env["LAKE_SECRET_KEY"], name
            used[name] = m.group(1).lower()
    assert not any(k.startswith("LAKE_") for k in env_of(svcs["dashboard"])), "the dashboard has no lake access"
    assert used["streaming"] == "stream" and used["producer"] == "producer" and used["load-test"] == "loadtest"
    assert {v for k, v in used.items() if k.startswith("airflow")} == {"airflow"}
    assert set(used.values()) == set(lake_services)


# ------------------------------------------------------------------------------------- (c) pins --
def _pinned(image: str) -> bool:
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest") and any(c.isdigit() for c in tag)


def test_every_image_is_pinned(compose):
    for name, svc in compose["services"].items():
        image = interpolate_defaults(svc.get("image", ""))
        assert image, f"service {name} has no image"
        assert _pinned(image), f"service {name}: image {image!r} is not pinned to a version"
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms
    for f in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f)
        assert _pinned(image), f"Dockerfile base {image!r} is not pinned"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", args["PYTHON_IMAGE"])


def test_versions_agree_across_native_and_compose(compose):
    s = Settings.model_fields
    svc = compose["services"]
    assert svc["kafka"]["image"] == f"apache/kafka:{s['kafka_version'].default}"
    assert svc["spark-master"]["image"] == svc["spark-worker"]["image"] == f"apache/spark:{s['spark_version'].default}"
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE.read_text(), re.M))
    assert args["SPARK_VERSION"] == s["spark_version"].default
    assert args["SPARK_AWSSDK_VERSION"] == s["spark_awssdk_version"].default
    assert args["HADOOP_VERSION"] == hadoop_version()   # hadoop-aws must match pyspark's Hadoop
    assert args["PYTHON_IMAGE"].startswith(f"python:{sys.version_info.major}.{sys.version_info.minor}.")


def test_image_installs_the_same_pins_as_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lock = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, ver = line.partition("==")
            assert sep, f"unpinned lock line {line!r}"
            lock[name.lower().replace("_", "-")] = ver
    for dep in deps:
        m = re.match(r"([A-Za-z0-9_.\-]+)\s*(==\s*([\w.]+))?", dep)
        name = m.group(1).lower().replace("_", "-")
        assert name in lock, f"{name} of pyproject.toml missing from {LOCK.name} (python -m ops.docker.lock)"
        if m.group(3):
            assert lock[name] == m.group(3), f"{name}: pyproject pins {m.group(3)}, lock has {lock[name]}"
    assert "psycopg2-binary" in lock  # Airflow's PostgreSQL metadata DB in compose


def test_dockerfile_runs_non_root_with_the_entrypoint():
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["python", "-m", "ops.entrypoint"]' in text
    assert "openjdk-17-jre" in text
    assert "requirements.lock" in text
    for pkg in ("core", "contracts", "ops", "etl", "chserver", "producers", "streaming", "ml", "dags", "clickhouse"):
        assert re.search(rf"^COPY .*\b{pkg} \./{pkg}$", text, re.M), f"{pkg}/ not copied into the image"
    assert ".env" in (REPO / ".dockerignore").read_text().split()


# ------------------------------------------------------------------------------ (d) healthchecks --
def test_long_running_services_have_healthchecks(compose):
    one_shot = one_shot_services(compose)
    ours = our_services(compose)
    for name, svc in compose["services"].items():
        if name in ours:
            role = entrypoint.ROLES[role_of(svc)]
            assert role.long_running == (name not in one_shot and "profiles" not in svc), name
        if name in one_shot or "profiles" in svc and name in ours:
            assert svc.get("restart", "no") == "no", f"one-shot service {name} must not restart"
            continue
        hc = svc.get("healthcheck")
        assert hc and hc.get("test") and not hc.get("disable"), f"long-running service {name} lacks a healthcheck"
        if name in ours:
            assert hc["test"][-2:] == ["healthcheck", role_of(svc)], name
    for svc in compose["services"].values():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in compose["services"]
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in compose["services"][dep], dep


def test_every_long_running_role_has_a_healthcheck_probe():
    long_running = {n for n, r in entrypoint.ROLES.items() if r.long_running}
    assert set(entrypoint.HEALTHCHECKS) == long_running
    for name in set(entrypoint.ROLES) - long_running:
        with pytest.raises(KeyError):
            entrypoint.healthcheck(name)


def test_healthcheck_probes_report_a_real_endpoint(monkeypatch):
    """The HTTP/TCP probes against a real local server: up -> True, closed port -> False."""
    import http.server
    import threading

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        assert entrypoint._http_ok(f"http://127.0.0.1:{port}/")
        assert entrypoint._tcp_ok(f"127.0.0.1:{port}")
    finally:
        srv.shutdown()
        srv.server_close()
    assert not entrypoint._http_ok(f"http://127.0.0.1:{port}/")
    assert not entrypoint._tcp_ok(f"127.0.0.1:{port}")
    r = subprocess.run([sys.executable, "-m", "ops.entrypoint", "healthcheck", "migrate"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "no healthcheck" in r.stderr


def test_named_volumes_and_resource_limits(compose):
    declared = set(compose["volumes"])
    for name, svc in compose["services"].items():
        limits = (svc.get("deploy") or {}).get("resources", {}).get("limits", {})
        assert limits.get("memory") and limits.get("cpus"), f"{name} has no resource limits"
        for v in svc.get("volumes", []):
            src = v.split(":", 1)[0]
            if not src.startswith((".", "/")):
                assert src in declared, f"{name}: volume {src} not declared"
    assert {"kafka-data", "clickhouse-data", "minio-data", "postgres-data", "spark-checkpoints"} <= declared


# ---------------------------------------------------------------------- (e)+(f) roles and commands --
def test_every_command_of_our_image_is_an_implemented_role(compose):
    used = set()
    for name, svc in our_services(compose).items():
        assert isinstance(svc["command"], list), f"{name}: use the exec (list) form"
        assert role_of(svc) in entrypoint.ROLES, f"{name}: unknown role {role_of(svc)!r}"
        used.add(role_of(svc))
    assert used == set(entrypoint.ROLES), f"roles without a service: {set(entrypoint.ROLES) - used}"


def test_dry_run_resolves_every_role():
    for role in entrypoint.ROLES:
        r = subprocess.run([sys.executable, "-m", "ops.entrypoint", "--dry-run", role],
                           capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["role"] == role and out["argv"][0] and out["required_env"] == entrypoint.required_env(role)
    r = subprocess.run([sys.executable, "-m", "ops.entrypoint", "no-such-role"], capture_output=True, text=True)
    assert r.returncode == 2 and "known roles" in r.stderr


def test_every_service_command_runs_natively_with_help(compose, tmp_path):
    """The exact compose command (interpolated with defaults) + --help exits 0: the module, the
    subcommand and every option exist in the native code."""
    def run(item):
        name, svc = item
        cmd = [interpolate_defaults(str(a)) for a in svc["command"]]
        env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
        env.pop("RETAIL_ENTRYPOINT_STRICT", None)
        r = subprocess.run([sys.executable, "-m", "ops.entrypoint", *cmd, "--help"], capture_output=True,
                           text=True, env=env, cwd=REPO, timeout=300)
        return name, cmd, r

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, our_services(compose).items()))
    failures = [f"{name}: {cmd} -> rc {r.returncode}\n{r.stderr[-800:]}" for name, cmd, r in results
                if r.returncode != 0]
    assert not failures, "\n".join(failures)
    for name, cmd, r in results:
        assert r.stdout.strip(), f"{name}: --help printed nothing"


def test_stream_healthcheck_follows_the_job_heartbeat(tmp_path, monkeypatch):
    """The `stream` role's healthcheck (and the native supervisor's) reads the job's heartbeat file: missing or
    older than STREAM_HEARTBEAT_MAX_AGE_S is unhealthy (the job runs without a Spark UI to probe)."""
    import os
    import time

    from core.settings import get_settings

    monkeypatch.setenv("RETAIL_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("STREAM_HEARTBEAT_MAX_AGE_S", "30")
    get_settings.cache_clear()
    try:
        assert entrypoint.healthcheck("stream") is False          # never started
        beat = tmp_path / "streaming.heartbeat"
        beat.touch()
        assert entrypoint.healthcheck("stream") is True
        old = time.time() - 31
        os.utime(beat, (old, old))
        assert entrypoint.healthcheck("stream") is False          # queries stopped beating
    finally:
        get_settings.cache_clear()


def test_compose_has_no_unused_airflow_connection_or_stream_ui_port(compose):
    text = (REPO / "docker-compose.yml").read_text()
    assert "AIRFLOW_CONN_CLICKHOUSE_DEFAULT" not in text and "AIRFLOW_CONN_MINIO_DEFAULT" not in text
    assert "4040" not in text
    # MinIO is built at the native stack's version, not pulled as an archived release
    from core.settings import Settings

    assert Settings.model_fields["minio_version"].default in compose["services"]["minio"]["image"]
    assert compose["services"]["minio"]["build"]["args"]["MINIO_VERSION"].endswith(Settings.model_fields["minio_version"].default + "}")


# Which code each role runs: its entry modules and the packages whose modules it may import (other ops modules
# are native-stack tooling a container role never calls). The dashboard's __main__ starts Streamlit on app.py by
# file path (no import), so app.py is an entry of its own: scanned from __main__ alone, pages.py's LEAD_TIME_DAYS
# was never seen and the role showed the default lead time (review of c9001c9).
_ROLE_CODE = {
    "producer": (("producers.cli",), ("producers", "contracts", "core")),
    "stream": (("streaming.job",), ("streaming", "contracts", "core")),
    "load-test": (("ops.bench_stream",), ("streaming", "producers", "contracts", "core")),
    "dashboard": (("dashboard.__main__", "dashboard.app"), ("dashboard", "core")),
}


def _module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for cand in (base / "__init__.py", base.with_suffix(".py")):
        if cand.exists():
            return cand
    return None


def _settings_read_by(entry: str, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Settings fields read as attributes (``s.lead_time_days``) anywhere in ``entry``'s import closure
    within ``packages``: {field: {module, ...}}. Static (ast), so it over-approximates a role's needs."""
    import ast

    fields = set(Settings.model_fields)
    seen: set[str] = set()
    todo = [entry]
    out: dict[str, set[str]] = {}
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        path = _module_file(mod)
        if path is None:
            continue
        seen.add(mod)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] in packages]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] in packages:
                todo += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Attribute) and node.attr in fields and mod != "core.settings":
                out.setdefault(node.attr, set()).add(mod)   # (the settings' own cross-field validators aside)
    assert entry in seen, f"entry module {entry} not found"
    return out


@pytest.mark.parametrize("role", sorted(_ROLE_CODE))
def test_each_role_receives_every_setting_its_code_reads(role):
    """A setting read by a role's code but not passed to its container silently takes the native default
    (e.g. LEAD_TIME_DAYS set in .env changed the nightly plan but not the stream's restock alerts)."""
    entries, packages = _ROLE_CODE[role]
    read: dict[str, set[str]] = {}
    for entry in entries:
        for field, mods in _settings_read_by(entry, packages).items():
            read.setdefault(field, set()).update(mods)
    assert read, f"no settings read by {entries}: the scan found nothing"
    passed = set(entrypoint.required_env(role))
    missing = {f: sorted(m) for f, m in read.items()
               if f.upper() not in passed and f not in entrypoint.NATIVE_ONLY}
    assert not missing, f"role {role} reads settings its containers do not receive: {missing}"


def test_cross_checked_settings_are_declared_and_travel_together(compose):
    """core.settings.CROSS_CHECKS lists exactly the settings each raising model validator compares, and a role that
    receives one of a set receives the others (a container with CLICKHOUSE_STREAM_RETENTION_DAYS=5 but no
    KAFKA_RETENTION_MS checked it against the 7-day default and refused a valid configuration)."""
    import ast

    from core.settings import CROSS_CHECKS

    fields = set(Settings.model_fields)
    tree = ast.parse((REPO / "core" / "settings.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    found = set()
    for fn in cls.body:
        if isinstance(fn, ast.FunctionDef) and fn.name.startswith("_check") \
                and any("model_validator" in ast.unparse(d) for d in fn.decorator_list):   # (not _derive: defaults)
            used = frozenset(n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute) and n.attr in fields
                             and isinstance(n.value, ast.Name) and n.value.id == "self")
            if len(used) > 1:
                found.add(used)
    assert found == set(CROSS_CHECKS)
    for name, svc in our_services(compose).items():
        env = env_of(svc)
        for check in CROSS_CHECKS:
            given = {f for f in check if f.upper() in env}
            assert not given or given == {f for f in check if f not in entrypoint.NATIVE_ONLY}, (name, sorted(check))

"""Operations of the native stack (ops.local, ops.services, ops.airflow, Makefile): what each target starts, where
services listen, the supervised programs' environment, leftovers after a crash, the MinIO credentials."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pytest

from ops.install import StackError
from ops.local import platform_up

REPO = Path(__file__).resolve().parent.parent


def _make_recipes() -> dict[str, tuple[list[str], list[str]]]:
    """{target: (prerequisites, recipe lines)} of the Makefile."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    target = None
    for line in (REPO / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+):(?!=)\s*([^#]*)", line)
        if m:
            target = m.group(1)
            out[target] = (m.group(2).split(), [])
        elif line.startswith("\t") and target:
            out[target][1].append(line.strip())
        elif line.strip() and not line.startswith("#"):
            target = None
    return out


def _started_services(target: str, recipes=None, seen=None) -> set[str]:
    """Services an ``ops.cli up`` in ``target``'s recipe or its prerequisites' recipes starts."""
    recipes = recipes or _make_recipes()
    seen = set() if seen is None else seen
    if target in seen or target not in recipes:
        return set()
    seen.add(target)
    deps, lines = recipes[target]
    out = set().union(*[_started_services(d, recipes, seen) for d in deps]) if deps else set()
    for line in lines:
        m = re.search(r"-m ops\.cli up (.*)", line)
        if m:
            out |= set(m.group(1).split())
    return out


def test_make_produce_starts_kafka_and_minio():
    # the synthetic producer writes the reference data (products, stores) to the lake: MinIO must run
    started = _started_services("produce")
    assert {"kafka", "minio"} <= started, started


def test_native_airflow_listens_where_the_settings_say(tmp_path):
    from conftest import settings_env
    from ops import airflow, local

    with settings_env(RETAIL_STATE_DIR=str(tmp_path), AIRFLOW_WORKER_LOG_PORT="20793",
                      AIRFLOW_TRIGGER_LOG_PORT="20794") as s:
        assert s.airflow_host == "127.0.0.1"   # loopback by default, as every native service
        env = airflow.airflow_env(s, tmp_path / "airflow", 20080)
        assert env["AIRFLOW__API__HOST"] == "127.0.0.1" and env["AIRFLOW__API__PORT"] == "20080"
        assert env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == "20793"
        assert env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] == "20794"
        # `down` waits for every one of them to be free
        assert {p for _, p in local._ports("airflow", s)} == {s.airflow_port, 20793, 20794}


def test_supervisor_config_carries_each_setting_quoted(tmp_path):
    from supervisor.options import ServerOptions

    from conftest import settings_env
    from ops import local

    with settings_env(RETAIL_STATE_DIR=str(tmp_path), WEATHER_FILE="/data/a b,c%d=e'f#g;h (1).csv",
                      ETL_SCHEDULE="0 8 * * *") as s:
        path = local.write_conf(s)
        assert path.stat().st_mode & 0o077 == 0   # the environment holds the generated credentials
        opts = ServerOptions()
        opts.configfile = str(path)
        opts.process_config(do_usage=False)
        want = local.program_env(s)
        assert want["WEATHER_FILE"] == "/data/a b,c%d=e'f#g;h (1).csv" and want["PREDICTIONS_SCHEDULE"] == ""
        assert want["DASHBOARD_PORT"] == str(s.dashboard_port)
        for group in opts.process_group_configs:
            assert group.process_configs[0].environment == want, group.name
        with settings_env(WEATHER_FILE='/data/"quoted".csv') as quoted:   # supervisord cannot carry it: said, not garbled
            with pytest.raises(StackError, match="WEATHER_FILE"):
                local.write_conf(quoted)


def _listening(port: int) -> bool:
    from ops.services import port_open

    return port_open("localhost", port) or port_open("127.0.0.1", port)


@pytest.mark.integration
def test_up_runs_programs_with_the_settings_of_that_up(tmp_path):
    """The settings of each `up` reach the supervised program: after a stop, and while it runs (restarted);
    an `up` with the same settings leaves it alone."""
    from conftest import settings_env
    from ops import local
    from ops.services import free_port

    with platform_up(tmp_path / "state", ["minio"]) as s:
        last = s   # the settings of the last `up`: `down` waits for its ports
        try:
            first = s.minio_console_port
            assert _listening(first)
            local.rpc(s).supervisor.stopProcess("minio", True)            # as `supervisorctl stop minio`
            with settings_env(MINIO_CONSOLE_PORT=str(second := free_port())) as last:
                local.up(last, ["minio"])
                assert _listening(second) and not _listening(first), (first, second)
                pid = local.status(last)["minio"]["pid"]
            with settings_env(MINIO_CONSOLE_PORT=str(third := free_port())) as last:   # changed while it runs
                local.up(last, ["minio"])
                assert _listening(third) and not _listening(second)
                assert local.status(last)["minio"]["pid"] != pid
                pid = local.status(last)["minio"]["pid"]
                local.up(last, ["minio"])                                   # same settings: left alone
                assert local.status(last)["minio"]["pid"] == pid
        finally:
            local.down(last)


def _cmdline(pid: int) -> bytes:
    """``/proc/<pid>/cmdline``; empty when the process has ended."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _state_pids(state: Path) -> list[int]:
    """Live processes whose environment or command line names the state folder (supervisord and its programs)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except (OSError, IndexError):
            continue
        if str(state).encode() in blob:
            out.append(int(proc.name))
    return out


def _all_ports(s) -> list[tuple[str, int]]:
    from ops import local
    from ops.services import SERVICES

    return [p for name in SERVICES for p in local._ports(name, s)]


@pytest.mark.integration
def test_down_after_supervisord_was_killed_leaves_nothing(tmp_path):
    import signal
    import time

    from ops import local
    from ops.services import port_open

    state = tmp_path / "state"
    with platform_up(state, ["minio", "clickhouse"]) as s:
        try:
            os.kill(int((state / "supervisord.pid").read_text()), signal.SIGKILL)
            time.sleep(1)
            local.down(s, timeout=60)
            deadline = time.time() + 15
            while _state_pids(state) and time.time() < deadline:
                time.sleep(0.5)
            assert _state_pids(state) == []
            assert [p for p in _all_ports(s) if port_open(*p)] == []
            local.up(s, ["minio", "clickhouse"])   # a clean start again
            assert all(r["healthy"] for n, r in local.status(s).items() if n in ("minio", "clickhouse"))
        finally:
            local.down(s)
        assert _state_pids(state) == []


@pytest.mark.integration
def test_a_program_that_fails_to_start_keeps_being_retried(tmp_path):
    """Every supervised program is retried without end, as compose's ``restart: unless-stopped``: MinIO with its
    port held by another process fails start after start and comes back once the port is free (with
    supervisord's default startretries=3 it was FATAL after its 4th failed start, 16.8 s in, and stayed FATAL)."""
    import configparser
    import socket

    from ops import local
    from ops.services import SERVICES, wait_until

    state = tmp_path / "state"
    with platform_up(state, ["minio"]) as s:
        conf = configparser.ConfigParser(interpolation=None)
        conf.read(local.write_conf(s))
        assert {n: int(conf[f"program:{n}"]["startretries"]) for n in SERVICES} == dict.fromkeys(SERVICES, 1000)
        holder = socket.socket()
        try:
            proxy = local.rpc(s)
            proxy.supervisor.stopProcess("minio", True)
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.bind(("localhost", s.minio_port))
            holder.listen()
            log = state / "logs" / "supervisord.log"
            before = log.read_text().count("exited: minio")
            proxy.supervisor.startProcess("minio", False)

            def failed_starts() -> int:
                return log.read_text().count("exited: minio") - before

            # 6 failed starts (supervisord gave up after 4), or FATAL: whichever comes first
            wait_until(lambda: failed_starts() >= 6 or proxy.supervisor.getProcessInfo("minio")["statename"] == "FATAL",
                       120, "six failed starts of minio")
            assert proxy.supervisor.getProcessInfo("minio")["statename"] != "FATAL", log.read_text()[-1500:]
            assert "gave up: minio" not in log.read_text()
            holder.close()
            wait_until(lambda: proxy.supervisor.getProcessInfo("minio")["statename"] == "RUNNING"
                       and local.healthy("minio", s), 120, "minio back once its port is free")
        finally:
            holder.close()
            local.down(s)


def test_a_missing_setting_fails_up_before_any_program_starts(tmp_path):
    """With programs retried without end, a setting a service needs is checked before it starts: ConfigError naming
    the variable, and no supervisord started."""
    from conftest import platform_settings
    from core.settings import ConfigError
    from ops import local

    with platform_settings(tmp_path / "state") as base:   # free ports: a regression starts nothing shared
        s = base.model_copy(update={"clickhouse_bi_password": None})
        try:
            with pytest.raises(ConfigError, match="CLICKHOUSE_BI_PASSWORD"):
                local.start("dashboard", s)
            assert not local.supervisord_running(s) and not (tmp_path / "state" / "supervisord.conf").exists()
            # the stream and Airflow on an S3 lake without its keys: refused before their dependencies start
            assert base.lake_is_s3
            for name in ("streaming", "airflow"):
                with pytest.raises(ConfigError, match="LAKE_ACCESS_KEY"):
                    local.start(name, base.model_copy(update={"lake_access_key": None}))
            assert not local.supervisord_running(s) and not (tmp_path / "state" / "supervisord.conf").exists()
        finally:
            local.down(s)


@pytest.mark.integration
def test_make_clean_stops_and_removes_the_configured_state_folder(tmp_path):
    """``make clean`` with RETAIL_STATE_DIR elsewhere: the services of that folder stop and that folder goes; the
    Makefile's default (``$(CACHE)/state``) is not touched (it removed the default and kept the configured one)."""
    import subprocess
    import sys

    from ops import local
    from ops.services import port_open

    cache, state = tmp_path / "cache", tmp_path / "elsewhere"
    (cache / "state").mkdir(parents=True)
    (cache / "state" / "keep.txt").write_text("not the configured state")
    with platform_up(state, ["minio"]) as s:
        try:
            assert (state / "minio").is_dir() and _state_pids(state)
            # CACHE: a decoy default state folder; PY: this venv (the Makefile derives it from CACHE)
            r = subprocess.run(["make", "--no-print-directory", "clean", f"CACHE={cache}", f"PY={sys.executable}"],
                               cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stdout + r.stderr
            assert not state.exists(), sorted(p.name for p in state.iterdir())
            assert (cache / "state" / "keep.txt").read_text() == "not the configured state"
            assert _state_pids(state) == []
            assert [p for p in _all_ports(s) if port_open(*p)] == []
        finally:
            local.down(s)


@pytest.mark.integration
def test_airflow_parent_killed_restarts_without_leftovers(tmp_path):
    import signal
    import time

    from ops import local
    from ops.services import _group_session, port_open, wait_until

    def session_procs(sid):   # Airflow's setproctitle hides the state folder: supervisord's session tells
        return [p for p in (int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit())
                if (_group_session(p) or (0, 0))[1] == sid]

    def schedulers(sid):
        out = []
        for p in session_procs(sid):
            try:
                if b"scheduler" in Path(f"/proc/{p}/cmdline").read_bytes():
                    out.append(p)
            except OSError:
                pass
        return out

    state = tmp_path / "state"
    with platform_up(state, ["airflow"]) as s:
        sid = None
        try:
            sid = os.getsid(int((state / "supervisord.pid").read_text()))
            old = local.status(s)["airflow"]["pid"]
            old_group = [p for p in session_procs(sid) if _group_session(p)[0] == old and p != old]
            assert old_group and len(schedulers(sid)) == 1, "airflow standalone should have started its components"
            os.kill(old, signal.SIGKILL)
            deadline = time.time() + 400
            while time.time() < deadline:
                row = local.status(s)["airflow"]
                left = [p for p in old_group if (_group_session(p) or (0,))[0] == old]   # the old components
                if row["pid"] not in (None, old) and row["healthy"] and not left:
                    break
                time.sleep(2)
            assert row["pid"] != old and row["healthy"] and not left, (row, left)
            seen = []   # no second scheduler appears in the next 10 s (a restart racing the old group's)
            for _ in range(10):
                seen.append(len(schedulers(sid)))
                time.sleep(1)
            assert set(seen) == {1}, seen
            wait_until(lambda: local.status(s)["airflow"]["healthy"], 120, "airflow healthy again")
        finally:
            local.down(s)
        assert sid and session_procs(sid) == []
        assert [p for p in _all_ports(s) if port_open(*p)] == []


def _compose_dotenv(folder: Path) -> None:
    """Compose's .env in ``folder`` (as `cp .env.example .env`)."""
    (folder / ".env").write_text((REPO / ".env.example").read_text())


def test_native_minio_root_is_the_lake_keys_whatever_dotenv_says(monkeypatch, tmp_path):
    from conftest import settings_env
    from core.settings import get_settings
    from ops import services
    from ops.install import ensure_local_env

    ensure_local_env(get_settings())   # local.env with the lake keys (kept when present)
    _compose_dotenv(tmp_path)
    monkeypatch.chdir(tmp_path)
    with settings_env(RETAIL_STATE_DIR=str(tmp_path / "state"), MINIO_ROOT_USER=None, MINIO_ROOT_PASSWORD=None,
                      LAKE_ACCESS_KEY=None, LAKE_SECRET_KEY=None) as s:
        assert s.minio_root_user == "change-me-minio-admin" != s.lake_access_key   # the mix .env causes
        _, env = services.argv_env("minio", s)
        assert (env["MINIO_ROOT_USER"], env["MINIO_ROOT_PASSWORD"]) == (s.lake_access_key, s.lake_secret_key)


@pytest.mark.integration
def test_native_minio_up_next_to_compose_dotenv(monkeypatch, tmp_path):
    from ops import local

    _compose_dotenv(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO))   # the programs run in this folder (supervisord's directory)
    for k in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "LAKE_ACCESS_KEY", "LAKE_SECRET_KEY"):
        monkeypatch.delenv(k, raising=False)
    # up creates the buckets with the lake keys: ACCESS_DENIED when MinIO's root differs
    with platform_up(tmp_path / "state", ["minio"]) as s:
        try:
            from core.lake import Lake
            assert Lake(s).list_files(s.lake_raw_bucket) == []
        finally:
            local.down(s)


def test_clean_refuses_a_state_folder_holding_what_the_platform_did_not_create(tmp_path):
    """RETAIL_STATE_DIR pointed at a shared folder: ``ops.cli clean`` exits 1 naming the foreign entries and deletes
    nothing (it removed the whole folder); a folder of platform entries only is removed."""
    import subprocess
    import sys

    from conftest import platform_settings   # free ports: a stack running on the defaults is not ours

    shared = tmp_path / "home"
    (shared / "logs").mkdir(parents=True)
    (shared / "thesis.tex").write_text("years of work")
    with platform_settings(shared):
        r = subprocess.run([sys.executable, "-m", "ops.cli", "clean"], cwd=REPO, env=os.environ.copy(),
                           capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "thesis.tex" in r.stderr and "RETAIL_STATE_DIR" in r.stderr
    assert (shared / "thesis.tex").read_text() == "years of work" and (shared / "logs").is_dir()

    own = tmp_path / "state"
    for name in ("logs", "run", "chdb"):
        (own / name).mkdir(parents=True)
    (own / "supervisord.conf").write_text("")
    with platform_settings(own):
        r = subprocess.run([sys.executable, "-m", "ops.cli", "clean"], cwd=REPO, env=os.environ.copy(),
                           capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not own.exists()


def _listener(port: int, **env: str):
    """A real HTTP server on 127.0.0.1:``port`` in a process of its own (a program that is not the platform's
    unless ``env`` says RETAIL_STATE_DIR=<its folder>); the caller kills it."""
    import subprocess
    import sys

    from ops.services import port_open, wait_until

    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_until(lambda: port_open("127.0.0.1", port), 30, f"listener on {port}")
    return proc


@pytest.mark.integration
def test_clean_deletes_the_state_when_only_a_foreign_program_holds_a_configured_port(tmp_path):
    """A program that is not the platform's (here an HTTP server; e.g. a compose stack on the same host ports) on
    DASHBOARD_PORT: ``ops.cli clean`` stops the platform's MinIO, names the port, pid and program on stderr, deletes
    the state folder and leaves the foreign program alone; ``ops.cli down`` exits 1 naming it. ``clean`` waited
    90 s for the port and exited 1 with nothing deleted (measured: 91.8 s)."""
    import subprocess
    import sys

    from ops import local
    from ops.services import free_port, port_open

    port, state = free_port(), tmp_path / "state"
    foreign = _listener(port)
    try:
        with platform_up(state, ["minio"], DASHBOARD_PORT=str(port)) as s:
            try:
                r = subprocess.run([sys.executable, "-m", "ops.cli", "down"], cwd=REPO, env=os.environ.copy(),
                                   capture_output=True, text=True, timeout=300)
                assert r.returncode == 1, r.stdout + r.stderr
                assert f"port {port}: pid {foreign.pid} (" in r.stderr and "http.server" in r.stderr, r.stderr
                local.up(s, ["minio"])
                assert _state_pids(state)
                r = subprocess.run([sys.executable, "-m", "ops.cli", "clean"], cwd=REPO, env=os.environ.copy(),
                                   capture_output=True, text=True, timeout=300)
                assert r.returncode == 0, r.stdout + r.stderr
                assert f"port {port}: pid {foreign.pid} (" in r.stderr, r.stderr
                assert not state.exists()
                assert _state_pids(state) == []
                assert [p for p in _all_ports(s) if port_open(*p)] == [("127.0.0.1", port)]
                assert foreign.poll() is None   # not ours: left running
            finally:
                with contextlib.suppress(StackError):
                    local.down(s)
    finally:
        foreign.kill()
        foreign.wait()


def test_port_holders_tell_the_platforms_programs_from_foreign_ones(tmp_path):
    """A listener whose environment names this state folder (RETAIL_STATE_DIR) is the platform's; one without is
    foreign; a port nothing listens on is not listed."""
    from conftest import platform_settings
    from ops import local
    from ops.services import free_port

    ours_port, foreign_port, state = free_port(), free_port(), tmp_path / "state"
    with platform_settings(state, DASHBOARD_PORT=str(ours_port), AIRFLOW_PORT=str(foreign_port)) as s:
        ours = _listener(ours_port, RETAIL_STATE_DIR=str(state))
        foreign = _listener(foreign_port, RETAIL_STATE_DIR=str(tmp_path / "another-platform"))
        try:
            held = local.port_holders(s)
            assert held == {ours_port: [{"pid": ours.pid, "program": held[ours_port][0]["program"], "ours": True}],
                            foreign_port: [{"pid": foreign.pid, "program": held[foreign_port][0]["program"],
                                            "ours": False}]}
            assert "http.server" in held[foreign_port][0]["program"]
        finally:
            for p in (ours, foreign):
                p.kill()
                p.wait()


@pytest.mark.parametrize("where", ["under a file", "read-only /proc"])
def test_an_unusable_state_folder_fails_up_and_down_naming_the_setting(tmp_path, where):
    """RETAIL_STATE_DIR where no folder can be made: ``ops.cli up`` / ``down`` exit 1 with one line naming
    RETAIL_STATE_DIR, the path and the cause (they ended in a FileNotFoundError / NotADirectoryError traceback that
    named neither)."""
    import subprocess
    import sys
    import uuid

    from conftest import settings_env

    if where == "under a file":
        (tmp_path / "a-file").write_text("not a folder")
        state = tmp_path / "a-file" / "state"
    else:
        state = Path(f"/proc/retail-state-{uuid.uuid4().hex[:8]}")
    with settings_env(RETAIL_STATE_DIR=str(state)):
        for cmd in (["up", "clickhouse"], ["down"]):
            r = subprocess.run([sys.executable, "-m", "ops.cli", *cmd], cwd=REPO, env=os.environ.copy(),
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 1, r.stdout + r.stderr
            assert "Traceback" not in r.stderr, r.stderr
            assert f"RETAIL_STATE_DIR={state}: cannot create" in r.stderr, r.stderr
    assert not state.exists()


@pytest.mark.integration
def test_concurrent_ups_start_one_supervisord(tmp_path):
    """Four ``ops.cli up clickhouse`` of one state folder at once (``make local-up`` twice): every one succeeds and
    one supervisord is started (its log says so once); the endpoint answers. Each ``up`` checked for a running
    supervisord and started its own when none answered yet: a second failed ("Another program is already
    listening on a port", 1 of 3 tries with two)."""
    import subprocess
    import sys

    from conftest import platform_settings
    from ops import local
    from ops.services import clickhouse_healthy

    state = tmp_path / "state"
    with platform_settings(state) as s:
        try:
            procs = [subprocess.Popen([sys.executable, "-m", "ops.cli", "up", "clickhouse"], cwd=REPO,
                                      env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(4)]
            results = [(p.wait(300), p.communicate()[1]) for p in procs]
            assert [rc for rc, _ in results] == [0, 0, 0, 0], [err[-800:] for _, err in results]
            log = (state / "logs" / "supervisord.log").read_text()
            assert log.count("supervisord started with pid") == 1, log
            assert clickhouse_healthy(s)
            assert len([p for p in _state_pids(state) if "supervisord" in Path(f"/proc/{p}/cmdline").read_text()]) == 1
        finally:
            local.down(s)
        assert _state_pids(state) == []


def test_a_program_under_a_sibling_state_folder_is_not_ours(tmp_path):
    """A listener whose command line names ``<state>2/...`` (another stack's sibling folder) is not the platform of
    ``<state>``; one whose argument ``--directory=<state>/logs`` lies inside it is. Before, a substring test on the
    command line counted the sibling as ours (``down`` then waited 90 s for it and ``clean`` deleted nothing)."""
    import subprocess
    import sys

    from conftest import platform_settings
    from ops import local
    from ops.services import free_port, port_open, wait_until

    state, sibling = tmp_path / "state", tmp_path / "state2"
    (sibling / "www").mkdir(parents=True)
    (state / "logs").mkdir(parents=True)
    ours_port, sibling_port = free_port(), free_port()
    with platform_settings(state, DASHBOARD_PORT=str(ours_port), AIRFLOW_PORT=str(sibling_port)) as s:
        env = {**os.environ, "RETAIL_STATE_DIR": str(sibling)}   # neither names ``state`` in its environment
        procs = [subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", arg, str(port)],
                                  env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
                 for arg, port in ((f"--directory={state / 'logs'}", ours_port),
                                   (f"--directory={sibling / 'www'}", sibling_port))]
        try:
            for port in (ours_port, sibling_port):
                wait_until(lambda: port_open("127.0.0.1", port), 30, f"listener on {port}")
            held = local.port_holders(s)
            assert {port: [(h["pid"], h["ours"]) for h in hs] for port, hs in held.items()} == {
                ours_port: [(procs[0].pid, True)], sibling_port: [(procs[1].pid, False)]}, held
        finally:
            for p in procs:
                p.kill()
                p.wait()


def _flock_waiters() -> set[int]:
    """Pids blocked on a ``flock`` (``->`` entries of /proc/locks)."""
    out = set()
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[1] == "->" and parts[2] == "FLOCK":
            out.add(int(parts[5]))
    return out


@pytest.mark.integration
def test_an_up_waiting_for_clean_starts_in_a_new_folder(tmp_path, monkeypatch):
    """An ``ops.cli up clickhouse`` started while ``clean`` stops the platform and before it deletes the folder
    (``make local-up`` racing ``make clean``): the ``up`` waits until the folder is gone, then starts supervisord
    in a new folder (its config, pid file and lock there; the endpoint answers). ``clean`` released the folder's
    lock between the stop and the deletion: the ``up`` started supervisord in the folder deleted next (its
    supervisord.pid and supervisord.conf gone, or the deletion failed on files being written). Two such ``up``s:
    the first to get the lock starts the one supervisord, the other finds it running (one supervisord, both exit
    0)."""
    import shutil
    import signal
    import subprocess
    import sys

    from conftest import platform_settings
    from ops import local
    from ops.services import clickhouse_healthy, wait_until

    state = tmp_path / "state"
    (state / "logs").mkdir(parents=True)
    real_rmtree, ups = shutil.rmtree, []

    def rmtree_while_an_up_starts(path, *a, **k):
        if Path(path) == state:   # clean's deletion: two ups arrive now, and wait for the lock or start
            for _ in range(2):
                up = subprocess.Popen([sys.executable, "-m", "ops.cli", "up", "clickhouse"], cwd=REPO,
                                      env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                ups.append(up)
                wait_until(lambda up=up: up.poll() is not None or up.pid in _flock_waiters()
                           or (state / "supervisord.pid").exists(), 300, "the racing up to wait or start")
        real_rmtree(path, *a, **k)

    with platform_settings(state) as s:
        try:
            monkeypatch.setattr(shutil, "rmtree", rmtree_while_an_up_starts)
            assert local.clean(s) == state
            monkeypatch.undo()
            assert len(ups) == 2
            for up in ups:
                rc, err = up.wait(300), up.communicate()[1]
                assert rc == 0, err[-800:]
            pid = int((state / "supervisord.pid").read_text())
            assert "supervisord" in Path(f"/proc/{pid}/cmdline").read_text()
            supervisords = [p for p in _state_pids(state) if b"supervisord" in _cmdline(p)]
            assert supervisords == [pid], supervisords
            assert (state / "supervisord.conf").is_file() and (state / "supervisord.lock").is_file()
            assert clickhouse_healthy(s)
        finally:
            monkeypatch.undo()
            with contextlib.suppress(StackError):
                local.down(s)
            for pid in _state_pids(state):   # what a supervisord in a deleted folder left (the old code)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert _state_pids(state) == []


def test_free_port_gives_no_ephemeral_port_and_none_reserved_by_another_process():
    """free_port() picks below the kernel's ephemeral range, which the kernel hands to any process's bind(0) or
    outgoing connection (a Spark JVM's driver and Py4J ports), and reserves each pick machine-wide until its
    process ends: 50 picks of a live child process and 50 of this one are disjoint, the child's cannot be reserved
    here while it lives and can once it ended. It returned a bind(0) port: 200 of 200 picks lay in the ephemeral
    range, and 24 of 200 were handed to another process holding 2,000 bind(0) sockets."""
    import socket
    import subprocess
    import sys

    from ops import services as svc

    lo, hi = svc.ephemeral_ports()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom ops.services import free_port\n"
                               "print(*(free_port() for _ in range(50)), flush=True)\nsys.stdin.read()"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    mine: list[int] = []
    try:
        theirs = [int(p) for p in child.stdout.readline().split()]
        mine = [svc.free_port() for _ in range(50)]
        assert len(set(theirs)) == len(set(mine)) == 50 and not set(theirs) & set(mine), (theirs, mine)
        assert [p for p in theirs + mine if lo <= p <= hi] == [], (lo, hi)
        assert [p for p in theirs if svc._reserve(p)] == []   # held by the live child
    finally:
        child.stdin.close()
        child.wait(60)
    try:
        assert [p for p in theirs if not svc._reserve(p)] == []   # released when the child ended
    finally:
        for p in theirs + mine:
            svc.release_port(p)
    with socket.socket(socket.AF_INET6) as v6:   # a listener on any one address makes a port unusable
        v6.bind(("::1", mine[0]))
        v6.listen()
        assert not svc._bindable(mine[0])
    with socket.socket() as v4:
        v4.bind(("127.0.0.1", mine[1]))
        v4.listen()
        assert not svc._bindable(mine[1]) and svc._bindable(mine[2])


def test_a_released_port_leaves_no_lock_file_and_a_stale_one_does_not_exclude_its_port(tmp_path, monkeypatch):
    """release_port() deletes the port's lock file (it kept one file per port ever picked: 1,875 in
    /tmp/retail-ports after a day of tests), and a file left by a process that ended without releasing
    (nobody holds its flock) is taken over, by this and by another process."""
    import subprocess
    import sys

    from ops import services as svc

    monkeypatch.setattr(svc, "RESERVATIONS", tmp_path / "ports")
    port = svc.free_port()
    try:
        assert (tmp_path / "ports" / f"{port}.lock").is_file()
        assert not svc._reserve(port)   # this process holds it already
    finally:
        svc.release_port(port)
    assert sorted(p.name for p in (tmp_path / "ports").iterdir()) == []
    (tmp_path / "ports" / f"{port}.lock").touch()   # a crashed holder's file: no flock on it
    code = ("import sys\nfrom pathlib import Path\nfrom ops import services as svc\n"
            f"svc.RESERVATIONS = Path({str(tmp_path / 'ports')!r})\n"
            f"print(svc._reserve({port}), flush=True)\nsys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "True"
        assert not svc._reserve(port)   # held by the live child
    finally:
        child.stdin.close()
        child.wait(60)
    try:
        assert svc._reserve(port)   # the child ended: its (kept) file is free again
    finally:
        svc.release_port(port)


def test_a_forked_child_releasing_an_inherited_port_leaves_the_parents_reservation(tmp_path, monkeypatch):
    """A child forked after a pick inherits the reservation table: its release_port deleted the parent's lock
    file, so a third process could reserve the port the parent still held. Now only the picking process deletes
    it: after the child's release the file is there and another process cannot take the port."""
    import subprocess
    import sys

    from ops import services as svc

    monkeypatch.setattr(svc, "RESERVATIONS", tmp_path / "ports")
    port = svc.free_port()
    try:
        pid = os.fork()
        if pid == 0:   # the child: release what it inherited, then leave at once
            try:
                svc.release_port(port)
            finally:
                os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        assert (tmp_path / "ports" / f"{port}.lock").is_file()
        code = ("from pathlib import Path\nfrom ops import services as svc\n"
                f"svc.RESERVATIONS = Path({str(tmp_path / 'ports')!r})\nprint(svc._reserve({port}))")
        other = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert other.stdout.strip() == "False", other.stdout + other.stderr
    finally:
        svc.release_port(port)
    assert not (tmp_path / "ports" / f"{port}.lock").exists()


def test_platform_settings_reserves_no_given_port_and_releases_its_picks_when_set_up_fails(tmp_path, monkeypatch):
    """A port setting given in ``extra`` gets no pick (one was picked and reserved, and never released, while the
    process lived), and a failing ensure_local_env restores the environment and releases the 9 picks (they leaked:
    the set-up ran before the try)."""
    from ops import local
    from ops import services as svc

    monkeypatch.setattr(svc, "RESERVATIONS", tmp_path / "ports")
    before, env_before = dict(svc._reserved), dict(os.environ)
    with local.platform_settings(tmp_path / "state", MINIO_PORT="29999") as s:
        assert s.minio_port == 29999
        assert 29999 not in svc._reserved
        assert len(set(svc._reserved) - set(before)) == len(local._PORT_SETTINGS) - 1
    assert svc._reserved == before

    def refuses(s):
        raise RuntimeError("MINIO_ROOT_PASSWORD is too short")

    monkeypatch.setattr(local, "ensure_local_env", refuses)
    with pytest.raises(RuntimeError, match="MINIO_ROOT_PASSWORD"):
        with local.platform_settings(tmp_path / "state"):
            pass
    assert svc._reserved == before
    assert dict(os.environ) == env_before
    assert sorted(p.name for p in (tmp_path / "ports").iterdir()) == []


@pytest.mark.integration
def test_up_names_a_foreign_program_on_a_services_port_at_once(tmp_path):
    """A port of the service held by a program that is not the platform's (here an HTTP server): ``up`` fails with
    the port, pid and program named as soon as the program failed to start (PortInUseError), not after the
    service's timeout with only its log (60 s for MinIO)."""
    from conftest import platform_settings
    from ops import local

    with platform_settings(tmp_path / "state") as s:
        foreign = _listener(s.minio_port, RETAIL_STATE_DIR=str(tmp_path / "another-platform"))   # not ours
        try:
            with pytest.raises(StackError, match="held by a program that is not the platform's") as err:
                local.up(s, ["minio"])
            assert f"port {s.minio_port}: pid {foreign.pid} (" in str(err.value) and "http.server" in str(err.value)
            assert [h["pid"] for h in err.value.holders[s.minio_port]] == [foreign.pid]
        finally:
            with contextlib.suppress(StackError):   # ForeignPortsError: the foreign program still holds the port
                local.down(s)
            foreign.kill()
            foreign.wait()


@pytest.mark.integration
def test_platform_up_starts_again_on_other_ports_when_a_port_was_taken(tmp_path, monkeypatch):
    """The race of free ports: a program that is not the platform's binds a picked port between the pick and the
    start (seen in the suite: a Spark JVM on a port picked for a test). ``platform_up`` reports it, naming port and
    pid, and starts the platform again on other ports; the service is healthy, the foreign program left alone. A
    test using ``platform_settings`` + ``up`` failed after MinIO's 60 s timeout."""
    from ops import local

    real_up, foreign, reports = local.up, [], []

    def up_after_a_foreign_program_took_a_port(s, services=None):
        if not foreign:   # the first start only
            foreign.append((s.minio_port, _listener(s.minio_port, RETAIL_STATE_DIR=str(tmp_path / "another"))))
        return real_up(s, services)

    monkeypatch.setattr(local, "up", up_after_a_foreign_program_took_a_port)
    try:
        with platform_up(tmp_path / "state", ["minio"], warn=reports.append) as s:
            try:
                taken, proc = foreign[0]
                assert s.minio_port != taken and local.healthy("minio", s)
                assert len(reports) == 1 and f"port {taken}: pid {proc.pid} (" in reports[0], reports
                assert proc.poll() is None   # not ours: left running
            finally:
                local.down(s)
        # nothing of the platform left (the foreign program's environment names the folder too: SPARK_CHECKPOINT_DIR)
        assert set(_state_pids(tmp_path / "state")) <= {proc.pid for _, proc in foreign}
    finally:
        for _, proc in foreign:
            proc.kill()
            proc.wait()

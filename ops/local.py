"""The native stack under a real process supervisor (supervisord, from PyPI), no Docker.

One supervisord per state folder (``$RETAIL_STATE_DIR/supervisord.conf``, socket ``supervisor.sock``) runs one
program per service, named as in ``docker-compose.yml`` (:data:`ops.services.SERVICES`): kafka, minio,
clickhouse, streaming, airflow, dashboard. Programs restart automatically (``autorestart``); each logs to
``$RETAIL_STATE_DIR/logs/<name>.log``. Programs do not autostart: :func:`up` starts them in dependency order
and waits for each one's health check (tenacity) before starting the next, applies the ClickHouse
migrations once ``clickhouse`` is healthy, creates the topics once ``kafka`` is, and the lake's buckets once
``minio`` is. :func:`down` stops every program (SIGTERM to its process group, SIGKILL after the program's
``stopwaitsecs``), shuts supervisord down, kills what is left of each program's recorded process group
(:func:`ops.services.kill_leftovers`: after a ``kill -9`` of supervisord or of Airflow's parent) and waits until every
configured port is free.

``supervisorctl -c $RETAIL_STATE_DIR/supervisord.conf status|restart <name>|tail -f <name>`` works too.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path

from core.settings import Settings, get_settings
from ops import services as svc
from ops.install import StackError, ensure_local_env

#: supervisord ``startretries`` of every program: in effect unbounded (the waits between retries grow by 1 s each:
#: the last of 1,000 comes ~17 min after the one before), as compose's ``restart: unless-stopped`` for each service.
#: The streaming job waits for ClickHouse, Kafka and the lake at start (:func:`streaming.job.wait_for_services`), so
#: an outage keeps it up, not failing. With supervisord's default of 3 a program that failed to stay up
#: ``startsecs`` 4 times in a row was FATAL for good: measured 2026-12-06, MinIO with its port held by another
#: process was FATAL 16.8 s in and still FATAL 60 s after the port was free (the stream: ~1 min into a ClickHouse
#: outage). A bad setting still fails ``up`` at once: :func:`ops.services.check_config` runs before a start.
START_RETRIES = 1000

#: seconds a program must stay up to count as started, and to wait after SIGTERM before SIGKILL
_PROGRAM = {
    "kafka": {"startsecs": 3, "stopwaitsecs": 20, "stopsignal": "TERM"},
    "minio": {"startsecs": 2, "stopwaitsecs": 10, "stopsignal": "TERM"},
    "clickhouse": {"startsecs": 2, "stopwaitsecs": 10, "stopsignal": "TERM"},
    # SIGTERM to the Python driver only: it stops the queries between micro-batches, then SparkSession.stop()
    # ends its JVM (signalling the group killed the JVM under the driver's feet: Py4J errors at stop)
    "streaming": {"startsecs": 15, "stopwaitsecs": 60, "stopsignal": "TERM", "stopasgroup": "false"},
    # SIGINT to the standalone parent only: it stops its components itself (signalling the whole group at once
    # left it waiting for them until SIGKILL); the group is SIGKILLed after stopwaitsecs
    "airflow": {"startsecs": 10, "stopwaitsecs": 30, "stopsignal": "INT", "stopasgroup": "false"},
    "dashboard": {"startsecs": 3, "stopwaitsecs": 10, "stopsignal": "TERM"},
}
_TIMEOUT = {"kafka": 90, "minio": 60, "clickhouse": 60, "streaming": 300, "airflow": 240, "dashboard": 60}


def conf_path(s: Settings) -> Path:
    """``$RETAIL_STATE_DIR/supervisord.conf``."""
    return svc.state_dir(s) / "supervisord.conf"


def socket_path(s: Settings) -> Path:
    """supervisord's unix socket (short path: unix sockets allow ~107 bytes)."""
    return svc.state_dir(s) / "supervisor.sock"


def program_env(s: Settings) -> dict[str, str]:
    """The environment every supervised program gets (supervisord ``environment=``): each setting as resolved by
    ``s`` (the caller of ``up``), an unset optional one as an empty value (which counts as unset). Without it the
    programs kept the environment of the ``up`` that started supervisord (a later ``DASHBOARD_PORT=18502 up
    dashboard`` waited on 18502 while the dashboard came back on 18501)."""
    return {name.upper(): "" if v is None else str(v) for name, v in s.model_dump().items()}


def _env_value(key: str, value: str) -> str:
    """``value`` quoted for supervisord's ``environment=`` (its parser: shlex without escapes, quotes stripped,
    ``%`` interpolation, `` ;``/`` #`` inline comments).

    Raises:
        StackError: supervisord cannot carry this value (names the variable).
    """
    bad = ('"' in value or "\n" in value or "\r" in value or value[:1] == "'" or value[-1:] == "'"
           or any(f"{ws}{c}" in value for ws in " \t" for c in ";#"))
    if bad:
        raise StackError(f"{key}: a value with a double quote, a line break, a leading/trailing single quote or "
                         f"' ;'/' #' cannot be passed to supervised programs: {value!r}")
    return '"' + value.replace("%", "%%") + '"'


def write_conf(s: Settings) -> Path:
    """Write supervisord's configuration for this state folder (mode 0600: the environment holds the generated
    credentials); returns its path. Each program gets :func:`program_env` of ``s``."""
    d = svc.state_dir(s)
    env = ",".join(f"{k}={_env_value(k, v)}" for k, v in sorted(program_env(s).items()))
    logs = d / "logs"
    py = sys.executable
    lines = [
        "[unix_http_server]", f"file={socket_path(s)}", "chmod=0700", "",
        "[supervisord]", f"logfile={logs / 'supervisord.log'}", f"pidfile={d / 'supervisord.pid'}",
        f"childlogdir={logs}", "logfile_maxbytes=10MB", "loglevel=info", f"directory={Path.cwd()}", "",
        "[rpcinterface:supervisor]", "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{socket_path(s)}", "",
    ]
    for name in svc.SERVICES:
        p = _PROGRAM[name]
        lines += [
            f"[program:{name}]", f"command={py} -m ops.services run {name}", "autostart=false", "autorestart=true",
            f"startsecs={p['startsecs']}", f"startretries={START_RETRIES}", f"stopsignal={p['stopsignal']}",
            f"stopwaitsecs={p['stopwaitsecs']}", f"stopasgroup={p.get('stopasgroup', 'true')}", "killasgroup=true", "redirect_stderr=true",
            f"stdout_logfile={logs / (name + '.log')}", "stdout_logfile_maxbytes=50MB", "stdout_logfile_backups=2",
            f"environment={env}", "",
        ]
    path = conf_path(s)
    text = "\n".join(lines)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".conf.tmp")
        tmp.touch(mode=0o600)
        tmp.chmod(0o600)
        tmp.write_text(text)
        tmp.replace(path)
    path.chmod(0o600)
    return path


def _sync_config(s: Settings) -> set[str]:
    """Write the configuration and, when supervisord runs, make it read it (``supervisorctl reread`` + ``update``
    over XML-RPC): new programs are added, changed ones that are not running get their new configuration. Returns
    the running programs whose configuration changed (still on the old one: :func:`start` replaces it when it
    starts them)."""
    write_conf(s)
    if not supervisord_running(s):
        return set()
    proxy = rpc(s)
    added, changed, removed = proxy.supervisor.reloadConfig()[0]
    for group in removed:
        _replace(s, group, add=False)
    for group in added:
        proxy.supervisor.addProcessGroup(group)
    stale = set()
    for group in changed:
        if _info(s, group)["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
            stale.add(group)
        else:
            _replace(s, group)
    return stale


def _replace(s: Settings, group: str, add: bool = True) -> None:
    """Stop a program, drop its configuration and load the one supervisord read last (``supervisorctl update``)."""
    proxy = rpc(s)
    with contextlib.suppress(xmlrpc.client.Fault):
        proxy.supervisor.stopProcessGroup(group, True)
    with contextlib.suppress(xmlrpc.client.Fault):
        proxy.supervisor.removeProcessGroup(group)
    if add:
        proxy.supervisor.addProcessGroup(group)


def rpc(s: Settings) -> xmlrpc.client.ServerProxy:
    """An XML-RPC proxy to this state folder's supervisord (``proxy.supervisor.*``)."""
    from supervisor.xmlrpc import SupervisorTransport

    return xmlrpc.client.ServerProxy("http://127.0.0.1",
                                     transport=SupervisorTransport(None, None, f"unix://{socket_path(s)}"))


def supervisord_running(s: Settings) -> bool:
    """True when this state folder's supervisord answers."""
    if not socket_path(s).exists():
        return False
    try:
        return rpc(s).supervisor.getState()["statename"] == "RUNNING"
    except (OSError, xmlrpc.client.Error):
        return False


def _wait(check, timeout: float, what: str, log: Path | None = None) -> None:
    try:
        svc.wait_until(check, timeout, what)
    except TimeoutError:
        tail = log.read_text(errors="replace")[-2500:] if log and log.exists() else ""
        raise StackError(f"{what} not ready within {timeout:.0f}s" + (f"; log {log}:\n{tail}" if log else "")) from None


def start_supervisord(s: Settings) -> None:
    """Start this state folder's supervisord (it daemonises) unless it runs; wait until it answers."""
    if supervisord_running(s):
        return
    socket_path(s).unlink(missing_ok=True)
    conf = write_conf(s)
    r = subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
                       capture_output=True, text=True, env=os.environ.copy())
    if r.returncode != 0:
        raise StackError(f"supervisord failed to start: {r.stderr[-2000:]}")
    _wait(lambda: supervisord_running(s), 20, "supervisord", svc.state_dir(s) / "logs" / "supervisord.log")


def _info(s: Settings, name: str) -> dict:
    return rpc(s).supervisor.getProcessInfo(name)


def healthy(name: str, s: Settings) -> bool:
    """A service's health: its check in :data:`ops.services.HEALTH`."""
    return svc.HEALTH[name](s)


def _after_start(name: str, s: Settings) -> None:
    """One-off set-up once a service is healthy (idempotent)."""
    if name == "clickhouse":
        from core.clickhouse import migrate

        migrate(s)
    elif name == "kafka":
        from core.kafka_admin import ensure_topics

        ensure_topics(s)
    elif name == "minio" and s.lake_is_s3:
        from core.lake import Lake

        Lake(s).ensure_buckets()


def start(name: str, s: Settings | None = None, done: set[str] | None = None,
          requested: set[str] | frozenset[str] | None = None) -> None:
    """Start one service under the supervisor (its dependencies first) and wait until it is healthy.

    A running program whose configuration (environment: the settings) differs from ``s``'s is restarted with the
    new one when it is requested, or when it is a dependency that is not healthy under ``s``; a healthy dependency
    is left alone.

    Args:
        done: services already brought up (and set up) by this caller; they are skipped, so :func:`up` starts and
            migrates each service once although several depend on it.
        requested: the services the caller asked for (default: ``{name}``); the others are dependencies.
    Raises:
        ConfigError: a setting the service needs is missing (named; :func:`ops.services.check_config`).
        StackError: it (or a dependency) did not become healthy in time; the message carries its log's tail.
    """
    s = s or get_settings()
    done = set() if done is None else done
    if name in done:
        return
    svc.check_config(name, s)   # a bad setting fails here, not as a program retrying without end
    requested = {name} if requested is None else requested
    for dep in svc.DEPENDS.get(name, ()):
        start(dep, s, done, requested)
    start_supervisord(s)
    if name in _sync_config(s) and (name in requested or not healthy(name, s)):
        _replace(s, name)   # running with another environment: restart it with this one
    if _info(s, name)["statename"] not in ("RUNNING", "STARTING"):
        # leftovers of an earlier start (supervisord killed): they would answer the health check in its place
        svc.kill_leftovers(name, s)
        try:
            rpc(s).supervisor.startProcess(name, False)
        except xmlrpc.client.Fault as exc:
            if "ALREADY_STARTED" not in exc.faultString:
                raise StackError(f"supervisor could not start {name}: {exc.faultString}") from None
    log = svc.state_dir(s) / "logs" / f"{name}.log"

    def ok() -> bool:
        state = _info(s, name)["statename"]
        if state in ("FATAL", "EXITED", "BACKOFF") and not healthy(name, s):
            taken = _foreign_holders(name, s)
            if taken:   # it cannot bind its port: waiting on it would only wait out the timeout
                raise PortInUseError(
                    f"{name} cannot start: its port is held by a program that is not the platform's: "
                    f"{_describe(taken)}; stop it or configure another port", taken)
            if state == "FATAL":
                raise StackError(f"{name} failed to start (supervisor state FATAL); log {log}:\n"
                                 + (log.read_text(errors='replace')[-2500:] if log.exists() else ""))
            return False
        return state == "RUNNING" and healthy(name, s)   # RUNNING: up for the program's startsecs too

    _wait(ok, _TIMEOUT[name], f"service {name} at {svc.endpoint(name, s)}", log)
    _after_start(name, s)
    done.add(name)


def up(s: Settings | None = None, services: list[str] | tuple[str, ...] | None = None) -> None:
    """Start ``services`` (default: all, :data:`ops.services.SERVICES`) in dependency order, each healthy
    before the next starts. Idempotent: a running healthy service is left alone.

    Raises:
        StackError: a service did not become healthy; names it and shows its log's tail.
    """
    if s is None:
        ensure_local_env(get_settings())
        s = get_settings()
    done: set[str] = set()
    names = list(services or svc.SERVICES)
    with state_lock(s):
        for name in names:
            start(name, s, done, frozenset(names))


@contextlib.contextmanager
def state_lock(s: Settings):
    """Hold ``$RETAIL_STATE_DIR/supervisord.lock`` (an exclusive ``flock``) for the block: one :func:`up` or
    :func:`down` of a state folder at a time; another waits for it, then finds the programs as that one left them.
    Until 2026-12-06 two ``make local-up`` started at once could both start a supervisord: the second failed
    ("Another program is already listening on a port", 1 of 3 tries; or, had it removed the first's socket while
    that one was starting, would have left an orphaned supervisord behind).

    :func:`clean` deletes the folder, lock file included, while it holds the lock: a waiter then holds a lock on a
    file no longer in the folder, sees so (its inode is not the path's) and locks the new folder's file instead.

    Raises:
        ConfigError: the state folder cannot be created (:func:`ops.services.state_dir`).
    """
    import fcntl

    while True:
        path = svc.state_dir(s) / "supervisord.lock"
        f = open(path, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX)   # released when the file closes (also if this process dies)
            held = os.fstat(f.fileno())
            with contextlib.suppress(FileNotFoundError):
                now = os.stat(path)
                if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                    break
        except BaseException:
            f.close()
            raise
        f.close()   # the folder was deleted (clean) while this waited: lock the new one
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def status(s: Settings | None = None) -> dict[str, dict]:
    """Every service: {state (supervisor), pid, uptime_s, healthy, endpoint, log}."""
    s = s or get_settings()
    running = supervisord_running(s)
    out = {}
    for name in svc.SERVICES:
        info = _info(s, name) if running else {"statename": "STOPPED (no supervisord)", "pid": 0}
        up_s = (info.get("now", 0) - info.get("start", 0)) if info.get("pid") else 0
        out[name] = {"state": info["statename"], "pid": info.get("pid") or None, "uptime_s": up_s,
                     "healthy": healthy(name, s) if info.get("pid") else False,
                     "endpoint": svc.endpoint(name, s), "log": str(svc.state_dir(s) / "logs" / f"{name}.log")}
    return out


def _ports(name: str, s: Settings) -> list[tuple[str, int]]:
    host = svc.kafka_host_port(s)[0]
    return {"kafka": [(host, svc.kafka_host_port(s)[1]), (host, s.kafka_controller_port)],
            "minio": [("localhost", s.minio_port), ("localhost", s.minio_console_port)],
            "clickhouse": [(s.clickhouse_http_host, s.clickhouse_http_port)],
            "airflow": [(svc.local_address(s.airflow_host), s.airflow_port), ("localhost", s.airflow_worker_log_port),
                        ("localhost", s.airflow_trigger_log_port)],
            "dashboard": [(svc.local_address(s.dashboard_host), s.dashboard_port)]}.get(name, [])


class ForeignPortsError(StackError):
    """After :func:`down` stopped every program of this platform, configured ports are still held by programs that
    are not the platform's (:func:`port_holders`). ``holders``: ``{port: [{"pid", "program", "ours"}]}``."""

    def __init__(self, message: str, holders: dict[int, list[dict]]):
        super().__init__(message)
        self.holders = holders


class PortInUseError(StackError):
    """A program failed to start while a port of its service (:func:`_ports`) is held by a program that is not the
    platform's (:func:`port_holders`): raised by :func:`start` at once instead of after the service's timeout.
    ``holders``: ``{port: [{"pid", "program", "ours"}]}``, the foreign holders only."""

    def __init__(self, message: str, holders: dict[int, list[dict]]):
        super().__init__(message)
        self.holders = holders


def _foreign_holders(name: str, s: Settings) -> dict[int, list[dict]]:
    """The ports of service ``name`` held by programs that are not the platform's, with those holders."""
    mine = {p for _, p in _ports(name, s)}
    return {port: foreign for port, hs in port_holders(s, mine).items() if (foreign := [h for h in hs if not h["ours"]])}


def _recorded_groups(s: Settings) -> set[tuple[int, int]]:
    """(process group, session) of each program's last start (:func:`ops.services.pgid_file`)."""
    out = set()
    for name in svc.SERVICES:
        with contextlib.suppress(OSError, ValueError):
            pgid, sid = (int(v) for v in svc.pgid_file(name, s).read_text().split()[:2])
            out.add((pgid, sid))
    return out


def _ours(pid: int, s: Settings, groups: set[tuple[int, int]]) -> bool:
    """Whether process ``pid`` belongs to the platform of ``s``'s state folder: it runs in a recorded process group
    of one of its programs, or its environment's RETAIL_STATE_DIR is that folder, or its command line, working
    folder or an open file lies inside it: a path equal to the folder or under it (each command-line argument is
    cut at white space, quotes, ``=``, ``:``, ``,`` and ``;``, so ``-Dlogs=<path>``, class paths and ``sh -c``
    strings count; until 2026-12-06 a substring test made a program under a sibling folder, ``<state>2/...``,
    ours). A process this user may not inspect is not ours (ours run as us)."""
    import psutil

    state = svc.state_dir(s).resolve()
    if svc._group_session(pid) in groups:
        return True
    try:
        p = psutil.Process(pid)
        env_state = p.environ().get("RETAIL_STATE_DIR")
        if env_state and Path(env_state).resolve() == state:
            return True
        inside = lambda path: path == str(state) or path.startswith(str(state) + os.sep)  # noqa: E731
        if any(inside(part) for arg in p.cmdline() for part in re.split(r"[=:,;\s'\"]+", arg)) or inside(p.cwd()):
            return True
        return any(inside(f.path) for f in p.open_files())
    except (psutil.Error, OSError):
        return False


def port_holders(s: Settings, ports: set[int] | None = None) -> dict[int, list[dict]]:
    """Every configured port of every service (:func:`_ports`; only ``ports`` when given) that something listens
    on: ``{port: [{"pid", "program", "ours"}]}`` (``pid`` None and ``program`` "a process of another user" when
    the socket's owner is not visible; ``ours``: :func:`_ours`)."""
    import psutil

    groups = _recorded_groups(s)
    out: dict[int, list[dict]] = {}
    for port in sorted(ports if ports is not None else {p for name in svc.SERVICES for _, p in _ports(name, s)}):
        found = []
        for pid in svc.listeners(port):
            if pid is None:
                found.append({"pid": None, "program": "a process of another user", "ours": False})
                continue
            try:
                program = " ".join(psutil.Process(pid).cmdline())[:120] or psutil.Process(pid).name()
            except psutil.Error:
                program = "?"
            found.append({"pid": pid, "program": program, "ours": _ours(pid, s, groups)})
        if found:
            out[port] = found
    return out


def _describe(holders: dict[int, list[dict]]) -> str:
    return "; ".join(f"port {port}: " + ", ".join(f"pid {h['pid'] or '?'} ({h['program']})" for h in hs)
                     for port, hs in holders.items())


def down(s: Settings | None = None, timeout: float = 90) -> None:
    """Stop every service (reverse start order), shut supervisord down, kill what is left of the programs' recorded
    process groups, then wait until no configured port is held by a process of this platform (:func:`port_holders`).

    Raises:
        StackError: a port is still held by a process of this platform after ``timeout`` seconds (names port, pid
            and program).
        ForeignPortsError: every program of this platform is stopped but configured ports are held by programs
            that are not the platform's (another stack on the same host ports): raised at once, naming each port,
            pid and program (until 2026-12-06 ``down`` waited 90 s for them and then failed).
    """
    s = s or get_settings()
    with state_lock(s):
        _down(s, timeout)


def _down(s: Settings, timeout: float) -> None:
    """The body of :func:`down`, under the state folder's lock."""
    if supervisord_running(s):
        proxy = rpc(s)
        for name in reversed(svc.SERVICES):
            try:
                if proxy.supervisor.getProcessInfo(name)["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
                    proxy.supervisor.stopProcess(name, True)
            except xmlrpc.client.Fault:
                pass
        pidfile = svc.state_dir(s) / "supervisord.pid"
        pid = int(pidfile.read_text()) if pidfile.exists() else None
        try:
            proxy.supervisor.shutdown()
        except (OSError, xmlrpc.client.Error):
            pass
        if pid:
            _wait(lambda: not Path(f"/proc/{pid}").exists(), 30, "supervisord shutdown")
    # what supervisord did not stop: the programs of a supervisord that is gone (kill -9), children that outlived
    # their program's parent (the recorded process groups, ops.services.kill_leftovers)
    for name in reversed(svc.SERVICES):
        svc.kill_leftovers(name, s)
    held: dict[int, list[dict]] = {}

    def ours_free() -> bool:
        held.clear()
        held.update(port_holders(s))
        return not any(h["ours"] for hs in held.values() for h in hs)

    try:
        _wait(ours_free, timeout, "native stack shutdown")
    except StackError:
        raise StackError(f"ports still bound after down: {_describe(held)}") from None
    if held:
        raise ForeignPortsError(
            f"every program of the platform in {svc.state_dir(s)} is stopped, but configured ports are held by "
            f"programs that are not the platform's: {_describe(held)}; stop them or configure other ports", dict(held))


def clean(s: Settings | None = None, warn: Callable[[str], None] | None = None) -> Path | None:
    """Stop every service (:func:`down`), then delete the state folder ``s.retail_state_dir`` (RETAIL_STATE_DIR:
    Kafka logs, MinIO data, chDB, checkpoints, logs, supervisord.conf). ``make clean`` runs it, so the folder is
    the one the settings name, not the Makefile's default (until 2026-12-06 ``make clean`` deleted
    ``.cache/state`` whatever RETAIL_STATE_DIR said, and left the configured folder in place).

    Only a folder that looks like a state folder is deleted: every entry in it must be one the platform creates
    (:data:`STATE_ENTRIES`, or ``supervisor*``), so a RETAIL_STATE_DIR pointed at a shared folder (a home, /tmp)
    is refused instead of wiped.

    Ports held only by programs that are not the platform's (:class:`ForeignPortsError`: a compose stack on the same
    host ports) do not stop the deletion: every program of this folder is stopped by then, so none uses it; ``warn``
    gets the message naming each port, pid and program (until 2026-12-06 ``clean`` waited 90 s for them and
    deleted nothing).

    The folder's lock (:func:`state_lock`) is held from the stop to the deletion: an ``up`` waiting for it starts
    its programs in a new folder afterwards (until 2026-12-06 the lock was released between the two: such an
    ``up`` could start supervisord in the folder then deleted under it).

    Returns:
        the folder deleted, or None when there was none.
    Raises:
        StackError: a port is still held by a process of this platform after ``down`` (nothing is deleted: a
            running service's data); the folder holds entries the platform does not create (named; nothing is
            deleted).
    """
    import shutil

    s = s or get_settings()
    d = Path(s.retail_state_dir)
    foreign = sorted(p.name for p in d.iterdir()
                     if p.name not in STATE_ENTRIES and not p.name.startswith("supervisor")) if d.is_dir() else []
    if foreign:
        raise StackError(f"RETAIL_STATE_DIR={d} holds entries the platform does not create ({', '.join(foreign[:5])}"
                         f"{', ...' if len(foreign) > 5 else ''}): not deleted; point RETAIL_STATE_DIR at the "
                         "platform's own folder, or remove those entries first")
    existed = d.exists()
    with state_lock(s):   # held until the folder is gone (the lock file with it)
        try:
            _down(s, 90)
        except ForeignPortsError as exc:   # ours are stopped: nothing of the platform uses the folder any more
            (warn or (lambda m: None))(f"deleting anyway: {exc}")
        shutil.rmtree(d)
    return d if existed else None


#: Top-level entries of a state folder (RETAIL_STATE_DIR) that the platform creates; :func:`clean` deletes a
#: folder holding only these (and ``supervisor*`` files).
STATE_ENTRIES: frozenset[str] = frozenset({
    "airflow", "airflow-cli", "alerts", "chdb", "checkpoints", "kafka", "logs", "minio", "run",
    "streaming.heartbeat", "tmp",
})


@contextlib.contextmanager
def platform_settings(state: Path, **extra: str):
    """The environment of a native platform whose state lives in ``state`` and whose services listen on free
    ports (CLICKHOUSE_URL and LAKE_URL derived: the endpoint and MinIO of that platform); yields its Settings
    and restores the environment, settings cache and client caches afterwards (tests, benchmarks).

    Args:
        state: the platform's RETAIL_STATE_DIR (created by the services as needed).
        extra: more environment variables (e.g. CLICKHOUSE_DATABASE) for this platform; a port setting given
            here is used as given (no port is picked nor reserved for it).

    The picked ports stay reserved (:func:`ops.services.free_port`) until the block ends, also when it fails
    (:func:`ensure_local_env` raising included: the environment is restored then too).
    """
    from core.clickhouse import reset_clients
    from core.lake import get_lake
    picked: dict[str, int] = {}   # reserved until the block ends
    try:
        for k in _PORT_SETTINGS:
            if k not in extra:
                picked[k] = svc.free_port()
        env = {
            "RETAIL_STATE_DIR": str(state),
            **{k: f"localhost:{p}" if k == "KAFKA_BOOTSTRAP_SERVERS" else str(p) for k, p in picked.items()},
            "SPARK_CHECKPOINT_DIR": str(state / "checkpoints"),
            "SPARK_MASTER": "local[2]",
            **extra,
        }
        old = {k: os.environ.get(k) for k in (*env, "CLICKHOUSE_URL", "LAKE_URL")}
        os.environ.update(env)
        for k in ("CLICKHOUSE_URL", "LAKE_URL"):
            os.environ.pop(k, None)
        try:
            get_settings.cache_clear()
            ensure_local_env(get_settings())
            get_settings.cache_clear()
            os.environ["LAKE_URL"] = get_settings().lake_url
            get_settings.cache_clear()
            reset_clients()
            get_lake.cache_clear()
            yield get_settings()
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            get_settings.cache_clear()
            reset_clients()
            get_lake.cache_clear()
    finally:
        for p in picked.values():
            svc.release_port(p)


#: the settings :func:`platform_settings` sets to ports of :func:`ops.services.free_port`
_PORT_SETTINGS = ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_CONTROLLER_PORT", "MINIO_PORT", "MINIO_CONSOLE_PORT",
                  "CLICKHOUSE_HTTP_PORT", "AIRFLOW_PORT", "AIRFLOW_WORKER_LOG_PORT", "AIRFLOW_TRIGGER_LOG_PORT",
                  "DASHBOARD_PORT")


@contextlib.contextmanager
def platform_up(state: Path, services: list[str] | tuple[str, ...] | None = None, attempts: int = 3,
                warn: Callable[[str], None] | None = None, **extra: str):
    """:func:`platform_settings` of ``state`` with ``services`` brought :func:`up`; yields its Settings. The caller
    stops it (:func:`down`) before the block ends; a failed start is stopped here.

    When a port picked for it was taken by a program that is not the platform's before its service bound it
    (:class:`PortInUseError`: :func:`ops.services.free_port` leaves the kernel's ephemeral ports alone and reserves
    its picks, but a program may still bind a fixed port there), what started is stopped, the state folder is
    deleted (:func:`clean`) and the whole start is made again on newly picked ports, up to ``attempts`` times;
    each collision is reported to ``warn`` (default: :func:`warnings.warn`, RuntimeWarning) naming the port, pid
    and program.

    Raises:
        PortInUseError: every one of the ``attempts`` starts met a taken port.
        StackError, ConfigError: as :func:`up`.
    """
    import warnings

    warn = warn or (lambda m: warnings.warn(m, RuntimeWarning, stacklevel=3))
    for attempt in range(1, attempts + 1):
        with platform_settings(state, **extra) as s:
            try:
                up(s, services)
            except PortInUseError as exc:
                with contextlib.suppress(StackError):
                    clean(s)   # a foreign holder of a configured port does not stop it (ForeignPortsError)
                if attempt == attempts:
                    raise
                warn(f"port collision on start {attempt} of {attempts}, starting again on other ports: {exc}")
                continue
            except BaseException:
                with contextlib.suppress(StackError):
                    down(s)
                raise
            yield s
            return

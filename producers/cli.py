"""POS producer CLI: topic admin, synthetic simulator and UCI Online Retail replay.

    python -m producers.cli topics
    python -m producers.cli synthetic --stores 3 --skus 50 --events-per-min-per-store 200 \\
        --duration-minutes 30 --seed 42 [--realtime] [--invalid-rate 0.001]
    python -m producers.cli synthetic --stores 1000 --events-per-min-per-store 500 --realtime --processes 2
    python -m producers.cli replay --path producers/data/uci_online_retail_sample.csv.gz \\
        [--speed 60] [--keep-dates] [--limit 1000] [--invalid-rate 0.001]
    python -m producers.cli sample --src ../shared/data/uci_online_retail/transactions.csv.gz

Both generators write the reference data (products, stores) to the lake, create the topics
(idempotent), publish with a rich progress display (events/s, sent, failed, dead-lettered) and print
the final counts as JSON (exit code 1 when any delivery failed). SIGTERM and SIGINT stop a run gracefully: no
more events, at most :data:`STOP_FLUSH_S` seconds of flush, the report printed, exit 128 + the signal's number
(143 / 130) when nothing failed, else 1. The same is available in-process:
:func:`run_synthetic`, :func:`run_replay` return the counts dict.
"""

from __future__ import annotations

import signal as _signal

#: signals received while ``python -m producers.cli`` loads its modules (typer, rich: ~0.5 s), before a command
#: installs :class:`StopSignals`: kept, then reported as a start-up stop (exit 128 + the signal) at the bottom
_EARLY_SIGNALS: list[int] = []
if __name__ == "__main__":
    _EARLY_OLD = {sig: _signal.signal(sig, lambda signum, frame: _EARLY_SIGNALS.append(signum))
                  for sig in (_signal.SIGTERM, _signal.SIGINT)}

import contextlib
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from core.settings import Settings, get_settings

app = typer.Typer(add_completion=False, help=__doc__.split("\n")[0])
err_console = Console(stderr=True)

DEFAULT_SAMPLE = Path(__file__).resolve().parent / "data" / "uci_online_retail_sample.csv.gz"


#: seconds a stopped run (broker unreachable, SIGTERM) gives the records still buffered before the producer is
#: closed and the rest is reported failed
STOP_FLUSH_S = 5.0


#: exit code of a run stopped by a signal with every record handed over delivered: 128 + the signal's number
#: (SIGINT / Ctrl-C 130, SIGTERM 143: ``docker compose stop`` with ``init: true``, ``make local-down``), the shell's
#: convention for "ended by this signal"; a run with failed or pending deliveries exits 1 (:func:`_finish`)
SIGNAL_EXIT_BASE = 128


class StartupStopped(BaseException):
    """Raised by :class:`StopSignals` in start-up mode (``interrupt``): a signal came before publishing began.
    A BaseException (as KeyboardInterrupt), so no ``except Exception`` of a library on the way swallows it.
    ``signal``: its name; ``phase``: what the start-up was doing."""

    def __init__(self, signal_name: str, phase: str | None):
        super().__init__(f"{signal_name} received during start-up ({phase or 'starting'})")
        self.signal, self.phase = signal_name, phase

    def report(self) -> dict[str, Any]:
        """The delivery report of a run stopped before it published anything: every counter 0, ``stopped`` says
        so and names the phase, ``signal`` the signal (the CLI exits 128 + its number)."""
        return {"events": 0, "sent": 0, "dead_lettered": 0, "delivered": 0, "failed": 0, "pending": 0,
                "stopped": f"{self}; nothing published", "signal": self.signal}


class StopSignals:
    """While active (a ``with`` block in the main thread), SIGTERM and SIGINT do not kill the process: they set
    :attr:`event` (the publishing loop stops, flushes for :data:`STOP_FLUSH_S` seconds and reports) and
    :attr:`received` names the signal. A second SIGINT raises KeyboardInterrupt as usual. Outside the main thread
    (no signal handlers there) it does nothing.

    Start-up mode: while :attr:`interrupt` is True (``StopSignals(interrupt=True)``, the CLI's commands from their
    first line until publishing begins), a signal also raises :class:`StartupStopped` (naming :attr:`phase`) in
    the main thread, so a start-up step that blocks (reading the file, creating topics, a broker that does not
    answer) ends at once and the run reports "nothing published" (before 2026-12-06 a signal then killed the
    process with no report: exit -15, or 130 with no report for SIGINT). Set ``interrupt = False`` when publishing
    begins (:func:`publish_events` does). ``signals``: the signals handled (default SIGTERM and SIGINT)."""

    def __init__(self, interrupt: bool = False, signals: tuple[int, ...] | None = None):
        import signal
        import threading

        self.event = threading.Event()
        self.received: str | None = None
        self.signum: int | None = None
        self.interrupt = interrupt
        self.phase: str | None = None
        self._signals = signals or (signal.SIGTERM, signal.SIGINT)
        self._old: dict[int, Any] = {}
        self.wakeup_fd: int | None = None   # read end of the signal wake-up pipe while active (main thread)
        self._wakeup: tuple[int, int, int] | None = None

    def _handle(self, signum, frame) -> None:
        import signal

        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received, self.signum = signal.Signals(signum).name, signum
        self.event.set()
        if self.interrupt:
            self.interrupt = False   # raised once: the run's report and exit follow
            raise StartupStopped(self.received, self.phase)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside, a signal only records itself (:attr:`received`, :attr:`event`), whatever :attr:`interrupt` says;
        on leaving, one recorded in start-up mode raises :class:`StartupStopped` as the handler would. For a step
        that must not be cut between two statements: a FIFO's chunk read and kept
        (:func:`producers.replay.read_source`)."""
        was, self.interrupt = self.interrupt, False
        try:
            yield
        finally:
            self.interrupt = was
        if self.interrupt and self.received is not None:
            self.interrupt = False   # raised once, as by the handler
            raise StartupStopped(self.received, self.phase)

    def __enter__(self) -> "StopSignals":
        import signal
        import threading

        import os

        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                self._old[sig] = signal.signal(sig, self._handle)
            # a wait on a pipe or FIFO (producers.replay.read_source) selects on this too: the C-level handler writes
            # to it in whichever thread the kernel delivered the signal to, so the wait ends and the handler runs
            r, w = os.pipe()
            os.set_blocking(r, False), os.set_blocking(w, False)
            self._wakeup = (r, w, signal.set_wakeup_fd(w, warn_on_full_buffer=False))
            self.wakeup_fd = r
            # a process started with the stop signals blocked (a launcher that spawns with them masked) would never
            # see them: a handler is installed, so receive them (until 2026-12-06 such a replay reading a FIFO
            # ignored SIGTERM until its writer closed it and then exited 1 with no report)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self._signals)
        return self

    def __exit__(self, *exc) -> None:
        import os
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        if self._wakeup is not None:
            r, w, old_fd = self._wakeup
            signal.set_wakeup_fd(old_fd)
            os.close(r), os.close(w)
            self._wakeup, self.wakeup_fd = None, None


class Pacer:
    """Emission pacing by event time: with ``speed`` X an event-time gap of g ms is emitted after
    g / X wall-clock ms (X = 1: real time). ``speed=None`` = as fast as possible (no sleeping). ``stop``: an
    event that ends a wait early (a stop signal)."""

    def __init__(self, speed: float | None, stop=None):
        if speed is not None and not speed > 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self._t0: int | None = None
        self._w0 = 0.0
        self._stop = stop

    def wait(self, ts_ms: int) -> None:
        """Sleep until the wall-clock time at which event time ``ts_ms`` is due."""
        if self.speed is None:
            return
        if self._t0 is None:
            self._t0, self._w0 = ts_ms, time.monotonic()
            return
        ahead = self._w0 + (ts_ms - self._t0) / 1000 / self.speed - time.monotonic()
        if ahead > 0.005:
            if self._stop is not None:
                self._stop.wait(ahead)
            else:
                time.sleep(ahead)


def publish_events(events: Iterable[tuple[str, dict[str, Any]]], publisher, *, speed: float | None = None,
                   t_start: int | None = None, t_end: int | None = None, progress: bool = True,
                   label: str = "publishing", on_progress: Callable[[int], None] | None = None,
                   signals: StopSignals | None = None, boundary: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Send every event through ``publisher`` (an :class:`~core.kafka.EventPublisher`), paced by
    :class:`Pacer`; show progress by event time between ``t_start`` and ``t_end`` (epoch ms).
    ``on_progress(n)`` (optional) is called with the number of events handed over so far, every 1,000 events.

    The run stops at once when the publisher reports a send blocked ``max_block_ms`` (``publisher.stalled``:
    broker unreachable or a topic missing): the records still buffered get :data:`STOP_FLUSH_S` seconds, then the
    producer is closed (what was not acknowledged counts as failed), ``stopped`` names the cause and the events
    not generated are not sent (the report says so; the CLI exits 1).

    SIGTERM and SIGINT (:class:`StopSignals`) stop it the same way: no more events, the buffered ones get
    :data:`STOP_FLUSH_S` seconds, the rest is counted failed; ``signal`` names it (the CLI prints the report and
    exits 128 + the signal's number, or 1 when a delivery failed).

    ``signals``: an active :class:`StopSignals` of the caller (its start-up mode ends here; a signal it already
    received stops the run before the first event); None: one of its own for the call.

    ``boundary``: called after each event is taken from ``events``; False means the event continues a unit whose
    first events were sent (a replayed source row: its sale and its stock update), so a signal stops the run only
    before an event for which it returns True: a unit goes out whole or not at all. None: every event is one.

    Returns {"events", "elapsed_s", "events_per_s", "stopped" (None or the cause), "signal" (None or e.g.
    ``"SIGTERM"``), **publisher.counts} after a flush.
    """
    if signals is not None:
        signals.interrupt = False
        return _publish_events(events, publisher, signals, speed=speed, t_start=t_start, t_end=t_end,
                               progress=progress, label=label, on_progress=on_progress, boundary=boundary)
    with StopSignals() as sigs:
        return _publish_events(events, publisher, sigs, speed=speed, t_start=t_start, t_end=t_end,
                               progress=progress, label=label, on_progress=on_progress, boundary=boundary)


def _publish_events(events, publisher, sigs: StopSignals, *, speed, t_start, t_end, progress, label,
                    on_progress, boundary=None) -> dict[str, Any]:
    pacer = Pacer(speed, stop=sigs.event)
    n = 0
    t0 = time.monotonic()
    total = (t_end - t_start) if (t_start is not None and t_end is not None and t_end > t_start) else None
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
               TextColumn("{task.fields[rate]:>8.0f} ev/s  sent={task.fields[sent]}  "
                          "failed={task.fields[failed]}  dead-lettered={task.fields[dlq]}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=err_console, disable=not progress, transient=False) as bar:
        task = bar.add_task(label, total=total or 1, rate=0.0, sent=0, failed=0, dlq=0)
        last = t0

        def refresh(ts: int | None) -> None:
            c = publisher.counts
            el = max(time.monotonic() - t0, 1e-9)
            done = (ts - t_start) if (total and ts is not None) else 0
            bar.update(task, completed=min(done, total) if total else 0, rate=n / el, sent=c["sent"],
                       failed=c["failed"], dlq=c["dead_lettered"])

        ts = None
        stopped = None
        for event_type, record in events:
            may_stop = boundary is None or boundary()
            if may_stop and sigs.event.is_set():
                break
            ts = record.get("timestamp") if isinstance(record, dict) else None
            if isinstance(ts, int):
                pacer.wait(ts)
                if may_stop and sigs.event.is_set():   # the signal came while waiting: this event is not sent
                    break
            publisher.publish(event_type, record)
            n += 1
            if getattr(publisher, "stalled", None):
                stopped = f"kafka send blocked max_block_ms ({publisher.stalled}); run stopped after {n} events"
                err_console.print(f"[red]{stopped}")
                break
            if n % 1000 == 0 and on_progress is not None:
                on_progress(n)
            if n % 1000 == 0 and time.monotonic() - last > 0.25:
                last = time.monotonic()
                refresh(ts if isinstance(ts, int) else None)
        if sigs.received and not stopped:
            stopped = f"{sigs.received} received; run stopped after {n} events"
            err_console.print(f"[yellow]{stopped}: flushing for at most {STOP_FLUSH_S:g} s")
        if stopped:
            publisher.abort(STOP_FLUSH_S)
        else:
            stopped = flush_until_signal(publisher, sigs)
        if on_progress is not None:
            on_progress(n)
        if total:
            bar.update(task, completed=total)
        refresh(None if not total else t_end)
    elapsed = time.monotonic() - t0
    return {"events": n, "elapsed_s": round(elapsed, 3), "events_per_s": round(n / max(elapsed, 1e-9), 1),
            "stopped": stopped, "signal": sigs.received, **publisher.counts}


#: seconds between two looks at the stop signals while :func:`flush_until_signal` waits for the broker
FLUSH_POLL_S = 0.5


def flush_until_signal(publisher, sigs: StopSignals) -> str | None:
    """Wait until every record ``publisher`` holds is acknowledged or failed, as ``publisher.flush()`` does, but
    give up when ``sigs`` receives a signal meanwhile: the records still buffered then get :data:`STOP_FLUSH_S`
    seconds and are reported failed (``publisher.abort``), or stay ``pending`` when the producer's sender outlives
    the abort (waiting for a frozen broker's producer id; a replay's report counts their rows ``unconfirmed``).

    Why: a flush waits as long as the producer neither sends nor expires its records, which kafka-python does while
    the broker does not answer its producer-id request (a broker frozen past ``delivery_timeout_ms``, 2 min, and
    still frozen: :func:`core.kafka.reinit_after_producer_id_reset`); until 2026-12-07 the run's last flush
    ignored SIGTERM and SIGINT then (the handlers only set :attr:`StopSignals.event`), so a stop got no report, the
    rows not published were not saved, and only SIGKILL or a second Ctrl-C ended it.

    Args:
        publisher: an :class:`~core.kafka.EventPublisher` (``flush(timeout)`` raising ``KafkaTimeoutError``,
            ``abort(timeout)``).
        sigs: the run's active :class:`StopSignals`.
    Returns:
        None when everything was settled, else the stop's cause (``"SIGTERM received while flushing ..."``).
    """
    from kafka.errors import KafkaTimeoutError

    while True:
        try:
            publisher.flush(timeout=FLUSH_POLL_S)
            return None
        except KafkaTimeoutError:
            if not sigs.event.is_set():
                continue
        stopped = (f"{sigs.received} received while waiting for the broker's acknowledgements; the records not "
                   f"acknowledged within {STOP_FLUSH_S:g} s are counted failed")
        err_console.print(f"[yellow]{stopped}")
        publisher.abort(STOP_FLUSH_S)
        return stopped


def _write_reference(settings: Settings, products, stores) -> dict[str, str]:
    from producers.catalog import write_reference
    from core.lake import Lake

    lake = Lake(settings)
    lake.ensure_buckets()
    return write_reference(lake, products, stores)


def producer_overrides(paced: bool) -> dict[str, Any]:
    """KafkaProducer overrides of a run: none when paced to the wall clock (linger 10 ms keeps events fresh),
    :data:`core.kafka.BULK_OVERRIDES` (larger batches, longer linger) when sending as fast as possible."""
    from core.kafka import BULK_OVERRIDES

    return {} if paced else dict(BULK_OVERRIDES)


def split_stores(n_stores: int, processes: int) -> list[list[int]]:
    """Disjoint store index sets, one per process, round-robin (``[[0, 2, 4], [1, 3]]`` for 5 stores, 2
    processes): every event of one store (so of one store|sku key) comes from one process, in order."""
    if processes < 1:
        raise ValueError("processes must be >= 1")
    if processes > n_stores:
        raise ValueError(f"--processes {processes} > --stores {n_stores}: each process needs a store of its own")
    return [list(range(i, n_stores, processes)) for i in range(processes)]


def merge_published(parts: list[dict[str, Any]], elapsed_s: float) -> dict[str, Any]:
    """Sum of the processes' delivery reports: counters added, per-topic / per-reason counts merged, the first
    20 errors kept; ``events_per_s`` = all events / wall time of the whole run, ``per_process`` keeps each."""
    from collections import Counter

    out: dict[str, Any] = {"events": 0, "sent": 0, "dead_lettered": 0, "delivered": 0, "failed": 0, "pending": 0}
    by_topic: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    errors: list[str] = []
    for p in parts:
        for k in out:
            out[k] += int(p.get(k) or 0)
        by_topic.update(p.get("by_topic_delivered") or {})
        reasons.update(p.get("dead_letter_reasons") or {})
        errors.extend(p.get("errors") or [])
    out.update({"elapsed_s": round(elapsed_s, 3), "events_per_s": round(out["events"] / max(elapsed_s, 1e-9), 1),
                "by_topic_delivered": dict(by_topic), "dead_letter_reasons": dict(reasons), "errors": errors[:20],
                "stopped": "; ".join(f"process {p.get('process')}: {p['stopped']}" for p in parts
                                     if p.get("stopped")) or None,
                "per_process": [{k: p.get(k) for k in ("process", "stores", "events", "elapsed_s", "events_per_s",
                                                        "delivered", "failed", "pending", "cpu_s")} for p in parts]})
    return out


_WORKER_COUNTER = None  # shared array of events handed over per process (set in each worker process)
_WORKER_SIGNALS: StopSignals | None = None   # the worker's SIGTERM handling, installed by _init_worker


def _init_worker(counter) -> None:
    """Initializer of a ``synthetic --processes N`` worker. The parent spawns its workers with SIGTERM and SIGINT
    blocked (:func:`_run_parallel`), so a signal forwarded while a worker still starts (interpreter, imports)
    waits instead of killing it: here SIGINT is ignored (a terminal's Ctrl-C reaches the parent, which forwards
    SIGTERM), SIGTERM sets the worker's stop event, and then both are unblocked (a pending SIGTERM is handled
    now)."""
    import signal

    global _WORKER_COUNTER, _WORKER_SIGNALS
    _WORKER_COUNTER = counter
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_SIGNALS = StopSignals(signals=(signal.SIGTERM,)).__enter__()   # for the life of the worker process
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})


def _synthetic_worker(job: dict[str, Any]) -> dict[str, Any]:
    """One process of ``synthetic --processes N``: its stores' events through its own producer.
    A SIGTERM (the parent's forward) before publishing began gives a report with nothing published
    (:class:`StartupStopped`). Returns {"published": counts + process/cpu, "generator", "invalid_injected"}."""
    import os
    from dataclasses import replace

    i, cfg, s = job["process"], job["config"], job["settings"]
    sigs = _WORKER_SIGNALS or StopSignals()
    injected: dict[str, int] = {}
    counter = _WORKER_COUNTER
    c0 = time.process_time()
    sim = pub = None
    try:
        sigs.interrupt = True
        if sigs.received:   # forwarded while the worker started
            raise StartupStopped(sigs.received, "starting the worker process")
        sigs.phase = "building the simulator"
        from core.kafka import EventPublisher
        from producers.invalid import inject_invalid
        from producers.simulator import Simulator

        sim = Simulator(replace(cfg, n_stores=len(job["stores"]), stream=i + 1), products=job["products"],
                        stores=job["stores"])
        sigs.interrupt = False   # from here a signal only stops the publishing loop (before its first event)
    except StartupStopped as stop:
        published = stop.report()
    else:
        def report(n: int) -> None:
            if counter is not None:
                counter[i] = n

        with EventPublisher(s, client_id=f"retail-pos-simulator-{i}", **producer_overrides(job["realtime"])) as pub:
            published = publish_events(
                inject_invalid(sim.events(), job["invalid_rate"], seed=job["seed"] + i + 1, counter=injected), pub,
                speed=1.0 if job["realtime"] else None, progress=False, on_progress=report, signals=sigs)
    published.update({"process": i, "pid": os.getpid(), "stores": list(job["stores"]["store_id"]),
                      "cpu_s": round(time.process_time() - c0, 3)})
    return {"published": published, "generator": sim.stats.as_dict() if sim is not None else {},
            "invalid_injected": injected}


def _sum_dicts(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Key-wise sum of nested count dicts (the generators' stats)."""
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, dict):
                out[k] = _sum_dicts([out.get(k, {}), v])
            else:
                out[k] = out.get(k, 0) + v
    return out


def _run_parallel(s: Settings, cfg, sim, *, processes: int, realtime: bool, invalid_rate: float, seed: int,
                  progress: bool, signals: StopSignals | None = None) -> dict[str, Any]:
    """Run ``processes`` simulator processes (spawned; each its own producer) over disjoint store sets and
    merge their reports. A process that dies or raises is reported in ``worker_errors`` (the CLI exits 1).

    SIGTERM / SIGINT to this process (``signals``, the caller's active :class:`StopSignals`, else one of its
    own) is forwarded to every worker as SIGTERM. The workers are spawned with both signals blocked, which they
    inherit (:func:`_init_worker` installs their handler, then unblocks), so a signal forwarded while a worker
    is still starting is handled by it, not fatal (before 2026-12-06 such a worker died: ``BrokenProcessPool``
    in ``worker_errors``, exit 1)."""
    import contextlib
    import multiprocessing as mp
    import signal
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")  # no fork of a process that may hold client threads
    counter = ctx.Array("q", processes, lock=False)  # inherited by the workers (initializer), read for progress
    jobs = [{"process": i, "config": cfg, "settings": s, "products": sim.products,
             "stores": sim.stores.iloc[idx].reset_index(drop=True), "realtime": realtime,
             "invalid_rate": invalid_rate, "seed": seed}
            for i, idx in enumerate(split_stores(cfg.n_stores, processes))]
    results: list[dict[str, Any] | None] = [None] * processes
    worker_errors: list[str] = []
    t0 = time.monotonic()
    sigs = signals or StopSignals()
    sigs.interrupt = False   # from here a signal is forwarded to the workers, each reports what it published
    forwarded = False
    with (contextlib.nullcontext() if signals else sigs), \
            ProcessPoolExecutor(max_workers=processes, mp_context=ctx, initializer=_init_worker,
                                initargs=(counter,)) as pool:
        stop_sigs = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_sigs)   # inherited by the spawned workers (and the
        try:                                                  # pool's manager thread)
            futs = {pool.submit(_synthetic_worker, j): j["process"] for j in jobs}   # spawns the workers
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_sigs)   # a pending signal is handled here
        columns = [TextColumn("[bold]{task.description}"), TextColumn("{task.fields[n]} events"),
                   TextColumn("{task.fields[rate]:>8.0f} ev/s"), TextColumn("{task.fields[done]}/" + str(processes)
                                                                        + " processes done"), TimeElapsedColumn()]
        with Progress(*columns, console=err_console, disable=not progress) as bar:
            task = bar.add_task(f"synthetic x{processes}", total=1, n=0, rate=0.0, done=0)
            pending = set(futs)
            while pending:
                done = {f for f in pending if f.done()}
                for f in done:
                    i = futs[f]
                    try:
                        results[i] = f.result()
                    except Exception as exc:  # a process that raised or died: reported, not hidden
                        worker_errors.append(f"process {i}: {exc!r}")
                pending -= done
                if sigs.event.is_set() and not forwarded:   # each worker stops, flushes and reports itself
                    import os
                    import signal

                    forwarded = True
                    for proc in list((getattr(pool, "_processes", None) or {}).values()):
                        try:
                            os.kill(proc.pid, signal.SIGTERM)
                        except (ProcessLookupError, AttributeError):
                            pass
                n = sum(counter)
                bar.update(task, n=n, rate=n / max(time.monotonic() - t0, 1e-9), done=processes - len(pending))
                if pending:
                    time.sleep(0.25)
    elapsed = time.monotonic() - t0
    ok = [r for r in results if r is not None]
    published = merge_published([r["published"] for r in ok], elapsed)
    published["worker_errors"] = worker_errors
    published["signal"] = sigs.received
    if worker_errors:
        published["failed"] += 1  # at least one process' records are unaccounted for: the run failed
    return {"published": published, "generator": _sum_dicts([r["generator"] for r in ok]),
            "invalid_injected": _sum_dicts([r["invalid_injected"] for r in ok])}


def run_synthetic(settings: Settings | None = None, *, stores: int = 3, skus: int = 50,
                  events_per_min_per_store: float = 200.0, duration_minutes: float = 30.0, seed: int = 42,
                  start: datetime | None = None, realtime: bool = False, invalid_rate: float = 0.0,
                  write_reference: bool = True, create_topics: bool = True, progress: bool = True,
                  processes: int = 1, signals: StopSignals | None = None) -> dict[str, Any]:
    """Run the synthetic simulator into Kafka and return the counts.

    ``start`` defaults to now (``realtime``) or now - duration (as fast as possible, so that event
    times end near now). As fast as possible, the producer uses :data:`core.kafka.BULK_OVERRIDES`.
    ``processes`` > 1 spreads the stores (so the rate: stores x events per minute) over that many spawned
    simulator processes, each with its own producer and a disjoint set of stores (one store|sku key stays in
    one process, in order); their reports are summed (``published.per_process`` keeps each).
    ``signals``: the CLI's active :class:`StopSignals` in start-up mode: a signal before publishing begins
    returns at once with ``published`` saying nothing was published (:meth:`StartupStopped.report`), the other
    keys as far as they got.
    Returns {"mode", "config", "topics", "reference", "generator", "invalid_injected",
    "published": {events, sent, delivered, failed, dead_lettered, ...}}.
    """
    from core.kafka_admin import ensure_topics
    from producers.invalid import inject_invalid
    from core.kafka import EventPublisher
    from producers.simulator import SimConfig, Simulator, to_ms

    s = settings or get_settings()
    split_stores(stores, processes)  # validates before anything is sent
    now = datetime.now(timezone.utc).replace(microsecond=0)
    if start is None:
        start = now if realtime else now - timedelta(minutes=duration_minutes)
    out: dict[str, Any] = {"mode": "synthetic", "config": {
        "stores": stores, "skus": skus, "events_per_min_per_store": events_per_min_per_store,
        "duration_minutes": duration_minutes, "seed": seed, "start": start.isoformat(), "realtime": realtime,
        "invalid_rate": invalid_rate, "processes": processes}, "topics": None, "reference": None}
    phase = signals or StopSignals()   # records the start-up phase (a signal raises only with ``signals``)
    try:
        phase.phase = "building the simulator"
        cfg = SimConfig(n_stores=stores, n_skus=skus, events_per_min_per_store=events_per_min_per_store,
                        duration_minutes=duration_minutes, seed=seed, start=start)
        sim = Simulator(cfg)
        phase.phase = "creating topics"
        out["topics"] = ensure_topics(s) if create_topics else None
        phase.phase = "writing the reference data"
        out["reference"] = _write_reference(s, sim.products, sim.stores) if write_reference else None
        phase.interrupt = False   # from here a signal stops the publishing loop (before its first event)
    except StartupStopped as stop:
        out["published"] = stop.report()
        return out
    if processes > 1:
        out.update(_run_parallel(s, cfg, sim, processes=processes, realtime=realtime, invalid_rate=invalid_rate,
                                 seed=seed, progress=progress, signals=signals))
        return out
    injected: dict[str, int] = {}
    t_start = to_ms(start)
    with EventPublisher(s, client_id="retail-pos-simulator", **producer_overrides(realtime)) as pub:
        out["published"] = publish_events(
            inject_invalid(sim.events(), invalid_rate, seed=seed, counter=injected), pub,
            speed=1.0 if realtime else None, t_start=t_start,
            t_end=t_start + int(duration_minutes * 60_000), progress=progress, label="synthetic", signals=signals)
    out["generator"] = sim.stats.as_dict()
    out["invalid_injected"] = injected
    return out


def run_replay(settings: Settings | None = None, path: str | Path = DEFAULT_SAMPLE, *, speed: float | None = None,
               keep_dates: bool = False, limit: int | None = None, end_at: datetime | None = None,
               align: str = "day", invalid_rate: float = 0.0, seed: int = 2012, write_reference: bool = True,
               create_topics: bool = True, progress: bool = True, encoding: str | None = None,
               signals: StopSignals | None = None) -> dict[str, Any]:
    """Replay the UCI Online Retail log at ``path`` into Kafka and return the counts.

    ``end_at`` / ``align``: where the replayed dates end, see :class:`producers.replay.ReplayConfig`.
    ``encoding``: the file's text encoding (None: UTF-8, else Windows-1252, :func:`producers.replay.load_transactions`).
    ``signals``: the CLI's active :class:`StopSignals` in start-up mode: a signal while the file is read, the
    replay built, topics created or reference data written returns at once with ``published`` saying nothing
    was published (:meth:`StartupStopped.report`).

    Returns {"mode", "config", "topics", "reference", "generator" (rows, rows_by_kind, skipped per code,
    events per type, quarantined, ...), "invalid_injected", "published": {...}, "rows": {"in", "published",
    "dead_lettered", "skipped", "saved", "partial", "unconfirmed"} (source rows: in = the sum of the others,
    :meth:`_RowTracker.report`)}, and
    "unread_saved" {"path", "bytes", "lines"[, "rows"]} when rows were not published (a stop, a failed delivery:
    only those rows, :func:`_save_unpublished`) or a pipe's bytes were read before a start-up stop. Each quarantined
    source line (:attr:`producers.replay.Replay.quarantine`) goes to the dead-letter topic as event type
    ``uci_source_line`` with its code and reason (:func:`_source_line_dead_letter`).
    Raises FileNotFoundError / ValueError for a missing or malformed file.
    """
    from core.kafka_admin import ensure_topics
    from producers.invalid import inject_invalid
    from core.kafka import EventPublisher
    from producers.replay import Replay, ReplayConfig, load_transactions

    s = settings or get_settings()
    out: dict[str, Any] = {"mode": "replay", "config": {
        "path": str(path), "speed": speed, "keep_dates": keep_dates, "align": align, "limit": limit,
        "invalid_rate": invalid_rate, "encoding": encoding}, "topics": None, "reference": None}
    phase = signals or StopSignals()   # records the start-up phase (a signal raises only with ``signals``)
    received = bytearray()   # the source's bytes as read: a pipe's are gone once read, a stopped run keeps them
    try:
        phase.phase = "reading the transaction log"
        df = load_transactions(path, limit=limit, encoding=encoding, received=received, wake_fd=phase.wakeup_fd,
                               defer=phase.deferred)
        phase.phase = "building the replay"
        rep = Replay(df, ReplayConfig(keep_dates=keep_dates, end_at=end_at, align=align, seed=seed))
        phase.phase = "creating topics"
        out["topics"] = ensure_topics(s) if create_topics else None
        phase.phase = "writing the reference data"
        out["reference"] = _write_reference(s, rep.products, rep.stores) if write_reference else None
        phase.interrupt = False   # from here a signal stops the publishing loop (before its first event)
    except StartupStopped as stop:
        out["published"] = stop.report()
        out["unread_saved"] = _save_unreplayed(s, path, received)
        return out
    except Exception:   # a refused file or an unreachable broker: a pipe's bytes read so far are kept too
        _save_unreplayed(s, path, received)
        raise
    injected: dict[str, int] = {}
    valid_ts = rep.ts[rep.kind != "skip"]
    rows = _RowTracker(rep)
    with EventPublisher(s, client_id="retail-pos-replay", **producer_overrides(speed is not None)) as pub:
        for q in rep.quarantine:   # malformed / truncated source lines, with their line and reason
            pub.dead_letter(*_source_line_dead_letter(q))
        pub.on_result = rows.result
        out["published"] = publish_events(
            rows.track(inject_invalid(rep.events(), invalid_rate, seed=seed, counter=injected), pub), pub,
            speed=speed, t_start=int(valid_ts.min()) if len(valid_ts) else None,
            t_end=int(valid_ts.max()) if len(valid_ts) else None, progress=progress, label="replay",
            signals=signals, boundary=rows.at_start)
    out["rows"], unpublished = rows.report()
    if unpublished:   # a stop: the rows not on the broker, for a later replay (before 2026-12-06 a pipe's whole
        out["unread_saved"] = _save_unpublished(s, path, rep, unpublished)   # input: published rows came twice)
    out["generator"] = rep.stats.as_dict()
    out["invalid_injected"] = injected
    return out


#: characters of a quarantined line's reason kept in its dead letter (a reason quotes the bad value, which may be long)
REASON_MAX = 2_000


def _source_line_dead_letter(q: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    """(event type, payload, reason) of the dead letter of a quarantined source line ``q``
    (:attr:`producers.replay.Replay.quarantine`): its text cut to what fits a Kafka request once JSON-escaped
    (:func:`producers.alerts.cut_for_dead_letter`, 200,000 bytes) and its reason to :data:`REASON_MAX` characters,
    each cut said in the reason (until 2026-12-06 a line of 1.2 MB was sent whole: the broker refused it, the line
    was lost and the run exited 1)."""
    from producers.alerts import cut_for_dead_letter

    reason = str(q["reason"])
    if len(reason) > REASON_MAX:
        reason = reason[:REASON_MAX] + f"... (reason cut to {REASON_MAX:,} of {len(reason):,} characters)"
    text, note = cut_for_dead_letter(str(q.get("text", "")))
    return "uci_source_line", {**q, "reason": reason, "text": text}, f"{q['code']}: {reason}{note}"


class _RowTracker:
    """Which source rows of a :class:`producers.replay.Replay` are on the broker. :meth:`track` wraps its events
    (after :func:`producers.invalid.inject_invalid`: an injected copy is not a row's start, and is tagged with no
    row, so its fate says nothing of the row's) and tags each record with its row (``EventPublisher.tag``);
    :meth:`result` (``EventPublisher.on_result``) records the rows with a record that failed and those with one the
    broker acknowledged; :meth:`at_start` is :func:`publish_events`' ``boundary``, so a stop falls between rows.
    It also counts each row's records handed over and their results, so a row with a record still unanswered when
    the report is made (a stop while the producer's sender is stuck waiting for a frozen broker) is told apart."""

    def __init__(self, rep):
        import threading
        from collections import Counter

        self.rep = rep
        self.start = True
        self.failed: set[int] = set()
        self.acked: set[int] = set()
        #: records of each row taken from the events (one more than handed over for the row a stop fell before:
        #: that row is not handed over, so it is saved anyway) and results received per row
        self.records: Counter[int] = Counter()
        self.results: Counter[int] = Counter()
        self._lock = threading.Lock()   # results come from the sender thread, and at once from the caller's

    def track(self, events, pub):
        """``events`` (``rep``'s, through the invalid-record injector) with ``pub.tag`` set to each real event's
        row (None for an injected copy) and the row's records counted, for :meth:`report`."""
        seen = 0
        for item in events:
            real, seen = self.rep.emitted != seen, self.rep.emitted
            self.start = real and self.rep.row_start
            pub.tag = self.rep.cursor if real else None
            if real:
                self.records[self.rep.cursor] += 1
            yield item

    def at_start(self) -> bool:
        """True when the event last taken starts a source row (a stop may fall before it)."""
        return self.start

    def result(self, tag, ok: bool) -> None:
        """``EventPublisher.on_result``: the record of row ``tag`` acknowledged (``ok``) or failed."""
        if tag is not None:
            with self._lock:
                (self.acked if ok else self.failed).add(tag)
                self.results[tag] += 1

    def report(self) -> tuple[dict[str, Any], list[int]]:
        """({"in", "published", "dead_lettered", "skipped", "saved", "partial", "unconfirmed"[, "partial_rows"]},
        rows of ``rep.df`` to save). ``in``: the source's rows (and lines that make none: malformed, not UTF-8) =
        ``published`` (rows whose every event was handed over before a stop and acknowledged) + ``dead_lettered``
        (:attr:`Replay.quarantine`) + ``skipped`` (counted only: non-product codes, ``A`` invoices, repeated lines;
        :attr:`ReplayStats.skipped`) + ``saved`` (none of the row's records on the broker: after a stop, or every
        record of the row failed) + ``partial`` (some of the row's records acknowledged, some failed: not saved,
        since replaying the row would send the acknowledged ones twice; named in ``partial_rows``, 1-based rows of
        the replay order with their invoice and line, the first 20, and logged as an error) + ``unconfirmed`` (a
        record of the row handed over but neither acknowledged nor failed when the report is made: a stop while the
        producer's sender could not be stopped in time, e.g. waiting for a frozen broker's producer id; the record
        may still reach the broker or be lost with the process, so the row is never counted published and is saved
        with the ``saved`` rows: at least once, a replay of the saved file may send it a second time with the same
        ids, which the nightly ETL keeps once). Results arriving while the report is made count from the next one."""
        import numpy as np

        rep = self.rep
        n = len(rep.df)
        with self._lock:   # a snapshot: a late result from the sender thread cannot split a row between two counts
            failed_rows, acked_rows = sorted(self.failed), sorted(self.acked)
            unresolved_rows = sorted(i for i, k in self.records.items() if self.results[i] < k)
        handed = n if getattr(rep, "exhausted", n == 0) else min(getattr(rep, "cursor", 0), n)
        failed = np.zeros(n, dtype=bool)
        failed[[i for i in failed_rows if 0 <= i < n]] = True
        acked = np.zeros(n, dtype=bool)
        acked[[i for i in acked_rows if 0 <= i < n]] = True
        unresolved = np.zeros(n, dtype=bool)
        unresolved[[i for i in unresolved_rows if 0 <= i < n]] = True
        out = np.zeros(n, dtype=bool)   # rows none of whose records is on the broker
        out[handed:] = True
        out |= failed & ~acked
        unconfirmed = unresolved & ~out & ~rep.quarantined
        partial = failed & acked & ~out & ~unconfirmed
        out &= ~rep.quarantined
        partial &= ~rep.quarantined
        skip = (rep.kind == "skip") & ~rep.quarantined & ~out
        counts: dict[str, Any] = {
            "in": n + sum(1 for q in rep.quarantine if "row" not in q),
            "published": int(((rep.kind != "skip") & ~out & ~partial & ~unconfirmed).sum()),
            "dead_lettered": len(rep.quarantine), "skipped": int(skip.sum()), "saved": int(out.sum()),
            "partial": int(partial.sum()), "unconfirmed": int(unconfirmed.sum())}
        if partial.any():
            rows = np.flatnonzero(partial)
            counts["partial_rows"] = [
                {"row": int(i) + 1, "invoice": str(rep.df["invoice"].iloc[i]), "line_no": str(rep.df["line_no"].iloc[i])}
                for i in rows[:20]]
            err_console.print(f"[red]{len(rows)} replayed row(s) are only partly on the broker (a record "
                              "acknowledged, another failed), not saved for a later replay (it would send the "
                              f"acknowledged ones twice): {counts['partial_rows']}")
        if unconfirmed.any():
            err_console.print(f"[yellow]{counts['unconfirmed']} replayed row(s) have a record the broker neither "
                              "acknowledged nor refused before the stop: not counted published, saved with the rows "
                              "not published (a replay of that file may send some of them twice, same ids)")
        return counts, np.flatnonzero(out | unconfirmed).tolist()


def _save_unpublished(s: Settings, path: str | Path, rep, rows: list[int]) -> dict[str, Any]:
    """The rows ``rows`` of ``rep.df`` (a replay stopped before they were on the broker) written as a UCI CSV (UTF-8,
    the file's columns, ``invoice_ts`` as ``YYYY-MM-DD HH:MM:SS`` where it parses in the file's format, so a part of
    the file reads its dates as the whole did) to ``$RETAIL_STATE_DIR/replay/<name>-<UTC time>-<pid>.unpublished.csv``:
    replay that file to publish them once. Returns {"path", "bytes", "lines", "rows"}."""
    import os

    import pandas as pd

    part = rep.df.iloc[rows].copy()
    part.attrs = {}
    if rep.ts_format:
        when = pd.to_datetime(part["invoice_ts"], format=rep.ts_format, errors="coerce")
        part["invoice_ts"] = when.dt.strftime("%Y-%m-%d %H:%M:%S").where(when.notna(), part["invoice_ts"])
    folder = Path(s.retail_state_dir) / "replay"
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / f"{Path(path).name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{os.getpid()}.unpublished.csv"
    data = part.to_csv(index=False, lineterminator="\n").encode("utf-8")
    dst.write_bytes(data)
    info = {"path": str(dst), "bytes": len(data), "lines": data.count(b"\n"), "rows": len(rows)}
    err_console.print(f"[yellow]{len(rows)} row(s) of {path} not published before the stop saved to {dst}: replay "
                      "that file to publish them")
    return info


def _save_unreplayed(s: Settings, path: str | Path, received: bytearray) -> dict[str, Any] | None:
    """The bytes a stopped replay read from a FIFO, pipe or device (gone from it once read) written to
    ``$RETAIL_STATE_DIR/replay/<name>-<UTC time>-<pid>.part`` as read (a last line cut by the stop included), so
    nothing read is lost: replay that file to publish them (ids are those of the source rows). Returns {"path",
    "bytes", "lines"} or None for a regular file (re-read from its path) or when nothing was read."""
    import os
    import stat

    try:
        if not received or stat.S_ISREG(os.stat(path).st_mode):
            return None
    except OSError:
        pass
    folder = Path(s.retail_state_dir) / "replay"
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / f"{Path(path).name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{os.getpid()}.part"
    dst.write_bytes(bytes(received))
    info = {"path": str(dst), "bytes": len(received), "lines": received.count(b"\n")}
    err_console.print(f"[yellow]{info['bytes']} byte(s) read from {path} before the stop saved to {dst}: replay "
                      "that file to publish them")
    return info


def _run_stoppable(run: Callable[[StopSignals], dict[str, Any]]) -> dict[str, Any]:
    """``run(signals)`` of a CLI command under :class:`StopSignals` in start-up mode from its first line: a SIGTERM /
    SIGINT before publishing begins (settings, reading, topics, reference data, connecting) ends the start-up at
    once and gives ``{"published": StartupStopped.report()}`` (nothing published; :func:`_finish` exits 143 / 130)
    where ``run`` does not catch it itself; once ``run`` publishes, :func:`publish_events` stops and reports."""
    with StopSignals(interrupt=True) as sigs:
        try:
            return run(sigs)
        except StartupStopped as stop:
            return {"published": stop.report()}


def _finish(result: dict[str, Any]) -> None:
    """Print the report; exit 1 when a delivery failed or is pending, a process failed or the run stopped on a
    stalled send; else 128 + the signal's number when a signal stopped the run (SIGINT 130, SIGTERM 143); else 0."""
    import signal

    typer.echo(json.dumps(result, indent=2, default=str))
    pub = result.get("published") or {}
    if pub.get("failed") or pub.get("pending") or pub.get("worker_errors") or (pub.get("stopped")
                                                                               and not pub.get("signal")):
        err_console.print(f"[red]{pub.get('failed')} deliveries failed, {pub.get('pending')} pending"
                          + (f", process errors: {pub['worker_errors']}" if pub.get("worker_errors") else ""))
        raise typer.Exit(1)
    if pub.get("signal"):
        raise typer.Exit(SIGNAL_EXIT_BASE + int(signal.Signals[pub["signal"]]))


@app.command()
def topics() -> None:
    """Create the platform topics (idempotent) and print what was created vs already existed, with a warning per
    existing topic whose partitions or retention differ from the spec; exit 1 for a compacted topic."""
    from core.kafka_admin import TopicLayoutError, ensure_topics

    try:
        result = ensure_topics(get_settings())
    except TopicLayoutError as exc:
        err_console.print(f"[red]{exc}")
        raise typer.Exit(1) from None
    for w in result["warnings"]:
        err_console.print(f"[yellow]warning: {w}")
    typer.echo(json.dumps(result, indent=2))


@app.command()
def alerts(
    group: str = typer.Option("retail-alerts", help="Kafka consumer group: each group reads every alert once."),
    follow: bool = typer.Option(False, "--follow", help="Keep waiting for new alerts (stop with Ctrl-C / SIGTERM)."),
    from_beginning: bool = typer.Option(True, "--from-beginning/--new-only",
                                        help="Where a group without committed offsets starts."),
    idle_seconds: float = typer.Option(5.0, min=0.0, help="Without --follow: stop after this long without a message."),
    max_alerts: Optional[int] = typer.Option(None, min=1, help="Stop after this many alerts."),
) -> None:
    """Read restock alerts back from Kafka: one JSON line per new alert on stdout, the report on stderr.

    At least once, deduplicated by alert_id across runs (ids kept in $RETAIL_STATE_DIR/alerts/<group>.ids);
    a message that is not a valid alert goes to the dead-letter topic with its reason."""
    from producers.alerts import alert_line, read_alerts

    s = get_settings()
    with StopSignals() as signals:
        report = read_alerts(s, lambda a: typer.echo(alert_line(a)), group_id=group, from_beginning=from_beginning,
                             follow=follow, idle_s=idle_seconds, max_alerts=max_alerts,
                             seen_path=Path(s.retail_state_dir) / "alerts" / f"{group}.ids", stop=signals.event)
    err_console.print_json(json.dumps(report))
    if report["stopped"] == "no_partitions":
        err_console.print(f"[red]no partition of {s.topic('restock-alerts')} was assigned within "
                          "60 s: is the broker reachable and the topic created (`producers.cli topics`)?")
        raise typer.Exit(1)


@app.command()
def synthetic(
    stores: int = typer.Option(3, help="Number of stores N."),
    skus: int = typer.Option(50, help="Number of SKUs M."),
    events_per_min_per_store: float = typer.Option(200.0, help="POS lines per store per minute at an average hour (100-500 typical)."),
    duration_minutes: float = typer.Option(30.0, help="Simulated event-time span, minutes."),
    seed: int = typer.Option(42, help="Random seed (same seed + start -> same events)."),
    start: Optional[datetime] = typer.Option(None, help="First event time (UTC). Default: now (realtime) or now - duration."),
    realtime: bool = typer.Option(False, "--realtime", help="Pace emission to the wall clock (default: as fast as possible)."),
    invalid_rate: float = typer.Option(0.0, help="Fraction of extra, deliberately invalid records (dead-letter demo)."),
    no_reference: bool = typer.Option(False, "--no-reference", help="Do not write the reference data to the lake."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress display."),
    processes: int = typer.Option(1, min=1, help="Simulator processes sharing the stores (and so the rate) "
                                                 "disjointly, each with its own Kafka producer; reports summed."),
) -> None:
    """Synthetic POS stream: seeded Faker catalogue, seasonality, consistent stock."""
    if start is not None and start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    _finish(_run_stoppable(lambda sigs: run_synthetic(
        get_settings(), stores=stores, skus=skus, events_per_min_per_store=events_per_min_per_store,
        duration_minutes=duration_minutes, seed=seed, start=start, realtime=realtime, invalid_rate=invalid_rate,
        write_reference=not no_reference, progress=not quiet, processes=processes, signals=sigs)))


@app.command()
def replay(
    path: Path = typer.Option(DEFAULT_SAMPLE, help="UCI Online Retail transactions CSV(.gz)."),
    speed: Optional[float] = typer.Option(None, help="Event-time speed-up factor (1 = real time). Default: as fast as possible."),
    keep_dates: bool = typer.Option(False, "--keep-dates", help="Keep the original event dates (default: shift so the replay ends now)."),
    align: str = typer.Option("day", help="Shift the dates by whole days (time of day kept, a trading day stays "
                                          "one date; the replay ends within the last 24 h), weeks (weekday kept "
                                          "too; within the last 7 days), or none (ends now)."),
    limit: Optional[int] = typer.Option(None, help="Replay only the first N rows."),
    invalid_rate: float = typer.Option(0.0, help="Fraction of extra, deliberately invalid records (dead-letter demo)."),
    no_reference: bool = typer.Option(False, "--no-reference", help="Do not write the reference data to the lake."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress display."),
    encoding: Optional[str] = typer.Option(None, help="Text encoding of the file, e.g. cp1252. Default: UTF-8, "
                                                      "else Windows-1252 (what spreadsheets write), with a warning."),
) -> None:
    """Replay real POS transactions (UCI Online Retail) with simulated stock, price and customer events."""
    def run(sigs: StopSignals) -> dict[str, Any]:
        from producers.replay import ReplayConfig

        try:
            ReplayConfig(align=align)   # its own check, reported as a bad option before anything is read
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--align") from None
        _check_encoding(encoding)
        return run_replay(get_settings(), path, speed=speed, keep_dates=keep_dates, limit=limit, align=align,
                          invalid_rate=invalid_rate, write_reference=not no_reference, progress=not quiet,
                          encoding=encoding, signals=sigs)

    _finish(_run_stoppable(run))


@app.command()
def jsonl(
    path: Path = typer.Argument(..., help="JSON Lines file, one raw event value per line."),
    event_type: str = typer.Option(..., help="Contract of every line, e.g. sales_transaction."),
) -> None:
    """Publish raw JSON values (e.g. a POS gateway's export) with the stream's checks (strict JSON, each key once,
    contract, ids, event time, numeric bounds); failing lines go to the dead-letter topic with the reason.
    SIGTERM / SIGINT stop it as the other commands: no more lines (``lines.stopped_at_line`` is the first line not
    sent, ``lines.not_sent`` counts the rest), at most :data:`STOP_FLUSH_S` s of flush, the report, exit 143 / 130."""

    def run(sigs: StopSignals) -> dict[str, Any]:
        from core.kafka import EventPublisher
        from core.kafka_admin import ensure_topics
        from producers.raw import publish_lines

        sigs.phase = "creating topics"
        s = get_settings()
        topics = ensure_topics(s)   # as the other commands: the broker may not create topics (auto-create is off)
        sigs.phase = "opening the file"
        fh = open(path, "rb")       # still start-up: opening a FIFO blocks until its writer connects
        sigs.interrupt = False      # from here a signal stops the loop over the lines (before the first one)
        with fh, EventPublisher(s, client_id="retail-jsonl") as pub:
            reader = _InterruptibleLines(fh, sigs)
            counts = publish_lines(pub, event_type, reader, stop=sigs.event)
            if reader.interrupted and "stopped_at_line" not in counts:   # the rest was never read (a pipe)
                counts.update(stopped_at_line=reader.read + 1, not_sent=None)
            stopped = None
            if pub.stalled:
                stopped = (f"kafka send blocked max_block_ms ({pub.stalled}): stopped at line "
                           f"{counts['stopped_at_line']}, {counts['not_sent']} line(s) not sent")
                err_console.print(f"[red]{stopped}")
            elif sigs.received and "stopped_at_line" in counts:
                rest = "the rest not read" if counts["not_sent"] is None else f"{counts['not_sent']} line(s) not sent"
                stopped = f"{sigs.received} received; stopped before line {counts['stopped_at_line']}, {rest}"
                err_console.print(f"[yellow]{stopped}: flushing for at most {STOP_FLUSH_S:g} s")
            if stopped:
                pub.abort(STOP_FLUSH_S)
            else:   # a signal while the broker does not acknowledge stops the wait too (was: close()'s flush)
                stopped = flush_until_signal(pub, sigs)
        return {"topics": topics, "lines": counts,
                "published": {**pub.counts, "stopped": stopped, "signal": sigs.received if stopped and not pub.stalled
                              else None}}

    _finish(_run_stoppable(run))  # exits 1 when a delivery failed, 143 / 130 when a signal stopped it


class _InterruptibleLines:
    """The lines of a binary file for ``jsonl``, where a stop signal ends a read that waits for data (a pipe, a
    FIFO: the read would block until the writer's next line): while a pipe's line is read, :attr:`StopSignals.interrupt`
    is on, so the handler raises and the iteration ends (``interrupted``; ``read``: lines returned). A regular file's
    read never waits, so there (and between reads) the signal only sets the event, which
    :func:`producers.raw.publish_lines` checks before each line: no line read is lost."""

    def __init__(self, fh, sigs: StopSignals):
        import os
        import stat

        self.fh, self.sigs, self.read, self.interrupted = fh, sigs, 0, False
        self.regular = stat.S_ISREG(os.fstat(fh.fileno()).st_mode)   # its rest can be counted without waiting

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        if self.regular:   # a file's read does not wait: a signal only sets the event (publish_lines counts the rest)
            line = self.fh.readline()
        elif self.sigs.event.is_set():   # stopped: a pipe's next line may never come; the rest is not read
            self.interrupted = True
            raise StopIteration
        else:
            try:
                self.sigs.interrupt = True
                line = self.fh.readline()
            except StartupStopped:
                self.interrupted = True
                raise StopIteration from None
            finally:
                self.sigs.interrupt = False
        if not line:
            raise StopIteration
        self.read += 1
        return line


def _check_encoding(encoding: str | None) -> None:
    """A bad ``--encoding`` (unknown to Python's codecs) as a bad option (exit 2), before any file is read."""
    import codecs

    if encoding:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise typer.BadParameter(f"unknown encoding {encoding!r}", param_hint="--encoding") from None


@app.command()
def sample(
    src: Path = typer.Option(..., help="Full transactions.csv.gz (../shared/data/uci_online_retail/)."),
    dst: Path = typer.Option(DEFAULT_SAMPLE, help="Output sample path."),
    rows: int = typer.Option(130_000, help="Approximate number of trailing rows to keep."),
    encoding: Optional[str] = typer.Option(None, help="Text encoding of the source, e.g. cp1252. Default: UTF-8, "
                                           "else Windows-1252 when it holds no UTF-8 sequence."),
) -> None:
    """Cut the shipped sample: the last ~N rows of the UCI log, whole invoices, reproducible gzip (UTF-8)."""
    from producers.replay import cut_sample

    _check_encoding(encoding)
    typer.echo(json.dumps(cut_sample(src, dst, rows, encoding=encoding), indent=2))


if __name__ == "__main__":
    for _sig, _old in _EARLY_OLD.items():
        _signal.signal(_sig, _old)
    if _EARLY_SIGNALS:   # stopped while loading: nothing was started, nor published
        _stop = StartupStopped(_signal.Signals(_EARLY_SIGNALS[0]).name, "loading the program")
        typer.echo(json.dumps({"published": _stop.report()}, indent=2))
        raise SystemExit(SIGNAL_EXIT_BASE + _EARLY_SIGNALS[0])
    app()

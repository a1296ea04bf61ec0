"""Bounded logging of an event that can repeat once per record (:class:`RepeatedLog`).

A per-record log line on a hot path turns a flood of bad records into a flood of log lines: a frozen broker with
100,000 records in flight failed each with its own ERROR line (``core.kafka.EventPublisher``), a micro-batch of a
million rows ClickHouse refuses set each aside with its own (``streaming.sinks``). The counts that matter are kept
elsewhere (the publisher's counters, ``quarantine_events``); the log needs the first few in full, then a count.
Standard library only (``logging``, ``atexit``, ``weakref``): one :class:`RepeatedLog` per owner (publisher, sinks);
the only process-wide state is a weak set of the live logs, flushed at the interpreter's exit (:func:`_flush_all`).
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class _Key:
    total: int = 0           # occurrences of the key in all
    unlogged: int = 0        # occurrences not logged in full since the last line written for the key
    last_line: float = 0.0   # clock() of the last line written for the key
    last: tuple = ("", ())   # the last occurrence's message and arguments (formatted when a line is written)


class RepeatedLog:
    """Log each kind (``key``) of a repeated event in full the first ``first`` times, then at most one line per
    ``interval_s`` seconds per key with the count since the line before, and what is left at :meth:`flush`.

    A summary line falls due ``interval_s`` after the key's last line; it is written by the next :meth:`log` or
    :meth:`tick` from then on (the owner calls :meth:`tick` on its regular path: ``core.kafka.EventPublisher`` at
    every send and flush), so a burst that stops is summarised at the owner's next call after ``interval_s``, not
    only at its flush (until the review of 2026-12-07 only :meth:`log` wrote it: 1,000 failures in 2 s, then none,
    left 995 unlogged until the publisher closed). What is still unlogged when the interpreter exits is flushed
    then (``atexit``; every live log, held by weak reference: e.g. failures whose errbacks ran after their
    publisher's last flush).

    Thread-safe (kafka-python's errbacks run in the producer's sender thread). Lines written for one key over a
    life of T seconds with F flushes: at most ``first`` + T / ``interval_s`` + 1 + F, whatever the count.

    Args:
        logger: the ``logging.Logger`` written to.
        what: the event's name in the summary lines (e.g. ``"kafka delivery failed"``).
        first: occurrences per key logged in full, >= 0 (default 5).
        interval_s: seconds, > 0, between two summary lines of one key (default 10).
        level: the ``logging`` level of every line (default ERROR).
        clock: seconds, monotonic (default ``time.monotonic``).
    Raises:
        ValueError: ``first`` < 0 or ``interval_s`` <= 0.
    """

    def __init__(self, logger: logging.Logger, what: str, *, first: int = 5, interval_s: float = 10.0,
                 level: int = logging.ERROR, clock: Callable[[], float] = time.monotonic):
        if first < 0 or not interval_s > 0:
            raise ValueError(f"RepeatedLog: first must be >= 0 and interval_s > 0, got {first!r}, {interval_s!r}")
        self.logger, self.what, self.first, self.interval_s = logger, what, int(first), float(interval_s)
        self.level, self._clock = level, clock
        self._keys: dict[str, _Key] = {}
        self._lock = threading.Lock()
        self._due = math.inf   # clock() at which the earliest summary line falls due (inf: nothing unlogged)
        _LIVE.add(self)

    def log(self, key: str, msg: str, *args: Any) -> None:
        """One occurrence of kind ``key``: logged as ``msg % args`` while the key has had at most ``first``
        occurrences, else counted and summarised (one line when ``interval_s`` passed since the key's last line:
        ``<what> [<key>]: <n> more since the last line (<total> in all); the last: <msg % args>``)."""
        with self._lock:
            k = self._keys.setdefault(key, _Key())
            k.total += 1
            now = self._clock()
            if k.total <= self.first:
                k.last_line = now
                line = (msg, args)
            else:
                k.unlogged += 1
                k.last = (msg, args)
                if now - k.last_line < self.interval_s:
                    self._due = min(self._due, k.last_line + self.interval_s)
                    return
                line = self._summary(key, k, now)
        self.logger.log(self.level, line[0], *line[1])

    def tick(self) -> None:
        """Write the summary lines that are due (a key with occurrences not logged whose last line is
        ``interval_s`` or more ago), one per such key; nothing else. Cheap when none is due (one clock read, no
        lock): meant to be called on the owner's hot path (every send)."""
        if self._clock() < self._due:
            return
        with self._lock:
            now = self._clock()
            lines, due = [], math.inf
            for key, k in self._keys.items():
                if not k.unlogged:
                    continue
                if now - k.last_line >= self.interval_s:
                    lines.append(self._summary(key, k, now))
                else:
                    due = min(due, k.last_line + self.interval_s)
            self._due = due
        for msg, args in lines:
            self.logger.log(self.level, msg, *args)

    def _summary(self, key: str, k: _Key, now: float) -> tuple[str, tuple]:
        n, k.unlogged, k.last_line = k.unlogged, 0, now
        msg, args = k.last
        return ("%s [%s]: %d more since the last line (%d in all); the last: %s",
                (self.what, key, n, k.total, msg % args if args else msg))

    def flush(self) -> None:
        """Write one summary line for each key with occurrences not logged yet (a run's flush or close: its final
        count); nothing for the others."""
        with self._lock:
            now = self._clock()
            lines = [self._summary(key, k, now) for key, k in self._keys.items() if k.unlogged]
            self._due = math.inf
        for msg, args in lines:
            self.logger.log(self.level, msg, *args)

    @property
    def totals(self) -> dict[str, int]:
        """Occurrences per key since the start, logged or not ({key: count})."""
        with self._lock:
            return {key: k.total for key, k in self._keys.items()}


_LIVE: "weakref.WeakSet[RepeatedLog]" = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    """At the interpreter's exit: flush every live :class:`RepeatedLog` (occurrences counted after their owner's
    last flush, e.g. a Kafka errback run by a sender thread that outlived its producer's abort, are written, not
    lost; until the review of 2026-12-07 they were counted but never logged)."""
    for rl in list(_LIVE):
        try:
            rl.flush()
        except Exception:   # noqa: BLE001 - logging at exit: a closed handler must not hide the other logs' lines
            pass

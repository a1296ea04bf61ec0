"""Restock alerts back out of Kafka: the consumer a store's system (POS back office, ERP, an e-mail gateway) runs.

The stream writes one alert per store x SKU low-stock episode to ``<prefix>restock-alerts`` (JSON, contract
``restock_alert.avsc``). :func:`read_alerts` reads them in a consumer group and hands each valid, new alert to
a callback (the CLI prints JSON lines):

* **at least once, deduplicated**: offsets are committed after the alerts they cover were handed over, so a
  consumer that dies re-reads from its last commit; an ``alert_id`` already handed over (a re-read, or the
  stream's re-send after a crash between Kafka's acknowledgement and its ClickHouse insert: docs/guarantees.md)
  is skipped. Ids handed over are kept in ``seen_path`` (the newest :data:`SEEN_MAX`), so this holds across runs;
* **bad input loses nothing and stops nothing**: a message that is not a valid alert (not JSON, not the contract)
  goes to the dead-letter topic with its reason, partition and offset, and the run goes on;
* **stops** after ``max_alerts`` alerts, after ``idle_s`` seconds without a message (unless ``follow``), or when
  ``stop`` is set (the CLI sets it on SIGTERM / Ctrl-C), then commits and returns a report.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from core.settings import Settings

#: alert ids remembered for deduplication across runs (oldest dropped first)
SEEN_MAX = 100_000
#: seconds to wait for the group to assign the alerts topic's partitions before giving up (broker unreachable,
#: topic missing)
JOIN_TIMEOUT_S = 60.0
#: bytes a bad message's text may take in its dead letter once JSON-escaped: escaping makes one character up to 6
#: bytes (``\\uXXXX``, e.g. each U+FFFD that stands for an undecodable byte), 12 for one outside the BMP, and a
#: dead letter above the producer's 1 MB request size is refused (until 2026-12-06 such a message was then lost:
#: its offset was committed; then, cut to 200,000 characters, 200,000 U+FFFD still made 1,200,015 bytes and every
#: later run stopped at it); the whole message stays on the alerts topic, named by the reason, until its retention
DEAD_LETTER_PAYLOAD_MAX = 200_000


def cut_for_dead_letter(text: str, max_bytes: int = DEAD_LETTER_PAYLOAD_MAX) -> tuple[str, str]:
    """(``text`` or its longest prefix whose JSON encoding, ASCII-escaped, takes at most ``max_bytes`` bytes, a note
    for the reason: "" when not cut, else "; payload cut to its first N of M characters (JSON-escaped: at most
    max_bytes bytes)"). The prefix is found by bisection on the encoded length (monotone in the prefix length)."""
    import json

    def size(n: int) -> int:
        return len(json.dumps(text[:n]))

    if size(len(text)) <= max_bytes:
        return text, ""
    lo, hi = 0, len(text)   # size(lo) <= max_bytes < size(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) <= max_bytes else (lo, mid)
    return text[:lo], (f"; payload cut to its first {lo:,} of {len(text):,} characters (JSON-escaped: at most "
                       f"{max_bytes:,} bytes)")


class SeenIds:
    """The newest ``limit`` alert ids handed over, optionally kept in a text file (one id per line).

    :meth:`record` appends an id to the file (flushed and fsynced) as soon as its alert was handed over, before
    the offset that covers it is committed: a consumer killed afterwards (``kill -9``, power loss) skips the alert
    when it is re-read or re-sent by the stream. Until 2026-12-06 the ids were written only when the run ended, so a
    consumer killed after its commit printed the stream's re-send of an alert a second time. :meth:`save` rewrites
    the file compactly (the newest ``limit``), also after every ``limit`` appends (a ``--follow`` run's file grew
    without bound before); a last line torn by a crash mid-write is ended before the next append."""

    def __init__(self, path: Path | None, limit: int = SEEN_MAX):
        self.path, self.limit = path, limit
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._log = None   # the file opened for appending (first record)
        self._appended = 0   # ids appended since the file was last rewritten
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line:
                    self.add(line)

    def __contains__(self, alert_id: str) -> bool:
        return alert_id in self._ids

    def add(self, alert_id: str) -> None:
        self._ids[alert_id] = None
        self._ids.move_to_end(alert_id)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def record(self, alert_id: str) -> None:
        """:meth:`add` the id and append it to the file at once (flush + fsync), so it survives a crash."""
        import os

        self.add(alert_id)
        if self.path is None:
            return
        if self._log is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = self.path.exists() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
            self._log = open(self.path, "a", encoding="utf-8")
            if torn:   # a last line cut by a crash mid-write: end it, or the next id would be glued onto it
                self._log.write("\n")
        self._log.write(f"{alert_id}\n")
        self._log.flush()
        os.fsync(self._log.fileno())
        self._appended += 1
        if self._appended >= self.limit:   # a long --follow run: rewrite compactly (the newest ``limit``)
            self.save()

    def save(self) -> None:
        """Write the ids (atomically: a temporary file renamed over the old one)."""
        if self._log is not None:
            self._log.close()
            self._log = None
        self._appended = 0
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(f"{i}\n" for i in self._ids), encoding="utf-8")
        tmp.replace(self.path)


def read_alerts(settings: Settings, handle: Callable[[dict[str, Any]], None], *, group_id: str = "retail-alerts",
                from_beginning: bool = True, follow: bool = False, idle_s: float = 5.0,
                max_alerts: int | None = None, seen_path: Path | None = None,
                stop: threading.Event | None = None) -> dict[str, Any]:
    """Consume restock alerts in consumer group ``group_id`` and call ``handle(alert)`` once per new valid alert.

    Args:
        settings: bootstrap servers and topic prefix.
        handle: called with the alert as a dict (the contract's fields; times in epoch ms), in offset order per
            partition. An exception from it stops the run without committing that alert's offset.
        from_beginning: where a group without committed offsets starts (earliest; else only new alerts).
        follow: keep waiting for new alerts (until ``stop`` or ``max_alerts``); else stop after ``idle_s``
            seconds without a message, counted once the group has assigned the topic's partitions (at most
            :data:`JOIN_TIMEOUT_S` seconds: then ``stopped`` is ``no_partitions``).
        max_alerts: stop after this many alerts handed over.
        seen_path: file of the alert ids already handed over (deduplication across runs); None: this run only.
        stop: an event that ends the run at the next poll (at most 1 s later).
    Returns:
        ``{"alerts": handed over, "duplicates": skipped ids, "invalid": sent to the dead-letter topic,
        "stopped": "idle" | "max_alerts" | "signal" | "no_partitions", "seconds": run time}``.
    Raises:
        kafka.errors.NoBrokersAvailable: the bootstrap servers cannot be reached.
        RuntimeError: a dead letter was not delivered (its offset is not committed).
    """
    from kafka import KafkaConsumer

    from contracts import ContractError, check_payload
    from core.kafka import EventPublisher

    topic = settings.topic("restock-alerts")
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
                             group_id=group_id, client_id=f"{group_id}-reader", enable_auto_commit=False,
                             auto_offset_reset="earliest" if from_beginning else "latest")
    seen = SeenIds(seen_path)
    report = {"alerts": 0, "duplicates": 0, "invalid": 0, "stopped": "idle", "seconds": 0.0}
    t0 = last = time.monotonic()
    publisher: EventPublisher | None = None
    try:
        while True:
            if stop is not None and stop.is_set():
                report["stopped"] = "signal"
                break
            batches = consumer.poll(timeout_ms=1000)
            if not batches:
                if not consumer.assignment():   # joining the group (the broker delays a first rebalance ~3 s)
                    if time.monotonic() - t0 >= JOIN_TIMEOUT_S:
                        report["stopped"] = "no_partitions"
                        break
                    last = time.monotonic()
                elif not follow and time.monotonic() - last >= idle_s:
                    break
                continue
            last = time.monotonic()
            for tp, messages in batches.items():
                for m in messages:
                    try:
                        if m.value is None:   # until 2026-12-06 a TypeError: every run stopped at this offset
                            raise ContractError("no value (a tombstone: a key without a value)")
                        alert = check_payload("restock_alert", m.value)
                    except ContractError as exc:
                        publisher = publisher or EventPublisher(settings, client_id=f"{group_id}-dead-letter")
                        text = None if m.value is None else m.value.decode("utf-8", "replace")
                        cut = ""
                        if text is not None:
                            text, cut = cut_for_dead_letter(text)
                        publisher.dead_letter("restock_alert", text, f"{exc} (topic {tp.topic} partition "
                                                                     f"{tp.partition} offset {m.offset}){cut}")
                        report["invalid"] += 1
                        continue
                    if alert["alert_id"] in seen:
                        report["duplicates"] += 1
                        continue
                    handle(alert)
                    seen.record(alert["alert_id"])   # on disk before the offset is committed
                    report["alerts"] += 1
                    if max_alerts is not None and report["alerts"] >= max_alerts:
                        if publisher is not None:
                            publisher.flush(30)   # as below: dead letters acknowledged before the commit
                            _no_failed_dead_letters(publisher)
                        _commit_through(consumer, tp, m.offset)
                        report["stopped"] = "max_alerts"
                        return report
            if publisher is not None:
                publisher.flush(30)   # dead letters acknowledged before their offsets are committed
                _no_failed_dead_letters(publisher)
            consumer.commit()
    finally:
        if publisher is not None:
            publisher.close()
        seen.save()
        consumer.close(autocommit=False)
        report["seconds"] = round(time.monotonic() - t0, 2)
    return report


def _no_failed_dead_letters(publisher) -> None:
    """Raise RuntimeError (the run stops, nothing more committed: the next run reads those messages again) when a
    dead letter was not delivered, naming the errors: committing its offset would lose the message."""
    if publisher.failed:
        raise RuntimeError(f"{publisher.failed} dead letter(s) not delivered ({publisher.counts['errors'][:3]}); "
                           "offsets not committed: the next run reads those messages again")


def _commit_through(consumer, tp, offset: int) -> None:
    """Commit ``tp`` up to and including ``offset`` (only ``tp``: another partition keeps its last commit, and its
    alerts handed over since are re-read and skipped as duplicates by the next run)."""
    from kafka import OffsetAndMetadata

    consumer.commit({tp: OffsetAndMetadata(offset + 1, None, -1)})


def alert_line(alert: dict[str, Any]) -> str:
    """An alert as one JSON line (keys in contract order)."""
    return json.dumps(alert, ensure_ascii=False, separators=(",", ":"))

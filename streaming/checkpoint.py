"""Kafka topics deleted and re-created under a streaming query's checkpoint.

A query's checkpoint (``<SPARK_CHECKPOINT_DIR>/<query>/offsets/<batch>``) holds, per Kafka source, the next offset
of every partition. A topic deleted and re-created (an operator's mistake, a restore) starts again at offset 0
under the same name, and Spark's Kafka source cannot tell: with ``failOnDataLoss=false`` it goes on from the
checkpoint's offsets, so the new topic's records below them are skipped without a count (measured: 40 sales read
before, topic re-created while the job was down, 100 sent to it: 60 reached the lake and the windows,
``records_expired`` 0).

Kafka gives every topic a UUID (topic id, KIP-516) that changes when it is re-created. The job keeps the ids its
checkpoint's offsets refer to in ``<checkpoint>/topic-ids.json`` (:func:`remember_topic_ids`) and, before a query
starts, compares them with the broker's (:func:`rewind_recreated_topics`): for a re-created topic it writes the
checkpoint's next offsets entry with that topic's partitions at 0, so the restarted query reads the new topic from
its start (Spark reports the offsets going back as possible data loss: a warning, nothing read in that batch; the
next batch starts at 0). Other topics keep their offsets. Only a local checkpoint folder is handled.

Also here: the per-checkpoint lake file naming (:func:`lake_file_naming`, ``<checkpoint>/lake-file-tag``), broken
latest entries moved to ``<checkpoint>/corrupt/`` (:func:`set_aside_corrupt_entries`), and the checks of a lost
checkpoint's recorded offsets against the topics as they are (:func:`partition_offset_bounds`,
:func:`resume_offsets`). Readers of ``offsets/`` and ``commits/`` take digit-only names as batches
(:func:`batch_numbers`), as Spark does.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: file in a query's checkpoint folder: {topic: topic id} its offsets refer to
IDS_FILE = "topic-ids.json"
#: file in a query's checkpoint folder: how its lake files are named (:func:`lake_file_naming`)
NAMING_FILE = "lake-file-tag"
#: file in a query's checkpoint folder: the ``stream_batches`` rows (with their progress counts) a stop or outage
#: could not write, written by the next start (:func:`keep_pending_batch_row`)
PENDING_ROWS_FILE = "stream-batches-pending.json"
#: folder in a query's checkpoint folder where :func:`set_aside_corrupt_entries` moves broken entries
CORRUPT_DIR = "corrupt"
#: Spark's line for a source without an offset in an offsets entry (``OffsetSeqLog.SERIALIZED_VOID_OFFSET``)
VOID_OFFSET = "-"


#: the topic id Kafka answers for a topic it describes with an error (``Uuid.ZERO_UUID``): no id at all
ZERO_TOPIC_ID = "00000000-0000-0000-0000-000000000000"


def valid_topic_ids(described: list[dict[str, Any]]) -> dict[str, str]:
    """{topic: topic id (UUID text)} of a Metadata answer's topics (``KafkaAdminClient.describe_topics``: dicts
    with ``name``, ``error_code``, ``topic_id`` (``uuid.UUID`` or text), ...) that the broker answered without
    error and with a real id.

    A topic answered with an error (``UNKNOWN_TOPIC_OR_PARTITION`` for one deleted between the list and the
    describe, ``LEADER_NOT_AVAILABLE`` while a broker's metadata lags) carries the zero id
    (:data:`ZERO_TOPIC_ID`); taken for an id it looked like a re-creation (id R -> zero: a rewind to the earliest
    offsets, every retained record read again) and then like another (zero -> R). Such a topic is left out, with a
    warning naming it and the error: its id is unknown now, so nothing is rewound and its stored id is kept."""
    out: dict[str, str] = {}
    for t in described:
        tid = "" if t.get("topic_id") is None else str(t["topic_id"])
        if int(t.get("error_code") or 0) == 0 and tid and tid != ZERO_TOPIC_ID:
            out[t["name"]] = tid
        else:
            log.warning("Kafka topic %s answered with error code %s and topic id %r: its id is unknown now (not "
                        "compared, nothing rewound, the stored id kept)", t.get("name"), t.get("error_code"),
                        tid or None)
    return out


def topic_ids(settings, topics: list[str], admin=None) -> dict[str, str]:
    """{topic: Kafka topic id (UUID text)} of those of ``topics`` that exist on the broker
    (``KAFKA_BOOTSTRAP_SERVERS``; Metadata/DescribeTopics through :func:`core.kafka_admin.admin_client`, or through
    ``admin``, a ``KafkaAdminClient`` the caller keeps open and closes). A topic the broker describes with an error
    or without a real id is left out (:func:`valid_topic_ids`: unknown now, a warning).

    Raises:
        kafka.errors.KafkaError: the broker cannot be reached or fails the request.
    """
    from core.kafka_admin import admin_client

    own = admin is None
    admin = admin_client(settings) if own else admin
    try:
        present = [t for t in topics if t in set(admin.list_topics())]
        return valid_topic_ids(admin.describe_topics(present)) if present else {}
    finally:
        if own:
            admin.close()


def topic_partitions(settings, topics: list[str], **client_kw) -> dict[str, list[int]]:
    """{topic: its partition numbers, sorted} of those of ``topics`` that exist on the broker; ``client_kw``: extra
    KafkaAdminClient options (e.g. shorter ``bootstrap_timeout_ms`` / ``request_timeout_ms``, milliseconds).

    Raises:
        kafka.errors.KafkaError: the broker cannot be reached or fails the request.
    """
    from core.kafka_admin import admin_client

    admin = admin_client(settings, **client_kw)
    try:
        present = [t for t in topics if t in set(admin.list_topics())]
        return ({t["name"]: sorted(p["partition_index"] for p in t["partitions"])
                 for t in admin.describe_topics(present)} if present else {})
    finally:
        admin.close()


def partition_offset_bounds(settings, topics: list[str], timeout_ms: int | None = None
                            ) -> dict[str, dict[str, tuple[int, int]]]:
    """{topic: {partition (text): (earliest offset, end offset)}} of those of ``topics`` that exist on the broker:
    the offset of the oldest record retention kept and the end the stream's sources read up to: read committed,
    the last stable offset (below a transaction still open; the next offset to be written when none is), as
    Spark's Kafka source with ``kafka.isolation.level=read_committed`` (:meth:`streaming.job.StreamingJob._source`).
    ``timeout_ms``: the clients' bootstrap and request timeouts (default kafka-python's, 30 s).

    Raises:
        kafka.errors.KafkaError: the broker cannot be reached or fails the request.
    """
    from kafka import KafkaConsumer, TopicPartition

    kw = {} if timeout_ms is None else {"bootstrap_timeout_ms": timeout_ms, "request_timeout_ms": timeout_ms}
    parts = topic_partitions(settings, topics, **kw)
    tps = [TopicPartition(t, p) for t, ps in parts.items() for p in ps]
    if not tps:
        return {}
    c = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers.split(","), enable_auto_commit=False,
                      group_id=None, client_id="retail-stream-resume", isolation_level="read_committed", **kw)
    try:
        begin, end = c.beginning_offsets(tps), c.end_offsets(tps)
    finally:
        c.close()
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for tp in tps:
        out.setdefault(tp.topic, {})[str(tp.partition)] = (int(begin[tp]), int(end[tp]))
    return out


def resume_offsets(recorded: dict[str, dict[str, int]], bounds: dict[str, dict[str, tuple[int, int]]]
                   ) -> tuple[dict[str, dict[str, int]], list[dict[str, Any]]]:
    """Starting offsets for a query that resumes at ``recorded`` (the end offsets of its last recorded micro-batch,
    ``stream_batches.end_offsets``) on the topics as they are now (``bounds``, :func:`partition_offset_bounds`).

    Per partition of ``bounds``: the recorded offset when it lies within [earliest, end]; ``-2`` (Spark: earliest)
    when it lies beyond the end (the topic was re-created, or the broker's data reset, since that batch: Spark
    would skip the new records [0, end) with a warning only) or when the partition has no recorded offset (added
    since); the earliest offset when it lies below it (records deleted by retention before they were read).

    Returns:
        ({topic: {partition: starting offset}} for every partition of ``bounds``, [one problem per partition not
        resumed at its recorded offset: {"topic", "partition", "recorded", "earliest", "end", "problem": one of
        "beyond_end", "expired", "unrecorded"}]).
    """
    start: dict[str, dict[str, int]] = {}
    problems: list[dict[str, Any]] = []
    for t, parts in bounds.items():
        for p, (lo, hi) in parts.items():
            r = recorded.get(t, {}).get(str(p))
            kind = None
            if r is None:
                kind, off = "unrecorded", -2
            elif int(r) > hi:
                kind, off = "beyond_end", -2
            elif int(r) < lo:
                kind, off = "expired", lo
            else:
                off = int(r)
            start.setdefault(t, {})[str(p)] = off
            if kind:
                problems.append({"topic": t, "partition": int(p), "recorded": None if r is None else int(r),
                                 "earliest": lo, "end": hi, "problem": kind})
    return start, problems


def local_checkpoint(root: str | None, query: str) -> Path | None:
    """The folder ``<root>/<query>`` of a query's checkpoint when ``root`` (SPARK_CHECKPOINT_DIR) is a local folder;
    None when it is a URL (``s3a://...``: the checkpoint's files are not read or written here, so the topic ids,
    offsets entries, query id and lake-file naming kept beside them are unavailable) or unset."""
    if not root or "://" in root:
        return None
    return Path(root, query)


def batch_numbers(folder: Path) -> list[int]:
    """The batch numbers of a Spark metadata log folder (``<checkpoint>/<query>/offsets`` or ``commits``), sorted:
    the names made of digits only, as Spark itself reads them; ``.N.crc`` checksums, ``N.corrupt-<time>`` entries
    set aside by an earlier version and temporary files are not batches. [] for a missing folder."""
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []




def read_offsets(checkpoint: Path, batch: int) -> tuple[list[str], list[dict | None]]:
    """The offsets entry ``batch`` of a checkpoint: (header lines: version and batch metadata, [source offsets
    {topic: {partition: offset}} or None per source, in the query's source order]).

    A source without an offset is Spark's line ``-`` (:data:`VOID_OFFSET`); it reads as None (as do ``""`` and
    ``null``) and :func:`format_offsets` writes it back as ``-``.

    Raises:
        ValueError: the file is not Spark's ``v1`` offsets format (e.g. truncated), naming it.
    """
    path = checkpoint / "offsets" / str(batch)
    lines = path.read_text().split("\n")
    if len(lines) < 3 or lines[0] != "v1":
        raise ValueError(f"streaming checkpoint offsets file {path} is not Spark's v1 format (truncated?)")
    try:
        return lines[:2], [None if x in (VOID_OFFSET, "", "null") else json.loads(x) for x in lines[2:]]
    except json.JSONDecodeError as exc:
        raise ValueError(f"streaming checkpoint offsets file {path} holds invalid JSON: {exc}") from exc


def format_offsets(header: list[str], sources: list[dict | None]) -> str:
    """The text of an offsets entry from :func:`read_offsets`' parts: the header lines, then one compact JSON line
    per source, ``-`` (:data:`VOID_OFFSET`) for a source without offsets (Spark cannot parse ``""`` or ``null``)."""
    return "\n".join(header + [VOID_OFFSET if s is None else json.dumps(s, separators=(",", ":")) for s in sources])


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file that is fsynced before the rename (a crash leaves the
    old or the new content, never an empty or half file), then fsync the folder; Hadoop's ``.<name>.crc`` of the
    old content is removed."""
    tmp = path.with_name(f".{path.name}.rewind.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:   # a file system that cannot fsync a folder: the rename is still atomic
        pass
    crc = path.with_name(f".{path.name}.crc")   # Hadoop's local checksum of the old content
    crc.unlink(missing_ok=True)


def stored_topic_ids(checkpoint: Path) -> dict[str, str]:
    """{topic: id} of ``<checkpoint>/topic-ids.json``; {} when it is missing, or unreadable / not such a JSON
    object (logged as an error: the ids are then learned again from the broker, and a topic re-created since the
    checkpoint's offsets were written is not recognised at this start)."""
    path = checkpoint / IDS_FILE
    if not path.exists():
        return {}
    try:
        got = json.loads(path.read_text())
        if isinstance(got, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in got.items()):
            return got
        raise ValueError("not a JSON object of topic -> id strings")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.error("streaming checkpoint: %s is unreadable (%s); treated as absent, the topic ids are learned again "
                  "from the broker (a topic re-created since the checkpoint's offsets cannot be recognised at this "
                  "start)", path, exc)
        return {}


def remember_topic_ids(checkpoint: Path, ids: dict[str, str]) -> None:
    """Merge ``ids`` ({topic: id}) into ``<checkpoint>/topic-ids.json`` (a topic absent now keeps its last id)."""
    path = checkpoint / IDS_FILE
    old = stored_topic_ids(checkpoint)
    if {**old, **ids} != old or not path.exists():
        checkpoint.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, json.dumps({**old, **ids}, sort_keys=True))


#: serialises :func:`keep_pending_batch_row` and :func:`forget_pending_batch_rows` (read, change, write) within the
#: process: the progress poller's thread keeps a row while a start forgets the rows it wrote
_PENDING_LOCK = threading.Lock()


def pending_batch_rows(checkpoint: Path) -> dict[str, dict[str, Any]]:
    """{batch id (text): ``stream_batches`` row as a batch-log record} of ``<checkpoint>/stream-batches-pending.json``
    (:func:`keep_pending_batch_row`); {} when it is missing or cannot be read (an OSError, logged as an error; the
    file stays for the next try). A file whose content is broken (not JSON, not an object of batch id -> row) is
    moved to ``<checkpoint>/corrupt/stream-batches-pending-<epoch s>.json`` with an error naming both paths (those
    batches' progress counts then stay in the earlier run's log only), so it is reported once, not at every start
    (since the review of 2026-12-07); if it cannot be moved it stays, logged."""
    path = checkpoint / PENDING_ROWS_FILE
    if not path.exists():
        return {}
    try:
        got = json.loads(path.read_text())
    except OSError as exc:
        log.error("streaming checkpoint: %s cannot be read (%s); the stream_batches rows it holds are not written "
                  "this time", path, exc)
        return {}
    except (UnicodeDecodeError, ValueError) as exc:
        problem = str(exc)
    else:
        if isinstance(got, dict) and all(isinstance(v, dict) for v in got.values()):
            return got
        problem = "not a JSON object of batch id -> row"
    dest = checkpoint / CORRUPT_DIR / f"stream-batches-pending-{int(time.time())}.json"
    try:
        dest.parent.mkdir(exist_ok=True)
        os.replace(path, dest)
        where = f"moved to {dest}"
    except OSError as exc:
        where = f"left in place ({exc})"
    log.error("streaming checkpoint: %s is unreadable (%s), %s; the stream_batches rows it held are not written (their "
              "duplicate / expired / late counts are in the earlier run's log)", path, problem, where)
    return {}


def keep_pending_batch_row(checkpoint: Path, row: dict[str, Any]) -> None:
    """Add ``row`` (a ``stream_batches`` row as :meth:`streaming.sinks.StreamSinks._batch_row` takes it: JSON values,
    ``batch_id`` its key) to ``<checkpoint>/stream-batches-pending.json``, replacing an earlier row of the same batch
    (atomic write: a crash leaves the old or the new file; under :data:`_PENDING_LOCK`).

    Raises:
        OSError: the folder or file cannot be written.
    """
    with _PENDING_LOCK:
        rows = pending_batch_rows(checkpoint)
        rows[str(int(row["batch_id"]))] = row
        checkpoint.mkdir(parents=True, exist_ok=True)
        _write_atomic(checkpoint / PENDING_ROWS_FILE, json.dumps(rows, sort_keys=True))


def forget_pending_batch_rows(checkpoint: Path, written: dict[str, dict[str, Any]]) -> None:
    """Remove the rows ``written`` (as :func:`pending_batch_rows` gave them) from the pending file; the file goes
    when none is left. Under :data:`_PENDING_LOCK`, as :func:`keep_pending_batch_row`: a row kept meanwhile by
    another thread of this process (a different row for a batch id, or another batch) stays.

    Raises:
        OSError: the file cannot be rewritten or removed.
    """
    with _PENDING_LOCK:
        rows = {k: v for k, v in pending_batch_rows(checkpoint).items() if written.get(k) != v}
        path = checkpoint / PENDING_ROWS_FILE
        if rows:
            _write_atomic(path, json.dumps(rows, sort_keys=True))
        else:
            path.unlink(missing_ok=True)


def rewind_recreated_topics(checkpoint: Path, ids: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Make a query read the topics re-created since its checkpoint from their start.

    A topic is re-created when its id in ``ids`` (the broker's now, :func:`topic_ids`) differs from the one in
    ``<checkpoint>/topic-ids.json``. For those, the latest offsets entry's partitions of the topic are set to 0:
    in a new entry ``latest + 1`` when the latest batch is committed (Spark runs it as a batch with nothing to read
    from that topic, the next one starts at 0), in the latest entry itself when that batch is not committed (it is
    re-run with the same ranges for the other topics). Then ``ids`` are remembered (:func:`remember_topic_ids`).

    Args:
        checkpoint: a query's local checkpoint folder (``<SPARK_CHECKPOINT_DIR>/<query>``).
        ids: {topic: topic id} of the query's topics that exist now.
    Returns:
        {topic: {"old_id", "new_id", "offsets": {partition: checkpoint offset given up}, "batch": entry written}}
        per re-created topic ({} when none, or when the checkpoint has no offsets yet).
    Raises:
        ValueError: the latest offsets file is not Spark's format (:func:`read_offsets`).
    """
    known = stored_topic_ids(checkpoint)
    recreated = {t: (known[t], i) for t, i in ids.items() if t in known and known[t] != i}
    batches = batch_numbers(checkpoint / "offsets")
    out: dict[str, dict[str, Any]] = {}
    if recreated and batches:
        latest = batches[-1]
        header, sources = read_offsets(checkpoint, latest)
        for src in sources:
            for t in recreated:
                if src and t in src:
                    out.setdefault(t, {"old_id": recreated[t][0], "new_id": recreated[t][1], "offsets": {}})
                    out[t]["offsets"].update(src[t])
                    src[t] = {p: 0 for p in src[t]}
        committed = latest in batch_numbers(checkpoint / "commits")
        target = latest + 1 if committed else latest
        _write_atomic(checkpoint / "offsets" / str(target), format_offsets(header, sources))
        for t in out:
            out[t]["batch"] = target
    remember_topic_ids(checkpoint, ids)
    return out


def merged_offsets(sources: list[dict | None]) -> dict[str, dict[str, int]]:
    """{topic: {partition (text): offset}} of an offsets entry's sources (:func:`read_offsets`), merged (a query
    reads a topic through one source only)."""
    out: dict[str, dict[str, int]] = {}
    for src in sources:
        for t, parts in (src or {}).items():
            out.setdefault(t, {}).update({str(p): int(o) for p, o in parts.items()})
    return out


def recreated_in_batch(stored: dict[str, str], now: dict[str, str], start: dict[str, dict[str, int]],
                       end: dict[str, dict[str, int]]) -> dict[str, str]:
    """The topics deleted and re-created between a micro-batch's start offsets and now, with the evidence.

    A topic is re-created when its Kafka topic id now (``now``, :func:`topic_ids`) differs from the one the start
    offsets refer to (``stored``, ``<checkpoint>/topic-ids.json``): whatever the offsets do, also when the new topic
    grew past the old offsets before the batch was planned (then no offset goes back). A topic without a stored id
    counts when one of its partitions' ``end`` offset lies below its ``start`` (the offsets went back: only a new
    topic starts again below). A topic missing now (deleted, not created again yet) does not count: its partitions
    are absent from the batch's end offsets, and Spark reads them from their earliest offset when they come back.

    Args:
        stored: {topic: id} the start offsets refer to.
        now: {topic: id} of the topics on the broker now.
        start, end: {topic: {partition: offset}} of the batch (offsets entries N-1 and N, :func:`merged_offsets`).
    Returns:
        {topic: "topic id <old> -> <new>" or "offsets went back (<partition>: <start> -> <end>, ...), no stored
        topic id"} ({} when none).
    """
    out: dict[str, str] = {}
    for t, i in sorted(now.items()):
        if t in stored:
            if stored[t] != i:
                out[t] = f"topic id {stored[t]} -> {i}"
            continue
        back = [f"{p}: {o} -> {end[t][p]}" for p, o in sorted(start.get(t, {}).items())
                if p in end.get(t, {}) and end[t][p] < o]
        if back:
            out[t] = f"offsets went back ({', '.join(back)}), no stored topic id"
    return out


def rewound_range(end: dict[str, int], bounds: dict[str, tuple[int, int]],
                  planned_start: dict[str, int] | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """(start, end) offsets {partition: offset} for a re-run of a micro-batch over a re-created topic: every
    partition of the new topic (``bounds``: {partition: (earliest, end offset)}, :func:`partition_offset_bounds`)
    starts at its earliest offset and ends at the batch's planned ``end`` offset kept within [earliest, end of the
    new topic] (a batch planned just before the re-creation holds the old topic's offsets, which may lie beyond the
    new one's end; a partition the planned end lacks ends at its earliest offset: the next batch reads it). With
    ``planned_start`` (the batch's planned start, the old topic's offsets) a partition also reads no more records
    than planned: its end is capped at earliest + max(0, planned end - planned start), so the re-run keeps within
    maxOffsetsPerTrigger (a partition whose offsets went back reads nothing in the re-run; the next batch reads
    it). The old topic's partitions the new one lacks are left out of both.

    Returns:
        ({partition: earliest offset}, {partition: end offset}) over the partitions of ``bounds``.
    """
    start = {str(p): int(lo) for p, (lo, hi) in bounds.items()}
    stop = {}
    for p, (lo, hi) in bounds.items():
        p, planned = str(p), int(end.get(str(p), lo))
        stop[p] = min(max(planned, int(lo)), int(hi))
        if planned_start and p in planned_start and p in end:
            stop[p] = min(stop[p], int(lo) + max(0, planned - int(planned_start[p])))
    return start, stop


def rewind_running_batch(checkpoint: Path, batch: int, bounds: dict[str, dict[str, tuple[int, int]]]
                         ) -> dict[str, dict[str, Any]]:
    """Make an uncommitted micro-batch ``batch`` (>= 1) of a query read the re-created topics of ``bounds`` from
    their start when it runs again.

    Spark re-runs an uncommitted batch N at the next start of its query over [offsets entry N-1, offsets entry N).
    For each topic of ``bounds`` ({topic: {partition: (earliest, end offset)}} of the new topic) the entries are
    rewritten (:func:`rewound_range`): N-1 holds the new topic's earliest offsets, N the planned end kept within the
    new topic and within the planned number of records per partition (maxOffsetsPerTrigger). Entry N-1 is written first: a crash between the writes leaves a start at the earliest offset and the
    old end, which the next start's :func:`rewind_recreated_topics` (the id not stored yet) turns into an empty range
    followed by a read from offset 0. Other topics and the entries' header lines are kept. The caller must then
    keep batch N from committing (fail it) and store the new topic ids (:func:`remember_topic_ids`).

    Args:
        checkpoint: a query's local checkpoint folder (``<SPARK_CHECKPOINT_DIR>/<query>``).
        batch: the running, uncommitted batch N (>= 1; batch 0 starts at offsets kept elsewhere by Spark).
        bounds: the re-created topics' partitions on the broker now.
    Returns:
        {topic: {"start": {partition: offset given up}, "end": {partition: planned end}, "new_start": {...},
        "new_end": {...}}} per topic of ``bounds`` found in entry N.
    Raises:
        ValueError: ``batch`` < 1, or an entry is not Spark's format (:func:`read_offsets`).
        FileNotFoundError: entry N or N-1 is missing.
    """
    if batch < 1:
        raise ValueError(f"micro-batch {batch} has no previous offsets entry in {checkpoint} to rewind")
    head_prev, prev = read_offsets(checkpoint, batch - 1)
    head_cur, cur = read_offsets(checkpoint, batch)
    out: dict[str, dict[str, Any]] = {}
    for t, parts in bounds.items():
        for i, src in enumerate(cur):
            if src is None or t not in src:
                continue
            old_start = dict((prev[i] or {}).get(t, {})) if i < len(prev) else {}
            new_start, new_end = rewound_range({str(p): int(o) for p, o in src[t].items()}, parts,
                                               {str(p): int(o) for p, o in old_start.items()})
            out[t] = {"start": old_start, "end": dict(src[t]), "new_start": new_start, "new_end": new_end}
            if i < len(prev):
                prev[i] = {**(prev[i] or {}), t: new_start}
            src[t] = new_end
    if out:
        _write_atomic(checkpoint / "offsets" / str(batch - 1), format_offsets(head_prev, prev))
        _write_atomic(checkpoint / "offsets" / str(batch), format_offsets(head_cur, cur))
    return out


def _readable(path: Path) -> bool:
    """True when ``path`` is a complete entry of Spark's metadata logs: ``v1``, then one JSON document per line
    (or ``-``, Spark's line for a source without an offset)."""
    try:
        lines = path.read_text().split("\n")
        if len(lines) < 2 or lines[0] != "v1":
            return False
        for x in lines[1:]:
            if x and x != VOID_OFFSET:
                json.loads(x)
        return True
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def set_aside_corrupt_entries(checkpoint: Path) -> list[str]:
    """Move a truncated or corrupt latest ``offsets`` / ``commits`` entry of a query's checkpoint out of Spark's
    way, so the query re-runs that micro-batch instead of failing at every start.

    Spark writes these entries atomically, so a broken one comes from a damaged disk or a hand edit; Spark then
    fails the query at start with a bare JSON parser message (``Unexpected end-of-input in field name``) that names
    neither file nor cure, and a supervised job restarts into the same failure. Here the latest offsets entry N is
    checked, and the latest commit: a broken offsets entry N is moved to ``<checkpoint>/corrupt/offsets-N-<epoch s>``
    together with commit N (``commits-N-<epoch s>``), so batch N is planned again from entry N-1 (the sinks are idempotent: its lake
    files and ClickHouse rows are rewritten); a broken commit N alone is moved, so batch N is re-run. They leave the ``offsets`` and ``commits`` folders, whose
    readers take every name there for a batch number (until 2026-12-06 they stayed there as ``N.corrupt-<time>``,
    and ``ops.streamstate.committed_offsets`` failed on them with ValueError). Each is
    logged as an error naming the file. Entries before the latest are not read by Spark at start and are left.

    Returns:
        the new paths of the entries moved (empty when the checkpoint is sound or has no entries).
    Raises:
        OSError: an entry cannot be moved.
    """
    moved: list[str] = []
    stamp = int(time.time())

    def aside(kind: str, n: int) -> None:
        f = checkpoint / kind / str(n)
        if f.exists():
            dest = checkpoint / CORRUPT_DIR / f"{kind}-{n}-{stamp}"
            dest.parent.mkdir(exist_ok=True)
            os.replace(f, dest)
            f.with_name(f".{n}.crc").unlink(missing_ok=True)
            moved.append(str(dest))

    offsets = batch_numbers(checkpoint / "offsets")
    if offsets and not _readable(checkpoint / "offsets" / str(offsets[-1])):
        log.error("streaming checkpoint: offsets entry %s is truncated or corrupt; moved to %s with "
                  "its commit, the micro-batch is planned again from the previous entry",
                  checkpoint / "offsets" / str(offsets[-1]), checkpoint / CORRUPT_DIR / f"offsets-{offsets[-1]}-{stamp}")
        aside("offsets", offsets[-1])
        aside("commits", offsets[-1])
    commits = batch_numbers(checkpoint / "commits")
    if commits and not _readable(checkpoint / "commits" / str(commits[-1])):
        log.error("streaming checkpoint: commit entry %s is truncated or corrupt; moved to %s, the micro-batch "
                  "is run again", checkpoint / "commits" / str(commits[-1]),
                  checkpoint / CORRUPT_DIR / f"commits-{commits[-1]}-{stamp}")
        aside("commits", commits[-1])
    return moved


#: :func:`lake_file_naming` values: lake files named ``batch-<id>-<8 hex of the query id>`` / plain ``batch-<id>``
TAGGED, UNTAGGED = "query-id", "none"


def lake_file_naming(checkpoint: Path, before_start: bool = False) -> str:
    """How a query's lake files are named, decided once per checkpoint and kept in ``<checkpoint>/lake-file-tag``.

    :data:`TAGGED` (``query-id``): ``batch-<id>-<first 8 hex digits of the query id>.parquet``, so a query on a new
    checkpoint (the old one lost), whose batch ids start at 0 again, cannot overwrite the old run's files.
    :data:`UNTAGGED` (``none``): the plain ``batch-<id>.parquet`` of a checkpoint the code before 2026-12-06 made:
    its batch N interrupted after writing ``batch-N.parquet`` is re-run under the same name (a tagged name would
    leave both files: every row of batch N twice in the lake).

    The file is written (atomically) on the first call: without it, a checkpoint that already holds batches was
    made by the old code (untagged), an empty one is new (tagged). ``before_start`` (the job, before its queries
    run): any ``offsets`` or ``commits`` entry counts, so also a first batch the old code planned and did not
    commit. Otherwise (a sink, while its query runs and has planned the batch itself): ``commits`` entries only.
    A file with another content is logged as an error and decided again.

    Args:
        checkpoint: a query's local checkpoint folder (``<SPARK_CHECKPOINT_DIR>/<query>``).
    Returns:
        :data:`TAGGED` or :data:`UNTAGGED`.
    Raises:
        OSError: the marker cannot be written.
    """
    path = checkpoint / NAMING_FILE
    if path.exists():
        try:
            got = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            got = f"unreadable ({exc})"
        if got in (TAGGED, UNTAGGED):
            return got
        log.error("streaming checkpoint: %s holds %r, not %s or %s; decided again from the checkpoint's entries",
                  path, got[:100], TAGGED, UNTAGGED)
    old = batch_numbers(checkpoint / "commits") or (before_start and batch_numbers(checkpoint / "offsets"))
    naming = UNTAGGED if old else TAGGED
    checkpoint.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, naming + "\n")
    if naming == UNTAGGED:
        log.warning("streaming checkpoint %s holds micro-batches but no %s (made before 2026-12-06): its lake files "
                    "keep the plain batch-<id>.parquet names, so a re-run batch overwrites its own file", checkpoint,
                    NAMING_FILE)
    return naming

"""Unit tests of the streaming checkpoint helpers (``streaming/checkpoint.py``, ``ops/streamstate.py``) and of the
job's start-up decisions on plain folders and stubs: no Kafka, Spark, MinIO or ClickHouse is started."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from streaming import checkpoint as C

META = '{"batchWatermarkMs":0,"batchTimestampMs":1765000000000,"conf":{}}'


def offsets_entry(*sources: dict | None) -> str:
    return "\n".join(["v1", META] + ["-" if s is None else json.dumps(s, separators=(",", ":")) for s in sources])


def make_checkpoint(root: Path, offsets: dict[int, str], commits: list[int]) -> Path:
    (root / "offsets").mkdir(parents=True, exist_ok=True)
    (root / "commits").mkdir(parents=True, exist_ok=True)
    for n, text in offsets.items():
        (root / "offsets" / str(n)).write_text(text)
    for n in commits:
        (root / "commits" / str(n)).write_text('v1\n{"nextBatchWatermarkMs":0}')
    return root


# ------------------------------------------------------------------------ Spark's void offset, ids file --
def test_a_void_offset_line_is_a_sound_entry_and_is_written_back_as_a_dash(tmp_path):
    """Spark writes ``-`` for a source without an offset (OffsetSeqLog.SERIALIZED_VOID_OFFSET). Before, such an
    entry was set aside as corrupt (its batch planned again) and a rewind rewrote the line as "" (unparseable)."""
    cp = make_checkpoint(tmp_path / "raw", {0: offsets_entry({"t": {"0": 5}}, None)}, [0])
    assert C.set_aside_corrupt_entries(cp) == []
    assert (cp / "offsets" / "0").exists()
    header, sources = C.read_offsets(cp, 0)
    assert sources == [{"t": {"0": 5}}, None]
    C.remember_topic_ids(cp, {"t": "old-id"})
    got = C.rewind_recreated_topics(cp, {"t": "new-id"})
    assert got["t"]["offsets"] == {"0": 5} and got["t"]["batch"] == 1
    assert (cp / "offsets" / "1").read_text().split("\n")[2:] == ['{"t":{"0":0}}', "-"]


def test_a_corrupt_topic_ids_file_is_logged_and_learned_again(tmp_path, caplog):
    """A truncated topic-ids.json failed every start (JSONDecodeError in rewind_recreated_topics). Now it reads as
    absent with an error log, and the broker's ids are written in its place."""
    cp = make_checkpoint(tmp_path / "raw", {0: offsets_entry({"t": {"0": 5}})}, [0])
    (cp / C.IDS_FILE).write_text('{"t": "abc')
    with caplog.at_level(logging.ERROR, logger="streaming.checkpoint"):
        assert C.rewind_recreated_topics(cp, {"t": "id-1"}) == {}
    assert "topic-ids.json is unreadable" in caplog.text
    assert json.loads((cp / C.IDS_FILE).read_text()) == {"t": "id-1"}
    (cp / C.IDS_FILE).write_text('["t"]')   # valid JSON, wrong shape
    assert C.stored_topic_ids(cp) == {}


def test_a_corrupt_pending_rows_file_is_moved_aside_and_reported_once(tmp_path, caplog):
    """A broken ``stream-batches-pending.json`` (kept rows for the next start) was logged as an error at every start
    for ever (left in place). Now it is moved to ``corrupt/stream-batches-pending-<epoch s>.json`` with one error
    naming both paths; the next read finds no file and logs nothing, and a new row is kept as usual."""
    cp = tmp_path / "windows"
    cp.mkdir()
    (cp / C.PENDING_ROWS_FILE).write_text('{"5": {"batch_id"')
    with caplog.at_level(logging.ERROR, logger="streaming.checkpoint"):
        assert C.pending_batch_rows(cp) == {}
    assert "stream-batches-pending.json is unreadable" in caplog.text and "moved to" in caplog.text
    assert not (cp / C.PENDING_ROWS_FILE).exists()
    assert [f.read_text() for f in (cp / C.CORRUPT_DIR).glob("stream-batches-pending-*.json")] == ['{"5": {"batch_id"']
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="streaming.checkpoint"):
        assert C.pending_batch_rows(cp) == {}
    assert caplog.text == ""
    C.keep_pending_batch_row(cp, {"batch_id": 6, "query": "windows"})
    assert C.pending_batch_rows(cp) == {"6": {"batch_id": 6, "query": "windows"}}


def test_atomic_writes_fsync_the_file_before_the_rename(tmp_path, monkeypatch):
    import os

    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    C._write_atomic(tmp_path / "f", "text")
    assert (tmp_path / "f").read_text() == "text"
    assert calls[:2] == ["fsync", "replace"]


# --------------------------------------------------------------------------------- lake file naming --
QUERY_ID = "3f2a9c1e-1111-2222-3333-444455556666"


def sinks_on(root: Path):
    """StreamSinks on the checkpoint root ``root`` with stub clients (run_tag touches neither)."""
    from conftest import settings_env
    from streaming.sinks import StreamSinks

    with settings_env(SPARK_CHECKPOINT_DIR=str(root)) as s:
        return StreamSinks(s, client=object(), lake=object())


def test_a_batch_the_old_code_interrupted_is_rerun_under_its_plain_name(tmp_path):
    """Upgrade path: the code before the tags ran batch 3 of the raw query, wrote ``batch-3.parquet`` and was
    stopped before Spark's commit. Before, the new code re-ran batch 3 as ``batch-3-3f2a9c1e.parquet``: the plain
    file stayed and every row of batch 3 was in the lake twice. Now the checkpoint (batches, no ``lake-file-tag``)
    is marked untagged at start and the batch rewrites ``batch-3.parquet``; the decision is kept."""
    cp = make_checkpoint(tmp_path / "raw", {n: offsets_entry({"t": {"0": 10 * n}}) for n in range(4)}, [0, 1, 2])
    (cp / "metadata").write_text(json.dumps({"id": QUERY_ID}))
    assert C.lake_file_naming(cp, before_start=True) == C.UNTAGGED
    assert (cp / C.NAMING_FILE).read_text().strip() == "none"
    assert sinks_on(tmp_path).run_tag("raw") == ""
    # a first batch the old code planned and did not commit counts at start too
    cp2 = make_checkpoint(tmp_path / "windows", {0: offsets_entry({"t": {"0": 0}})}, [])
    (cp2 / "metadata").write_text(json.dumps({"id": QUERY_ID}))
    assert C.lake_file_naming(cp2, before_start=True) == C.UNTAGGED
    assert sinks_on(tmp_path).run_tag("windows") == ""


def test_a_new_checkpoint_tags_its_lake_files_for_its_whole_life(tmp_path):
    cp = tmp_path / "raw"
    assert C.lake_file_naming(cp, before_start=True) == C.TAGGED   # the job's start: no entry yet
    (cp / "metadata").write_text(json.dumps({"id": QUERY_ID}))    # Spark starts the query
    make_checkpoint(cp, {0: offsets_entry({"t": {"0": 0}}), 1: offsets_entry({"t": {"0": 7}})}, [0])
    assert sinks_on(tmp_path).run_tag("raw") == "-3f2a9c1e"
    assert C.lake_file_naming(cp, before_start=True) == C.TAGGED   # batches committed since: still tagged


def test_sinks_without_the_jobs_start_decide_by_the_commits(tmp_path, caplog):
    """A sink on a checkpoint without ``lake-file-tag`` (driven without :meth:`StreamingJob.start`): its running
    query planned batch 0 itself (offsets/0, no commit): tagged; committed batches: untagged. An unknown marker
    content is logged and decided again. No metadata (sinks driven directly): no tag and no marker written."""
    new = make_checkpoint(tmp_path / "raw", {0: offsets_entry({"t": {"0": 0}})}, [])
    (new / "metadata").write_text(json.dumps({"id": QUERY_ID}))
    assert sinks_on(tmp_path).run_tag("raw") == "-3f2a9c1e"
    old = make_checkpoint(tmp_path / "windows", {0: offsets_entry({"t": {"0": 0}})}, [0])
    (old / "metadata").write_text(json.dumps({"id": QUERY_ID}))
    (old / C.NAMING_FILE).write_text("garbage")
    with caplog.at_level(logging.ERROR, logger="streaming.checkpoint"):
        assert sinks_on(tmp_path).run_tag("windows") == ""
    assert "holds 'garbage'" in caplog.text
    assert sinks_on(tmp_path / "none").run_tag("raw") == ""
    assert not (tmp_path / "none" / "raw" / C.NAMING_FILE).exists()


# ------------------------------------------------------------------------------ set-aside entries --
def test_set_aside_entries_leave_the_metadata_folders_and_readers_skip_old_ones(tmp_path):
    """A corrupt offsets entry 2 set aside used to stay in ``offsets/`` and ``commits/`` as ``2.corrupt-<time>``;
    ``ops.streamstate.committed_offsets`` (make demo's wait for the stream) then raised ValueError (int() of the
    name). Now entries move to ``<query>/corrupt/`` and the readers take digit-only names (a ``2.corrupt-`` name
    left by the earlier version, a ``.2.crc`` or a temp file are not batches)."""
    from ops.streamstate import committed_offsets

    cp = make_checkpoint(tmp_path / "raw", {0: offsets_entry({"t": {"0": 5}}), 1: offsets_entry({"t": {"0": 9}}, None),
                                            2: "v1\n{\"batchWat"}, [0, 1, 2])
    moved = C.set_aside_corrupt_entries(cp)
    assert sorted(Path(m).name.rsplit("-", 1)[0] for m in moved) == ["commits-2", "offsets-2"]
    assert all(Path(m).parent == cp / "corrupt" for m in moved)
    assert sorted(p.name for p in (cp / "commits").iterdir()) == ["0", "1"]
    (cp / "commits" / "2.corrupt-1765000000").write_text("v1\n{")   # left by the version before
    (cp / "commits" / ".1.crc").write_bytes(b"crc")
    assert committed_offsets(tmp_path, "raw") == {"t": {0: 9}}
    assert C.batch_numbers(cp / "commits") == [0, 1]
    assert committed_offsets(tmp_path, "windows") == {}


# ------------------------------------------------------------------------------ lost checkpoint resume --
def test_resume_offsets_beyond_a_topics_end_start_from_its_earliest():
    recorded = {"sales": {"0": 500, "1": 40, "2": 7}, "inv": {"0": 3}}
    bounds = {"sales": {"0": (0, 12), "1": (0, 60), "2": (10, 20), "3": (0, 5)}, "inv": {"0": (0, 3)}}
    start, problems = C.resume_offsets(recorded, bounds)
    assert start == {"sales": {"0": -2, "1": 40, "2": 10, "3": -2}, "inv": {"0": 3}}
    assert [(p["topic"], p["partition"], p["problem"]) for p in problems] == [
        ("sales", 0, "beyond_end"), ("sales", 2, "expired"), ("sales", 3, "unrecorded")]


class _StubSinks:
    def __init__(self, row: dict):
        import pandas as pd

        self.frame = pd.DataFrame([row]) if row else pd.DataFrame({"o": [], "b": [], "t": []})

    def retrying(self, what, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def _query(self, sql, parameters=None):
        return self.frame


def bare_job(settings, sinks):
    """A StreamingJob built without ``__init__`` (no Spark session, no services, no migrations): ``settings``,
    ``sinks`` and the empty state ``__init__`` gives every job (queries, kept admin clients, rewinds, ...)."""
    from streaming.job import StreamingJob

    job = object.__new__(StreamingJob)
    job.s, job.spark, job.sinks = settings, None, sinks
    job._init_state()
    return job


def stub_job(tmp_path, recorded: dict | None, **env):
    """A StreamingJob (:func:`bare_job`) with stub sinks (stream_batches answering ``recorded``) on the checkpoint
    root ``tmp_path``."""
    from conftest import settings_env

    with settings_env(SPARK_CHECKPOINT_DIR=str(tmp_path), **env) as s:
        pass
    return bare_job(s, _StubSinks({"o": json.dumps(recorded), "b": 4, "t": "2026-12-06 12:00:00"} if recorded else {}))


def test_a_lost_checkpoint_on_a_recreated_topic_resumes_from_its_earliest(tmp_path, monkeypatch, caplog):
    """The raw checkpoint lost and the sales topic re-created since the recorded batch (end offset 500, the new
    topic holds 12). Before, the raw query resumed at 500: Spark skipped the new topic's 12 records with a warning
    (a first batch: not counted) while the log said 'none skipped'. Now that partition starts at its earliest
    offset, logged as an error naming topic, partition and offsets."""
    import streaming.checkpoint as cp_mod

    job = stub_job(tmp_path, {"retail-sales-transactions": {"0": 500}})
    topics = job._query_topics()["raw"]
    monkeypatch.setattr(cp_mod, "partition_offset_bounds",
                        lambda s, ts: {t: {"0": (0, 12 if "sales" in t else 0)} for t in ts})
    with caplog.at_level(logging.INFO, logger="streaming.job"):
        start = job.lost_checkpoint_offsets("raw")
    sales = next(t for t in topics if "sales" in t)
    assert start[sales] == {"0": -2}
    assert f"topic {sales} partition 0: the resume offset 500 lies beyond the topic's end offset 12" in caplog.text
    assert "none skipped" not in caplog.text
    (tmp_path / "raw" / "offsets").mkdir(parents=True)
    (tmp_path / "raw" / "offsets" / "0").write_text(offsets_entry({sales: {"0": 1}}))
    assert job.lost_checkpoint_offsets("raw") is None   # a checkpoint with offsets: Spark's own resume


def test_resume_of_a_lost_checkpoint_can_be_turned_off(tmp_path, monkeypatch, caplog):
    import streaming.checkpoint as cp_mod
    from conftest import settings_env
    from core.settings import ConfigError

    monkeypatch.setattr(cp_mod, "partition_offset_bounds", lambda s, ts: pytest.fail("no resume wanted"))
    job = stub_job(tmp_path, {"retail-sales-transactions": {"0": 5}}, STREAM_RESUME_LOST_CHECKPOINT="false")
    with caplog.at_level(logging.ERROR, logger="streaming.job"):
        assert job.lost_checkpoint_offsets("raw") is None
    assert "STREAM_RESUME_LOST_CHECKPOINT=false: starting from STREAM_STARTING_OFFSETS=earliest" in caplog.text
    for bad in ("maybe", "1", "yes"):
        with pytest.raises(ConfigError, match="STREAM_RESUME_LOST_CHECKPOINT"):
            with settings_env(STREAM_RESUME_LOST_CHECKPOINT=bad):
                pass
    with settings_env(STREAM_RESUME_LOST_CHECKPOINT="TRUE") as s:
        assert s.stream_resume_lost_checkpoint is True


# ------------------------------------------------------------- topics re-created while the stream runs --
def test_a_recreation_is_told_by_the_topic_id_whatever_the_offsets_do():
    """The new topic with fewer records (offsets back), with more (past the old offsets: no offset goes back), the
    same id (nothing), a topic deleted and not created yet (not counted: Spark reads its partitions from their
    earliest when they come back), and a topic without a stored id whose offsets went back."""
    start = {"s": {"0": 40, "1": 30}, "d": {"0": 5}}
    stored = {"s": "old", "d": "dl"}
    assert C.recreated_in_batch(stored, {"s": "new", "d": "dl"}, start, {"s": {"0": 7, "1": 2}, "d": {"0": 5}}) == {
        "s": "topic id old -> new"}
    assert C.recreated_in_batch(stored, {"s": "new", "d": "dl"}, start, {"s": {"0": 90, "1": 60}, "d": {"0": 5}}) == {
        "s": "topic id old -> new"}
    assert C.recreated_in_batch(stored, {"s": "old", "d": "dl"}, start, {"s": {"0": 41, "1": 30}, "d": {"0": 6}}) == {}
    assert C.recreated_in_batch(stored, {"d": "dl"}, start, {"d": {"0": 6}}) == {}
    assert C.recreated_in_batch({}, {"s": "x"}, start, {"s": {"0": 41, "1": 3}}) == {
        "s": "offsets went back (1: 30 -> 3), no stored topic id"}
    assert C.recreated_in_batch({}, {"s": "x"}, start, {"s": {"0": 41, "1": 31}}) == {}


def test_a_rewound_range_covers_the_new_topic_from_its_start():
    # planned end within the new topic: kept; beyond its end (planned on the old topic): cut to it; a partition the
    # plan lacks ends at its earliest; an old partition the new topic lacks is left out
    assert C.rewound_range({"0": 7, "1": 55, "2": 9}, {"0": (0, 20), "1": (0, 12), "3": (4, 8)}) == (
        {"0": 0, "1": 0, "3": 4}, {"0": 7, "1": 12, "3": 4})


def test_a_rewound_batch_reads_no_more_records_than_were_planned():
    """maxOffsetsPerTrigger: a batch planned [40, 55) and [30, 60) on the old topic (15 + 30 records) and rewound
    to a new topic of 90 records per partition read [0, 55) and [0, 60) before (115 records, the limit ignored); now
    [0, 15) and [0, 30): the planned sizes. Offsets gone back (planned 40 -> 7) read nothing in the re-run; a
    partition without a planned start keeps the planned end."""
    bounds = {"0": (0, 90), "1": (0, 90), "2": (0, 90), "3": (0, 90)}
    assert C.rewound_range({"0": 55, "1": 60, "2": 7, "3": 9}, bounds, {"0": 40, "1": 30, "2": 40}) == (
        {"0": 0, "1": 0, "2": 0, "3": 0}, {"0": 15, "1": 30, "2": 0, "3": 9})


def test_rewinding_a_running_batch_rewrites_its_start_and_end_entries_only_for_the_recreated_topic(tmp_path):
    """Raw-like entries (one source per topic, a void one): batch 6 planned [entry 5, entry 6); the sales topic
    re-created with 2 partitions (the old one had 3). Entry 5 gets the new topic's earliest offsets, entry 6 the
    planned end within the new topic and the planned number of records (p0 went back: none; p1 planned 20 of
    30..50: 20, within the new topic's 45); the other sources, the void line and the header lines are kept."""
    old5 = offsets_entry({"sales": {"0": 40, "1": 30, "2": 20}}, {"inv": {"0": 8}}, None)
    old6 = offsets_entry({"sales": {"0": 3, "1": 50, "2": 20}}, {"inv": {"0": 9}}, None)
    cp = make_checkpoint(tmp_path / "raw", {5: old5, 6: old6}, [5])
    (cp / "offsets" / ".5.crc").write_text("old checksum")
    got = C.rewind_running_batch(cp, 6, {"sales": {"0": (0, 3), "1": (0, 45)}})
    assert got == {"sales": {"start": {"0": 40, "1": 30, "2": 20}, "end": {"0": 3, "1": 50, "2": 20},
                             "new_start": {"0": 0, "1": 0}, "new_end": {"0": 0, "1": 20}}}   # planned sizes
    h5, s5 = C.read_offsets(cp, 5)
    h6, s6 = C.read_offsets(cp, 6)
    assert (h5, h6) == (old5.split("\n")[:2], old6.split("\n")[:2])
    assert s5 == [{"sales": {"0": 0, "1": 0}}, {"inv": {"0": 8}}, None]
    assert s6 == [{"sales": {"0": 0, "1": 20}}, {"inv": {"0": 9}}, None]
    assert not (cp / "offsets" / ".5.crc").exists()          # Hadoop's checksum of the old content
    assert C.rewind_running_batch(cp, 6, {"other": {"0": (0, 1)}}) == {}
    with pytest.raises(ValueError, match="micro-batch 0 has no previous offsets entry"):
        C.rewind_running_batch(cp, 0, {"sales": {"0": (0, 3)}})


def test_a_batch_over_a_recreated_topic_is_rewound_and_failed_before_it_reads(tmp_path, monkeypatch, caplog):
    """Windows batch 3 planned after the sales topic was re-created and grew past the old offsets (40 -> 55 on the
    old partition: nothing goes back). Before, the batch read [40, 55) of the new topic: its records 0-39 were
    skipped (only an error log, from the ids refreshed after the commit). Now the batch's check finds the new id,
    rewinds entries 2 and 3 to [0, 15) (the 15 records planned), stores the id, logs the fault and fails the batch before the sink runs; the
    job marks the query for an in-process restart. The re-run batch passes the check (ids stored), and the next
    start rewinds nothing (the old start-up rewind would otherwise read the topic from 0 again: doubles)."""
    import streaming.checkpoint as cp_mod
    from streaming.job import TopicRecreatedError

    job = stub_job(tmp_path, None)
    sales, inv = job._query_topics()["windows"]
    cp = make_checkpoint(tmp_path / "windows", {2: offsets_entry({sales: {"0": 40}, inv: {"0": 9}}),
                                                3: offsets_entry({sales: {"0": 55}, inv: {"0": 12}})}, [2])
    C.remember_topic_ids(cp, {sales: "old-id", inv: "inv-id"})
    now = {sales: "new-id", inv: "inv-id"}
    monkeypatch.setattr(job, "_topic_ids_now", lambda name: dict(now))
    monkeypatch.setattr(cp_mod, "partition_offset_bounds", lambda s, ts: {t: {"0": (0, 61)} for t in ts})
    ran = []
    batch = job._checked("windows", lambda df, b: ran.append(b))
    with caplog.at_level(logging.ERROR, logger="streaming.job"):
        with pytest.raises(TopicRecreatedError, match=f"topic {sales} \\(topic id old-id -> new-id\\)"):
            batch(None, 3)
    assert ran == []
    assert C.read_offsets(cp, 2)[1] == [{sales: {"0": 0}, inv: {"0": 9}}]
    assert C.read_offsets(cp, 3)[1] == [{sales: {"0": 15}, inv: {"0": 12}}]   # 15 records, as planned (40 -> 55)
    assert C.stored_topic_ids(cp) == now
    assert job._rewound["windows"]["batch"] == 3
    assert f"micro-batch 3: topic(s) deleted and re-created while the stream ran: topic {sales}" in caplog.text
    batch(None, 3)                                   # the re-run: ids as stored, the sink runs
    assert ran == [3]
    assert C.rewind_recreated_topics(cp, now) == {}
    # a first batch has no entry before it: logged, not rewound, the sink runs
    cp0 = make_checkpoint(tmp_path / "raw", {0: offsets_entry({sales: {"0": 5}})}, [])
    C.remember_topic_ids(cp0, {sales: "old-id"})
    with caplog.at_level(logging.ERROR, logger="streaming.job"):
        job._checked("raw", lambda df, b: ran.append(b))(None, 0)
    assert ran == [3, 0] and "a first batch starts at offsets Spark keeps outside the offsets log" in caplog.text


def test_the_starts_own_rewind_is_not_logged_as_a_truncated_log(tmp_path, caplog):
    """The start-up rewind (topic re-created while the job was down) plans a batch whose offsets go back to 0 on
    purpose; only an offset going back elsewhere (same topic id: a truncated log, a re-creation being rewound
    before the read) is an error."""
    class Recorder:
        def record_progress(self, *a, **kw):
            pass

    job = stub_job(tmp_path, None)
    job.sinks = Recorder()
    job.recreated_topics = {"raw": {"sales": {"batch": 4}}}
    prog = {"sources": [{"startOffset": {"sales": {"0": 40}}, "endOffset": {"sales": {"0": 0}}, "numInputRows": 0}],
            "stateOperators": []}
    with caplog.at_level(logging.ERROR, logger="streaming.job"):
        job._record_progress("raw", {**prog, "batchId": 4})
        assert "went back" not in caplog.text
        job._record_progress("raw", {**prog, "batchId": 9})
    assert "topic sales partition 0 went back from offset 40 to 0 without a rewind" in caplog.text
    assert "up to 0 record(s) below 0 were skipped unread" in caplog.text


# --------------------------------------------------------------------------- broker blip at start --
def test_a_broker_blip_while_the_start_asks_the_topic_ids_is_retried(tmp_path, monkeypatch, caplog):
    """Kafka unreachable for one request between the start-up wait and the start's topic-id look-up. Before, the
    KafkaError failed the start; now the look-up is retried with the sinks' backoff (the wait logged)."""
    from kafka.errors import KafkaConnectionError

    import streaming.checkpoint as cp_mod
    from conftest import settings_env
    from streaming.sinks import StreamSinks

    job = stub_job(tmp_path, None)
    with settings_env(SPARK_CHECKPOINT_DIR=str(tmp_path), STREAM_SINK_RETRY_SECONDS="60") as s:
        job.s, job.sinks = s, StreamSinks(s, client=object(), lake=object())
    calls = []

    def flaky(settings, topics, admin=None):
        calls.append(topics)
        if len(calls) == 1:
            raise KafkaConnectionError("Connection refused")
        return {t: f"id-{t}" for t in topics}

    monkeypatch.setattr(cp_mod, "topic_ids", flaky)
    with caplog.at_level(logging.WARNING, logger="streaming.sinks"):
        assert job.rewind_recreated_topics() == {}
    assert len(calls) == 2 and "Kafka topic ids at start: infrastructure error" in caplog.text
    assert C.stored_topic_ids(tmp_path / "raw") == {t: f"id-{t}" for t in job._query_topics()["raw"]}


# ------------------------------------------------------------------------- stream_batches rows per batch --
def test_a_batch_without_counts_writes_one_stream_batches_row_with_its_end_offsets(tmp_path):
    """Each micro-batch's stream_batches row was inserted twice: once by the sink, again by the progress with the
    end offsets (never empty). Now the first row reads them from the checkpoint's offsets entry, and the progress
    re-inserts only when it adds a count (or offsets the first row lacked)."""
    class Client:
        rows: list = []

        def insert_df(self, table, df):
            self.rows.append((table, df.iloc[0].to_dict()))

    cp = make_checkpoint(tmp_path / "raw", {3: offsets_entry({"t": {"1": 9, "0": 5}}, None, {"u": {"0": 2}})}, [])
    sinks = sinks_on(tmp_path)
    sinks.ch = client = Client()
    sinks._log_batch("raw", 3, 10, 10, 0.0)
    want = json.dumps({"t": {"0": 5, "1": 9}, "u": {"0": 2}}, sort_keys=True)
    assert [r["end_offsets"] for _, r in client.rows] == [want]
    sinks.record_progress("raw", 3, 0, end_offsets=want)
    assert len(client.rows) == 1
    sinks.record_progress("raw", 3, 2, end_offsets=want)   # duplicates dropped: the counts are written
    assert len(client.rows) == 2 and client.rows[-1][1]["duplicates_dropped"] == 2
    sinks._log_batch("raw", 4, 1, 1, 0.0)                   # no offsets entry here: the progress writes them
    sinks.record_progress("raw", 4, 0, end_offsets=want)
    assert [r["end_offsets"] for _, r in client.rows[2:]] == ["", want]
    assert cp.exists()


# -------------------------------------------------------------- topics the broker answers with an error --
ZERO = "00000000-0000-0000-0000-000000000000"


def described(name: str, topic_id: str, error_code: int = 0) -> dict:
    """One topic of ``KafkaAdminClient.describe_topics``' answer (kafka-python's MetadataResponse.to_dict())."""
    import uuid

    return {"error_code": error_code, "name": name, "topic_id": uuid.UUID(topic_id), "is_internal": False,
            "partitions": [] if error_code else [{"error_code": 0, "partition_index": 0, "leader_id": 1,
                                                 "replica_nodes": [1], "isr_nodes": [1], "offline_replicas": []}],
            "topic_authorized_operations": -2147483648}


class _FakeAdmin:
    """list_topics / describe_topics of a broker whose metadata answers ``answer`` (a list of :func:`described`)."""

    def __init__(self, answer: list[dict]):
        self.answer = answer

    def list_topics(self):
        return [t["name"] for t in self.answer]

    def describe_topics(self, topics):
        return [t for t in self.answer if t["name"] in topics]

    def close(self):
        pass


R, R2 = "6f1c1e0a-1b2c-4d3e-8f40-5a6b7c8d9e0f", "0a9b8c7d-6e5f-4a3b-9c2d-1e0f1a2b3c4d"


def test_a_topic_answered_with_an_error_has_no_id_and_is_neither_rewound_nor_stored(tmp_path, monkeypatch, caplog):
    """Kafka answers a topic it cannot describe (deleted between list and describe: UNKNOWN_TOPIC_OR_PARTITION 3;
    a broker's metadata lagging: LEADER_NOT_AVAILABLE 5) with the zero topic id. Before, topic_ids returned it:
    the start-up rewind and every micro-batch took "id R -> zero" for a re-creation, rewound the topic to its
    earliest offsets (every retained record read again into lake and windows) and stored the zero id, so the
    next answer "zero -> R" rewound again. Now such a topic is unknown: no rewind, the stored id kept, a warning;
    a micro-batch waits for its id (asked again for STREAM_SINK_RETRY_SECONDS, then fails uncommitted) instead of
    reading it unchecked (a review of 2026-12-06: read unchecked, then read again by a later rewind)."""
    import streaming.checkpoint as cp_mod
    import core.kafka_admin as ka

    answer = [described("sales", R), described("inv", ZERO, 3), described("dl", ZERO, 5), described("odd", ZERO, 0)]
    with caplog.at_level(logging.WARNING, logger="streaming.checkpoint"):
        assert C.topic_ids(None, ["sales", "inv", "dl", "odd", "gone"], admin=_FakeAdmin(answer)) == {"sales": R}
    assert "Kafka topic inv answered with error code 3" in caplog.text
    # the start-up rewind: nothing rewound, stored ids kept
    cp = make_checkpoint(tmp_path / "windows", {2: offsets_entry({"sales": {"0": 40}, "inv": {"0": 9}})}, [2])
    C.remember_topic_ids(cp, {"sales": R, "inv": R2})
    got = C.rewind_recreated_topics(cp, C.topic_ids(None, ["sales", "inv"], admin=_FakeAdmin(answer)))
    assert got == {} and C.batch_numbers(cp / "offsets") == [2]
    assert C.stored_topic_ids(cp) == {"sales": R, "inv": R2}
    # a micro-batch's check: nothing rewound, stored ids kept, and the batch does not read a topic it could not
    # check: asked again for STREAM_SINK_RETRY_SECONDS (1 s here), then failed uncommitted (the sink does not run)
    from streaming.job import TopicIdUnknownError

    (cp / "offsets" / "3").write_text(offsets_entry({"sales": {"0": 45}, "inv": {"0": 12}}))
    job = stub_job(tmp_path, None, STREAM_SINK_RETRY_SECONDS="1")
    monkeypatch.setattr(ka, "admin_client", lambda s: _FakeAdmin(answer))
    monkeypatch.setattr(job, "_query_topics", lambda: {"windows": ["sales", "inv"]})
    monkeypatch.setattr(cp_mod, "partition_offset_bounds", lambda s, ts: pytest.fail("nothing to rewind"))
    ran = []
    with pytest.raises(TopicIdUnknownError, match=r"\['inv'\]"):
        job._checked("windows", lambda df, b: ran.append(b))(None, 3)
    assert ran == [] and C.stored_topic_ids(cp) == {"sales": R, "inv": R2}
    assert C.read_offsets(cp, 2)[1] == [{"sales": {"0": 40}, "inv": {"0": 9}}]


# ------------------------------------------------------------- in-process restart of a rewound query --
class _FakeQuery:
    """The parts of a StreamingQuery the job's waits use. ``error``: the query failed with it (``awaitTermination``
    raises it, as PySpark raises StreamingQueryException); ``registry``: names Spark still holds active, a name
    left only once ``awaitTermination`` returned (Spark unregisters a query before its termination latch opens)."""

    def __init__(self, name: str, registry: set, error: Exception | None = None, active: bool = False):
        self.name, self.registry, self.error, self.isActive = name, registry, error, active
        registry.add(name)

    def awaitTermination(self, timeout=None):
        if self.isActive:
            return False
        self.registry.discard(self.name)
        if self.error is not None:
            raise self.error
        return True

    def exception(self):
        return self.error


def fake_job(tmp_path, monkeypatch, errors: dict[str, Exception | None], rewound: set[str]):
    """A stub job whose queries ``errors`` ({name: error or None}) have ended; those in ``rewound`` were rewound by
    check_topics. Restarting a query records its name and fails, as Spark does, while the old one is registered."""
    job = stub_job(tmp_path, None, RETAIL_STATE_DIR=str(tmp_path / "state"))
    registry: set = set()
    job.queries = {n: _FakeQuery(n, registry, e) for n, e in errors.items()}
    job._rewound = {n: {"batch": 3, "topics": {"sales": {}}} for n in rewound}
    job.restarted = []

    def start_query(name, resume=None):
        if name in registry:
            raise RuntimeError(f"Cannot start query with name {name} as a query with that name is already active")
        job.restarted.append(name)
        job.queries[name] = _FakeQuery(name, registry)
        return job.queries[name]

    monkeypatch.setattr(job, "_start_query", start_query)
    return job


def test_available_now_restarts_a_rewound_query_instead_of_failing(tmp_path, monkeypatch):
    """run_stream(available_now=True) (the default, --available-now): awaitTermination raises the rewound query's
    deliberate TopicRecreatedError failure. Before, it propagated before the restart was reached (the run failed;
    the next run re-ran the batch). Now the query is started again and waited for; another failure still raises."""
    from streaming.job import TopicRecreatedError

    job = fake_job(tmp_path, monkeypatch, {"raw": TopicRecreatedError("rewound"), "windows": None}, {"raw"})
    job.await_available_now(30)
    assert job.restarted == ["raw"]
    job = fake_job(tmp_path, monkeypatch, {"raw": None, "windows": ValueError("a bug")}, set())
    with pytest.raises(ValueError, match="a bug"):
        job.await_available_now(30)
    assert job.restarted == []


def test_await_any_restarts_a_rewound_query_only_once_spark_unregistered_it(tmp_path, monkeypatch):
    """isActive turns False before Spark unregisters a failed query; before, await_any started the rewound query
    again at once and could meet "a query with that name is already active". Now the old query is awaited first."""
    from streaming.job import TopicRecreatedError

    job = fake_job(tmp_path, monkeypatch, {"raw": None, "windows": TopicRecreatedError("rewound")}, {"windows"})
    job.queries["raw"].isActive = True
    job.await_any(0.5)
    assert job.restarted == ["windows"]


def test_await_any_with_no_time_left_still_looks_at_the_queries(tmp_path, monkeypatch):
    """ops.bench_stream polls with await_any(0.0) to raise a dead query's error; before, the loop body never ran
    with a zero timeout and the failure went unseen."""
    job = fake_job(tmp_path, monkeypatch, {"raw": ValueError("query died"), "windows": None}, set())
    job.queries["windows"].isActive = True
    with pytest.raises(ValueError, match="query died"):
        job.await_any(0.0)
    job.queries["raw"] = job.queries["windows"]   # all active: returns at once
    job.await_any(0.0)
    assert (tmp_path / "state" / "streaming.heartbeat").exists()


def test_a_broker_blip_in_a_batchs_topic_check_is_retried_without_touching_clickhouse(tmp_path, monkeypatch, caplog):
    """The micro-batch's topic-id look-up failing once with a Kafka error. Before, it was retried through
    StreamSinks.retrying, which resets the ClickHouse client both queries' batches share and counts a sink retry;
    now a Kafka-only retry (tenacity, same backoff) leaves both alone."""
    from kafka.errors import KafkaConnectionError

    from conftest import settings_env
    from streaming.sinks import StreamSinks

    job = stub_job(tmp_path, None)
    with settings_env(SPARK_CHECKPOINT_DIR=str(tmp_path), STREAM_SINK_RETRY_SECONDS="60") as s:
        job.s, job.sinks = s, StreamSinks(s, client=object(), lake=object())
    resets = []
    monkeypatch.setattr(job.sinks, "_reset_client", lambda: resets.append(1))
    cp = make_checkpoint(tmp_path / "windows", {2: offsets_entry({"sales": {"0": 40}}),
                                                3: offsets_entry({"sales": {"0": 45}})}, [2])
    C.remember_topic_ids(cp, {"sales": R})
    calls = []

    def flaky(name):
        calls.append(name)
        if len(calls) == 1:
            raise KafkaConnectionError("Connection refused")
        return {"sales": R}

    monkeypatch.setattr(job, "_topic_ids_now", flaky)
    with caplog.at_level(logging.WARNING, logger="streaming.job"):
        job.check_topics("windows", 3)
    assert calls == ["windows", "windows"]
    assert resets == [] and job.sinks.retries == 0       # old code: [1] and 1
    assert "windows micro-batch 3 Kafka topic ids: Kafka error" in caplog.text


def test_a_batch_waits_for_the_id_of_a_topic_the_broker_cannot_describe_yet(tmp_path, monkeypatch):
    """A review of 2026-12-06: a topic answered with an error (LEADER_NOT_AVAILABLE just after a re-creation: zero
    id) was left out of the batch's check, so the batch read the new topic unchecked, committed, and the next batch
    rewound to its start and read those records again (twice in lake and windows). Now ``_topic_ids_now`` raises
    the retriable TopicIdUnknownError for a topic of the query without a valid id, and ``check_topics`` asks again
    (kafka_retrying) until every topic has one; here the second answer shows the re-creation, which is rewound."""
    import streaming.checkpoint as cp_mod
    from conftest import settings_env
    from streaming.job import TopicIdUnknownError, TopicRecreatedError

    job = stub_job(tmp_path, None)
    with settings_env(SPARK_CHECKPOINT_DIR=str(tmp_path), STREAM_SINK_RETRY_SECONDS="60") as s:
        job.s = s
    monkeypatch.setattr(job, "_query_topics", lambda: {"windows": ["sales", "inv"]})
    cp = make_checkpoint(tmp_path / "windows", {2: offsets_entry({"sales": {"0": 40}, "inv": {"0": 5}}),
                                                3: offsets_entry({"sales": {"0": 55}, "inv": {"0": 5}})}, [2])
    C.remember_topic_ids(cp, {"sales": R, "inv": "I"})
    answers = [[{"name": "sales", "error_code": 5, "topic_id": C.ZERO_TOPIC_ID},   # LEADER_NOT_AVAILABLE
                {"name": "inv", "error_code": 0, "topic_id": "I"}],
               [{"name": "sales", "error_code": 0, "topic_id": "NEW"}, {"name": "inv", "error_code": 0, "topic_id": "I"}]]

    class Admin:
        def list_topics(self):
            return ["sales", "inv"]

        def describe_topics(self, topics):
            return answers.pop(0) if len(answers) > 1 else answers[0]

        def close(self):
            pass

    job._admins = {"windows": Admin()}
    with pytest.raises(TopicIdUnknownError, match=r"\['sales'\]"):
        job._topic_ids_now("windows")                       # old code: {'inv': 'I'}, the batch read sales unchecked
    answers.insert(0, [{"name": "sales", "error_code": 5, "topic_id": C.ZERO_TOPIC_ID},   # again: then the new id
                       {"name": "inv", "error_code": 0, "topic_id": "I"}])
    monkeypatch.setattr(cp_mod, "partition_offset_bounds", lambda s, ts: {t: {"0": (0, 15)} for t in ts})
    with pytest.raises(TopicRecreatedError):
        job.check_topics("windows", 3)                      # asked again, then the new id: rewound, not read twice
    assert C.stored_topic_ids(cp)["sales"] == "NEW"


def test_the_expired_count_asks_the_broker_once_per_batch_and_gives_up_in_a_failing_stop(tmp_path, monkeypatch, caplog):
    """A micro-batch that covered 24 offsets and read 14 (transaction markers, or records deleted unread): its
    records_expired needs the partitions' earliest offsets from the broker (:meth:`StreamingJob.expired_records`).
    (a) The count recorded with the batch is the one :meth:`StreamingJob.stats` reports: the broker is not asked
    again later, when its earliest offsets may have moved (a topic re-created since: 0, a real loss hidden; until
    2026-12-07 stats asked again per batch, 2 clients each). (b) A look-up failing with any error counts the upper
    bound with a warning (until then only KafkaError was caught: another error skipped the batch's whole
    record_progress). (c) A stopping job asks (its last poll records the final batches) until one look-up of that
    stop fails; then it asks no more (a stop during a Kafka outage must end within the supervisor's wait)."""
    import streaming.checkpoint as cp_mod

    recorded = []

    class Sinks(_StubSinks):
        batch_log, alerts_sent, retries = [], 0, 0

        def record_progress(self, name, batch, dups, **kw):
            recorded.append((name, batch, kw["expired"]))

    progress = {"batchId": 7, "sources": [{"startOffset": {"sales": {"0": 10, "1": 5}},
                                           "endOffset": {"sales": {"0": 30, "1": 9}}, "numInputRows": 14}]}
    job = bare_job(stub_job(tmp_path, None).s, Sinks({}))
    asked = []
    earliest = {"sales": {"0": (14, 30), "1": (0, 9)}}     # offsets 10..13 of partition 0 deleted unread: 4

    def bounds(s, topics, timeout_ms=None):
        asked.append(topics)
        return earliest

    monkeypatch.setattr(cp_mod, "partition_offset_bounds", bounds)
    job._record_progress("raw", progress)
    assert recorded == [("raw", 7, 4)] and len(asked) == 1

    class Query:   # a StreamingQuery's recentProgress as py4j hands it over
        class _jsq:
            @staticmethod
            def recentProgress():
                return [type("P", (), {"json": staticmethod(lambda: json.dumps(progress))})()]

    job.queries = {"raw": Query()}
    earliest = {"sales": {"0": (0, 30), "1": (0, 9)}}      # the topic re-created since: the broker says 0 now
    assert job.stats()["raw"]["records_expired"] == 4 and len(asked) == 1

    def failing(s, topics, timeout_ms=None):
        raise RuntimeError("look-up failed")

    monkeypatch.setattr(cp_mod, "partition_offset_bounds", failing)
    with caplog.at_level(logging.WARNING, logger="streaming.job"):
        assert job.expired_records("raw", progress) == 10
    assert "could not be read (look-up failed): 10 offset(s)" in caplog.text

    job.stopping.set()
    monkeypatch.setattr(cp_mod, "partition_offset_bounds", bounds)
    assert job.expired_records("raw", progress) == 0 and len(asked) == 2     # stopping, the broker answers
    monkeypatch.setattr(cp_mod, "partition_offset_bounds", failing)
    assert job.expired_records("raw", progress) == 10                        # fails while stopping
    monkeypatch.setattr(cp_mod, "partition_offset_bounds", bounds)
    assert job.expired_records("raw", progress) == 10 and len(asked) == 2     # not asked again in this stop
    assert "stopping and the broker did not answer" in caplog.text

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


def test_atomic_writes_fsync_the_file_before_the_rename(tmp_path, monkeypatch):
    import os

    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    C._write_atomic(tmp_path / "f", "text")
    assert (tmp_path / "f").read_text() == "text"
    assert calls[:2] == ["fsync", "replace"]

"""Unit tests of the benchmark's pure measurement functions (no timing assertions)."""

from __future__ import annotations

import numpy as np

from ops.bench_stream import freshness_ms, pct, targets_of


def test_freshness_maps_each_event_to_the_first_batch_covering_its_offset():
    # partition 0: offsets 0..3 produced at t=1000..1003 ms; batch 5 covers offsets < 2, batch 6 covers < 4
    sent = [("s", 0, o, 1000 + o) for o in range(4)] + [("other", 0, 0, 1000)]
    progress = {("windows", 5): {"s": {0: 2}}, ("windows", 6): {"s": {0: 4}}, ("raw", 5): {"s": {0: 4}}}
    log = [{"query": "windows", "batch_id": 5, "committed_at": 2.0},
           {"query": "windows", "batch_id": 6, "committed_at": 3.5},
           {"query": "raw", "batch_id": 5, "committed_at": 9.0}]
    f = freshness_ms(sent, log, progress, "windows", {"s"})
    assert sorted(f.tolist()) == sorted([2000 - 1000, 2000 - 1001, 3500 - 1002, 3500 - 1003])


def test_freshness_leaves_out_uncovered_events_and_uncommitted_batches():
    sent = [("s", 1, 0, 0), ("s", 1, 1, 0)]
    progress = {("windows", 1): {"s": {1: 1}}, ("windows", 2): {"s": {1: 2}}}
    log = [{"query": "windows", "batch_id": 1, "committed_at": 1.0}]  # batch 2 not committed yet
    assert freshness_ms(sent, log, progress, "windows", {"s"}).tolist() == [1000.0]


def test_targets_and_percentiles():
    assert targets_of([("s", 0, 4, 0), ("s", 0, 9, 0), ("x", 1, 3, 0)], {"s"}) == {("s", 0): 10}
    p = pct(np.arange(1, 101, dtype=float))
    assert (p["p50"], p["max"], p["n"]) == (50.5, 100.0, 100)
    assert pct(np.array([]))["p50"] is None

"""Unit tests of the benchmark's pure measurement functions (no timing assertions)."""

from __future__ import annotations

import numpy as np
import pytest

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


# ------------------------------------------------------------- backlog mode and CPU profile (issue 9, 1-2)
def _progress_json(rows: int, add_ms: int, trig_ms: int) -> dict:
    return {"numInputRows": rows, "processedRowsPerSecond": 10.0, "timestamp": "2026-12-02T00:00:00Z",
            "durationMs": {"latestOffset": 5, "getBatch": 0, "queryPlanning": 20, "addBatch": add_ms,
                           "walCommit": 7, "commitOffsets": 3, "triggerExecution": trig_ms},
            "stateOperators": [{"operatorName": "stateStoreSave", "numRowsTotal": 40, "numRowsUpdated": 4,
                                "memoryUsedBytes": 1000, "allUpdatesTimeMs": 11, "allRemovalsTimeMs": 1,
                                "commitTimeMs": 2, "customMetrics": {"ignored": 1}}]}


def test_progress_detail_keeps_durations_and_state_operators():
    from ops.bench_stream import progress_detail

    d = progress_detail(_progress_json(100, 800, 1000))
    assert d["numInputRows"] == 100 and d["durationMs"]["addBatch"] == 800
    assert d["stateOperators"] == [{"operatorName": "stateStoreSave", "numRowsTotal": 40, "numRowsUpdated": 4,
                                    "memoryUsedBytes": 1000, "allUpdatesTimeMs": 11, "allRemovalsTimeMs": 1,
                                    "commitTimeMs": 2}]


def test_drain_curve_and_breakdown_shape():
    from ops.bench_stream import DURATION_KEYS, batch_breakdown, drain_curve, progress_detail

    progress = {("raw", 0): {"s": {0: 50, 1: 40}}, ("raw", 1): {"s": {0: 100, 1: 60}},
                ("raw", 2): {"s": {0: 100, 1: 100}}}
    log = [{"query": "raw", "batch_id": b, "committed_at": 10.0 + 2 * b,
            "phases_s": {"spark": 0.5 + b, "lake": 0.25, "clickhouse": 0.0}} for b in range(3)]
    curve = drain_curve(progress, log, "raw", {"s"}, t0=9.0, total=200)
    assert [(r["batch_id"], r["t"], r["events"], r["fraction"]) for r in curve] == \
        [(0, 1.0, 90, 0.45), (1, 3.0, 160, 0.8), (2, 5.0, 200, 1.0)]
    details = {("raw", b): progress_detail(_progress_json(r, 800, 1000)) for b, r in ((0, 90), (1, 70), (2, 40))}
    bd = batch_breakdown(details, log, "raw")
    assert bd["batches"] == 2 and bd["input_rows"] == 110 and bd["first_batch"]["batch_id"] == 0
    assert list(bd["spark_duration"]) == list(DURATION_KEYS)
    assert bd["spark_duration"]["addBatch"]["total_s"] == 1.6
    assert bd["spark_duration"]["addBatch"]["share_of_trigger"] == 0.8
    assert bd["sink_phases"]["spark"]["total_s"] == 4.0 and set(bd["sink_phases"]) == {"spark", "lake", "clickhouse"}
    assert bd["state_operators"]["stateStoreSave"]["allUpdatesTimeMs"] == 22
    assert bd["trigger_execution_s"] == 2.0 and bd["rows_per_s_of_trigger"] == 55.0


def test_cpu_profile_report_shape(tmp_path):
    """A real profiler over a short busy loop: phases, components, series (no timing assertions)."""
    import time

    from core.settings import get_settings
    from ops.bench_stream import CpuProfiler, chart

    prof = CpuProfiler(get_settings(), interval=0.05).start("preload")
    t = time.process_time()
    while time.process_time() - t < 0.2:
        pass
    prof.mark("drain")
    time.sleep(0.15)
    prof.stop()
    rep = prof.report()
    assert set(rep["phases"]) == {"preload", "drain"}
    assert "producer" in rep["phases"]["preload"]["cpu_s"] and "spark_driver_python" in rep["phases"]["drain"]["cpu_s"]
    for ph in rep["phases"].values():
        assert {"spark_jvm", "spark_python_workers", "machine_total", "machine_other"} <= set(ph["cpu_s"])
        assert all(v >= 0 for v in ph["cpu_s"].values()) and ph["seconds"] > 0
    assert rep["phases"]["preload"]["cpu_s"]["producer"] > 0
    assert rep["series"] and {"t", "phase", "cores"} <= set(rep["series"][0])
    report = {"mode": "backlog", "events": 200, "environment": {"cpus": 2, "load_average_1_5_15": [0, 0, 0]},
              "drain": {"events": 200}, "drain_curve": {"raw": [{"t": 1.0, "events": 90}, {"t": 3.0, "events": 200}]},
              "cpu": rep}
    out = chart(report, tmp_path / "bench.html")
    assert out.exists() and "plotly" in out.read_text()[:5000].lower()



def test_cpu_profiler_sample_survives_a_child_that_ended_since_the_listing():
    """Spark's Python workers come and go: a child listed in the process tree may be gone when its name and CPU
    times are read. A real child process, listed while it runs, then ended and reaped: ``sample`` still reads (its
    CPU counted with its last reading) and ``stop`` adds the final sample. ``name()`` raised
    ``psutil.NoSuchProcess`` before (9 of 3,000 samples with children churning); the exception in the load test's
    final ``stop`` skipped the stack's close (CI, stop 39: no report)."""
    import subprocess

    import psutil

    from core.settings import get_settings
    from ops.bench_stream import CpuProfiler

    prof = CpuProfiler(get_settings(), interval=60)
    child = subprocess.Popen(["sleep", "30"])
    listed = psutil.Process(child.pid)
    first = prof.sample()["cpu"]
    assert child.pid in prof._last_cpu   # read while it ran
    child.kill()
    child.wait()
    with pytest.raises(psutil.NoSuchProcess):   # the condition is real: the listed child is gone
        listed.name()
    prof._tree = lambda p: [p, listed] if p is prof.me else [p]   # the tree as listed before it ended
    after = prof.sample()["cpu"]
    assert set(after) == set(first)
    assert after["this_other_children"] == prof._last_cpu[child.pid] and after["spark_jvm"] == 0
    prof.start("x")
    prof.stop()
    prof.stop()   # a second stop (the load test's finally) adds the final sample only
    assert len(prof.samples) == 3   # start, stop, stop: the thread's first sample is 60 s away

# ---------------------------------------------------------------------- load test series (issue 9, part 4)
def test_freshness_series_bins_by_produce_time_and_lag_trend_fits_a_line(tmp_path):
    from ops.bench_stream import freshness_series, lag_trend, load_chart

    t0 = 1_000.0
    produced = np.array([1_000_000.0 + i * 100 for i in range(200)])  # 20 s of events, 10 per second
    fresh = np.where(produced < 1_010_000, 1_000.0, 3_000.0)          # first 10 s: 1 s, then 3 s
    fresh[5] = 9_000.0
    s = freshness_series(fresh, produced, t0, bin_s=10.0)
    assert [r["t"] for r in s] == [0.0, 10.0] and [r["n"] for r in s] == [100, 100]
    assert s[0]["p50"] == 1000.0 and s[0]["p95"] == np.percentile(fresh[:100], 95) and s[1]["p95"] == 3000.0
    assert freshness_series(np.array([]), np.array([]), t0) == []
    flat = [{"t": float(i), "lag": 50 + (i % 2)} for i in range(100)]
    growing = [{"t": float(i), "lag": 7 * i} for i in range(100)]
    assert abs(lag_trend(flat, 40, 99)["slope_events_per_s"]) < 0.05
    g = lag_trend(growing, 40, 99)
    assert g["slope_events_per_s"] == 7.0 and g["max"] == 693 and g["n"] == 60
    assert lag_trend(flat, 200, 300)["slope_events_per_s"] is None
    report = {"target_rate": 100.0, "duration_s": 99, "stores": 2, "environment": {"cpus": 2},
              "consumer_lag": {"series": [dict(r, sent=100 * i) for i, r in enumerate(flat)]},
              "freshness_series": {"clickhouse": s, "lake": s},
              "cpu": {"series": [{"t": 0.0, "cores": {"spark_jvm": 1.0}}, {"t": 1.0, "cores": {"spark_jvm": 1.2}}]}}
    out = load_chart(report, tmp_path / "load.html")
    assert out.exists() and "freshness" in out.read_text()


def test_cpu_bound_names_the_component_that_saturates_the_machine():
    from ops.bench_stream import cpu_bound, goal

    # 100 s on 2 cores, 190 CPU-s busy: the JVM's 150 s are 79 % of it
    phase = {"seconds": 100.0, "cpu_s": {"spark_jvm": 150.0, "producer": 30.0, "kafka_broker": 8.0,
                                         "machine_other": 2.0, "minio": 0.0, "machine_total": 190.0}}
    b = cpu_bound(phase, cpus=2)
    assert b["cpu_saturated"] and b["top_component"] == "spark_jvm"
    assert b["machine_cores_busy"] == 1.9 and b["utilisation"] == 0.95
    assert b["top_share"] == round(150 / 190, 3) and list(b["shares"]) == ["spark_jvm", "producer", "kafka_broker",
                                                                           "machine_other"]
    assert "spark_jvm" in b["verdict"] and b["verdict"].startswith("CPU-bound")
    # half idle: not CPU-bound, whatever the largest consumer
    idle = cpu_bound({"seconds": 100.0, "cpu_s": {"spark_jvm": 90.0, "machine_total": 100.0}}, cpus=2)
    assert not idle["cpu_saturated"] and idle["verdict"].startswith("not CPU-saturated")
    # saturated by somebody else's jobs
    other = cpu_bound({"seconds": 10.0, "cpu_s": {"spark_jvm": 2.0, "machine_other": 17.0, "machine_total": 19.0}},
                      cpus=2)
    assert other["top_component"] == "machine_other" and "other jobs" in other["verdict"]
    with pytest.raises(ValueError, match="seconds"):
        cpu_bound({"seconds": 0, "cpu_s": {"machine_total": 1.0}}, cpus=2)

    assert goal("rate", 8197.6, 8000) == {"goal": "rate", "target": 8000, "measured": 8197.6, "met": True,
                                          "result": "pass"}
    assert goal("p95", 46.6, 5.0, higher_is_better=False)["met"] is False
    assert goal("p95", None, 5.0, higher_is_better=False)["met"] is False


def test_judge_states_the_verdict_and_the_missed_goals():
    from ops.bench_stream import goal, judge

    rep = {"goals": [goal("rate", 480.0, 480.0), goal("p95", 6.1, 5.0, higher_is_better=False)]}
    assert judge(rep) == ["p95"] and (rep["verdict"], rep["goals_missed"]) == ("fail", ["p95"])
    assert [g["result"] for g in rep["goals"]] == ["pass", "fail"]
    rep = {"goals": [goal("rate", 481.0, 480.0)]}
    assert judge(rep) == [] and rep["verdict"] == "pass"


@pytest.mark.integration
def test_make_load_test_reports_each_goal_and_fails_when_one_is_missed(native_services, tmp_path):
    """``make load-test``'s command against the real stack (Kafka, MinIO, the ClickHouse endpoint; Spark in the
    process): at a RATE no producer on this machine reaches (1,000,000 events/s) the rate goal, 96 % of RATE, is
    missed; the report and chart are written, every goal is stated with target, measured value and pass/fail, and
    the command exits 1. It exited 0, and the rate goal was 8,000 events/s whatever RATE said (met here)."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "load-test.json"
    r = subprocess.run([sys.executable, "-m", "ops.bench_stream", "load", "--rate", "1000000", "--duration", "1",
                        "--stores", "2", "--out", str(out)], cwd=REPO, env={**os.environ, "PYTHONFAULTHANDLER": "1"},
                       capture_output=True, text=True, timeout=900)
    # on failure: the exit code and the Python traceback (Spark's JVM logs may follow it and fill the tail)
    tb = r.stderr.rfind("Traceback (most recent call last)")
    why = (f"exit code {r.returncode}\n--- Python traceback:\n{r.stderr[tb:tb + 4000] if tb >= 0 else '(none)'}"
           f"\n--- stdout tail:\n{r.stdout[-1500:]}\n--- stderr tail:\n{r.stderr[-2000:]}")
    assert out.exists() and out.with_suffix(".html").exists(), why
    rep = json.loads(out.read_text())
    rate_goal = rep["goals"][0]
    assert rate_goal["target"] == 960_000.0 and "96%" in rate_goal["goal"], rate_goal
    assert rate_goal["measured"] == rep["achieved_rate"] > 0
    assert rep["achieved_rate"] < 960_000 and (rate_goal["met"], rate_goal["result"]) == (False, "fail")
    for g in rep["goals"]:   # each goal's pass/fail recomputed from its target and measured value
        assert set(g) == {"goal", "target", "measured", "met", "result"}, g
        higher = g is rate_goal
        want = g["measured"] is not None and (g["measured"] >= g["target"] if higher else g["measured"] <= g["target"])
        assert g["result"] == ("pass" if want else "fail"), g
    assert rep["verdict"] == "fail" and rate_goal["goal"] in rep["goals_missed"]
    assert rep["goals_missed"] == [g["goal"] for g in rep["goals"] if g["result"] == "fail"]
    assert r.returncode == 1, why
    assert "goals missed" in r.stderr and rate_goal["goal"] in r.stderr

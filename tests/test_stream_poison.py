"""A "poison micro-batch": rows ClickHouse refuses for their values must not stop the stream.

Before 2026-12-06 a ClickHouse refusal of a micro-batch's insert for a data reason (a constraint, a value its column
cannot hold) failed the query; the restarted query re-ran the same batch, was refused again, and the stream never
moved on. Now the sinks bisect the insert (:func:`streaming.sinks.insert_isolating_refused`), write every other row,
set the refused ones aside in ``quarantine_events`` with ClickHouse's error (:meth:`StreamSinks._set_aside`) and
count them in ``stream_batches.rows_set_aside``. Outages (retried) and schema errors (the query stops naming the
table) keep their behaviour (``tests/test_streaming_guarantees.py``).

Unit tests of the classification and the bisect (pure functions), then the real thing: a CHECK constraint added to
the test's own ``sales_metrics_5m`` and ``quarantine_events``, sales streamed through the real broker and Spark.
"""

from __future__ import annotations

import json
import uuid

import pandas as pd
import pytest


# ------------------------------------------------------------------------------------ classification --
def _server_error(code: int, name: str, text: str = "bad row"):
    """The exception clickhouse-connect raises for an error answer of our chserver (header code + body)."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    return DatabaseError(f"Received ClickHouse exception, code: {code}, server response: Code: {code}. "
                         f"DB::Exception: {text}. ({name}) (version 25.8.2.1 (chDB))", code=code, name=name)


@pytest.mark.parametrize("code,name", [(469, "VIOLATED_CONSTRAINT"), (53, "TYPE_MISMATCH"),
                                       (321, "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"), (6, "CANNOT_PARSE_TEXT"),
                                       (349, "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN")])
def test_row_errors_are_told_from_outages(code, name):
    from streaming.sinks import clickhouse_error_code, is_infrastructure_error, is_row_error

    exc = _server_error(code, name)
    assert clickhouse_error_code(exc) == code
    assert is_row_error(exc)
    assert not is_infrastructure_error(exc)


@pytest.mark.parametrize("code,name", [(60, "UNKNOWN_TABLE"), (16, "NO_SUCH_COLUMN_IN_TABLE"), (81, "UNKNOWN_DATABASE"),
                                       (47, "UNKNOWN_IDENTIFIER"), (62, "SYNTAX_ERROR"), (241, "MEMORY_LIMIT_EXCEEDED")])
def test_schema_and_server_errors_are_not_row_errors(code, name):
    """A dropped table or column must still stop the windows query (a restart's migrations create it again), and an
    unknown or server-side code is not guessed to be the rows' fault."""
    from streaming.sinks import is_row_error

    assert not is_row_error(_server_error(code, name))


def test_no_schema_error_code_is_taken_for_a_row_error():
    """Every code of SCHEMA_ERROR_CODES, as the server sends it, fails the write (a code also listed as a row
    error would be bisected and its rows quarantined instead of stopping the query)."""
    from streaming.sinks import SCHEMA_ERROR_CODES, is_infrastructure_error, is_row_error

    for code, name in SCHEMA_ERROR_CODES.items():
        exc = _server_error(code, name, "Table d.sales_metrics_5m does not exist")
        assert not is_row_error(exc) and not is_infrastructure_error(exc), (code, name)


def test_the_code_tables_name_the_codes_as_the_engine_does():
    """Every code of ROW_ERROR_CODES / SCHEMA_ERROR_CODES has the name chDB's ``errorCodeToName`` gives it."""
    import chdb

    from streaming.sinks import ROW_ERROR_CODES, SCHEMA_ERROR_CODES

    ours = {**ROW_ERROR_CODES, **SCHEMA_ERROR_CODES}
    res = chdb.query(f"SELECT arrayJoin([{','.join(map(str, ours))}]) AS c, errorCodeToName(c)", "JSONCompact")
    assert {int(c): n for c, n in json.loads(str(res))["data"]} == ours


def test_outages_and_bugs_are_not_row_errors_but_client_side_data_errors_are():
    from clickhouse_connect.driver.exceptions import DataError, OperationalError

    from streaming.sinks import clickhouse_error_code, is_infrastructure_error, is_row_error

    outage = OperationalError("Error HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded")
    assert not is_row_error(outage) and is_infrastructure_error(outage)
    assert not is_row_error(ConnectionRefusedError(111, "Connection refused"))
    assert not is_row_error(KeyError("window_start"))   # a bug: fails as before
    assert is_row_error(DataError("Unable to create native array for column `stock_level`: int too big"))
    assert is_row_error(OverflowError("Python int too large to convert to C long"))
    # the embedded engine's text (no header): the code is read from "Code: N."
    assert clickhouse_error_code(RuntimeError("Code: 469. DB::Exception: Constraint `c` is violated")) == 469
    # a refused row whose quoted values look like an outage is still a row error, and not retried as an outage
    tricky = _server_error(469, "VIOLATED_CONSTRAINT", "Column values: product_id = 'Connection refused timed out'")
    assert is_row_error(tricky) and not is_infrastructure_error(tricky)


def test_error_text_keeps_clickhouses_message_without_prefix_and_version():
    from streaming.sinks import error_text

    t = error_text(_server_error(469, "VIOLATED_CONSTRAINT", "Constraint `poison` for table d.t is violated at row 1"))
    assert t == ("DatabaseError: Code: 469. DB::Exception: Constraint `poison` for table d.t is violated at row 1. "
                 "(VIOLATED_CONSTRAINT)")
    assert len(error_text(ValueError("x" * 5000), limit=100)) == 100
    from clickhouse_connect.driver.exceptions import DataError
    try:
        try:
            raise OverflowError("short format requires -32768 <= number <= 32767")
        except OverflowError as inner:
            raise DataError("Unable to create native array for column `units_sold`: error") from inner
    except DataError as exc:
        assert error_text(exc) == ("DataError: Unable to create native array for column `units_sold`: error "
                                   "(OverflowError: short format requires -32768 <= number <= 32767)")


def test_error_text_of_a_megabyte_message_is_cut_and_keeps_no_version_trailer():
    """A refused row quoting a 1 MB value (an unclosed ``(version `` in it too): the reason is the message's start,
    cut to the limit, and the trailer of a long message's end is left out. Before 2026-12-06 the trailer regex
    backtracked over the whole message (0.58 s at 16k characters, minutes at 1 MB, per refused row)."""
    from streaming.sinks import error_text

    big = "x" * 1_000_000
    exc = _server_error(469, "VIOLATED_CONSTRAINT", f"Column values: product_id = 'a (version {big}'")
    t = error_text(exc, limit=200)
    assert t == ("DatabaseError: Code: 469. DB::Exception: Column values: product_id = 'a (version "
                 + big)[:200]
    full = error_text(exc, limit=2_000_000)
    assert full.endswith(f"{big}'. (VIOLATED_CONSTRAINT)")   # the trailer "(version 25.8.2.1 (chDB))" left out
    with_url = RuntimeError(f"Code: 53. DB::Exception: {big}. (TYPE_MISMATCH) (version 25.8.2.1 (chDB)) "
                            "(for url http://127.0.0.1:8123)")
    assert error_text(with_url, limit=2_000_000).endswith(f"{big}. (TYPE_MISMATCH)")


# ---------------------------------------------------------------------------------------------- bisect --
def _refusing(bad: set[int], calls: list[list[int]], other: Exception | None = None):
    """An insert function refusing (code 469) any piece that holds a value of ``bad``; ``other`` raised for a piece
    holding -1."""
    def insert(part: pd.DataFrame) -> None:
        calls.append(part["x"].tolist())
        if other is not None and (part["x"] == -1).any():
            raise other
        if part["x"].isin(bad).any():
            raise _server_error(469, "VIOLATED_CONSTRAINT")
    return insert


def test_bisect_writes_every_row_but_the_refused_ones():
    from streaming.sinks import insert_isolating_refused

    df = pd.DataFrame({"x": range(100)}, index=range(500, 600))
    calls: list[list[int]] = []
    refused = insert_isolating_refused(df, _refusing({3, 64, 65}, calls))
    assert [p for p, _ in refused] == [3, 64, 65]
    assert all(getattr(e, "code", None) == 469 for _, e in refused)
    written = sorted(x for c in calls if not {3, 64, 65} & set(c) for x in c)
    assert written == [x for x in range(100) if x not in (3, 64, 65)]   # each other row written exactly once
    assert len(calls) <= 2 * 3 * 7 + 1


def test_bisect_of_a_clean_or_empty_frame_is_one_insert_or_none():
    from streaming.sinks import insert_isolating_refused

    calls: list[list[int]] = []
    assert insert_isolating_refused(pd.DataFrame({"x": range(10)}), _refusing(set(), calls)) == []
    assert calls == [list(range(10))]
    calls.clear()
    assert insert_isolating_refused(pd.DataFrame({"x": []}), _refusing(set(), calls)) == []
    assert calls == []


def test_bisect_raises_what_is_not_about_rows():
    """An outage or a dropped table met while bisecting propagates (the batch is retried / the query stops)."""
    from streaming.sinks import insert_isolating_refused

    table_gone = _server_error(60, "UNKNOWN_TABLE", "Table d.sales_metrics_5m does not exist")
    with pytest.raises(Exception) as e:
        insert_isolating_refused(pd.DataFrame({"x": [1, 2, -1, 3]}), _refusing({1}, [], other=table_gone))
    assert e.value is table_gone


def test_a_refusal_of_every_row_sets_the_rows_aside_without_bisecting_them_all_and_stops_nothing():
    """2,000 rows all refused (a migration changed a column's type, a constraint no row meets): after the first 16
    rows tried alone, none written, the pending pieces are tried whole once and, still refused, returned whole with
    their piece's error: every row set aside after at most 2·⌈log2 n⌉ + 2·16 inserts (before 2026-12-06: 3,999
    inserts under the shared ClickHouse lock; a first mend raised the first error instead, which failed the batch
    at every restart, for ever). A frame where a piece was written, or one of fewer than 16 rows, is bisected to
    the end."""
    from streaming.sinks import insert_isolating_refused

    calls: list[list[int]] = []
    everything = set(range(-1, 2_000))
    refused = insert_isolating_refused(pd.DataFrame({"x": range(2_000)}), _refusing(everything, calls))
    assert [p for p, _ in refused] == list(range(2_000))           # nothing lost: every row to quarantine
    assert all(e.code == 469 for _, e in refused)
    assert calls[0] == list(range(2_000)) and len(calls) <= 2 * 11 + 2 * 16   # 51, not 3,999
    assert sorted(x for c in calls if len(c) == 1 for x in c)[:16] == list(range(16))   # then the pending pieces

    # every other row refused: a piece is written at once, all 1,000 refused rows are found
    calls.clear()
    refused = insert_isolating_refused(pd.DataFrame({"x": range(2_000)}), _refusing(set(range(0, 2_000, 2)), calls))
    assert [p for p, _ in refused] == list(range(0, 2_000, 2))
    # 40 refused rows clustered at the frame's start (a poison SKU's windows of a catch-up batch), 1,960 good
    # after them: the 16 first refused alone, then the pending pieces tried whole write the good rows, and all 40
    # refused rows are found (the first version of this rule raised here, failing the batch at every restart)
    calls.clear()
    refused = insert_isolating_refused(pd.DataFrame({"x": range(2_000)}), _refusing(set(range(40)), calls))
    assert [p for p, _ in refused] == list(range(40))
    assert set().union(*(set(c) for c in calls if c and c[0] >= 40)) == set(range(40, 2_000))   # every good row sent
    # 15 rows all refused: fewer than 16, each quarantined as before
    refused = insert_isolating_refused(pd.DataFrame({"x": range(15)}), _refusing(everything, []))
    assert [p for p, _ in refused] == list(range(15))
    # quarantine_events' own rows (all_refused_after=None): bisected to the end
    refused = insert_isolating_refused(pd.DataFrame({"x": range(40)}), _refusing(everything, []),
                                       all_refused_after=None)
    assert [p for p, _ in refused] == list(range(40))


def test_row_payload_is_json_of_the_row():
    from streaming.sinks import row_payload

    p = json.loads(row_payload({"window_start": pd.Timestamp("2026-01-15 10:00", tz="UTC"), "window_stock": pd.NA,
                                "revenue": float("nan"), "units_sold": pd.Series([3], dtype="int64")[0],
                                "product_id": "POISON"}))
    assert p == {"window_start": "2026-01-15T10:00:00+00:00", "window_stock": None, "revenue": None, "units_sold": 3,
                 "product_id": "POISON"}


# -------------------------------------------------------------------- real broker, Spark, ClickHouse --
@pytest.mark.integration
def test_a_window_clickhouse_refuses_is_quarantined_and_the_stream_goes_on(native_stack, spark):
    """``sales_metrics_5m`` gets ``CHECK product_id != 'POISON'`` (ClickHouse refuses with 469 VIOLATED_CONSTRAINT)
    and ``quarantine_events`` ``CHECK position(raw_payload, 'POISON-RAW') = 0``. 39 sales of P0..P3 and 7 of POISON
    over two windows, plus one invalid sale (quantity 0) of POISON-RAW, streamed: every other window equals an
    independent count, the two POISON windows are in ``quarantine_events`` (topic ``refused:sales_metrics_5m``) with
    the constraint's error and their counts, the invalid sale's quarantine row is there without its payload, the
    batches count what they set aside; each refused window is one quarantine row holding its latest count. A later
    run with more sales (POISON again) lands too. Before 2026-12-06 the run
    failed at micro-batch 0 (the raw query, 469 on ``quarantine_events``), as it would at every restart; the windows
    batch's own 469 is shown failing the old code by ``tests/test_streaming_sinks.py``."""
    from core.clickhouse import migrate, new_client
    from streaming.job import run_stream
    from tests.test_streaming_guarantees import WIN_MS, _now_ms, namespace, produce, sale

    s = namespace(native_stack, f"poi{uuid.uuid4().hex[:6]}")
    migrate(s)
    client, db = new_client(s), s.clickhouse_database
    client.command(f"ALTER TABLE {db}.sales_metrics_5m ADD CONSTRAINT poison CHECK product_id != 'POISON'")
    client.command(f"ALTER TABLE {db}.quarantine_events ADD CONSTRAINT poison_raw "
                   "CHECK position(raw_payload, 'POISON-RAW') = 0")
    t = (_now_ms() // WIN_MS) * WIN_MS - 60 * 60_000

    def sales(tag: str, n: int, start: int) -> list[tuple[str, dict]]:
        """n sales, one every 13 s from ``start`` (so over several windows), SKUs P0..P3, every 7th POISON."""
        return [("sales_transaction", sale(f"{tag}{i:03d}", start + i * 13_000,
                                           sku="POISON" if i % 7 == 3 else f"P{i % 4}")) for i in range(n)]

    def expected(events) -> dict[tuple[str, pd.Timestamp], int]:
        out: dict[tuple[str, pd.Timestamp], int] = {}
        for _, r in events:
            k = (r["product_id"], pd.Timestamp(r["timestamp"] // WIN_MS * WIN_MS, unit="ms", tz="UTC"))
            out[k] = out.get(k, 0) + 1
        return out

    def stored() -> dict[tuple[str, pd.Timestamp], int]:
        df = client.query_df(f"SELECT product_id, window_start, transaction_count FROM {db}.sales_metrics_5m FINAL")
        ws = pd.to_datetime(df["window_start"], utc=True)
        return {(p, w): int(n) for p, w, n in zip(df["product_id"], ws, df["transaction_count"])}

    def refused_windows() -> dict[tuple[str, pd.Timestamp], int]:
        q = client.query_df(f"SELECT reason, raw_payload FROM {db}.quarantine_events FINAL "
                            "WHERE topic = 'refused:sales_metrics_5m'")
        assert q["reason"].str.contains("VIOLATED_CONSTRAINT").all() and q["reason"].str.contains("poison").all()
        out: dict[tuple[str, pd.Timestamp], int] = {}
        for p in q["raw_payload"]:
            row = json.loads(p)
            k = (row["product_id"], pd.Timestamp(row["window_start"]))
            # one quarantine row per refused window, its latest refusal (a window re-emitted by a later batch
            # replaces its row; before 2026-12-06 each batch added one)
            assert k not in out, k
            out[k] = int(row["transaction_count"])
        return out

    first = sales("A", 46, t)
    bad = sale("BADQ", t + 5_000, sku="POISON-RAW", qty=0)
    produce(s, first + [("sales_transaction", bad)])
    run_stream(s, available_now=True, timeout=600, spark=spark)

    want = expected(first)
    poison = {k: v for k, v in want.items() if k[0] == "POISON"}
    assert len(poison) >= 2 and sum(poison.values()) == 7
    assert stored() == {k: v for k, v in want.items() if k[0] != "POISON"}
    assert refused_windows() == poison
    raw_q = client.query_df(f"SELECT reason, raw_payload FROM {db}.quarantine_events FINAL "
                            "WHERE position(reason, 'ClickHouse refused this quarantine row') > 0")
    assert len(raw_q) == 1 and raw_q["raw_payload"].iloc[0] == ""
    assert "quantity" in raw_q["reason"].iloc[0] and "VIOLATED_CONSTRAINT" in raw_q["reason"].iloc[0]
    counts = client.query_df(f"SELECT query, toInt64(sum(rows_set_aside)) AS n FROM {db}.stream_batches FINAL "
                             "GROUP BY query").set_index("query")["n"].to_dict()
    assert counts["raw"] == 1 and counts["windows"] >= len(poison)

    # a later run: more sales, POISON again in a new window; the stream still moves on
    later = sales("B", 30, t + 20 * 60_000)
    produce(s, later)
    run_stream(s, available_now=True, timeout=600, spark=spark)
    want = expected(first + later)
    assert stored() == {k: v for k, v in want.items() if k[0] != "POISON"}
    assert refused_windows() == {k: v for k, v in want.items() if k[0] == "POISON"}

"""The streaming tables and the synthetic data written into them, on the real ClickHouse endpoint (chserver over
chDB): the BI load test's windows (``ops.bench_bi``) against the stream's own velocity definition."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_db(native_stack):
    """Settings of a migrated database of its own on the session's ClickHouse endpoint, and its writer client."""
    from core.clickhouse import get_client, migrate

    s = native_stack.model_copy(update={"clickhouse_database": f"{native_stack.clickhouse_database}_t"
                                                               f"{uuid.uuid4().hex[:6]}"})
    migrate(s)
    return s, get_client(s)


def test_the_bi_load_tests_windows_carry_the_streams_trailing_velocity(fresh_db):
    """ops.bench_bi wrote sales_velocity = units x 12 (one unit in a window read 12 units/h). Its windows now carry
    the stream's trailing rate: every SKU and store window equals streaming.transforms.trailing_velocity over the
    stored units, and cover = stock / velocity."""
    import numpy as np

    from ops.bench_bi import ChainSize, load_chain
    from streaming.transforms import trailing_velocity

    s, client = fresh_db
    db = s.clickhouse_database
    size = ChainSize(stores=4, skus=10, days=3, window_rows=5760, forecast_series=5, horizons=3, seed=3)
    load_chain(client, db, size, dt.date(2026, 11, 30))
    sku = client.query_df(f"SELECT window_start, store_id, product_id, units_sold, stock_level, sales_velocity, "
                          f"hours_of_cover FROM {db}.sales_metrics_5m FINAL")
    assert len(sku) == 5760
    want = trailing_velocity(sku, ["store_id", "product_id"], window_len_hours=5 / 60,
                             velocity_hours=s.stream_velocity_hours)
    assert np.allclose(sku["sales_velocity"], want, rtol=1e-9, atol=0)
    cover = sku["stock_level"] / sku["sales_velocity"]
    assert np.allclose(sku["hours_of_cover"], cover, rtol=1e-9)
    store = client.query_df(f"SELECT window_start, store_id, units_sold, sales_velocity FROM {db}.store_metrics_5m "
                            "FINAL")
    want = trailing_velocity(store, ["store_id"], window_len_hours=5 / 60, velocity_hours=s.stream_velocity_hours)
    assert len(store) > 0 and np.allclose(store["sales_velocity"], want, rtol=1e-9, atol=0)

"""Every query the live dashboard runs, in one place: the Streamlit pages call them and ``make bench-bi``
times exactly these (``ops.bench_bi``).

All read the BI views of ``clickhouse/migrations/030_bi_views.sql``, ``080_stream_health_views.sql`` and
``091_order_velocity_bi_views.sql`` (v_restock_alerts, v_live_sku_metrics) (plus the small state tables of
``025_bi_state.sql`` for "latest" anchors) as the read-only user ``bi_reader``. Filters travel as
ClickHouse query parameters (``{name:Type}``, sent as ``param_<name>``), never spliced into SQL.

Parameters (see :class:`Filters`):

* ``store``: a store id, or ``''`` for every store;
* ``start`` / ``end``: the date range as date keys (YYYYMMDD, inclusive); ``prev_start`` / ``prev_end`` the same
  range 7 days earlier ("same period last week");
* ``product``: one SKU (forecast fan chart).

Live queries take each store's own "last 24 hours": the 24 hours up to that store's newest 5-minute window
(``in_store_last_24h`` of the live views), not the wall clock, so a replay of historical POS data shows up as live
too, and not the newest window of all stores, so a store whose feed stopped still shows its last day, with the
end of its latest window (``exec_live``'s ``stalest_window_end``: the stalest store's) telling how old it is.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pandas as pd

STORE_PRED = "({store:String} = '' OR store_id = {store:String})"
STORE_KEY_PRED = ("({store:String} = '' OR store_key IN "
                  "(SELECT store_key FROM {db}.v_dim_store WHERE store_id = {store:String}))")
IN_RANGE = "date_key BETWEEN {start:Int64} AND {end:Int64}"
IN_PREV = "date_key BETWEEN {prev_start:Int64} AND {prev_end:Int64}"

#: name -> (scope, SQL). ``{db}`` is the database; ``{x:Type}`` are query parameters. Scope: the page it serves
#: (``executive``, ``analyst``, ``quality``: any store or all stores; ``store``: one store, the store manager's
#: page always has one; ``chain``: across stores whatever the filter, e.g. the risk heatmap of the 25 stores
#: with the most SKUs at HIGH risk, read from the one-row-per-series ``sku_window_latest``).
QUERIES: dict[str, tuple[str, str]] = {
    # ------------------------------------------------------------------------------ executive --
    "exec_kpis": ("executive", f"""
        SELECT sumIf(f.revenue, {IN_RANGE}) AS revenue, sumIf(f.units_sold, {IN_RANGE}) AS units,
               sumIf(f.revenue, {IN_PREV}) AS revenue_prev_week, sumIf(f.units_sold, {IN_PREV}) AS units_prev_week,
               sumIf(f.profit, {IN_RANGE}) AS profit, sumIf(f.revenue_with_cost, {IN_RANGE}) AS revenue_with_cost,
               toInt64(uniqExactIf(f.store_key, {IN_RANGE})) AS stores
        FROM {{db}}.v_sales_daily AS f
        WHERE date_key BETWEEN {{prev_start:Int64}} AND {{end:Int64}} AND {STORE_KEY_PRED}"""),
    "exec_trend": ("executive", f"""
        SELECT f.date_key AS date_key, sum(f.revenue) AS revenue, sum(f.units_sold) AS units
        FROM {{db}}.v_sales_daily AS f
        WHERE date_key BETWEEN {{prev_start:Int64}} AND {{end:Int64}} AND {STORE_KEY_PRED}
        GROUP BY date_key ORDER BY date_key"""),
    "exec_top_stores": ("executive", f"""
        SELECT d.store_id AS store_id, any(d.store_name) AS store_name, sum(f.revenue) AS revenue,
               sum(f.units_sold) AS units
        FROM {{db}}.v_sales_daily AS f INNER JOIN {{db}}.v_dim_store AS d ON f.store_key = d.store_key
        WHERE f.{IN_RANGE} AND {STORE_KEY_PRED.replace('store_key IN', 'f.store_key IN')}
        GROUP BY d.store_id ORDER BY revenue DESC LIMIT 10"""),
    "exec_top_categories": ("executive", f"""
        SELECT if(p.category = '', '(unknown)', p.category) AS category, sum(f.revenue) AS revenue,
               sum(f.units_sold) AS units
        FROM {{db}}.v_sales_daily AS f INNER JOIN {{db}}.v_dim_product AS p ON f.product_key = p.product_key
        WHERE f.{IN_RANGE} AND {STORE_KEY_PRED.replace('store_key IN', 'f.store_key IN')}
        GROUP BY category ORDER BY revenue DESC LIMIT 10"""),
    "exec_live": ("executive", f"""
        SELECT sum(revenue) AS revenue, sum(units) AS units, toInt64(sum(transactions)) AS transactions,
               max(store_window_end) AS latest_window_end, min(store_window_end) AS stalest_window_end
        FROM (SELECT sumIf(m.revenue, m.in_store_last_24h = 1) AS revenue,
                     sumIf(m.units_sold, m.in_store_last_24h = 1) AS units,
                     sumIf(m.transaction_count, m.in_store_last_24h = 1) AS transactions,
                     max(m.window_end) AS store_window_end
              FROM {{db}}.v_live_store_metrics AS m WHERE {STORE_PRED} GROUP BY m.store_id)"""),
    # -------------------------------------------------------------------------- store manager --
    "store_risk": ("store", f"""
        SELECT store_id, product_id, stock_level, reorder_point, sales_velocity, hours_of_cover, stockout_risk,
               anomaly_score, last_window_start, stock_time
        FROM {{db}}.v_current_inventory
        WHERE {STORE_PRED}
        ORDER BY indexOf(['HIGH', 'MEDIUM', 'LOW', 'UNKNOWN'], stockout_risk), hours_of_cover NULLS LAST
        LIMIT 500"""),
    "store_risk_counts": ("store", f"""
        SELECT stockout_risk, toInt64(count()) AS skus, toInt64(countIf(is_stockout = 1)) AS out_of_stock
        FROM {{db}}.v_current_inventory WHERE {STORE_PRED} GROUP BY stockout_risk"""),
    "risk_heatmap": ("chain", """
        SELECT store_id, category, high_risk_skus, skus FROM (
            SELECT store_id, category, high_risk_skus, skus,
                   dense_rank() OVER (ORDER BY store_high DESC, store_id) AS store_rank
            FROM (
                SELECT store_id, category, high_risk_skus, skus,
                       sum(high_risk_skus) OVER (PARTITION BY store_id) AS store_high
                FROM (
                    SELECT s.store_id AS store_id, if(p.category = '', '(unknown)', p.category) AS category,
                           toInt64(countIf(s.stockout_risk = 'HIGH')) AS high_risk_skus, toInt64(count()) AS skus
                    FROM {db}.sku_window_latest AS s FINAL
                    LEFT JOIN {db}.v_dim_product AS p ON s.product_id = p.sku
                    GROUP BY store_id, category)))
        WHERE store_rank <= 25"""),
    "store_alerts": ("store", f"""
        SELECT product_id, priority, recommended_quantity, order_velocity, current_stock, reorder_point,
               sales_velocity, hours_of_cover, alert_time, store_id
        FROM {{db}}.v_restock_alerts
        WHERE alert_time > (SELECT max(alert_time) FROM {{db}}.restock_alerts) - INTERVAL 7 DAY AND {STORE_PRED}
        ORDER BY indexOf(['CRITICAL', 'HIGH', 'MEDIUM', 'LOW'], priority), alert_time DESC LIMIT 200"""),
    "store_alert_counts": ("store", f"""
        SELECT priority, toInt64(count()) AS alerts
        FROM {{db}}.v_restock_alerts
        WHERE alert_time > (SELECT max(alert_time) FROM {{db}}.restock_alerts) - INTERVAL 7 DAY AND {STORE_PRED}
        GROUP BY priority"""),
    "store_anomalies": ("store", f"""
        SELECT window_start, store_id, product_id, units_sold, anomaly_score, stock_level, stockout_risk
        FROM {{db}}.v_live_sku_metrics
        WHERE in_store_last_24h = 1 AND is_anomaly = 1 AND {STORE_PRED}
        ORDER BY abs(anomaly_score) DESC LIMIT 100"""),
    "store_anomaly_count": ("store", f"""
        SELECT toInt64(count()) AS anomalies FROM {{db}}.v_live_sku_metrics
        WHERE in_store_last_24h = 1 AND is_anomaly = 1 AND {STORE_PRED}"""),
    "store_trend": ("store", f"""
        SELECT m.window_start AS window_start, sum(m.revenue) AS revenue, sum(m.units_sold) AS units,
               toInt64(sum(m.skus_high_risk)) AS skus_high_risk
        FROM {{db}}.v_live_store_metrics AS m
        WHERE in_store_last_24h = 1 AND {STORE_PRED}
        GROUP BY window_start ORDER BY window_start"""),
    # ---------------------------------------------------------------------- inventory analyst --
    "analyst_totals": ("analyst", f"""
        SELECT (SELECT toInt64(uniqExact(store_id, product_id)) FROM {{db}}.v_forecast_latest WHERE {STORE_PRED})
                   AS forecast_series,
               toInt64(countIf(r.reorder_needed = 1)) AS skus_to_reorder,
               sumIf(r.reorder_qty, r.reorder_needed = 1) AS reorder_units,
               sumIf(r.reorder_value, r.reorder_needed = 1) AS reorder_value
        FROM {{db}}.v_reorder_latest AS r WHERE {STORE_PRED}"""),
    "forecast_series_list": ("analyst", f"""
        SELECT store_id, product_id, sum(yhat) AS forecast_units
        FROM {{db}}.v_forecast_latest WHERE {STORE_PRED}
        GROUP BY store_id, product_id ORDER BY forecast_units DESC LIMIT 200"""),
    "forecast_fan": ("analyst", """
        SELECT target_date, horizon, yhat, lower80, upper80, lower95, upper95, forecast_origin
        FROM {db}.v_forecast_latest
        WHERE store_id = {store:String} AND product_id = {product:String} ORDER BY target_date"""),
    "demand_history": ("analyst", """
        SELECT date, units FROM {db}.v_demand_history
        WHERE store_id = {store:String} AND product_id = {product:String}
          AND date > (SELECT max(date) FROM {db}.v_demand_history) - 56
        ORDER BY date"""),
    "forecast_vs_actual": ("analyst", f"""
        SELECT a.horizon AS horizon, sum(a.forecast_units) AS forecast_units, sum(a.actual_units) AS actual_units,
               sum(a.abs_error_units) / nullIf(sum(a.actual_units), 0) AS wape,
               avg(a.within_80) AS coverage80, avg(a.within_95) AS coverage95, toInt64(count()) AS forecasts
        FROM {{db}}.v_forecast_accuracy AS a WHERE {STORE_PRED}
        GROUP BY horizon ORDER BY horizon"""),
    "reorder": ("analyst", f"""
        SELECT store_id, product_id, stock, on_order, safety_stock, reorder_point, reorder_qty, order_bound, eoq,
               days_until_stockout, stockout_risk, reorder_value, mean_daily_demand, reorder_needed
        FROM {{db}}.v_reorder_latest WHERE {STORE_PRED}
        ORDER BY reorder_needed DESC, days_until_stockout LIMIT 500"""),
    "slow_movers": ("analyst", f"""
        SELECT store_id, product_id, demand_class, adi, cv2, mean_daily_demand, days_since_last_sale
        FROM {{db}}.v_sku_classification_latest WHERE is_slow_moving = 1 AND {STORE_PRED}
        ORDER BY days_since_last_sale DESC LIMIT 500"""),
    # ----------------------------------------------------------------------- data quality, ML --
    "dq_quarantine": ("quality", """
        SELECT q.reason AS reason, q.event_type AS event_type, q.topic AS topic, toInt64(sum(q.events)) AS events,
               max(q.last_seen) AS last_seen
        FROM {db}.v_quarantine_summary AS q
        GROUP BY reason, event_type, topic ORDER BY events DESC LIMIT 200"""),
    # the cards' totals over every group (dq_quarantine keeps only its 200 largest); quarantined / dead_lettered
    # count Kafka records, refused_rows the stream table rows ClickHouse refused (topic refused:<table>, 084): until
    # 2026-12-06 those were counted as quarantined records
    "dq_quarantine_totals": ("quality", """
        SELECT toInt64(sumIf(q.events, NOT endsWith(q.topic, 'dead-letter') AND q.is_refused_row = 0)) AS quarantined,
               toInt64(sumIf(q.events, endsWith(q.topic, 'dead-letter'))) AS dead_lettered,
               toInt64(sumIf(q.events, q.is_refused_row = 1)) AS refused_rows
        FROM {db}.v_quarantine_summary AS q"""),
    "dq_stream": ("quality", """
        SELECT query, toInt64(count()) AS micro_batches, toInt64(sum(input_rows)) AS input_rows,
               toInt64(sum(duplicates_dropped)) AS duplicates_dropped,
               toInt64(sum(records_expired)) AS records_expired, max(committed_at) AS last_commit
        FROM {db}.v_stream_batches GROUP BY query ORDER BY query"""),
    # ------------------------------------------------------------ stream health (080_stream_health_views.sql) --
    "health_latest": ("quality", """
        SELECT query, micro_batches, last_batch_id, last_committed_at, minutes_since_last_batch, latest_event_time,
               input_rows, output_rows, duplicates_dropped, records_expired, late_rows_dropped, rows_set_aside,
               batches_with_expired, batches_with_late_rows
        FROM {db}.v_stream_health_latest ORDER BY query"""),
    "health_hourly": ("quality", """
        SELECT hour_start, query, micro_batches, input_rows, duplicates_dropped, records_expired, late_rows_dropped,
               rows_set_aside
        FROM {db}.v_stream_health_hourly
        WHERE hour_start > (SELECT max(hour_start) FROM {db}.v_stream_health_hourly) - INTERVAL 48 HOUR
        ORDER BY hour_start, query"""),
    "health_offsets": ("quality", """
        SELECT query, topic, partitions, offsets_reached, batch_id, committed_at
        FROM {db}.v_stream_offsets_latest ORDER BY query, topic"""),
    "health_quarantine": ("quality", """
        SELECT q.event_type AS event_type, q.topic AS topic, q.reason AS reason, toInt64(sum(q.events)) AS events,
               max(q.last_seen) AS last_seen
        FROM {db}.v_stream_quarantine_hourly AS q
        WHERE q.hour_start > (SELECT max(hour_start) FROM {db}.v_stream_quarantine_hourly) - INTERVAL 24 HOUR
        GROUP BY event_type, topic, reason ORDER BY events DESC, reason LIMIT 200"""),
    # the card's total over every group of the same 24 hours: health_quarantine keeps only its 200 largest groups,
    # and reasons often carry per-row text (ClickHouse's error with the row's values, topic refused:<table>)
    # events: Kafka records (quarantined and dead-lettered); refused_rows: stream table rows ClickHouse refused (084;
    # until 2026-12-06 in events)
    "health_quarantine_total": ("quality", """
        SELECT toInt64(sumIf(q.events, q.is_refused_row = 0)) AS events,
               toInt64(sumIf(q.events, q.is_refused_row = 1)) AS refused_rows
        FROM {db}.v_stream_quarantine_hourly AS q
        WHERE q.hour_start > (SELECT max(hour_start) FROM {db}.v_stream_quarantine_hourly) - INTERVAL 24 HOUR"""),
    "dq_etl": ("quality", """
        SELECT date_key, status, stage, started_at, duration_s, raw_sales_rows, duplicate_sales_rows,
               fact_sales_rows, fact_inventory_rows, units_net, revenue, message
        FROM {db}.v_etl_runs ORDER BY started_at DESC LIMIT 30"""),
    "ml_backtest": ("quality", """
        SELECT m.model AS model, m.metric AS metric, m.horizon AS horizon, avg(m.value) AS value
        FROM {db}.v_model_metrics AS m
        WHERE model_version = (SELECT max(model_version) FROM {db}.v_model_metrics WHERE model_name = 'demand-forecast')
          AND model_name = 'demand-forecast'
        GROUP BY model, metric, horizon ORDER BY metric, model, horizon"""),
    "ml_registry": ("quality", """
        SELECT version, run_date, backtest_wape, seasonal_naive_wape, wape_improvement, is_champion, promoted_at
        FROM {db}.v_model_registry ORDER BY version DESC LIMIT 20"""),
}


@dataclass(frozen=True)
class Filters:
    """The dashboard's filters: ``store`` ('' = all stores), the date range ``start``..``end`` (inclusive) and
    an optional ``product`` (SKU) for per-series charts."""

    store: str = ""
    start: dt.date | None = None
    end: dt.date | None = None
    product: str = ""

    def params(self) -> dict[str, Any]:
        """Query parameters: store, product, and the date keys start/end/prev_start/prev_end (YYYYMMDD ints;
        prev_* = the range shifted 7 days back, the "same period last week")."""
        end = self.end or dt.date.today()
        start = self.start or end
        week = dt.timedelta(days=7)
        return {"store": self.store, "product": self.product, "start": date_key(start), "end": date_key(end),
                "prev_start": date_key(start - week), "prev_end": date_key(end - week)}


def date_key(d: dt.date) -> int:
    """YYYYMMDD integer of a date (the star schema's date key)."""
    return d.year * 10000 + d.month * 100 + d.day


def sql(name: str, db: str) -> str:
    """The SQL of query ``name`` for database ``db`` (parameters left as ``{x:Type}``). KeyError when unknown."""
    return QUERIES[name][1].replace("{db}", db)


def run(client, db: str, name: str, filters: Filters | None = None) -> pd.DataFrame:
    """Run query ``name`` with ``filters`` through a clickhouse-connect ``client`` (as ``bi_reader``).

    Returns: a DataFrame with the query's columns (0 rows when there is no data).
    Raises: clickhouse_connect.driver.exceptions.DatabaseError on a server error; KeyError for an unknown name.
    """
    text, params = sql(name, db), (filters or Filters()).params()
    r = client.query(text, parameters=params)
    cols = list(r.column_names)
    if not cols:   # an empty result may come without a header block: take the names from DESCRIBE
        cols = [row[0] for row in client.query(f"DESCRIBE ({text})", parameters=params).result_rows]
    return pd.DataFrame(r.result_rows, columns=cols)


def data_range(client, db: str) -> tuple[dt.date | None, dt.date | None]:
    """(first, last) day with star-schema sales (``v_sales_daily``), or (None, None) before the first ETL."""
    lo, hi = client.query(f"SELECT min(date_key), max(date_key), count() FROM {db}.v_sales_daily").result_rows[0][:2]
    if not hi:
        return None, None
    return (dt.date(lo // 10000, lo // 100 % 100, lo % 100), dt.date(hi // 10000, hi // 100 % 100, hi % 100))


def stores(client, db: str) -> list[str]:
    """Store ids known to the platform (dimension and live state), sorted."""
    rows = client.query(f"SELECT store_id FROM {db}.v_dim_store WHERE is_known = 1 UNION DISTINCT "
                        f"SELECT DISTINCT store_id FROM {db}.sku_window_latest").result_rows
    return sorted({r[0] for r in rows if r[0]})

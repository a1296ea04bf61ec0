-- 098_etl_runs_bi_view_hides_begun.sql (2026-12-07): v_etl_runs (the dashboard's ETL run list, dashboard/queries.py
-- dq_etl, and Power BI's reconciliation table) lists the runs that ended ('success', 'failed') and, per day, a
-- 'begun' row only when it is that day's latest (greatest (started_at, finished_at), the rule of
-- etl.star_schema.latest_status_days): a load still running, or stopped half-way (killed, ClickHouse gone), so the
-- day is not loaded. Since 2026-12-07 every load appends a 'begun' row (zero counts) before its first write; the
-- view listed them all, so they filled half the dashboard's 30 rows (~15 nights) and Power BI's table showed a
-- zero-count row per night. Power BI's 'Last ETL Status' (MAX of the status at the latest started_at) still sees a
-- stopped load's 'begun'. The view is defined here only (until 2026-12-07 in 030; every migrate() re-runs all
-- files, so one definition per view). Idempotent: CREATE OR REPLACE VIEW.
CREATE OR REPLACE VIEW {db}.v_etl_runs AS
SELECT run_id, dag_run_id, toInt64(e.date_key) AS date_key, started_at, finished_at,
       dateDiff('second', started_at, finished_at) AS duration_s,
       status, stage, toInt64(e.raw_sales_rows) AS raw_sales_rows, toInt64(e.duplicate_sales_rows) AS duplicate_sales_rows,
       toInt64(e.fact_sales_rows) AS fact_sales_rows, toInt64(e.fact_inventory_rows) AS fact_inventory_rows,
       units_net, toFloat64(e.revenue) AS revenue, message
FROM {db}.etl_runs AS e
WHERE e.status != 'begun'
   OR e.run_id IN (SELECT argMax(run_id, (started_at, finished_at)) FROM {db}.etl_runs GROUP BY date_key);

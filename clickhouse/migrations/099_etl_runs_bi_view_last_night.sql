-- 099_etl_runs_bi_view_last_night.sql (2026-12-07): v_etl_runs gains what Power BI's 'Last ETL Status' needs to say
-- whether the latest night loaded everything: run_label (the run a row belongs to: its Airflow dag_run_id, else its
-- started_at as text for a run outside Airflow), is_day_latest (1 = the row is its day's latest etl_runs row,
-- greatest (started_at, finished_at), the rule of etl.star_schema.latest_status_days, counted over every row,
-- hidden 'begun' ones too) and status_rank (success 0, begun 1 = loading or stopped half-way, failed 2). The measure
-- took MAX(status) of the rows at the latest started_at: every row of a night carries its load's started_at, and
-- 'success' > 'failed' > 'begun' as text, so a night whose re-checked day succeeded and whose own day failed showed
-- 'success'. The list itself is 098's: the ended runs ('success', 'failed') and a day's 'begun' row only when it is
-- the day's latest (a load running, or stopped half-way). The view is defined here only (098 until 2026-12-07; every
-- migrate() re-runs all files, so one definition per view). Idempotent: CREATE OR REPLACE VIEW.
CREATE OR REPLACE VIEW {db}.v_etl_runs AS
SELECT run_id, dag_run_id, toInt64(e.date_key) AS date_key, started_at, finished_at,
       dateDiff('second', started_at, finished_at) AS duration_s,
       status, stage, toInt64(e.raw_sales_rows) AS raw_sales_rows, toInt64(e.duplicate_sales_rows) AS duplicate_sales_rows,
       toInt64(e.fact_sales_rows) AS fact_sales_rows, toInt64(e.fact_inventory_rows) AS fact_inventory_rows,
       units_net, toFloat64(e.revenue) AS revenue, message,
       if(e.dag_run_id = '', toString(e.started_at), e.dag_run_id) AS run_label,
       toInt64(e.run_id IN (SELECT argMax(run_id, (started_at, finished_at)) FROM {db}.etl_runs GROUP BY date_key))
           AS is_day_latest,
       toInt64(multiIf(e.status = 'failed', 2, e.status = 'success', 0, 1)) AS status_rank
FROM {db}.etl_runs AS e
WHERE e.status != 'begun'
   OR e.run_id IN (SELECT argMax(run_id, (started_at, finished_at)) FROM {db}.etl_runs GROUP BY date_key);

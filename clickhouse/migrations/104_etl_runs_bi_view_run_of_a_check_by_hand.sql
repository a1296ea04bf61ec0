-- 104_etl_runs_bi_view_run_of_a_check_by_hand.sql (2026-12-07): v_etl_runs' run_label of a row without dag_run_id
-- (a quality check run by hand: etl.star_schema.quality_check without the load's start) is the dag_run_id of the
-- load it checks (the rows of the same date_key and started_at: the check records under the day's latest row's
-- started_at, etl.star_schema.unattended_start); a row with no such load keeps its started_at as text (a run
-- outside Airflow). Until 2026-12-07 (099) such a row was labelled with its started_at as text, tying at the latest
-- started_at with the night's rows labelled 'scheduled__...': Power BI's MAX(run_label) picked the Airflow label
-- ('s' > '2'), and when the night wrote only its own day whose current row was the by-hand 'success', no row had
-- that label and is_day_latest = 1: 'Last ETL Status' BLANK. The rest is 099's: is_day_latest (1 = the day's latest
-- etl_runs row by (started_at, finished_at), over every row, hidden 'begun' ones too), status_rank (success 0,
-- begun 1, failed 2) and 098's list (the ended runs, a day's 'begun' row only when it is the day's latest). The view
-- is defined here only (099 until 2026-12-07; every migrate() re-runs all files, so one definition per view).
-- Idempotent: CREATE OR REPLACE VIEW.
CREATE OR REPLACE VIEW {db}.v_etl_runs AS
SELECT e.run_id AS run_id, e.dag_run_id AS dag_run_id, toInt64(e.date_key) AS date_key, e.started_at AS started_at,
       e.finished_at AS finished_at, dateDiff('second', e.started_at, e.finished_at) AS duration_s,
       e.status AS status, e.stage AS stage, toInt64(e.raw_sales_rows) AS raw_sales_rows,
       toInt64(e.duplicate_sales_rows) AS duplicate_sales_rows, toInt64(e.fact_sales_rows) AS fact_sales_rows,
       toInt64(e.fact_inventory_rows) AS fact_inventory_rows, e.units_net AS units_net,
       toFloat64(e.revenue) AS revenue, e.message AS message,
       multiIf(e.dag_run_id != '', e.dag_run_id, h.load_run != '', h.load_run, toString(e.started_at)) AS run_label,
       toInt64(e.run_id IN (SELECT argMax(run_id, (started_at, finished_at)) FROM {db}.etl_runs GROUP BY date_key))
           AS is_day_latest,
       toInt64(multiIf(e.status = 'failed', 2, e.status = 'success', 0, 1)) AS status_rank
FROM {db}.etl_runs AS e
LEFT JOIN (SELECT date_key, started_at, anyIf(dag_run_id, dag_run_id != '') AS load_run
           FROM {db}.etl_runs GROUP BY date_key, started_at) AS h
       ON h.date_key = e.date_key AND h.started_at = e.started_at
WHERE e.status != 'begun'
   OR e.run_id IN (SELECT argMax(run_id, (started_at, finished_at)) FROM {db}.etl_runs GROUP BY date_key);

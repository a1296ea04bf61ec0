-- Store managers in the compose ClickHouse: read-only, and only the rows of their own stores (issue 10, part 7).
--
-- Run by the one-shot service `clickhouse-access` (docker-compose.yml) as `admin` after `migrate`; idempotent.
-- Same idea as the Power BI role "Store Manager" (powerbi/.../roles/Store Manager.tmdl): a mapping table says which
-- store(s) each manager (ClickHouse user name) sees, and one row policy per table/view keeps only those rows:
--   * retail_access.store_managers (user_name, store_id): maintained by `admin` only (platform_writer's grants
--     cover `retail` and `retail_bench`, not this database); a manager reads their own mapping rows only;
--   * role `store_manager`: settings profile `manager_readonly` (users.d/platform-users.xml: readonly=1, so no
--     writes, DDL or setting changes), SELECT on the BI views a store manager uses and on the tables they read
--     (views run with the invoker's rights), nothing else (no quarantine payloads, ETL runs, models);
--   * row policy `store_manager_scope` on every granted table/view with a store column: store_id in the user's
--     stores, or store_key of those stores (star schema). Other users have no policy on these tables and keep
--     reading every row (config.d/platform.xml: users_without_row_policies_can_read_rows).
-- Adding a manager (credentials never in the repository):
--   CREATE USER manager_s001 IDENTIFIED WITH sha256_password BY '<password>' DEFAULT ROLE store_manager;
--   GRANT store_manager TO manager_s001;
--   INSERT INTO retail_access.store_managers (user_name, store_id) VALUES ('manager_s001', 'S001');
-- tests/test_clickhouse_access.py checks that every view and table with a store column has a policy here and
-- runs these policies on the real engine (chDB).

CREATE DATABASE IF NOT EXISTS retail_access;

CREATE TABLE IF NOT EXISTS retail_access.store_managers
(
    user_name  String,                      -- ClickHouse user name of the manager
    store_id   String,                      -- a store they manage (one row per store)
    updated_at DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree(updated_at) ORDER BY (user_name, store_id);

CREATE ROLE IF NOT EXISTS store_manager;
ALTER ROLE store_manager SETTINGS PROFILE 'manager_readonly';

-- every grant of the role is listed here (REVOKE first: a table dropped from this file loses its grant)
REVOKE ALL ON *.* FROM store_manager;
GRANT SELECT ON retail_access.store_managers TO store_manager;
GRANT SELECT ON retail.v_dim_date TO store_manager;
GRANT SELECT ON retail.v_dim_product TO store_manager;
GRANT SELECT ON retail.dim_date TO store_manager;
GRANT SELECT ON retail.dim_product TO store_manager;
GRANT SELECT ON retail.v_current_inventory TO store_manager;
GRANT SELECT ON retail.v_demand_history TO store_manager;
GRANT SELECT ON retail.v_dim_store TO store_manager;
GRANT SELECT ON retail.v_forecast_accuracy TO store_manager;
GRANT SELECT ON retail.v_forecast_latest TO store_manager;
GRANT SELECT ON retail.v_live_sku_metrics TO store_manager;
GRANT SELECT ON retail.v_live_store_metrics TO store_manager;
GRANT SELECT ON retail.v_reorder_latest TO store_manager;
GRANT SELECT ON retail.v_restock_alerts TO store_manager;
GRANT SELECT ON retail.v_sku_classification_latest TO store_manager;
GRANT SELECT ON retail.dim_store TO store_manager;
GRANT SELECT ON retail.features_daily TO store_manager;
GRANT SELECT ON retail.forecast_predictions TO store_manager;
GRANT SELECT ON retail.inventory_levels TO store_manager;
GRANT SELECT ON retail.reorder_recommendations TO store_manager;
GRANT SELECT ON retail.restock_alerts TO store_manager;
GRANT SELECT ON retail.sales_metrics_5m TO store_manager;
GRANT SELECT ON retail.sku_classification TO store_manager;
GRANT SELECT ON retail.sku_window_latest TO store_manager;
GRANT SELECT ON retail.store_metrics_5m TO store_manager;
GRANT SELECT ON retail.v_fact_inventory TO store_manager;
GRANT SELECT ON retail.v_fact_sales TO store_manager;
GRANT SELECT ON retail.v_sales_daily TO store_manager;
GRANT SELECT ON retail.fact_inventory TO store_manager;
GRANT SELECT ON retail.fact_sales TO store_manager;
GRANT SELECT ON retail.demand_daily TO store_manager;
GRANT SELECT ON retail.fact_sales_daily TO store_manager;

-- a manager sees their own mapping rows only
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail_access.store_managers FOR SELECT
    USING user_name = currentUser() TO store_manager;

-- tables and views with store_id
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.v_current_inventory FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.v_demand_history FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.v_dim_store FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.v_forecast_accuracy FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.v_forecast_latest FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.v_live_sku_metrics FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.v_live_store_metrics FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.v_reorder_latest FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.v_restock_alerts FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.v_sku_classification_latest FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.dim_store FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.features_daily FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.forecast_predictions FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.inventory_levels FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.reorder_recommendations FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.restock_alerts FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.sales_metrics_5m FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.sku_classification FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.sku_window_latest FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.store_metrics_5m FOR SELECT
    USING store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser()) TO store_manager;

-- star schema (store_key: UInt64 in the tables, the same 64 bits as Int64 in the views)
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.fact_inventory FOR SELECT
    USING store_key IN (SELECT store_key FROM retail.dim_store WHERE store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser())) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.fact_sales FOR SELECT
    USING store_key IN (SELECT store_key FROM retail.dim_store WHERE store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser())) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.fact_sales_daily FOR SELECT
    USING store_key IN (SELECT store_key FROM retail.dim_store WHERE store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser())) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.demand_daily FOR SELECT
    USING store_key IN (SELECT store_key FROM retail.dim_store WHERE store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser())) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.v_fact_inventory FOR SELECT
    USING store_key IN (SELECT reinterpretAsInt64(store_key) FROM retail.dim_store WHERE store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser())) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.v_fact_sales FOR SELECT
    USING store_key IN (SELECT reinterpretAsInt64(store_key) FROM retail.dim_store WHERE store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser())) TO store_manager;
CREATE ROW POLICY OR REPLACE store_manager_scope ON retail.v_sales_daily FOR SELECT
    USING store_key IN (SELECT reinterpretAsInt64(store_key) FROM retail.dim_store WHERE store_id IN (SELECT store_id FROM retail_access.store_managers WHERE user_name = currentUser())) TO store_manager;

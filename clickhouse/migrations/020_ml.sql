-- ML tables (owner: ML; written by the tasks of dags/demand_forecast_training.py and dags/batch_predictions.py
-- through ml/pipeline.py). Every table is a ReplacingMergeTree keyed on its natural key with a version
-- column, so re-running a task for the same run replaces rows instead of duplicating them (read with FINAL).

-- Daily feature table per store x SKU x day (ml/features.py). Row `date` = d holds demand history strictly
-- before d and known-in-advance covariates of d; future rows (units NaN) are the forecast days.
CREATE TABLE IF NOT EXISTS {db}.features_daily (
    date            Date,
    store_id        String,
    product_id      String,
    units           Float64,                     -- demand of the day (NaN for future rows)
    lag_1           Float64,
    lag_7           Float64,
    lag_14          Float64,
    lag_28          Float64,
    rmean_7         Float64,
    rmean_14        Float64,
    rmean_30        Float64,
    rmean_90        Float64,
    rstd_7          Float64,
    rstd_14         Float64,
    rstd_30         Float64,
    rstd_90         Float64,
    zero_share_28   Float64,
    days_since_sale Float64,
    dow             UInt8,                       -- 0 = Monday
    month           UInt8,
    season          UInt8,                       -- 0 winter .. 3 autumn (meteorological, northern hemisphere)
    day_of_month    UInt8,
    is_weekend      UInt8,
    price           Float64,
    price_change_7  Float64,
    price_rel_28    Float64,
    promo           UInt8,
    holiday         UInt8,
    event           UInt8,
    snap            UInt8,
    temp_c          Nullable(Float64),
    precip_mm       Nullable(Float64),
    run_date        Date,                        -- logical date of the run that computed the row
    computed_at     DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(date)
ORDER BY (store_id, product_id, date);

-- Model metrics in long format: demand-forecast backtest (per model and horizon day; horizon 0 = all)
-- and the slow-moving classifier's evaluation.
CREATE TABLE IF NOT EXISTS {db}.ml_model_metrics (
    model_name      LowCardinality(String),      -- 'demand-forecast' | 'slow-moving'
    model_version   UInt32,                      -- 0 when the metric is not tied to a saved model
    run_date        Date,
    model           LowCardinality(String),      -- gbt | seasonal_naive | trailing_mean_28 | statsforecast | syntetos-boylan
    metric          LowCardinality(String),      -- wape | mae | rmse | rmsse | coverage80 | coverage95 | n | ...
    horizon         UInt8,                       -- days ahead 1..28; 0 = pooled over horizons / not applicable
    value           Float64,
    dataset         LowCardinality(String),      -- 'platform' or a benchmark data set
    computed_at     DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(computed_at)
ORDER BY (model_name, model_version, run_date, dataset, model, metric, horizon);

-- Model registry: one row per version (latest state wins); exactly one champion after a promotion.
CREATE TABLE IF NOT EXISTS {db}.model_registry (
    model_name          LowCardinality(String),
    version             UInt32,
    run_date            Date,
    trained_at          DateTime64(3, 'UTC'),
    path                String,                  -- lake path models/demand-forecast/v<N>
    backtest_wape       Float64,                 -- pooled over horizons of the model this version serves (see below)
    seasonal_naive_wape Float64,
    metrics             String,                  -- JSON: per-horizon metrics, config, rows, timings
    is_champion         UInt8,
    promoted_at         Nullable(DateTime64(3, 'UTC')),
    updated_at          DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (model_name, version);

-- Forecasts per store x SKU x horizon from the champion with split-conformal 80 % / 95 % intervals (backtest residuals).
CREATE TABLE IF NOT EXISTS {db}.forecast_predictions (
    forecast_origin Date,                        -- last day with known demand
    target_date     Date,
    horizon         UInt8,                       -- 1..FORECAST_HORIZON (<= 28)
    store_id        String,
    product_id      String,
    yhat            Float64,                     -- units
    lower80         Float64,
    upper80         Float64,
    lower95         Float64,
    upper95         Float64,
    model_version   UInt32,
    run_date        Date,
    created_at      DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(created_at)
PARTITION BY toYYYYMM(forecast_origin)
ORDER BY (store_id, product_id, forecast_origin, horizon);

-- Stock optimisation per store x SKU (ml/optimize.py): safety stock, reorder point, EOQ, quantity, risk.
CREATE TABLE IF NOT EXISTS {db}.reorder_recommendations (
    as_of_date          Date,                    -- forecast origin
    store_id            String,
    product_id          String,
    stock               Float64,                 -- units on hand (fact_inventory closing stock)
    stock_date          Nullable(Date),          -- date of that closing stock
    mean_daily_demand   Float64,                 -- mean of the 7-day point forecast, units/day
    sigma_daily         Float64,                 -- forecast-error sigma, units/day: lead-time total's / sqrt(L)
    lead_time_days      Float64,
    service_level       Float64,
    safety_stock        Float64,
    reorder_point       Float64,
    eoq                 Float64,
    reorder_qty         Float64,                 -- bounded by storage capacity and shelf life
    reorder_needed      UInt8,
    days_until_stockout Float64,                 -- capped at 999
    stockout_risk       LowCardinality(String),  -- HIGH | MEDIUM | LOW (contracts.RISK_LEVELS)
    storage_capacity    Nullable(Float64),
    shelf_life_days     Nullable(Float64),
    unit_cost           Float64,
    model_version       UInt32,
    run_date            Date,
    created_at          DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(created_at)
ORDER BY (store_id, product_id, as_of_date);

-- Syntetos-Boylan demand classes and slow-moving flag per store x SKU (ml/slow_moving.py).
CREATE TABLE IF NOT EXISTS {db}.sku_classification (
    as_of_date           Date,
    store_id             String,
    product_id           String,
    window_days          UInt32,
    adi                  Float64,                -- average inter-demand interval, days
    cv2                  Float64,                -- squared CV of non-zero demand sizes
    demand_class         LowCardinality(String), -- smooth | erratic | intermittent | lumpy | no_demand
    mean_daily_demand    Float64,
    days_since_last_sale UInt32,
    is_slow_moving       UInt8,
    run_date             Date,
    created_at           DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(created_at)
ORDER BY (store_id, product_id, as_of_date);

-- Champion / challenger (issue 11): the model of a version that serves when it is champion ('gbt' or a
-- baseline: 'seasonal_naive' | 'trailing_mean_28' | 'statsforecast') and its pooled backtest RMSSE;
-- backtest_wape is that model's pooled WAPE. Horizons run 1..FORECAST_HORIZON (<= 28) from here on.
ALTER TABLE {db}.model_registry ADD COLUMN IF NOT EXISTS model LowCardinality(String) DEFAULT 'gbt' AFTER version;
ALTER TABLE {db}.model_registry ADD COLUMN IF NOT EXISTS backtest_rmsse Float64 DEFAULT nan AFTER backtest_wape;

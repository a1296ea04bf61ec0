"""Batch ML of the platform: feature engineering, MLlib GBT demand forecasting, stock optimisation.

Modules: :mod:`ml.features` (pandas features per store x SKU x day), :mod:`ml.forecast` (Spark MLlib
GBT + rolling-origin backtest + prediction intervals), :mod:`ml.optimize` (safety stock, reorder point,
EOQ), :mod:`ml.slow_moving` (Syntetos-Boylan demand classes), :mod:`ops.bench_forecast` (M5 / UCI benchmark),
:mod:`ml.jobs` (spark-submit applications). Nothing here opens a client or a session at import time.
"""

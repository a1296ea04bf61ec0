"""ClickHouse's HTTP interface served over chDB, the embedded ClickHouse engine (service ``clickhouse``).

chDB lets one process open a data path. On the native stack this process owns it and speaks ClickHouse's HTTP
protocol (https://clickhouse.com/docs/interfaces/http) on ``CLICKHOUSE_HTTP_PORT``, so every other component —
clickhouse-connect, curl, ClickHouse's ODBC driver under Power BI, the dashboards — talks to it exactly as to a
ClickHouse server. :mod:`chserver.engine` wraps chDB (one lock: chDB runs one query at a time per process);
:mod:`chserver.app` is the Starlette application; ``python -m chserver`` runs it under uvicorn.
"""

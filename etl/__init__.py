"""The nightly star-schema ETL: raw events in the lake -> ClickHouse facts and dimensions (:mod:`etl.star_schema`),
run by the ``daily_etl`` DAG. Nothing here opens a client at import time."""

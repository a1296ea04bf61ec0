"""spark-submit applications of the ML DAGs (train, predict). They read and write only the lake, never
ClickHouse (chDB allows one process per data path; the DAG's Python tasks own the client)."""

"""Spark Structured Streaming job: Kafka POS events -> validated raw events in the lake, 5-minute windowed
inventory metrics in ClickHouse, quarantine of invalid events, and restock alerts.

Modules: :mod:`streaming.schema` (Spark schemas derived from the Avro contracts), :mod:`streaming.transforms`
(pure DataFrame transforms), :mod:`streaming.sinks` (idempotent foreachBatch sinks), :mod:`streaming.job`
(SparkSession, queries, CLI) and :mod:`ops.bench_stream` (benchmark and load test).
"""

"""spark-submit application: one UTC day of raw lake events -> staged fact rows of the star schema.

    spark-submit --master local[2] etl/jobs/daily_facts.py --date 2011-08-29

Runs :func:`etl.spark_facts.build_day` (dedup, day filter, contract check, fact_sales lines, fact_sales_daily,
closing stock in Spark; dimensions in pandas) and stages the results under
``features/staging/daily_etl/date=YYYY-MM-DD/`` for the ``load`` task of ``daily_etl``. Never opens ClickHouse.
Exit 0 on success; exit 3 after staging ``facts_error`` when the day's data breaks the contract (the DAG's
operator then fails the task without retries); any other error exits non-zero and is retried.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # launched as a file by spark-submit: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.jobs import EXIT_BAD_DATA, bad_data, parse_job_date  # noqa: E402  (after the bootstrap)

__all__ = ["EXIT_BAD_DATA", "main"]


def main(argv: list[str] | None = None) -> int:
    """Build and stage the fact rows of one UTC day (the module docstring's job).

    Args:
        argv: command-line arguments without the program name (default ``sys.argv[1:]``): ``--date YYYY-MM-DD``,
            required, the UTC calendar date to process.

    Reads the day's raw partitions ``raw-data/sales_transaction/`` and ``raw-data/inventory_update/``
    (``year=/month=/day=``) with Spark and the reference data ``raw-data/reference/{products,stores}``; first
    removes a ``facts_error`` record left by an earlier run. Writes (overwriting) ``fact_sales``,
    ``fact_sales_daily``, ``inventory_closing``, ``dim_product``, ``dim_store``, ``dim_date`` and the counts
    ``facts_result`` (:func:`etl.spark_facts.build_day`) as Parquet under
    ``features/staging/daily_etl/date=YYYY-MM-DD/``; on bad data, ``facts_error`` (``{"date", "error",
    "message"}``) there. Prints ``daily_facts <date>: <counts>`` on stdout; the SparkSession is stopped either way.

    Returns:
        0 on success; :data:`EXIT_BAD_DATA` (3) when the day breaks the contract (``etl.star_schema.EtlError``:
        reported on stderr after staging ``facts_error``). The caller exits with it (``sys.exit(main())``).

    Raises:
        SystemExit: status 2 (argparse) when ``--date`` is missing.
        ValueError: a malformed ``--date``.
        Exception: anything else (``ConfigError``, the lake or Spark unavailable) propagates: the process exits
            with status 1 and the DAG's operator retries the task.
    """
    date, day = parse_job_date(argv, __doc__, "--date", "UTC date to process (YYYY-MM-DD)")

    from core.spark import build_spark
    from etl import star_schema as etl
    from etl import spark_facts as sf

    lake = etl.open_lake()
    sf.clear_error(lake, day)
    spark = build_spark("daily-etl-facts", lake=True)   # reads the raw partition through S3A
    try:
        out = sf.build_day(spark, day, lake, recheck_days=lake.settings.etl_recheck_days)
    except etl.EtlError as exc:
        sf.write_json(lake, day, sf.ERROR_NAME, {"date": date, "error": type(exc).__name__, "message": str(exc)})
        return bad_data("daily_facts", date, exc)
    finally:
        spark.stop()
    print(f"daily_facts {date}: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

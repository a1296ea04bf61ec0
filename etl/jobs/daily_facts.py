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
    date, day = parse_job_date(argv, __doc__, "--date", "UTC date to process (YYYY-MM-DD)")

    from core.spark import build_spark
    from etl import star_schema as etl
    from etl import spark_facts as sf

    lake = etl._lake()
    sf.clear_error(lake, day)
    spark = build_spark("daily-etl-facts", lake=True)   # reads the raw partition through S3A
    try:
        out = sf.build_day(spark, day, lake)
    except etl.EtlError as exc:
        sf.write_json(lake, day, sf.ERROR_NAME, {"date": date, "error": type(exc).__name__, "message": str(exc)})
        return bad_data("daily_facts", date, exc)
    finally:
        spark.stop()
    print(f"daily_facts {date}: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the platform's dated spark-submit applications share (``etl/jobs/daily_facts.py``,
``ml/jobs/build_features.py``): the exit status for bad data and the parsing of the one date they process.

Standard library only, so a job can import it right after its ``sys.path`` bootstrap (spark-submit runs the job
as a file: the bootstrap puts the repo root on the path, which makes ``core`` importable) and before anything
heavy; ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

#: exit status for bad data (contract violations): retrying cannot fix it; the DAG's operator then fails the
#: task without retries
EXIT_BAD_DATA = 3


def parse_job_date(argv: list[str] | None, doc: str, flag: str, help: str) -> tuple[str, dt.date]:
    """Parse a job's command line: one required ISO date option ``flag`` (e.g. ``--date``); the parser's
    description is the first line of ``doc`` (the job's docstring). Returns the argument as given and the date.
    Exits with status 2 (argparse) on a missing option; raises ValueError on a malformed date."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument(flag, required=True, help=help)
    a = ap.parse_args(argv)
    value = getattr(a, flag.lstrip("-").replace("-", "_"))
    return value, dt.date.fromisoformat(value)


def bad_data(job: str, value: str, exc: BaseException) -> int:
    """Report a contract violation of the run for ``value`` on stderr (``<job> <value>: bad data: <exc>``) and
    return :data:`EXIT_BAD_DATA` for the job to exit with (after it has staged its error record)."""
    print(f"{job} {value}: bad data: {exc}", file=sys.stderr, flush=True)
    return EXIT_BAD_DATA

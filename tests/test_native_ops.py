"""Operations of the native stack (ops.local, ops.services, ops.airflow, Makefile): what each target starts, where
services listen, the supervised programs' environment, leftovers after a crash, the MinIO credentials."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _make_recipes() -> dict[str, tuple[list[str], list[str]]]:
    """{target: (prerequisites, recipe lines)} of the Makefile."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    target = None
    for line in (REPO / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+):(?!=)\s*([^#]*)", line)
        if m:
            target = m.group(1)
            out[target] = (m.group(2).split(), [])
        elif line.startswith("\t") and target:
            out[target][1].append(line.strip())
        elif line.strip() and not line.startswith("#"):
            target = None
    return out


def _started_services(target: str, recipes=None, seen=None) -> set[str]:
    """Services an ``ops.cli up`` in ``target``'s recipe or its prerequisites' recipes starts."""
    recipes = recipes or _make_recipes()
    seen = set() if seen is None else seen
    if target in seen or target not in recipes:
        return set()
    seen.add(target)
    deps, lines = recipes[target]
    out = set().union(*[_started_services(d, recipes, seen) for d in deps]) if deps else set()
    for line in lines:
        m = re.search(r"-m ops\.cli up (.*)", line)
        if m:
            out |= set(m.group(1).split())
    return out


def test_make_produce_starts_kafka_and_minio():
    # the synthetic producer writes the reference data (products, stores) to the lake: MinIO must run
    started = _started_services("produce")
    assert {"kafka", "minio"} <= started, started

"""Writes ``tests/module_seconds.json`` (seconds per test module, the order ``make test`` hands modules to its
pytest-xdist workers: longest first) from one or more JUnit XML reports of full runs
(``pytest --junitxml=run.xml``; a test case's time is its setup + call + teardown).

Usage: ``python tests/module_seconds.py run.xml [more.xml ...]`` (the longest time a module took in any report)."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

OUT = Path(__file__).with_name("module_seconds.json")


def module_seconds(reports: list[Path]) -> dict[str, int]:
    """{module name (``test_x``): seconds, rounded up} over ``reports``, the largest per module across reports.
    Raises FileNotFoundError / xml.etree.ElementTree.ParseError on a missing or broken report."""
    best: dict[str, float] = {}
    for report in reports:
        per: dict[str, float] = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            module = case.get("classname", "").split(".")[-1] or case.get("file", "")
            per[module] = per.get(module, 0.0) + float(case.get("time") or 0)
        for module, seconds in per.items():
            best[module] = max(best.get(module, 0.0), seconds)
    return {m: int(s) + 1 for m, s in sorted(best.items(), key=lambda kv: -kv[1]) if m.startswith("test_")}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    about = json.loads(OUT.read_text())["_about"] if OUT.exists() else ""
    OUT.write_text(json.dumps({"_about": about, **module_seconds([Path(a) for a in argv])}, indent=2) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

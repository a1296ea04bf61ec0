"""The benchmarks' goal block, one shape for every report (``make load-test``, ``bench-stream``, ``bench-bi``,
``bench-nightly``, ``bench-forecast``): each goal as ``{"goal", "target", "measured", "met", "result"}``, the
report's ``verdict`` (``"pass"`` / ``"fail"``) and ``goals_missed``, and exit status 1 after the report and chart
are written when a goal is missed."""

from __future__ import annotations

from typing import Any

import typer


def goal(name: str, measured: float | None, target: float, higher_is_better: bool = True) -> dict[str, Any]:
    """One goal as reported: ``{"goal", "target", "measured", "met", "result"}`` (``met`` False when unmeasured,
    ``measured`` None; ``result`` ``"pass"`` or ``"fail"``). ``measured`` and ``target`` in the goal's own unit
    (events/s, s, ms, a fraction), which ``name`` states."""
    met = measured is not None and (measured >= target if higher_is_better else measured <= target)
    return {"goal": name, "target": target, "measured": measured, "met": bool(met), "result": "pass" if met else "fail"}


def judge(report: dict[str, Any]) -> list[str]:
    """Record the verdict of a report's ``goals`` in it (``"verdict"``: ``"pass"`` when every goal is met, else
    ``"fail"``; ``"goals_missed"``: the names of the missed ones) and return the missed names (empty: all met or
    no goals)."""
    missed = [g["goal"] for g in report.get("goals") or [] if not g["met"]]
    report["verdict"] = "fail" if missed else "pass"
    report["goals_missed"] = missed
    return missed


def exit_on_missed(report: dict[str, Any]) -> None:
    """After the report and chart are written: exit 1 (``typer.Exit``) naming the missed goals on stderr when a goal
    of ``report`` is missed (:func:`judge`); nothing when all are met, so ``make <bench>`` fails on a missed goal
    (until 2026-12-06 ``bench-bi``, ``bench-nightly`` and ``bench-forecast`` exited 0 whatever the goals)."""
    missed = judge(report)
    if missed:
        typer.echo(f"goals missed ({len(missed)} of {len(report['goals'])}): " + "; ".join(missed), err=True)
        raise typer.Exit(1)

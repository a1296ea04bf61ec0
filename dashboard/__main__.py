"""``python -m dashboard``: serve the live dashboard (Streamlit) on DASHBOARD_PORT. The process becomes Streamlit's
server (exec), so a supervisor's signals reach it directly."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, help=__doc__)


def command(port: int) -> list[str]:
    """The Streamlit command line serving ``dashboard/app.py`` headless on ``port`` (all interfaces; no usage
    statistics, no tracebacks in the browser, no file watcher)."""
    return [sys.executable, "-m", "streamlit", "run", str(Path(__file__).with_name("app.py")),
            "--server.port", str(port), "--server.address", "0.0.0.0", "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.showErrorDetails", "none",
            "--client.toolbarMode", "viewer", "--server.fileWatcherType", "none", "--theme.base", "light"]


@app.command()
def serve(port: Optional[int] = typer.Option(None, help="Port (default: DASHBOARD_PORT, 8501).")) -> None:
    """Serve the four dashboards (executive, store manager, inventory analyst, data quality & ML)."""
    from core.settings import get_settings

    s = get_settings()  # fails fast naming a bad setting
    s.require("clickhouse_bi_password")
    cmd = command(port or s.dashboard_port)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    app()

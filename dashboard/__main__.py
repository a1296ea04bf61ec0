"""``python -m dashboard``: serve the live dashboard (Streamlit) on DASHBOARD_HOST:DASHBOARD_PORT. The process becomes
Streamlit's server (exec), so a supervisor's signals reach it directly."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, help=__doc__)


def command(port: int, host: str | None = None) -> list[str]:
    """The Streamlit command line serving ``dashboard/app.py`` headless on ``host:port`` (host default:
    DASHBOARD_HOST, this machine only unless configured; no usage statistics, no tracebacks in the browser, no
    file watcher)."""
    if host is None:
        from core.settings import get_settings

        host = get_settings().dashboard_host
    return [sys.executable, "-m", "streamlit", "run", str(Path(__file__).with_name("app.py")),
            "--server.port", str(port), "--server.address", host, "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.showErrorDetails", "none",
            "--client.toolbarMode", "viewer", "--server.fileWatcherType", "none", "--theme.base", "light"]


@app.command()
def serve(port: Optional[int] = typer.Option(None, help="Port (default: DASHBOARD_PORT, 8501)."),
          host: Optional[str] = typer.Option(None, help="Address to listen on (default: DASHBOARD_HOST, "
                                                         "127.0.0.1).")) -> None:
    """Serve the five dashboard pages (executive, store manager, inventory analyst, data quality & ML, stream health)."""
    from core.settings import get_settings

    s = get_settings()  # fails fast naming a bad setting
    s.require("clickhouse_bi_password")
    cmd = command(port or s.dashboard_port, host or s.dashboard_host)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    app()

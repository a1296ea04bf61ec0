"""``python -m ops.cli``: set up, start, inspect and stop the native local stack; apply migrations."""

from __future__ import annotations

import json
from typing import Optional

import typer

from ops import local
from core.settings import get_settings

app = typer.Typer(help="Native stack under supervisord: Kafka (KRaft), MinIO, ClickHouse endpoint (chDB), streaming, Airflow.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.command()
def setup(minio: bool = typer.Option(True, help="Also build the MinIO server."),
          browser: bool = typer.Option(False, help="Also install headless Chromium (Debian packages; browser tests).")) -> None:
    """Resolve jars (Kafka broker, Spark Kafka connector), build MinIO, write local credentials."""
    from ops import install

    install.setup(get_settings(), minio=minio)
    if browser:
        typer.echo("headless browser: " + " ".join(install.browser()))
    typer.echo("native stack artefacts ready")


@app.command()
def up(services: Optional[list[str]] = typer.Argument(None, help="Services to start (default: all), with their dependencies.")) -> None:
    """Start the native services under supervisord in dependency order; wait until each is healthy. Exits 1 with
    the message (naming the setting, the service and its log) when a setting is wrong or a service fails."""
    from core.settings import ConfigError
    from ops.install import StackError

    try:
        local.up(None, services)
    except (ConfigError, StackError) as exc:
        typer.echo(f"up: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(local.status(get_settings()), indent=2))


@app.command()
def down() -> None:
    """Stop the native services. Exits 1 naming port, pid and program when a configured port is still held: by a
    process of the platform after 90 s, or (at once) by a program that is not the platform's."""
    from core.settings import ConfigError
    from ops.install import StackError

    try:
        local.down(get_settings())
    except (ConfigError, StackError) as exc:
        typer.echo(f"down: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("stopped")


@app.command()
def clean() -> None:
    """Stop the native services, then delete their state folder: ``RETAIL_STATE_DIR`` as the settings resolve it
    (environment, ``.env``, ``$RETAIL_CACHE_DIR/local.env``; default ``$RETAIL_CACHE_DIR/state``), the folder
    :func:`ops.local.up` used. The install cache (venv, jars, MinIO, ``local.env``) is kept.

    Exits 1 (message on stderr, nothing deleted) when a service's port is still held by a process of the platform
    after ``down``, or when the folder holds entries the platform does not create (:data:`ops.local.STATE_ENTRIES`).
    Ports held only by other programs (another stack on the same host ports) are named on stderr and the folder is
    deleted (:func:`ops.local.clean`).
    """
    from core.settings import ConfigError
    from ops.install import StackError

    s = get_settings()
    try:
        gone = local.clean(s, warn=lambda m: typer.echo(f"clean: {m}", err=True))
    except (ConfigError, StackError) as exc:   # a port held by ours, or a folder the platform did not make: nothing deleted
        typer.echo(f"clean: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"removed {gone}" if gone else f"nothing to remove at {s.retail_state_dir}")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="JSON instead of a table.")) -> None:
    """Each service's supervisor state, pid, uptime, health and endpoint; exit 1 unless all are healthy."""
    st = local.status(get_settings())
    if as_json:
        typer.echo(json.dumps(st, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("service", "state", "pid", "uptime", "healthy", "endpoint")
        for name, row in st.items():
            table.add_row(name, row["state"], str(row["pid"] or "-"), f"{row['uptime_s']} s",
                          "yes" if row["healthy"] else "NO", row["endpoint"])
        Console().print(table)
    raise typer.Exit(0 if all(r["healthy"] for r in st.values()) else 1)


@app.command()
def migrate() -> None:
    """Apply clickhouse/migrations in order (idempotent)."""
    from core.clickhouse import migrate as run

    for name in run(get_settings()):
        typer.echo(f"applied {name}")


@app.command("config-table")
def config_table() -> None:
    """Print the README's configuration table (every environment variable of the settings module)."""
    from core.settings import config_table_markdown

    typer.echo(config_table_markdown())

if __name__ == "__main__":
    app()

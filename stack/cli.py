"""``python -m stack.cli``: set up, start, inspect and stop the native local stack; apply migrations."""

from __future__ import annotations

import json

import typer

from stack import local
from stack.settings import get_settings

app = typer.Typer(help="Native local stack: real Kafka (KRaft), MinIO, chDB; no Docker.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.command()
def setup(minio: bool = typer.Option(True, help="Also build the MinIO server.")) -> None:
    """Resolve jars (Kafka broker, Spark Kafka connector), build MinIO, write local credentials."""
    local.setup(get_settings(), minio=minio)
    typer.echo("native stack artefacts ready")


@app.command()
def up() -> None:
    """Start Kafka (and MinIO when LAKE_URL is an S3 endpoint), wait until healthy."""
    local.up(get_settings())
    typer.echo(json.dumps(local.status(get_settings()), indent=2))


@app.command()
def down() -> None:
    """Stop the native services."""
    local.down(get_settings())
    typer.echo("stopped")


@app.command()
def status() -> None:
    """Print each service's pid, health and endpoint as JSON."""
    typer.echo(json.dumps(local.status(get_settings()), indent=2))


@app.command()
def migrate() -> None:
    """Apply clickhouse/migrations in order (idempotent)."""
    from stack.ch import migrate as run

    for name in run(get_settings()):
        typer.echo(f"applied {name}")


@app.command("config-table")
def config_table() -> None:
    """Print the README's configuration table (every environment variable of the settings module)."""
    from stack.settings import Settings

    typer.echo("| variable | default | meaning |\n|---|---|---|")
    for name, field in Settings.model_fields.items():
        default = None if field.default_factory is not None else field.default
        default = "(derived)" if default is None else f"`{default}`"
        typer.echo(f"| `{name.upper()}` | {default} | {field.description or ''} |")


if __name__ == "__main__":
    app()

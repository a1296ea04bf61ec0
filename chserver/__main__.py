"""``python -m chserver``: serve ClickHouse's HTTP interface over chDB on CLICKHOUSE_HTTP_HOST:CLICKHOUSE_HTTP_PORT.

Exits with status 2 and a one-line message naming the variable when a setting is missing (e.g. a user's
password: run ``make setup``). uvicorn shuts down gracefully on SIGTERM/SIGINT; chDB is closed on exit.
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from core.settings import ConfigError, get_settings


def main() -> None:
    """Run the endpoint until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        s = get_settings()
        from chserver.app import create_app

        app = create_app(s)
    except ConfigError as exc:
        print(f"chserver: {exc}", file=sys.stderr)
        sys.exit(2)
    logging.getLogger("chserver").info("serving ClickHouse HTTP on %s:%s over chDB at %s",
                                       s.clickhouse_http_host, s.clickhouse_http_port, s.clickhouse_chdb_path)
    uvicorn.run(app, host=s.clickhouse_http_host, port=s.clickhouse_http_port, log_level="warning",
                access_log=False, timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()

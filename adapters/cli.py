"""``xdm-bridge``: the command line, and where the process starts.

Exit codes: 0 success, 1 a check or operation failed, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from adapters.crypto import generate_key
from adapters.logs import setup_logging
from adapters.sqlite_store import open_database
from bridge.errors import ConfigError
from bridge.settings import Settings, database_path

log = logging.getLogger("adapters.cli")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"xdm-bridge: configuration error: {line}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the web process (migrations first)."""
    settings = _settings()
    setup_logging(settings.log_level, settings.log_format)
    from adapters.web import create_app

    web.run_app(
        create_app(settings),
        host=args.host,
        port=settings.port,
        shutdown_timeout=10.0,
        access_log=None,
        print=None,
    )
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply pending migrations and exit (Procfile ``release:``)."""
    setup_logging("INFO", "text")
    path = database_path()
    db = open_database(path)
    db.close()
    print(f"database {path} is up to date")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    """Print a new BRIDGE_ENCRYPTION_KEY."""
    print(generate_key())
    return EXIT_OK


def cmd_sandbox(args: argparse.Namespace) -> int:
    """The real bridge between local simulators of Slack and X, with a web page to drive it."""
    from adapters import sandbox

    return sandbox.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xdm-bridge", description="Relay Slack channel messages into X (Twitter) DM conversations."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the web process (applies migrations first)")
    serve.add_argument("--host", default="0.0.0.0", help="interface to listen on (default 0.0.0.0)")
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("migrate", help="apply pending database migrations and exit").set_defaults(
        func=cmd_migrate
    )
    sub.add_parser("keygen", help="print a new BRIDGE_ENCRYPTION_KEY").set_defaults(func=cmd_keygen)
    sandbox_parser = sub.add_parser("sandbox", help="try the bridge locally against simulated Slack and X")
    sandbox_parser.set_defaults(func=cmd_sandbox)
    from adapters import sandbox

    sandbox.add_arguments(sandbox_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())

"""``xdm-bridge``: the command line, and where the process starts.

``serve``, ``migrate``, ``keygen`` and ``sandbox`` run the bridge; ``doctor``,
``mappings``, ``accounts`` (and ``accounts disconnect``), ``outbox`` and ``rotate-keys``
are for operators (``--json`` for scripts).
Exit codes: 0 success, 1 a check or operation failed, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from adapters.ops import admin, envfile
from adapters.store import operator as operator_store
from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.engine import Engine
from adapters.store.keys import check_keys, rotate_keys
from adapters.store.operator import DROPPED, LISTED_STATES, OperatorStore, Outcome
from adapters.store.select import operator_engine
from adapters.store.sqlite import open_database
from adapters.web.logs import setup_logging
from bridge.errors import ConfigError, StoreUnavailable, XAuthRevoked, XError
from bridge.settings import (
    Settings,
    database_path,
    database_url,
    database_url_problem,
    encryption_keys,
    redacted,
)
from bridge.xchat import KeysElsewhere, RegistrationDeferred, XChatError
from migrations import migrations

log = logging.getLogger("adapters.ops.cli")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
T = TypeVar("T")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"xdm-bridge: configuration error: {line}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


async def _key_problem(location: str, keys: Sequence[str] | None) -> str | None:
    """Why the configured keys cannot serve the (migrated) database at ``location``, or None. No
    secrets stored: no problem."""
    async with operator_engine(location) as engine:
        if keys is None:
            try:
                keys = encryption_keys()
            except ConfigError as exc:
                if (await check_keys(engine, None)).total == 0:
                    return None  # nothing to open yet; serve will insist on a key
                return str(exc).splitlines()[0]
        return (await check_keys(engine, TokenCipher(keys))).problem()


def _stop_on_key_problem(settings: Settings) -> None:
    if settings.database_url:
        from adapters.store import postgres

        async def migrated() -> str | None:
            assert settings.database_url is not None
            await postgres.migrate(settings.database_url)
            return await _key_problem(settings.database_url, settings.encryption_keys)

        try:
            problem = asyncio.run(migrated())
        except (OSError, asyncpg.PostgresError) as exc:
            raise SystemExit(_database_failure(settings.database_url, exc)) from None
    else:
        open_database(settings.database_path).close()  # creates or migrates it, as serve's store would
        problem = asyncio.run(_key_problem(settings.database_path, settings.encryption_keys))
    if problem is not None:
        print(f"xdm-bridge: configuration error: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the web process (migrations first)."""
    settings = _settings()
    setup_logging(settings.log_level, settings.log_format, settings.secrets)
    if settings.litestream_replica_url and not args.replicated:
        return _serve_under_litestream(args, settings)
    from adapters.store.sqlite import DatabaseInUse, single_instance
    from adapters.web import edge
    from adapters.web.app import create_app

    # Bound before anything else starts: a port in use must not first open the database
    # and start a delivery worker beside the process that holds the port.
    sock = _listen(args.host, settings.port)
    guard = contextlib.nullcontext() if settings.database_url else single_instance(settings.database_path)
    try:
        with guard:
            # Before anything listens: a key that cannot open the stored tokens must not look healthy.
            _stop_on_key_problem(settings)
            # A wrong or revoked bot token is a configuration error, not an outage to wait out.
            _stop_on_slack_refusal(settings)
            edge.serve(create_app(settings), sock=sock, shutdown_timeout=10.0)
    except DatabaseInUse as exc:
        print(f"xdm-bridge: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except StoreUnavailable as exc:
        return _operator_error(str(exc))
    return EXIT_OK


def _stop_on_slack_refusal(settings: Settings) -> None:
    from adapters.slack.api import TOKEN_FIX, token_refusal

    if settings.slack_install_mode:
        return  # each workspace's token comes with its install, checked as it is used
    refusal = asyncio.run(token_refusal(settings.bot_token, settings.slack_api_url))
    if refusal is not None:
        raise SystemExit(_operator_error(f"SLACK_BOT_TOKEN: Slack refuses it ({refusal}); {TOKEN_FIX}"))


def _serve_under_litestream(args: argparse.Namespace, settings: Settings) -> int:
    """Restore the SQLite file if missing, then become `litestream replicate -exec "serve"`."""
    from adapters.ops import litestream

    assert settings.litestream_replica_url is not None
    try:
        litestream.restore_if_missing(settings.database_path, settings.litestream_replica_url)
        serve = [sys.executable, "-m", "bridge", "serve", "--host", args.host, "--replicated"]
        litestream.exec_replicating(settings.database_path, settings.litestream_replica_url, serve)
    except (litestream.LitestreamError, OSError) as exc:
        print(f"xdm-bridge: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _listen(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port), family=_family(host), backlog=128)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            problem = f"PORT={port}: {host}:{port} is already in use (another process listens there)"
        elif exc.errno == errno.EACCES:
            problem = f"PORT={port}: not allowed to listen on {host}:{port} (ports below 1024 need root)"
        else:
            problem = f"PORT={port}: cannot listen on {host}:{port}: {exc.strerror or exc}"
        raise SystemExit(_operator_error(problem)) from None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _database_failure(url: str, exc: Exception) -> int:
    """PostgreSQL unreachable or refusing (down, wrong host or password): one line, exit 1."""
    print(f"xdm-bridge: database {redacted(url)}: {exc}", file=sys.stderr)
    return EXIT_FAILED


def _operator_error(problem: str) -> int:
    """An operator's mistake: one line naming it, exit 2, no traceback."""
    print(f"xdm-bridge: {problem}", file=sys.stderr)
    return EXIT_CONFIG


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply pending migrations and exit (`serve` applies them too, as it starts)."""
    setup_logging("INFO", "text")
    url = _database_url()
    if url is not None:
        from adapters.store import postgres

        async def migrated() -> str | None:
            assert url is not None
            await postgres.migrate(url, _progress)
            # The release phase stops here when the key cannot open the stored secrets.
            return await _key_problem(url, None)

        try:
            problem = asyncio.run(migrated())
        except (OSError, asyncpg.PostgresError) as exc:
            return _database_failure(url, exc)
        if problem is not None:
            print(f"xdm-bridge: configuration error: {problem}", file=sys.stderr)
            return EXIT_CONFIG
        print(f"database {redacted(url)} is up to date")
        return EXIT_OK
    path = database_path()
    existed = os.path.exists(path)
    try:
        # An existing file's migrations are each said before they run (a big file takes a while);
        # a new file's are its creation.
        db = open_database(path, _progress if existed else lambda _: None)
    except StoreUnavailable as exc:
        return _operator_error(str(exc))
    try:
        version = len(migrations.applied(db))
    finally:
        db.close()
    # The release phase (or a deploy script) stops here when the key cannot open the secrets.
    problem = asyncio.run(_key_problem(path, None))
    if problem is not None:
        print(f"xdm-bridge: configuration error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if existed:
        print(f"database {path} is up to date (version {version})")
    else:
        print(f"created database {path} at version {version}")
    return EXIT_OK


def _database_url() -> str | None:
    try:
        return database_url()
    except ConfigError as exc:
        print(f"xdm-bridge: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_copy_db(args: argparse.Namespace) -> int:
    """Copy this bridge's database into an empty one (SQLite <-> PostgreSQL) and verify the counts."""
    import asyncpg

    from adapters.ops import copy_db
    from adapters.store import postgres

    source = _database_url() or database_path()
    target = args.to
    if postgres.is_postgres_url(target):
        problem = database_url_problem(target)
        if problem:
            print(f"xdm-bridge: --to: {problem.replace('DATABASE_URL', 'the URL')}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        copied = copy_db.copy(source, target, _progress)
    except (copy_db.CopyError, OSError, sqlite3.DatabaseError, asyncpg.PostgresError) as exc:
        print(f"xdm-bridge: copy-db: {exc}", file=sys.stderr)
        return EXIT_FAILED
    where = redacted(target) if postgres.is_postgres_url(target) else target
    print(f"copied {_where(source)} to {where}; every table's count verified:")
    for table, count in copied.counts.items():
        print(f"  {table}: {count}")
    return EXIT_OK


def _progress(line: str) -> None:
    """A long operation's progress, on stderr (stdout keeps the result, for scripts)."""
    print(line, file=sys.stderr, flush=True)


def _where(location: str) -> str:
    return redacted(location) if "://" in location else location


def cmd_rotate_keys(args: argparse.Namespace) -> int:
    """Re-encrypt every stored secret under the newest BRIDGE_ENCRYPTION_KEY key."""
    try:
        keys = encryption_keys()
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"xdm-bridge: configuration error: {line}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        count = _with_engine(lambda engine: rotate_keys(engine, TokenCipher(keys)))
    except ValueError as exc:
        print(f"xdm-bridge: nothing changed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    older = " Older keys can now be removed from BRIDGE_ENCRYPTION_KEY." if len(keys) > 1 else ""
    print(f"re-encrypted {count} stored secret(s) under the newest key.{older}")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    """Print a new BRIDGE_ENCRYPTION_KEY, or with ``--save FILE`` keep one in FILE (never replaced)."""
    if args.save is None:
        print(generate_key())
        return EXIT_OK
    path = Path(args.save)
    try:
        written, key = envfile.save_key(path)
    except OSError as exc:
        return _operator_error(f"cannot write {path}: {exc.strerror or exc}")
    except envfile.HiddenKey as exc:
        return _operator_error(str(exc))
    if written and key == os.environ.get(envfile.KEY, "").strip():
        print(
            f"xdm-bridge: wrote the {envfile.KEY} this environment uses to {path} (not a new one: "
            "it opens the stored X tokens).",
            file=sys.stderr,
        )
    elif written:
        print(
            f"xdm-bridge: wrote a new {envfile.KEY} to {path}. Keep a copy somewhere safe: "
            "without it the stored X tokens cannot be read.",
            file=sys.stderr,
        )
    else:
        print(f"xdm-bridge: {path} already holds a {envfile.KEY}; kept it.", file=sys.stderr)
    return EXIT_OK


def cmd_xchat_setup(args: argparse.Namespace) -> int:
    """Make, save and register X Chat keys for a connected account the operator controls."""
    settings = _settings()
    from adapters.ops import xchat

    _with_operator(OperatorStore.require_schema)  # a typo in DATABASE_PATH must not create a database

    async def work() -> str:
        identity, changed = await xchat.setup(settings, args.handle, _say)
        state = "registered with X" if changed else "already set up; nothing was changed"
        return f"X Chat keys {state} (version {identity.version})\nfingerprint: {identity.fingerprint}"

    return _xchat_outcome(args.handle, work)


def cmd_xchat_import(args: argparse.Namespace) -> int:
    """Keep X Chat keys made elsewhere, once X confirms they are the ones it registered."""
    settings = _settings()
    from adapters.ops import xchat

    _with_operator(OperatorStore.require_schema)
    try:
        private_keys = Path(args.keys).read_bytes()
    except OSError as exc:
        return _operator_error(f"cannot read {args.keys}: {exc.strerror or exc}")

    async def work() -> str:
        identity = await xchat.import_keys(settings, args.handle, private_keys, args.version)
        return f"X Chat keys imported (version {identity.version})\nfingerprint: {identity.fingerprint}"

    return _xchat_outcome(args.handle, work)


def cmd_xchat_status(args: argparse.Namespace) -> int:
    """Which X accounts the bridge holds X Chat keys for, and where X stands on them."""
    settings = _settings()
    from adapters.ops import xchat

    _with_operator(OperatorStore.require_schema)
    listed = asyncio.run(xchat.status(settings))
    data = [
        {
            "x_user_id": item.identity.x_user_id,
            "x_username": item.handle,
            "state": item.identity.state.value,
            "version": item.identity.version,
            "fingerprint": item.identity.fingerprint,
            "detail": item.identity.detail,
        }
        for item in listed
    ]

    def text() -> str:
        if not data:
            return "No X Chat keys are held; `xdm-bridge xchat setup @handle` makes them for a team account."
        return "\n".join(
            f"@{row['x_username'] or '?'} ({row['x_user_id']}): {row['state']}, version "
            f"{row['version'] or '-'}, fingerprint {row['fingerprint']}"
            + (f" ({row['detail']})" if row["detail"] else "")
            for row in data
        )

    _emit(args, data, text)
    return EXIT_OK


def cmd_xchat_forget(args: argparse.Namespace) -> int:
    """Delete the X Chat keys held for an account (X keeps the public half it registered)."""
    settings = _settings()
    from adapters.ops import xchat

    _with_operator(OperatorStore.require_schema)
    try:
        forgotten = asyncio.run(xchat.forget(settings, args.handle))
    except XChatError as exc:
        return _operator_error(str(exc))
    handle = args.handle.removeprefix("@")
    print(f"@{handle}: X Chat keys deleted" if forgotten else f"@{handle}: no X Chat keys were held")
    return EXIT_OK


def _xchat_outcome(handle: str, work: Callable[[], Coroutine[Any, Any, str]]) -> int:
    """Run an ``xchat`` command: its lines under the account's handle, or its refusal in one."""
    try:
        said = asyncio.run(work())
    except (XChatError, XError, XAuthRevoked) as exc:
        return _xchat_refusal(exc)
    print(f"@{handle.removeprefix('@')}: {said}")
    return EXIT_OK


def _xchat_refusal(exc: Exception) -> int:
    """One line: exit 1 when X or the account stands in the way, 2 for the operator's own input."""
    print(f"xdm-bridge: {exc}", file=sys.stderr)
    return (
        EXIT_FAILED
        if isinstance(exc, KeysElsewhere | RegistrationDeferred | XError | XAuthRevoked)
        else EXIT_CONFIG
    )


def _say(line: str) -> None:
    print(f"xdm-bridge: {line}", file=sys.stderr, flush=True)


def cmd_sandbox(args: argparse.Namespace) -> int:
    """The real bridge between local simulators of Slack and X, with a web page to drive it."""
    try:
        import openapi_schema_validator  # noqa: F401 - only to say what is missing, in one line
    except ImportError:
        return _operator_error(
            "the sandbox needs its extra (the simulators check every request against X's API "
            "spec): .venv/bin/pip install -e '.[sandbox]'"
        )
    from adapters.sandbox import sandbox

    return sandbox.run(args)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check configuration, database, Slack and every X account; print each problem with its fix."""
    from adapters.ops import doctor

    report = asyncio.run(doctor.run())
    _emit(args, report.as_json(), report.text)
    return report.exit_code


def cmd_webhook(args: argparse.Namespace) -> int:
    """X's push: show it, (re)register it, or replay what it pushed."""
    from adapters.ops import webhook
    from bridge.errors import XError

    settings = _settings()
    try:
        if args.action == "register":
            result = asyncio.run(webhook.register(settings))
            _emit(args, result, lambda: f"webhook {result['action']}: {result['webhook']}")
        elif args.action == "replay":
            result = asyncio.run(webhook.replay(settings, args.minutes))
            _emit(
                args,
                result,
                lambda: f"replay of the last {args.minutes} min requested: job {result['job_id']}",
            )
        else:
            report = asyncio.run(webhook.status(settings))
            _emit(args, report, lambda: webhook.status_text(report))
    except webhook.PushNotConfigured as exc:
        print(f"xdm-bridge: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except XError as exc:
        print(f"xdm-bridge: X refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_mappings(args: argparse.Namespace) -> int:
    """Bridged channels."""
    rows = _with_operator(OperatorStore.mappings)
    _emit(args, rows, lambda: admin.mappings_text(rows))
    return EXIT_OK


def cmd_workspaces(args: argparse.Namespace) -> int:
    """Slack workspaces: installed or not, and their accounts and channels (never a token)."""
    rows = _with_operator(OperatorStore.workspaces)
    _emit(args, rows, lambda: admin.workspaces_text(rows))
    return EXIT_OK


def cmd_accounts(args: argparse.Namespace) -> int:
    """Connected X accounts (never their tokens)."""
    now = time.time()
    rows = _with_operator(lambda store: store.accounts(now))
    _emit(args, rows, lambda: admin.accounts_text(rows, now))
    return EXIT_OK


def cmd_accounts_disconnect(args: argparse.Namespace) -> int:
    """Revoke an account's X tokens, delete them and pause its mappings (as `/xdm disconnect` does)."""
    settings = _settings()
    from adapters.ops.accounts import NoSuchAccount, disconnect

    _with_operator(OperatorStore.require_schema)  # exits with the reason when there is no usable database
    try:
        done = asyncio.run(disconnect(settings, args.id))
    except NoSuchAccount as exc:
        print(f"xdm-bridge: {exc}", file=sys.stderr)
        return EXIT_FAILED
    data = {
        "disconnected": done.account.id,
        "x_username": done.account.x_username,
        "revoked_at_x": done.revoked,
        "paused": [{"team_id": m.team_id, "channel_id": m.channel_id} for m in done.paused],
    }

    def text() -> str:
        revoked = "X revoked its tokens" if done.revoked else "X did NOT confirm the revocation"
        channels = ", ".join(m.channel_id for m in done.paused) or "none"
        return (
            f"disconnected account {done.account.id} (@{done.account.x_username}): {revoked}; "
            f"tokens deleted; paused mappings: {channels}"
        )

    _emit(args, data, text)
    return EXIT_OK


def cmd_outbox(args: argparse.Namespace) -> int:
    """List waiting and failed messages."""
    now = time.time()
    states = tuple(args.state) if args.state else LISTED_STATES

    async def read(store: OperatorStore) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return await store.outbox(now, states, args.limit), await store.outbox_summary(now)

    items, summary = _with_operator(read)
    _emit(args, {"summary": summary, "items": items}, lambda: admin.outbox_text(items, summary, now))
    return EXIT_OK


def cmd_outbox_retry(args: argparse.Namespace) -> int:
    """Make rows due now; a running server picks them up within its rescan interval."""
    now = time.time()
    outcome = _with_operator(lambda store: store.retry(args.ids, all_failed=args.all_failed, now=now))
    return _report_outcome(args, outcome, "retried", "queued for another attempt")


def cmd_outbox_drop(args: argparse.Namespace) -> int:
    """Give up on unsent rows (marked failed: "dropped by operator")."""
    outcome = _with_operator(lambda store: store.drop(args.ids))
    return _report_outcome(args, outcome, "dropped", f"marked failed ({DROPPED})")


def _report_outcome(args: argparse.Namespace, outcome: Outcome, verb: str, meaning: str) -> int:
    def text() -> str:
        lines = []
        if outcome.done:
            lines.append(f"{len(outcome.done)} row(s) {meaning}: {', '.join(map(str, outcome.done))}")
        elif not outcome.skipped:
            lines.append(f"nothing to do: no rows {verb}")
        lines.extend(f"row {i} not {verb}: {reason}" for i, reason in outcome.skipped.items())
        return "\n".join(lines)

    _emit(args, outcome.as_json(verb), text)
    return EXIT_FAILED if outcome.skipped else EXIT_OK


def _with_operator(work: Callable[[OperatorStore], Awaitable[T]]) -> T:
    """Run an operator's reads or changes (``adapters.store.operator``) on the configured database."""
    return _with_engine(lambda engine: work(OperatorStore(engine)))


def _with_engine(work: Callable[[Engine], Awaitable[T]]) -> T:
    """Run ``work`` on the existing database ``DATABASE_URL`` or ``DATABASE_PATH`` names (never
    creating or migrating it); a database that is missing, unreachable or not the bridge's exits 1
    with one line saying why."""
    url = _database_url()
    location = url or database_path()

    async def run() -> T:
        async with operator_engine(location) as engine:
            return await work(engine)

    try:
        return asyncio.run(run())
    except StoreUnavailable as exc:
        print(f"xdm-bridge: {exc}", file=sys.stderr)
    except sqlite3.DatabaseError as exc:  # not a database, locked past the timeout, read-only disk…
        print(f"xdm-bridge: database {location}: {exc}", file=sys.stderr)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"xdm-bridge: database {_where(location)}: {exc}", file=sys.stderr)
    raise SystemExit(EXIT_FAILED)


def _emit(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text())


def _json_flag(parser: argparse.ArgumentParser, *, default: Any = False) -> None:
    parser.add_argument("--json", action="store_true", default=default, help="machine-readable output")


def _add_operator_commands(sub: Any) -> None:
    doctor = sub.add_parser("doctor", help="check configuration, database, Slack and X; print fixes")
    _json_flag(doctor)
    doctor.set_defaults(func=cmd_doctor)
    hook = sub.add_parser("webhook", help="X push: status, register (while the server runs) or replay")
    hook.add_argument("action", choices=("status", "register", "replay"), nargs="?", default="status")
    hook.add_argument("--minutes", type=int, default=60, help="replay: how far back (default 60, max 1440)")
    _json_flag(hook)
    hook.set_defaults(func=cmd_webhook)
    workspaces = sub.add_parser(
        "workspaces", help="list Slack workspaces: installed or not, their accounts and channels"
    )
    _json_flag(workspaces)
    workspaces.set_defaults(func=cmd_workspaces)
    mappings = sub.add_parser("mappings", help="list bridged channels")
    _json_flag(mappings)
    mappings.set_defaults(func=cmd_mappings)
    accounts = sub.add_parser("accounts", help="list connected X accounts (never their tokens)")
    _json_flag(accounts)
    accounts.set_defaults(func=cmd_accounts)
    account_actions = accounts.add_subparsers(dest="action", metavar="ACTION")
    disconnect = account_actions.add_parser(
        "disconnect",
        help="revoke an account's X tokens, delete them and pause its mappings",
        description=cmd_accounts_disconnect.__doc__,
    )
    disconnect.add_argument("id", type=int, metavar="ID", help="account id (see `xdm-bridge accounts`)")
    _json_flag(disconnect, default=argparse.SUPPRESS)
    disconnect.set_defaults(func=cmd_accounts_disconnect)

    outbox = sub.add_parser(
        "outbox",
        help="list waiting and failed messages; retry or drop them",
        description="Without an action: list rows that are queued, sending, waiting or failed.",
    )
    _json_flag(outbox)
    outbox.add_argument("--state", action="append", choices=LISTED_STATES, help="only this state")
    outbox.add_argument("--limit", type=int, default=100, help="at most this many rows (default 100)")
    outbox.set_defaults(func=cmd_outbox)
    actions = outbox.add_subparsers(dest="action", metavar="ACTION")
    retry = actions.add_parser(
        "retry",
        help="send rows again now (failed, waiting or queued ones)",
        description=cmd_outbox_retry.__doc__,
    )
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", type=int, default=[], metavar="ID", help="outbox row id")
    which.add_argument("--all-failed", action="store_true", help="every failed row")
    _json_flag(retry, default=argparse.SUPPRESS)
    retry.set_defaults(func=cmd_outbox_retry)
    drop_ = actions.add_parser(
        "drop",
        help='give up on unsent rows (marked failed, "dropped by operator")',
        description=operator_store.__doc__,
    )
    drop_.add_argument("ids", nargs="+", type=int, metavar="ID", help="outbox row id")
    _json_flag(drop_, default=argparse.SUPPRESS)
    drop_.set_defaults(func=cmd_outbox_drop)


def _sandbox_arguments(parser: argparse.ArgumentParser) -> None:
    # Here rather than in the sandbox module: building the parser must not import the
    # sandbox, so that `serve` loads nothing of it.
    parser.add_argument("--port", type=int, default=8000, help="port of the sandbox page (default 8000)")
    parser.add_argument(
        "--open",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="open the page in a browser (default: only when run from a terminal)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="how much the bridge logs to stderr (default info)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xdm-bridge", description="Relay Slack channel messages into X (Twitter) DM conversations."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the web process (applies migrations first)")
    serve.add_argument("--host", default="0.0.0.0", help="interface to listen on (default 0.0.0.0)")
    # Set on the child that `litestream replicate -exec` runs (LITESTREAM_REPLICA_URL).
    serve.add_argument("--replicated", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("migrate", help="apply pending database migrations and exit").set_defaults(
        func=cmd_migrate
    )
    keygen = sub.add_parser("keygen", help="print a new BRIDGE_ENCRYPTION_KEY, or keep one in a file")
    keygen.add_argument(
        "--save",
        metavar="FILE",
        help="write the key into FILE (e.g. .env, which serve reads) unless FILE already holds one",
    )
    keygen.set_defaults(func=cmd_keygen)
    copy = sub.add_parser(
        "copy-db",
        help="copy the database into an empty one (SQLite <-> PostgreSQL), verifying counts",
        description="Copies every table from DATABASE_URL (or DATABASE_PATH) into the empty database "
        "given by --to, migrated first, then compares each table's count. Stop the bridge first; "
        "the target needs the same BRIDGE_ENCRYPTION_KEY.",
    )
    copy.add_argument("--to", required=True, metavar="URL_OR_PATH", help="postgres:// URL or SQLite file")
    copy.set_defaults(func=cmd_copy_db)
    sub.add_parser(
        "rotate-keys",
        help="re-encrypt stored secrets under the newest BRIDGE_ENCRYPTION_KEY key (then drop the old one)",
    ).set_defaults(func=cmd_rotate_keys)
    sandbox_parser = sub.add_parser("sandbox", help="try the bridge locally against simulated Slack and X")
    sandbox_parser.set_defaults(func=cmd_sandbox)
    _sandbox_arguments(sandbox_parser)
    _add_operator_commands(sub)
    _add_xchat_commands(sub)
    return parser


def _add_xchat_commands(sub: Any) -> None:
    xchat = sub.add_parser(
        "xchat",
        help="X Chat (encrypted) keys for team accounts the operator controls",
        description="The bridge reads and writes encrypted X Chat only for accounts whose keys it "
        "holds: team, brand or support accounts you operate. Never ask people for their Chat PIN "
        "or keys.",
    )
    commands = xchat.add_subparsers(dest="xchat_command", required=True, metavar="COMMAND")
    setup = commands.add_parser("setup", help="make, save and register keys for a connected account")
    setup.add_argument("handle", help="the X account (@handle), connected with /xdm connect")
    setup.set_defaults(func=cmd_xchat_setup)
    imported = commands.add_parser("import", help="keep keys made elsewhere (chat_xdk's 64-byte export)")
    imported.add_argument("handle", help="the X account (@handle), connected with /xdm connect")
    imported.add_argument("--keys", required=True, metavar="FILE", help="the exported keys")
    imported.add_argument("--version", required=True, metavar="V", help="X's public_key_version of them")
    imported.set_defaults(func=cmd_xchat_import)
    status = commands.add_parser("status", help="the keys held, by account")
    _json_flag(status)
    status.set_defaults(func=cmd_xchat_status)
    forget = commands.add_parser("forget", help="delete the keys held for an account")
    forget.add_argument("handle", help="the X account (@handle)")
    forget.set_defaults(func=cmd_xchat_forget)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is not cmd_sandbox:  # the sandbox builds its own settings, and needs none
        envfile.load()
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())

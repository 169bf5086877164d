"""The web process: one aiohttp application, and the composition root that wires it.

``cleanup_ctx`` owns every resource: the SQLite owner thread, the HTTP session,
the delivery worker and the command follow-ups. On SIGTERM (``run_app`` handles
it) the worker stops taking new sends and gets a grace period for in-flight
ones; anything cut off stays ``sending`` and is reconciled on the next start.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp

from adapters.crypto import TokenCipher
from adapters.slack_api import SlackApi, web_client
from adapters.slack_app import build_bolt_app
from adapters.sqlite_store import SqliteStore
from adapters.x_api import XApiClient
from adapters.x_oauth import XOAuthClient
from bridge.budget import Budget
from bridge.commands import CommandService
from bridge.connect import ConnectService
from bridge.delivery import Delivery, DeliveryConfig
from bridge.errors import BridgeError, OAuthStateError
from bridge.relay import Relay
from bridge.settings import Settings
from bridge.tokens import TokenManager

log = logging.getLogger("adapters.web")

SHUTDOWN_GRACE = 20.0  # of the 30 s a dyno gets after SIGTERM
MAX_BODY = 1024 * 1024  # Slack payloads are far smaller; anything bigger is refused


class SystemClock:
    def now(self) -> float:
        return time.time()


class Background:
    """Fire-and-forget work that is still tracked: logged if it fails, awaited at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            try:
                await work
            except Exception:
                log.exception("background task failed", extra={"task": name})

        task = asyncio.create_task(guarded(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, grace: float) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


@dataclass
class Services:
    """Everything the routes need, built once per process."""

    settings: Settings
    store: SqliteStore
    delivery: Delivery
    bolt: AsyncApp
    connect: ConnectService
    background: Background
    started_at: float


SETTINGS = web.AppKey("settings", Settings)
DELIVERY_CONFIG = web.AppKey("delivery_config", DeliveryConfig)
SERVICES = web.AppKey("services", Services)


def create_app(settings: Settings, *, delivery_config: DeliveryConfig | None = None) -> web.Application:
    """The bridge's web application; resources start with the app and stop with it."""
    app = web.Application(client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    app[DELIVERY_CONFIG] = delivery_config or DeliveryConfig(relay_format=settings.relay_format)
    app.cleanup_ctx.append(_services)
    app.router.add_post("/slack/events", slack_events)
    app.router.add_get("/x/oauth/callback", x_oauth_callback)
    app.router.add_get("/healthz", healthz)
    return app


async def _services(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    clock = SystemClock()
    store = SqliteStore(settings.database_path, TokenCipher(settings.encryption_keys))
    await store.open()
    session = aiohttp.ClientSession()
    try:
        slack_client = web_client(settings.bot_token, settings.slack_api_url, session)
        slack = SlackApi(slack_client, session)
        x = XApiClient(session, settings.x_api_url, timeout=settings.x_timeout_seconds)
        oauth = XOAuthClient(
            session,
            client_id=settings.x_client_id,
            client_secret=settings.x_client_secret,
            authorize_url=settings.x_authorize_url,
            token_url=settings.x_token_url,
            redirect_uri=settings.redirect_uri,
            timeout=settings.x_timeout_seconds,
        )
        budget = Budget(
            store,
            user_15m=settings.x_user_limit_15m,
            user_24h=settings.x_user_limit_24h,
            app_24h=settings.x_app_limit_24h,
        )
        await budget.load()
        # Connecting wakes the worker (parked rows may go); a refused refresh tells the owner.
        connect = ConnectService(
            store=store, oauth=oauth, x=x, slack=slack, clock=clock, on_connected=lambda: delivery.wake()
        )
        tokens = TokenManager(store, oauth, clock, connect.needs_reconnect)
        delivery = Delivery(store, x, slack, tokens, budget, clock, app[DELIVERY_CONFIG])
        relay = Relay(store, clock, delivery.wake, threads=settings.relay_threads)
        commands = CommandService(
            store=store,
            x=x,
            oauth=oauth,
            tokens=tokens,
            budget=budget,
            slack=slack,
            clock=clock,
            oauth_ready=None if settings.public_url else "PUBLIC_URL is not set, so X cannot redirect back.",
            on_mapped=delivery.wake,
        )
        background = Background()
        bolt = build_bolt_app(
            signing_secret=settings.signing_secret,
            client=slack_client,
            relay=relay,
            commands=commands,
            spawn=background.spawn,
        )
        app[SERVICES] = Services(settings, store, delivery, bolt, connect, background, clock.now())
        worker = asyncio.create_task(delivery.run(), name="delivery")
        log.info("bridge ready", extra={"port": settings.port, "database": settings.database_path})
        yield
        log.info("shutting down: finishing in-flight sends")
        await delivery.stop(SHUTDOWN_GRACE)
        await worker
        await background.drain(5.0)
    finally:
        await session.close()
        await store.close()
    log.info("shut down cleanly")


async def slack_events(request: web.Request) -> web.StreamResponse:
    """Events API, slash commands and interactivity: verified and dispatched by Bolt."""
    timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
    if not timestamp.isdigit():
        # Bolt would raise inside int() and answer 500; a bad timestamp is a bad request.
        return web.json_response({"error": "invalid request"}, status=401)
    services = request.app[SERVICES]
    bolt_request = await to_bolt_request(request)
    bolt_response = await services.bolt.async_dispatch(bolt_request)
    return await to_aiohttp_response(bolt_response)


async def x_oauth_callback(request: web.Request) -> web.Response:
    """Where X sends the browser after consent."""
    services = request.app[SERVICES]
    state = request.query.get("state", "")
    try:
        account = await services.connect.complete(
            state, request.query.get("code"), request.query.get("error")
        )
    except OAuthStateError as exc:
        return _page("This link cannot be used", str(exc) + " Run /xdm connect in Slack for a new one.", 400)
    except BridgeError as exc:
        log.warning("X connection failed", extra={"error": str(exc)})
        return _page("Connecting failed", f"X did not complete the connection: {exc}", 502)
    if account is None:
        return _page(
            "Not connected", "You cancelled on X; nothing was connected. You can close this tab.", 200
        )
    return _page(
        "X account connected",
        f"@{account.x_username} is now connected to Slack. You can close this tab and return to Slack.",
        200,
    )


async def healthz(request: web.Request) -> web.Response:
    """200 once the database answers."""
    services = request.app[SERVICES]
    try:
        database_ok = await services.store.ping()
    except Exception:
        database_ok = False
    heartbeat = services.delivery.heartbeat
    body = {
        "status": "ok" if database_ok else "unavailable",
        "database": "ok" if database_ok else "error",
        "worker_heartbeat_age": round(time.time() - heartbeat, 1) if heartbeat else None,
        "uptime": round(time.time() - services.started_at, 1),
    }
    return web.json_response(body, status=200 if database_ok else 503)


def _page(title: str, message: str, status: int) -> web.Response:
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)} · xdm-bridge</title>"
        "<body style='font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem'>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>"
    )
    return web.Response(text=body, status=status, content_type="text/html")

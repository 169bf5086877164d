"""The web process: one aiohttp application over the composition root's services.

``cleanup_ctx`` owns every resource through ``adapters.services.build_services``: the
store (SQLite's owner thread or a PostgreSQL pool), the HTTP session, the delivery worker
and the command follow-ups. On SIGTERM (``run_app`` handles it) the worker stops taking new sends
and gets a grace period for in-flight ones; anything cut off stays ``sending``
and is reconciled on the next start.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import parse_qs

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.request.async_request import AsyncBoltRequest

from adapters.services import (
    CONNECT_PATH,
    Services,
    build_services,
    default_delivery_config,
    default_inbound_config,
)
from adapters.slack.install import INSTALL_PATH, REDIRECT_PATH, InstallFlow
from adapters.store.leader import LEASE_SECONDS
from adapters.store.select import AnyStore, describe
from adapters.web.edge import PAGE_HEADERS
from adapters.web.logs import Sparse
from adapters.web.metrics import CONTENT_TYPE, BridgeMetrics, worker_state
from adapters.x import push as x_push
from bridge.connect import consent_text
from bridge.delivery import DeliveryConfig
from bridge.errors import BridgeError, OAuthBrowserError, OAuthScopeError, OAuthStateError, SlackUnreachable
from bridge.inbound import InboundConfig
from bridge.ports import Clock
from bridge.push import Push
from bridge.scheduler import SystemClock
from bridge.settings import Settings

log = logging.getLogger("adapters.web.app")

T = TypeVar("T")

HEALTH_DATABASE_TIMEOUT = 5.0  # /healthz's database check; past it, the database counts as down
# A standby's /healthz is 503 once nobody has renewed the leader's lease for this long (a new
# leader takes over within about LEASE_SECONDS + a poll).
LEADERLESS_AFTER = 3 * LEASE_SECONDS
MAX_BODY = 1024 * 1024  # Slack payloads are far smaller; anything bigger is refused
SLACK_MAX_SKEW = 300  # Bolt refuses requests whose timestamp is further off than this
CALLBACK_PATH = "/x/oauth/callback"
CSRF_COOKIE = "xdm_csrf"
FLOW_TTL = 600  # seconds; as long as the flow's state lives


SETTINGS = web.AppKey("settings", Settings)
DELIVERY_CONFIG = web.AppKey("delivery_config", DeliveryConfig)
INBOUND_CONFIG = web.AppKey("inbound_config", InboundConfig)
SERVICES = web.AppKey("services", Services)
METRICS = web.AppKey("metrics", BridgeMetrics)
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
# Refused requests anyone may send, in floods (X webhook, Slack signature, connect page and
# callback, /metrics): a line a minute per reason.
REFUSALS_LOG = web.AppKey("refusals_log", Sparse)


def create_app(
    settings: Settings,
    *,
    delivery_config: DeliveryConfig | None = None,
    inbound_config: InboundConfig | None = None,
    clock: Clock | None = None,
) -> web.Application:
    """The bridge's web application; resources start with the app and stop with it.

    ``clock`` is for tests that need time to pass (X's 24-hour media lifetime, say).
    """
    app = web.Application(client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    app[CLOCK] = clock or SystemClock()
    app[DELIVERY_CONFIG] = delivery_config or default_delivery_config(settings)
    app[INBOUND_CONFIG] = inbound_config or default_inbound_config(settings)
    app[METRICS] = BridgeMetrics(x_api_url=settings.x_api_url, slack_api_url=settings.slack_api_url)
    app[REFUSALS_LOG] = Sparse(log)
    app.cleanup_ctx.append(_services)
    app.router.add_post("/slack/events", slack_events)
    app.router.add_get("/x/connect", connect_page)
    app.router.add_post("/x/connect", connect_confirm)
    app.router.add_get("/x/oauth/callback", x_oauth_callback)
    app.router.add_get("/x/webhook", x_webhook_crc)
    app.router.add_post("/x/webhook", x_webhook_delivery)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", prometheus_metrics)
    if settings.slack_install_mode:
        app.router.add_get(INSTALL_PATH, slack_install)
        app.router.add_get(REDIRECT_PATH, slack_oauth_redirect)
    return app


async def _services(app: web.Application) -> AsyncIterator[None]:
    """The app's ``cleanup_ctx``: the composition root's services, for as long as the app runs."""
    settings = app[SETTINGS]
    async with build_services(
        settings,
        app[CLOCK],
        delivery_config=app[DELIVERY_CONFIG],
        inbound_config=app[INBOUND_CONFIG],
        metrics=app[METRICS],
    ) as services:
        app[SERVICES] = services
        log.info("bridge ready", extra={"port": settings.port, "database": describe(settings)})
        yield
        log.info("shutting down: finishing in-flight sends and posts")
    log.info("shut down cleanly")


async def x_webhook_crc(request: web.Request) -> web.Response:
    """X's CRC check: prove we hold the consumer secret. 404 when push is not configured."""
    settings = request.app[SETTINGS]
    token = request.query.get("crc_token", "")
    if not settings.x_consumer_secret:
        return web.json_response({"error": "push is not configured"}, status=404)
    answer = x_push.crc_response(settings.x_consumer_secret, token)
    if answer is None:
        request.app[METRICS].push_refused_crc()
        refusals = request.app[REFUSALS_LOG]
        refusals.warning("X CRC refused: the token is not shaped as X's", "crc", bytes=len(token))
        return web.json_response({"error": "crc_token missing or not shaped as X's"}, status=400)
    return web.json_response(answer)


async def x_webhook_delivery(request: web.Request) -> web.Response:
    """A push from X: verified, then its DMs read from X soon (``Push.take``; the push names no
    conversation, the read does). A 200 says X was heard; polling is the safety net.

    Anything whose signature does not verify is refused with 401, anything signed that is not
    a delivery we can read with 400; nothing of either is taken, and each is counted."""
    settings = request.app[SETTINGS]
    services = request.app[SERVICES]
    body = await request.read()
    signature = request.headers.get(x_push.SIGNATURE_HEADER)
    if not settings.x_consumer_secret or services.push is None:
        return web.json_response({"error": "push is not configured"}, status=404)
    if not x_push.verify(settings.x_consumer_secret, body, signature):
        request.app[METRICS].push_signature_refused()
        request.app[REFUSALS_LOG].warning(
            "X push refused: signature does not verify", "signature", bytes=len(body)
        )
        return web.json_response({"error": "invalid signature"}, status=401)
    try:
        delivery = x_push.parse_delivery(body)
    except x_push.MalformedDelivery as exc:
        request.app[METRICS].push_malformed_delivery(exc.reason)
        refusals = request.app[REFUSALS_LOG]
        refusals.warning("X push signed but not understood; refused", exc.reason, detail=str(exc))
        return web.json_response({"error": "malformed delivery"}, status=400)
    if delivery.chats:
        return await _chat_delivery(request, services.push, delivery)
    assert delivery.user_id is not None  # only an X Chat push may name no subscriber
    accounts = await services.push.take(delivery.user_id, delivery.dms)
    log.info(
        "X push taken",
        extra={"event_type": delivery.event_type, "events": len(delivery.event_ids), "accounts": accounts},
    )
    return web.json_response({"ok": True})


async def _chat_delivery(request: web.Request, push: Push, delivery: x_push.Delivery) -> web.Response:
    """An X Chat push: each event checked with the keys of the accounts bridging its
    conversation, then read from X (``Push.take_chat``). One that does not verify is refused
    with 400 and counted; nothing of it is posted."""
    refused = await push.take_chat(delivery.user_id, delivery.chats)
    if refused:
        request.app[METRICS].chat_refused.labels("push").inc(refused)
        request.app[REFUSALS_LOG].warning(
            "X Chat push refused: its event does not verify", "chat-signature", events=refused
        )
        return web.json_response({"error": "the X Chat event does not verify"}, status=400)
    log.info("X Chat push taken", extra={"events": len(delivery.chats)})
    return web.json_response({"ok": True})


async def slack_events(request: web.Request) -> web.StreamResponse:
    """Events API, slash commands and interactivity: verified and dispatched by Bolt.

    The signature, the encoding and the body's shape are checked here first: Bolt parses
    the body before it verifies anything, and a malformed body would otherwise be a 500.
    While several are being answered the relay's work waits its turn (``AcksFirst``).
    """
    with request.app[SERVICES].acks.acking():
        return await _slack_request(request)


async def _slack_request(request: web.Request) -> web.StreamResponse:
    timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
    # Unix seconds: ASCII digits, and few (5,000 of them are more than int() converts: a 500).
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return web.json_response({"error": "invalid request"}, status=401)
    services = request.app[SERVICES]
    raw = await request.read()
    try:
        body = raw.decode("utf-8")  # Slack always sends UTF-8, whatever a header claims
    except UnicodeDecodeError:
        return _bad_request("body is not UTF-8")
    signature = request.headers.get("X-Slack-Signature", "")
    # Slack's signature is "v0=" and hex; the verifier's compare_digest raises on a str that is
    # not ASCII (anyone can send one), so such a signature is refused before it is compared.
    if not signature.isascii() or not services.verifier.is_valid(body, timestamp, signature):
        skew = round(time.time() - int(timestamp))
        late = abs(skew) > SLACK_MAX_SKEW
        # Anyone can send these, in floods: a line a minute per likely cause.
        request.app[REFUSALS_LOG].warning(
            "Slack request refused: signature does not verify",
            "slack-signature-late" if late else "slack-signature",
            clock_skew_seconds=skew,
            likely_cause="server clock or a replayed request"
            if late
            else "SLACK_SIGNING_SECRET differs from the Slack app's Signing Secret",
        )
        return web.json_response({"error": "invalid request"}, status=401)
    problem = malformed_slack_body(request.content_type, body)
    if problem is not None:
        log.info("malformed Slack request ignored", extra={"reason": problem})
        return _bad_request(problem)
    if not await services.slack_auth.on_request() and needs_authorization(request.content_type, body):
        # Not 200: Slack retries the event later, when the bridge can commit it.
        return web.json_response(
            {"error": "not ready", "reason": "Slack auth.test has not succeeded yet"},
            status=503,
            headers={"Retry-After": "10"},
        )
    try:
        bolt_request = AsyncBoltRequest(body=body, query=request.query_string, headers=dict(request.headers))
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        # Bolt reads team/user/channel/authorizations as it builds the request.
        log.info("Slack request with fields of the wrong type ignored", extra={"error": repr(exc)[:200]})
        return _bad_request("fields of the wrong type")
    bolt_response = await services.bolt.async_dispatch(bolt_request)
    return await to_aiohttp_response(bolt_response)


def malformed_slack_body(content_type: str, body: str) -> str | None:
    """Why a verified body is not something Slack sends, or None when its shape is fine."""
    try:
        if content_type == "application/json":
            parsed = json.loads(body)
            if not isinstance(parsed, dict):
                return "JSON body is not an object"
            if parsed.get("type") == "event_callback" and not isinstance(parsed.get("event"), dict):
                return "event_callback without an event object"
            return None
        if content_type == "application/x-www-form-urlencoded":
            form = parse_qs(body, keep_blank_values=True)
            if "payload" in form:
                payload = json.loads(form["payload"][0])
                if not isinstance(payload, dict):
                    return "interactivity payload is not a JSON object"
                if not isinstance(payload.get("actions", []), list):
                    return "interactivity payload's actions is not a list"
                view = payload.get("view", {})
                # Bolt reads view.type and view.callback_id as it routes (a KeyError, a 500).
                if not (
                    isinstance(view, dict)
                    and all(isinstance(view.get(k, ""), str) for k in ("type", "callback_id"))
                ):
                    return "interactivity payload's view is not a view"
                if "view" in payload and payload.get("type") == "view_submission" and "type" not in view:
                    return "interactivity payload's view has no type"
            return None
    except (ValueError, RecursionError):
        return "body does not parse"
    return f"unsupported content type {content_type or '(none)'}"


def needs_authorization(content_type: str, body: str) -> bool:
    """Everything but Slack's URL check and SSL check needs the bot's identity (well-formed body)."""
    if content_type == "application/json":
        return bool(json.loads(body).get("type") != "url_verification")
    return "ssl_check" not in parse_qs(body, keep_blank_values=True)


def _bad_request(reason: str) -> web.Response:
    return web.json_response({"error": "invalid request", "reason": reason}, status=400)


def flow_cookie(state: str) -> str:
    """The cookie that binds one flow to the browser that confirmed it (one per flow, so two
    flows in one browser do not clash); named from a hash, so the state is not repeated."""
    return "xdm_flow_" + hashlib.sha256(state.encode()).hexdigest()[:16]


def _secure(request: web.Request) -> bool:
    public = request.app[SETTINGS].public_url or ""
    return public.startswith("https://")


async def connect_page(request: web.Request) -> web.Response:
    """The page `/xdm connect` links to: who the X account will belong to, and a button to go on."""
    services = request.app[SERVICES]
    state = request.query.get("state", "")
    try:
        pending = await services.connect.pending(state)
    except OAuthStateError as exc:
        return _page("This link cannot be used", str(exc) + " Run /xdm connect in Slack for a new one.", 400)
    csrf = secrets.token_urlsafe(32)
    user = pending.slack_user_name or pending.slack_user_id
    team = pending.team_name or pending.team_id
    consent = consent_text("the X account you approve", request.app[SETTINGS].retention_days)
    body = (
        f"<p>The X account you approve next will be connected to the Slack user "
        f"<strong>{html.escape(user)}</strong> ({html.escape(pending.slack_user_id)}) in the workspace "
        f"<strong>{html.escape(team)}</strong> ({html.escape(pending.team_id)}).</p>"
        f"<p>{html.escape(consent)}</p>"
        "<p>Slack asks that person to confirm once X has approved; nothing is connected before.</p>"
        "<p>Continue only if you ran <code>/xdm connect</code> in Slack yourself just now. "
        "If someone sent you this link, close this page.</p>"
        f"<form method=post action='{CONNECT_PATH}'>"
        f"<input type=hidden name=state value='{html.escape(state, quote=True)}'>"
        f"<input type=hidden name=csrf value='{csrf}'>"
        "<button type=submit>Continue to X</button></form>"
    )
    response = _html_page("Connect an X account to Slack", body, 200)
    # Double submit: a form posted from another site would lack this (SameSite=Strict) cookie.
    response.set_cookie(
        CSRF_COOKIE,
        csrf,
        max_age=FLOW_TTL,
        path=CONNECT_PATH,
        httponly=True,
        samesite="Strict",
        secure=_secure(request),
    )
    return response


async def connect_confirm(request: web.Request) -> web.Response:
    """The person confirmed: bind the flow to this browser with a cookie, then on to X."""
    services = request.app[SERVICES]
    form = await request.post()
    state, csrf = str(form.get("state", "")), str(form.get("csrf", ""))
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not csrf or not cookie or not same_secret(csrf, cookie):
        request.app[REFUSALS_LOG].warning("connect confirmation refused: no matching page cookie", "csrf")
        return _page(
            "This confirmation cannot be used",
            "Confirm on the bridge's own page, in the browser that opened it. Run /xdm connect in "
            "Slack for a new link.",
            403,
        )
    browser_key = secrets.token_urlsafe(32)
    try:
        _, x_url = await services.connect.confirm(state, browser_key)
    except OAuthStateError as exc:
        return _page("This link cannot be used", str(exc) + " Run /xdm connect in Slack for a new one.", 400)
    response = web.Response(
        status=303, headers={"Location": x_url, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    )
    # Lax: the callback is a top-level GET from X, which Lax cookies accompany.
    response.set_cookie(
        flow_cookie(state),
        browser_key,
        max_age=FLOW_TTL,
        path=CALLBACK_PATH,
        httponly=True,
        samesite="Lax",
        secure=_secure(request),
    )
    response.del_cookie(CSRF_COOKIE, path=CONNECT_PATH)
    return response


async def x_oauth_callback(request: web.Request) -> web.Response:
    """Where X sends the browser after consent; completes only in the browser that confirmed."""
    services = request.app[SERVICES]
    state = request.query.get("state", "")
    cookie_name = flow_cookie(state)
    try:
        pending = await services.connect.complete(
            state, request.query.get("code"), request.query.get("error"), request.cookies.get(cookie_name)
        )
    except OAuthBrowserError as exc:
        request.app[REFUSALS_LOG].warning(
            "X callback refused: the browser did not confirm this flow", "browser"
        )
        return _page("Not connected", str(exc) + " Run /xdm connect in Slack to start again.", 400)
    except OAuthStateError as exc:
        return _page("This link cannot be used", str(exc) + " Run /xdm connect in Slack for a new one.", 400)
    except OAuthScopeError as exc:
        return _page("Not connected: X granted too little", str(exc), 403)
    except SlackUnreachable as exc:
        return _page("Not connected", str(exc), 502)
    except BridgeError as exc:
        log.warning("X connection failed", extra={"error": type(exc).__name__})
        return _page("Connecting failed", f"X did not complete the connection: {exc}", 502)
    if pending is None:
        response = _page(
            "Not connected", "You cancelled on X; nothing was connected. You can close this tab.", 200
        )
    else:
        # Nothing is bound until the Slack user who asked confirms: whoever holds this browser
        # may not be them (a forwarded link).
        response = _page(
            "Confirm in Slack",
            f"X account @{pending.x_user.username} is not connected yet. The Slack user who ran "
            f"/xdm connect ({pending.slack_user_id}) now has a question from the bridge in Slack: "
            f"only their Confirm connects @{pending.x_user.username}. You can close this tab.",
            200,
        )
    response.del_cookie(cookie_name, path=CALLBACK_PATH)
    return response


async def slack_install(request: web.Request) -> web.StreamResponse:
    """Install mode: the "Add to Slack" page, its link carrying a fresh single-use state."""
    return await _install_step(request, lambda flow, bolt_request: flow.handle_installation(bolt_request))


async def slack_oauth_redirect(request: web.Request) -> web.StreamResponse:
    """Install mode: where Slack sends the browser back; the state is checked and used, the code
    exchanged, the install saved; every outcome is a page (``adapters.slack.install``)."""
    return await _install_step(request, lambda flow, bolt_request: flow.handle_callback(bolt_request))


async def _install_step(
    request: web.Request, step: Callable[[InstallFlow, AsyncBoltRequest], Awaitable[Any]]
) -> web.StreamResponse:
    flow = request.app[SERVICES].install
    assert flow is not None  # the routes exist only in install mode
    bolt_request = AsyncBoltRequest(body="", query=request.query_string, headers=dict(request.headers))
    response = await to_aiohttp_response(await step(flow, bolt_request))
    response.headers.update(PAGE_HEADERS)
    return response


def operator_authorized(request: web.Request) -> bool:
    """The request carries ``METRICS_TOKEN`` as a bearer token (compared in constant time)."""
    token = request.app[SETTINGS].metrics_token
    if not token:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and same_secret(given.strip(), token)


def same_secret(given: str, expected: str) -> bool:
    """``given`` (from a request: any text at all) equals ``expected``, compared in constant time.

    As bytes: ``compare_digest`` raises on two ``str`` when one is not ASCII, and a plain
    ``encode()`` raises on the surrogates aiohttp keeps for bytes that are not UTF-8; either
    was a 500 (and a traceback in the log) for anyone who sent such a header or form field.
    """
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


async def healthz(request: web.Request) -> web.Response:
    """200 while the database answers, the delivery worker checks in (on a standby: some
    instance renews the leader's lease) and Slack accepts the bot token; 503 otherwise ("down"
    when Slack refused the token for good).

    The public learns only up or down; the details (worker, accounts to reconnect by
    name) need ``METRICS_TOKEN`` as a bearer token.
    """
    services = request.app[SERVICES]
    now = time.time()
    reconnect: list[str] | None = None
    try:
        checked = _database_health(services.store)
        database_ok, reconnect = await _answered_within(HEALTH_DATABASE_TIMEOUT, checked)
    except TimeoutError as exc:
        log.warning("health check: database error", extra={"error": str(exc)})
        database_ok = False
    except Exception:
        log.exception("health check: database error")
        database_ok = False
    heartbeat = services.worker.heartbeat
    stale_after = max(60.0, 3 * request.app[DELIVERY_CONFIG].rescan_every)
    leader_age = services.worker.leader_heartbeat_age()
    worker = (
        worker_state(heartbeat, now, now - services.started_at, stale_after)
        if services.worker.role == "leader"
        # Another instance leads delivery; this one serves HTTP, and says so while the leader's
        # lease is renewed: nobody delivering for this long is an outage, whoever holds the lease.
        else "standby"
        if leader_age is None or leader_age < LEADERLESS_AFTER
        else "leaderless"
    )
    refused = services.slack_auth.refused  # down, not a blip: only a new SLACK_BOT_TOKEN helps
    healthy = database_ok and worker not in ("stale", "leaderless") and refused is None
    body = {
        "status": "ok" if healthy else "down" if refused else "unavailable",
        "database": "ok" if database_ok else "error",
        "worker": worker,
        "worker_heartbeat_age": round(now - heartbeat, 1) if heartbeat else None,
        "leader_heartbeat_age": None if leader_age is None else round(leader_age, 1),
        "slack": f"refused ({refused})"
        if refused
        else "authorized"
        if services.slack_auth.ready
        else "unauthorized",
        "accounts_needing_reconnect": None
        if reconnect is None
        else {"count": len(reconnect), "usernames": reconnect},
        "uptime": round(now - services.started_at, 1),
    }
    if not operator_authorized(request):
        body = {"status": body["status"]}
    return web.json_response(body, status=200 if healthy else 503, headers={"Cache-Control": "no-store"})


# Headers proxies set to the client's address instead of (or besides) X-Forwarded-For: nginx's
# usual X-Real-IP, Cloudflare's, Akamai's and Fly.io's.
CLIENT_ADDRESS_HEADERS = ("X-Real-IP", "CF-Connecting-IP", "True-Client-IP", "Fly-Client-IP", "X-Client-IP")


def from_this_machine(request: web.Request) -> bool:
    """The request came from this machine and was forwarded by no one.

    The peer must be a loopback address, and every hop a proxy named (``X-Forwarded-For``,
    which Heroku's router and most proxies append the client's address to, RFC 7239's
    ``Forwarded``, and the single-address headers of ``CLIENT_ADDRESS_HEADERS``) must be loopback
    too; a ``Via`` header (a proxy that names no address) refuses outright. A proxy on this
    machine that says nothing at all (nginx's bare ``proxy_pass``) cannot be told from a local
    scraper: behind one, set ``METRICS_TOKEN``. A client can add such headers but never remove the
    one its proxy appends, so forging them can only take access away.
    """
    if not _loopback(request.remote or ""):
        return False
    if "Via" in request.headers:  # RFC 9110's mark of a proxy, which names no client address
        return False
    hops = [
        hop
        for name in ("X-Forwarded-For", *CLIENT_ADDRESS_HEADERS)
        for value in request.headers.getall(name, [])
        for hop in value.split(",")
    ]
    hops += [
        _forwarded_node(pair.split("=", 1)[1])
        for value in request.headers.getall("Forwarded", [])
        for pair in value.replace(",", ";").split(";")
        if pair.strip().lower().startswith("for=")
    ]
    return all(_loopback(hop) for hop in hops)


def _forwarded_node(node: str) -> str:
    """RFC 7239's node (``"[::1]:4711"``, ``"127.0.0.1:80"``, ``_hidden``) as a bare address."""
    node = node.strip().strip('"')
    if node.startswith("["):
        return node[1 : node.find("]")]
    return node.rsplit(":", 1)[0] if node.count(":") == 1 else node


def _loopback(address: str) -> bool:
    """A loopback address, IPv4 mapped into IPv6 (``::ffff:127.0.0.1``, an IPv4 peer of a
    dual-stack socket) included: Python before 3.13 says it is not."""
    try:
        ip = ipaddress.ip_address(address.strip().split("%", 1)[0])
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


async def _database_health(store: AnyStore) -> tuple[bool, list[str] | None]:
    return await store.ping(), await store.usernames_needing_reconnect()


async def _answered_within(seconds: float, work: Coroutine[Any, Any, T]) -> T:
    """``work``'s result if it comes in ``seconds``, else ``TimeoutError`` at once: a database that
    stopped answering must make /healthz 503, not hang it. (Not ``wait_for``, which waits for the
    cancelled work to finish: asyncpg's cleanup on a frozen connection can take minutes.)"""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        raise TimeoutError(f"the database did not answer within {seconds} s")
    return task.result()


async def prometheus_metrics(request: web.Request) -> web.Response:
    """Prometheus text format; gauges are computed now, from the store and the budgets.

    Private by default: with ``METRICS_TOKEN`` set, only requests bearing it are served
    (Prometheus: ``authorization: {credentials: …}``); without it, only requests from this
    machine (a scraper beside the bridge), never through a router or proxy.
    """
    settings = request.app[SETTINGS]
    if settings.metrics_token and not operator_authorized(request):
        return web.json_response(
            {"error": "METRICS_TOKEN required as a bearer token"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="xdm-bridge metrics"'},
        )
    if not settings.metrics_token and not from_this_machine(request):
        request.app[REFUSALS_LOG].warning(
            "metrics refused: no METRICS_TOKEN is set and the request did not come from this machine",
            "metrics",
        )
        return web.json_response(
            {"error": "set METRICS_TOKEN to read /metrics from elsewhere than this machine"}, status=403
        )
    metrics = request.app[METRICS]
    try:
        await metrics.refresh()
    except Exception:  # counters and latencies are still worth serving
        log.exception("metrics: could not read the outbox or budgets")
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def _page(title: str, message: str, status: int) -> web.Response:
    return _html_page(title, f"<p>{html.escape(message)}</p>", status)


def _html_page(title: str, inner: str, status: int) -> web.Response:
    """A page around ``inner``, HTML the caller has escaped."""
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)} · xdm-bridge</title>"
        "<body style='font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem'>"
        f"<h1>{html.escape(title)}</h1>{inner}</body></html>"
    )
    return web.Response(text=body, status=status, content_type="text/html", headers=PAGE_HEADERS)

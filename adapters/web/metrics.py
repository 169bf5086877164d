"""Prometheus metrics for ``GET /metrics``, one registry per web application.

Counters follow the core's hooks (``Relay.on_accepted``, ``Delivery.on_event``,
``Inbound.on_event``) and the webhook handler (refused pushes);
gauges are computed when scraped, from the store (on its own thread) and the
budget; request latencies come from an aiohttp ``TraceConfig`` on the shared
client session, labelled X or Slack by URL prefix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from types import SimpleNamespace

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from adapters.slack.api import MESSAGE_REFUSALS
from adapters.x.push import MALFORMED_REASONS
from bridge.budget import Budget, ReadEndpoint
from bridge.errors import Failure
from bridge.model import Account, ChannelMapping, InboundOrigin, OutboxItem, OutboxKind
from bridge.ports import Clock, Store
from bridge.xchat import PeerChecks, conversation_peers

log = logging.getLogger("adapters.web.metrics")

# The classic text format: every Prometheus version (and most other scrapers) reads it.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)

# Failure reasons come typed from the core (bridge.errors.Failure), kept few so the label stays
# low-cardinality; every one is exported from the start, at 0.
FAILURE_REASONS = tuple(f.value for f in Failure)

# X → Slack labels, each a fixed set exported from the start at 0 (an unknown value is "other").
INBOUND_ORIGINS = tuple(o.value for o in InboundOrigin if o is not InboundOrigin.SENT)
READ_OUTCOMES = ("ok", "rate_limited", "refused", "auth", "error", "held")
# Slack's error codes for a message refused for what it is (adapters.slack.api); any other code
# is "other", so a new or nonsense code from Slack cannot grow the label set.
SLACK_REFUSALS = tuple(sorted(MESSAGE_REFUSALS))
INBOUND_WAITING_STATES = ("queued", "held", "catching_up")
MAPPINGS_EVERY = 60.0  # seconds between the gauges' reads of every mapping (see _mapped_accounts)
READ_PATHS = {e.value: e.path for e in ReadEndpoint}


def _bounded(value: str, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else "other"


# The words of the X API paths the bridge calls; any other segment is a value (a user, a DM, a
# conversation such as X Chat's "g…", a TON media resource such as "m42.jpg", a webhook id).
_X_PATH_WORDS = frozenset(
    [
        "2",
        "activity",
        "append",
        "chat",
        "conversations",
        "delete",
        "dm_conversations",
        "dm_events",
        "events",
        "finalize",
        "group",
        "initialize",
        "keys",
        "me",
        "oauth2",
        "revoke",
        "token",
        "media",
        "messages",
        "public_keys",
        "replay",
        "subscriptions",
        "upload",
        "users",
        "webhooks",
        "with",
        "by",
        "username",
    ]
)


def x_endpoint(path: str) -> str:
    """``/2/dm_conversations/123-456/messages`` → ``/2/dm_conversations/{id}/messages``.

    A label must be one of a few: only the API's own words are kept, every other segment
    becomes ``{id}`` (``{username}`` after ``by/username``), whatever its shape.
    """
    segments = path.split("/")
    kept = [
        "{username}"
        if i >= 2 and segments[i - 2 : i] == ["by", "username"]
        else s
        if s in _X_PATH_WORDS or not s
        else "{id}"
        for i, s in enumerate(segments)
    ]
    return "/".join(kept)


def account_label(account: Account, accounts: Sequence[Account]) -> str:
    """The bridge's own number for an X account (``xdm-bridge accounts`` lists them), never its
    handle: a scrape reaches whoever holds the token, and handles name people. One X user
    connected by two Slack users shares X's windows, so all its rows take its lowest number."""
    return str(min(a.id for a in accounts if a.x_user_id == account.x_user_id))


def worker_state(heartbeat: float, now: float, uptime: float, stale_after: float) -> str:
    """``ok`` while the delivery loop checks in, ``starting`` before its first pass, else ``stale``."""
    if heartbeat:
        return "ok" if now - heartbeat <= stale_after else "stale"
    return "starting" if uptime <= stale_after else "stale"


class BridgeMetrics:
    """The bridge's metrics, in their own ``CollectorRegistry`` (several apps may share a process)."""

    def __init__(self, *, x_api_url: str, slack_api_url: str) -> None:
        self.registry = CollectorRegistry()
        self._x_prefix = x_api_url.rstrip("/")
        self._slack_prefix = slack_api_url if slack_api_url.endswith("/") else slack_api_url + "/"
        registry = self.registry
        self.accepted = Counter(
            "messages_accepted", "Slack messages committed to the outbox", registry=registry
        )
        self.relayed = Counter(
            "messages_relayed",
            "Slack messages delivered to X (a split message counts once)",
            registry=registry,
        )
        self.failed = Counter(
            "messages_failed", "Outbox rows X refused for good, by reason", ["reason"], registry=registry
        )
        for reason in FAILURE_REASONS:
            self.failed.labels(reason)
        self.inbound_posted = Counter(
            "inbound_posted",
            "X events posted into Slack, by how they came (poll, push, backfill)",
            ["origin"],
            registry=registry,
        )
        self.inbound_echoes = Counter(
            "inbound_echoes_skipped",
            "X events not posted back into the channel they were sent from (the bridge's own DMs)",
            registry=registry,
        )
        self.inbound_failed = Counter(
            "inbound_failed",
            "X events Slack refused for good (the message and the line in its place), by Slack's error",
            ["reason"],
            registry=registry,
        )
        self.chat_refused = Counter(
            "xchat_events_refused",
            "X Chat events not posted: their signature or encryption does not verify (counted once, "
            "when first read, or per push)",
            ["source"],
            registry=registry,
        )
        for source in ("read", "push"):
            self.chat_refused.labels(source)
        self.push_refused = Counter(
            "x_push_refused",
            "Deliveries to /x/webhook refused with 401: their signature does not verify",
            registry=registry,
        )
        self.crc_refused = Counter(
            "x_crc_refused",
            "CRC checks on /x/webhook refused with 400: the token is not shaped as X's (never signed)",
            registry=registry,
        )
        self.push_malformed = Counter(
            "x_push_malformed",
            "Deliveries to /x/webhook refused with 400: signed, but not a delivery we can read",
            ["reason"],
            registry=registry,
        )
        for reason in MALFORMED_REASONS:
            self.push_malformed.labels(reason)
        self.dm_reads = Counter(
            "x_dm_reads",
            "X → Slack reads of DM events by outcome (held: not made, the read budget kept it back)",
            ["outcome"],
            registry=registry,
        )
        self.dm_endpoint_reads = Counter(
            "x_dm_endpoint_reads",
            "X → Slack reads of DM events made, by X endpoint (each has its own 15-minute budget): "
            "every conversation (the poller), one event or a 1-to-1 (placing pushed DMs), one "
            "conversation (history)",
            ["endpoint"],
            registry=registry,
        )
        for endpoint in ReadEndpoint:
            self.dm_endpoint_reads.labels(endpoint.path)
        for origin in (*INBOUND_ORIGINS, "other"):
            self.inbound_posted.labels(origin)
        for reason in (*SLACK_REFUSALS, "other"):
            self.inbound_failed.labels(reason)
        for outcome in READ_OUTCOMES:
            self.dm_reads.labels(outcome)
        self.inbound_waiting = Gauge(
            "inbound_waiting",
            "X events waiting to be posted into Slack: queued, held (paused channel) or "
            "catching_up (an unfinished read holds the channel, to keep X's order)",
            ["state"],
            registry=registry,
        )
        for state in INBOUND_WAITING_STATES:
            self.inbound_waiting.labels(state)
        self.inbound_oldest_age = Gauge(
            "inbound_oldest_waiting_age_seconds",
            "Age of the oldest X event waiting to be posted (0 when none waits)",
            registry=registry,
        )
        self.outbox_depth = Gauge(
            "outbox_depth", "Outbox rows not yet sent (queued, sending or waiting)", registry=registry
        )
        self.outbox_oldest_age = Gauge(
            "outbox_oldest_age_seconds",
            "Age of the oldest unsent outbox row (0 when empty)",
            registry=registry,
        )
        self.rate_remaining = Gauge(
            "x_rate_limit_remaining",
            "DM sends left in each X rate-limit window, by the bridge's account number (mapped accounts)",
            ["account", "window"],
            registry=registry,
        )
        self.one_way = Gauge(
            "xchat_one_way_conversations",
            "Bridged conversations with someone on X's encrypted Chat, whose replies may not come back",
            registry=registry,
        )
        self.x_seconds = Histogram(
            "x_request_seconds",
            "Latency of requests to the X API (to response headers)",
            ["method", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.slack_seconds = Histogram(
            "slack_request_seconds",
            "Latency of Slack Web API calls (to response headers)",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._store: Store | None = None
        self._budget: Budget | None = None
        self._clock: Clock | None = None
        self._peer_checks: PeerChecks | None = None
        self._mapped: tuple[float, set[int]] | None = None  # when read, and the mapped accounts

    # -- counters, from the core's hooks -----------------------------------------

    def message_accepted(self, message: object) -> None:
        self.accepted.inc()

    def delivery_hook(self) -> Callable[[str, OutboxItem], Awaitable[None]]:
        """``Delivery.on_event``: counts relayed messages."""

        async def on_event(kind: str, item: OutboxItem) -> None:
            # Corrections and deletions are not messages; a split message counts at its last part.
            if kind == "sent" and item.kind is OutboxKind.MESSAGE and item.part >= item.parts_total - 1:
                self.relayed.inc()

        return on_event

    def failure_hook(self) -> Callable[[OutboxItem, Failure], Awaitable[None]]:
        """``Delivery.on_failed``: counts rows X will never get, by their typed reason."""

        async def on_failed(item: OutboxItem, failure: Failure) -> None:
            self.failed.labels(failure.value).inc()

        return on_failed

    def inbound_hook(self) -> Callable[[str, str], None]:
        """``Inbound.on_event``: X → Slack counters, labels bounded to fixed sets."""

        def on_event(kind: str, label: str) -> None:
            if kind == "posted":
                self.inbound_posted.labels(_bounded(label, INBOUND_ORIGINS)).inc()
            elif kind == "echo":
                self.inbound_echoes.inc()
            elif kind == "failed":
                self.inbound_failed.labels(_bounded(label, SLACK_REFUSALS)).inc()
            elif kind == "read":
                self.dm_reads.labels(_bounded(label, READ_OUTCOMES)).inc()
            elif kind == "chat_refused":
                self.chat_refused.labels("push" if label == "push" else "read").inc()
            elif kind == "read_endpoint" and label in READ_PATHS:
                self.dm_endpoint_reads.labels(READ_PATHS[label]).inc()

        return on_event

    def push_signature_refused(self) -> None:
        self.push_refused.inc()

    def push_malformed_delivery(self, reason: str) -> None:
        self.push_malformed.labels(_bounded(reason, MALFORMED_REASONS)).inc()

    def push_refused_crc(self) -> None:
        self.crc_refused.inc()

    # -- gauges, at scrape time ----------------------------------------------------

    def bind(self, store: Store, budget: Budget, clock: Clock, peer_checks: PeerChecks | None = None) -> None:
        self._store, self._budget, self._clock = store, budget, clock
        self._peer_checks = peer_checks
        self._mapped = None

    async def refresh(self) -> None:
        """Recompute the gauges; store calls run on the store's thread."""
        if self._store is None or self._budget is None or self._clock is None:
            return
        now = self._clock.now()
        gauges = await self._store.outbox_gauges()
        self.outbox_depth.set(gauges["pending"])
        oldest = gauges["oldest_pending_at"]
        self.outbox_oldest_age.set(max(0.0, now - oldest) if oldest else 0.0)
        inbound = await self._store.inbound_gauges()
        for state in INBOUND_WAITING_STATES:
            self.inbound_waiting.labels(state).set(inbound[state])
        waiting_since = inbound["oldest_waiting_at"]
        self.inbound_oldest_age.set(max(0.0, now - waiting_since) if waiting_since else 0.0)
        every = await self._store.list_accounts()
        mapped = await self._mapped_accounts(self._store, now, every)
        accounts = [a for a in every if a.id in mapped]
        remaining: dict[tuple[str, str], int] = {}
        for account in accounts:
            snapshot = self._budget.snapshot(account.id, now)
            for window in ("15m", "24h"):
                key = (account_label(account, accounts), window)
                value = snapshot[window]["remaining"]
                # One X user connected by two Slack users shares X's windows: the lower count is true.
                remaining[key] = min(value, remaining.get(key, value))
            remaining[("app", "24h")] = snapshot["app_24h"]["remaining"]
        self.rate_remaining.clear()
        for (label, window), value in remaining.items():
            self.rate_remaining.labels(label, window).set(value)

    async def _mapped_accounts(self, store: Store, now: float, accounts: Sequence[Account]) -> set[int]:
        """Ids of the accounts bridging a channel, and the one-way gauge beside them. Both need
        every mapping (100,000 take over a second to read), so they are read again at most every
        ``MAPPINGS_EVERY`` seconds, not on each scrape (Prometheus scrapes every 15 s or so)."""
        if self._mapped is not None and now - self._mapped[0] < MAPPINGS_EVERY:
            return self._mapped[1]
        mappings = await store.list_mappings()
        await self._refresh_one_way(mappings, accounts)
        self._mapped = (now, {m.account_id for m in mappings})
        return self._mapped[1]

    async def _refresh_one_way(self, mappings: Sequence[ChannelMapping], accounts: Sequence[Account]) -> None:
        """From the kept answers alone: a scrape never asks X."""
        if self._peer_checks is None:
            return
        own = {a.id: a.x_user_id for a in accounts}
        # An encrypted conversation is bridged with the account's own X Chat keys: not one-way.
        peers = {m: conversation_peers(m, own.get(m.account_id, "")) for m in mappings if not m.encrypted}
        checks = await self._peer_checks.peer_checks(sorted({p for ids in peers.values() for p in ids}))
        self.one_way.set(sum(any(p in checks and checks[p].on_chat for p in ids) for ids in peers.values()))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- request latency -----------------------------------------------------------

    def trace_config(self) -> aiohttp.TraceConfig:
        trace: aiohttp.TraceConfig = aiohttp.TraceConfig()
        trace.on_request_start.append(self._on_start)
        trace.on_request_end.append(self._on_end)
        trace.on_request_exception.append(self._on_exception)
        return trace

    async def _on_start(
        self, session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        ctx.started = time.monotonic()

    async def _on_end(
        self, session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        self._observe(params.method, str(params.url), ctx)

    async def _on_exception(
        self,
        session: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestExceptionParams,
    ) -> None:
        self._observe(params.method, str(params.url), ctx)

    def _observe(self, method: str, url: str, ctx: SimpleNamespace) -> None:
        started = getattr(ctx, "started", None)
        if started is None:
            return
        elapsed = time.monotonic() - started
        path = url.split("?", 1)[0]
        if path.startswith(self._slack_prefix):
            self.slack_seconds.labels(path[len(self._slack_prefix) :] or "unknown").observe(elapsed)
        elif path.startswith(self._x_prefix):
            self.x_seconds.labels(method, x_endpoint(path[len(self._x_prefix) :])).observe(elapsed)

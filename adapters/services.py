"""The composition root: every service of the bridge, built in one place.

``open_clients`` opens what every process of the bridge needs (the store, an HTTP session,
the clients of X and Slack); the operator's commands use it as they are. ``build_services``
builds the whole bridge on top of them (delivery, inbound, push, commands, the Slack app)
and runs its background work for as long as its context lasts: ``serve`` and the sandbox
reach it through the web app's ``cleanup_ctx`` (``adapters.web.app``).

Which engine runs is asked in one place only (``adapters.web.instances.instances_for``):
on SQLite a single instance, on PostgreSQL a leader and standbys.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from slack_bolt.async_app import AsyncApp
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.api import SlackApi, web_client
from adapters.slack.app import SlackAuthorization, build_bolt_app
from adapters.slack.install import InstallFlow, install_flow
from adapters.slack.surfaces import Surfaces, register
from adapters.slack.views import SlackViews, single_workspace
from adapters.slack.workspaces import InstallsReady, TeamSlack, Workspaces
from adapters.slack.workspaces import oauth_client as slack_oauth_client
from adapters.store.activity import ActivityStore
from adapters.store.consents import ConsentStore
from adapters.store.crypto import TokenCipher
from adapters.store.history import HistoryStore
from adapters.store.select import AnyStore, make_store
from adapters.store.slack_installs import SlackInstallStore, SlackStateStore
from adapters.store.xchat import ChatCursorStore, XChatIdentityStore
from adapters.web.instances import Instances, instances_for
from adapters.web.metrics import BridgeMetrics
from adapters.web.worker import Job, Worker
from adapters.x.api import XApiClient, XAppClient
from adapters.x.oauth import XOAuthClient, oauth_client
from adapters.x.xchat import AccountChats, KeyDirectory
from bridge.budget import FALLBACK_PAUSE, Budget
from bridge.chat_inbound import ChatInbound
from bridge.commands import CommandService
from bridge.confirm import Confirmations
from bridge.connect import ConnectService
from bridge.delivery import Delivery, DeliveryConfig
from bridge.home import HomeService, WorkspaceSettings
from bridge.inbound import Inbound, InboundConfig
from bridge.modals import ModalService
from bridge.model import Account, DmEvent, IncomingMessage, OutboxItem
from bridge.permissions import Permissions, Policy
from bridge.ports import Clock
from bridge.push import Push
from bridge.relay import Relay
from bridge.retention import prune_forever
from bridge.scheduler import AcksFirst, SystemClock, drain
from bridge.settings import Settings
from bridge.tokens import TokenManager
from bridge.xchat import ChatPeers

log = logging.getLogger("adapters.services")

SHUTDOWN_GRACE = 20.0  # of the 30 s a dyno gets after SIGTERM
CONNECT_PATH = "/x/connect"
UNCONFIRMED_SWEEP = 60.0  # seconds between sweeps of connections nobody confirmed in time
PUSHED = "pushed "  # a standby's NOTIFY for the leader: "pushed <account id> <dm>,<dm>…"


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
        await drain(self._tasks, grace)


@dataclass(frozen=True)
class Clients:
    """The open store and the clients of X and Slack, as the settings ask for them."""

    settings: Settings
    clock: Clock
    store: AnyStore
    session: aiohttp.ClientSession
    x: XApiClient
    oauth: XOAuthClient
    slack: SlackApi | TeamSlack
    # Bolt's and the views' client: the bot token's, or (install mode) none of its own.
    slack_client: AsyncWebClient
    slack_auth: SlackAuthorization | InstallsReady
    # Install mode ("Add to Slack"): the installed workspaces.
    workspaces: Workspaces | None


@dataclass(frozen=True)
class Services:
    """Everything the routes need, built once per process."""

    settings: Settings
    store: AnyStore
    worker: Worker
    inbound: Inbound
    push: Push | None
    bolt: AsyncApp
    connect: ConnectService
    background: Background
    started_at: float
    verifier: SignatureVerifier
    # Slack's requests being answered, which the relay's steps make way for.
    acks: AcksFirst
    slack_auth: SlackAuthorization | InstallsReady
    # Install mode ("Add to Slack"): the OAuth flow and the installed workspaces.
    install: InstallFlow | None
    workspaces: Workspaces | None
    clients: Clients
    tokens: TokenManager
    budget: Budget
    instances: Instances


@contextlib.asynccontextmanager
async def open_clients(
    settings: Settings,
    clock: Clock | None = None,
    *,
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
) -> AsyncIterator[Clients]:
    """The store (opened: the caller checks a SQLite file exists when a typo must not create
    one) and the HTTP clients, closed when the context ends."""
    async with (
        open_store(settings) as store,
        aiohttp.ClientSession(trace_configs=list(trace_configs)) as session,
    ):
        yield _clients(settings, clock or SystemClock(), store, session)


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[AnyStore]:
    """The store the settings select (SQLite, or PostgreSQL with ``DATABASE_URL``), open."""
    store = make_store(settings)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _clients(settings: Settings, clock: Clock, store: AnyStore, session: aiohttp.ClientSession) -> Clients:
    slack: SlackApi | TeamSlack
    workspaces: Workspaces | None = None
    if settings.slack_install_mode:
        workspaces = _workspaces(settings, store, session, clock)
        slack = TeamSlack(workspaces, session, settings.slack_api_url)
        # No token of its own: Bolt copies it for each request with that workspace's token,
        # so the client its listeners get calls SLACK_API_URL as the request's workspace.
        slack_client = web_client("", settings.slack_api_url, session)
        slack_auth: SlackAuthorization | InstallsReady = InstallsReady()
    else:
        slack_client = web_client(settings.bot_token, settings.slack_api_url, session)
        poster = web_client(settings.bot_token, settings.slack_api_url, session, idempotent=False)
        slack = SlackApi(slack_client, session, poster)
        slack_auth = SlackAuthorization(slack_client, poster)
    fallback_pause = min(FALLBACK_PAUSE, settings.x_retry_cap_seconds)
    x = XApiClient(
        session, settings.x_api_url, timeout=settings.x_timeout_seconds, fallback_pause=fallback_pause
    )
    return Clients(
        settings=settings,
        clock=clock,
        store=store,
        session=session,
        x=x,
        oauth=oauth_client(session, settings),
        slack=slack,
        slack_client=slack_client,
        slack_auth=slack_auth,
        workspaces=workspaces,
    )


def default_delivery_config(settings: Settings) -> DeliveryConfig:
    """Delivery's tuning as the settings give it."""
    return DeliveryConfig(relay_format=settings.relay_format, retry_cap=settings.x_retry_cap_seconds)


def default_inbound_config(settings: Settings) -> InboundConfig:
    """Inbound's tuning as the settings give it."""
    return InboundConfig(
        backfill=settings.backfill_messages,
        idle_interval=settings.inbound_poll_seconds,
        min_interval=min(5.0, settings.inbound_poll_seconds),
        post_rate=settings.slack_posts_per_second,
    )


@contextlib.asynccontextmanager
async def build_services(
    settings: Settings,
    clock: Clock | None = None,
    *,
    delivery_config: DeliveryConfig | None = None,
    inbound_config: InboundConfig | None = None,
    metrics: BridgeMetrics | None = None,
) -> AsyncIterator[Services]:
    """The whole bridge, its background work running (delivery, reads of X, push upkeep,
    retention…) until the context ends; then in-flight sends and posts get ``SHUTDOWN_GRACE``
    and everything is closed."""
    clock = clock or SystemClock()
    metrics = metrics or BridgeMetrics(x_api_url=settings.x_api_url, slack_api_url=settings.slack_api_url)
    async with open_clients(settings, clock, trace_configs=[metrics.trace_config()]) as clients:
        services = await _build(
            clients,
            delivery_config or default_delivery_config(settings),
            inbound_config or default_inbound_config(settings),
            metrics,
        )
        async with _running(services, clock):
            yield services


async def _build(
    clients: Clients, delivery_config: DeliveryConfig, inbound_config: InboundConfig, metrics: BridgeMetrics
) -> Services:
    settings, clock, store = clients.settings, clients.clock, clients.store
    x, oauth, slack, slack_client = clients.x, clients.oauth, clients.slack, clients.slack_client
    workspaces = clients.workspaces
    instances = instances_for(store)
    budget = Budget(
        store,
        user_15m=settings.x_user_limit_15m,
        user_24h=settings.x_user_limit_24h,
        app_24h=settings.x_app_limit_24h,
        fallback_pause=min(FALLBACK_PAUSE, settings.x_retry_cap_seconds),
        reads_15m=settings.x_read_limit_15m,
    )
    await budget.load(clock.now())

    def connected(account: Account) -> None:
        # New tokens for the worker, and parked rows may go now.
        tokens.forget(account.id)
        worker.wake()
        wake_inbound(connected=True, account_id=account.id)
        home.account_changed(account)

    def disconnected(account: Account) -> None:
        tokens.forget(account.id)
        home.account_changed(account)

    # A refused refresh tells the owner.
    connect = ConnectService(
        store=store,
        oauth=oauth,
        x=x,
        slack=slack,
        clock=clock,
        on_connected=connected,
        on_disconnected=disconnected,
        consents=ConsentStore(store.engine),
        retention_days=settings.retention_days,
    )

    async def refused(account: Account, reason: str) -> None:
        await connect.needs_reconnect(account, reason)
        home.account_changed(replace(account, needs_reconnect=True))

    tokens = TokenManager(store, oauth, clock, refused)
    inbound = Inbound(store, x, slack, tokens, budget, clock, inbound_config)
    inbound.on_event = metrics.inbound_hook()
    # X Chat: identities are read from the store on each use, so `xdm-bridge xchat setup` run
    # beside a serving bridge takes effect on the next command, message or read, without a
    # restart. One session per account serves sends and reads (their keys and caches).
    peer_checks = XChatIdentityStore(store.engine, TokenCipher(settings.encryption_keys))
    chats = AccountChats(x, peer_checks)
    inbound.chats = ChatInbound(
        store,
        ChatCursorStore(store.engine),
        chats,
        tokens,
        clock,
        reserve=inbound_config.reserve,
        max_pages=inbound_config.chat_max_pages,
        full_page=inbound_config.chat_full_page,
        token_restarts=inbound_config.token_restarts,
    )
    inbound.chats.on_event = inbound.on_event
    push: Push | None = None
    if settings.push_url and settings.x_bearer_token:
        push = Push(store, XAppClient(x, settings.x_bearer_token), tokens, inbound, clock, settings.push_url)
        inbound.push_active = push.active

    acks = AcksFirst(clock)

    def make_delivery() -> Delivery:
        delivery = Delivery(store, x, slack, tokens, budget, clock, delivery_config, chats=chats, acks=acks)
        delivery.on_event = _noting_sends(metrics.delivery_hook(), inbound)
        delivery.on_failed = _telling_home(metrics.failure_hook(), store, lambda: home)
        return delivery

    worker = _worker(instances, make_delivery, budget, clock, inbound, push)
    if push is not None:
        push.on_pushed = functools.partial(_ring, instances, worker, inbound)

    def wake_inbound(*, connected: bool, account_id: int | None = None) -> None:
        """Read X soon (and, for a new connection, subscribe it to push): here if this
        instance leads, else passed on to the leader."""
        if not instances.to_leader(worker, "connected" if connected else "poll"):
            inbound.poll_soon(account_id)
            if connected and push is not None:
                push.recheck()

    def mapped() -> None:
        worker.wake()
        wake_inbound(connected=False)

    leaders_inbound = _LeadersInbound(inbound, worker, instances)

    relay = Relay(store, clock, worker.offer, threads=settings.relay_threads, edits=settings.relay_edits)
    relay.on_accepted = metrics.message_accepted
    background = Background()
    relay.on_refused = lambda message, reason: background.spawn(
        _tell_author(slack, message, reason), "xdm-relay-refused"
    )
    metrics.bind(store, budget, clock, peer_checks)
    commands = CommandService(
        store=store,
        x=x,
        oauth=oauth,
        tokens=tokens,
        budget=budget,
        slack=slack,
        clock=clock,
        oauth_ready=None if settings.public_url else "PUBLIC_URL is not set, so X cannot redirect back.",
        on_mapped=mapped,
        inbound=leaders_inbound,
        connections=connect,
        connect_page=f"{settings.public_url}{CONNECT_PATH}",
        permissions=Permissions(
            slack, Policy(admin_only=settings.admin_only, allowed_users=settings.allowed_users)
        ),
        chat_peers=ChatPeers(peer_checks, KeyDirectory(x), tokens.call, clock),
        chats=chats,
        on_mapping_changed=lambda mapping: home.mapping_changed(mapping),
        history=HistoryStore(store.engine),
    )
    # Views go out with each workspace's own token in install mode.
    views = SlackViews(slack.client_for if isinstance(slack, TeamSlack) else single_workspace(slack_client))
    home = HomeService(
        store=store,
        slack=slack,
        views=views,
        activity=ActivityStore(store.engine),
        clock=clock,
        settings=WorkspaceSettings(
            admin_only=settings.admin_only,
            allowed_users=len(settings.allowed_users),
            retention_days=settings.retention_days,
            relay_threads=settings.relay_threads,
            relay_edits=settings.relay_edits,
        ),
        spawn=background.spawn,
        can_connect=bool(settings.public_url),
    )
    surfaces = Surfaces(
        home=home,
        modals=ModalService(
            commands=commands,
            store=store,
            x=x,
            tokens=tokens,
            budget=budget,
            clock=clock,
            views=views,
            spawn=background.spawn,
        ),
        confirmations=Confirmations(commands=commands, slack=slack, clock=clock, spawn=background.spawn),
        commands=commands,
        spawn=background.spawn,
    )
    bolt = build_bolt_app(
        signing_secret=settings.signing_secret,
        authorization=clients.slack_auth,
        relay=relay,
        commands=commands,
        spawn=background.spawn,
        connections=connect,
        open_modal=surfaces.from_command,
        client=slack_client,
        workspaces=workspaces,
    )
    register(bolt, surfaces)
    return Services(
        settings=settings,
        store=store,
        worker=worker,
        inbound=inbound,
        push=push,
        bolt=bolt,
        connect=connect,
        background=background,
        started_at=clock.now(),
        verifier=SignatureVerifier(settings.signing_secret),
        acks=acks,
        slack_auth=clients.slack_auth,
        install=_install(settings, workspaces, clients.session, mapped),
        workspaces=workspaces,
        clients=clients,
        tokens=tokens,
        budget=budget,
        instances=instances,
    )


@contextlib.asynccontextmanager
async def _running(services: Services, clock: Clock) -> AsyncIterator[None]:
    """The services' background work, from start to a graceful stop."""
    settings, store, worker, workspaces = (
        services.settings,
        services.store,
        services.worker,
        services.workspaces,
    )
    authorizing = asyncio.create_task(services.slack_auth.keep_trying(), name="slack-auth")
    pruning = asyncio.create_task(
        prune_forever(store, clock, retention_days=settings.retention_days), name="retention"
    )
    sweeping = asyncio.create_task(_discard_unconfirmed(services.connect), name="unconfirmed-connections")
    expiring = (
        asyncio.create_task(workspaces.expire_forever(settings.retention_days), name="removed-workspaces")
        if workspaces is not None
        else None
    )
    running = asyncio.create_task(worker.run(), name="leader-work")
    yield
    await worker.stop(SHUTDOWN_GRACE)
    await running
    authorizing.cancel()
    pruning.cancel()
    sweeping.cancel()
    if expiring is not None:
        expiring.cancel()
    await services.background.drain(5.0)
    for task in (authorizing, pruning, sweeping, *((expiring,) if expiring else ())):
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _workspaces(
    settings: Settings, store: AnyStore, session: aiohttp.ClientSession, clock: Clock
) -> Workspaces:
    """Install mode: the installed workspaces' tokens, kept in the store."""
    assert settings.slack_client_id and settings.slack_client_secret
    cipher = TokenCipher(settings.encryption_keys)
    return Workspaces(
        SlackInstallStore(store.engine, cipher, clock.now),
        slack_oauth_client(settings.slack_api_url, session),
        client_id=settings.slack_client_id,
        client_secret=settings.slack_client_secret,
        now=clock.now,
    )


def _install(
    settings: Settings,
    workspaces: Workspaces | None,
    session: aiohttp.ClientSession,
    resumed: Callable[[], None],
) -> InstallFlow | None:
    """Install mode's OAuth flow; ``resumed`` wakes the workers when a reinstall resumes channels
    (what waited for them goes now)."""
    if workspaces is None:
        return None

    async def installed(team_id: str) -> None:
        assert workspaces is not None
        if await workspaces.installed(team_id):
            resumed()

    assert settings.slack_client_id and settings.slack_client_secret
    installs = workspaces.installs
    return install_flow(
        client_id=settings.slack_client_id,
        client_secret=settings.slack_client_secret,
        redirect_uri=settings.slack_redirect_uri,
        authorize_url=settings.slack_authorize_url,
        client=slack_oauth_client(settings.slack_api_url, session),
        installs=installs,
        states=SlackStateStore(installs.engine, installs.now),
        on_installed=installed,
    )


async def _tell_author(slack: SlackApi | TeamSlack, message: IncomingMessage, reason: str) -> None:
    """An ephemeral note to the author of a message that was not relayed, saying why."""
    if message.user_id:
        await slack.post_ephemeral(message.team_id, message.channel_id, message.user_id, reason)


def _noting_sends(
    counted: Callable[[str, OutboxItem], Awaitable[None]], inbound: Inbound
) -> Callable[[str, OutboxItem], Awaitable[None]]:
    """``Delivery.on_event``: counted, and a DM sent makes its account's conversations active
    (an answer is likely: its groups, never pushed, are read at the budget's pace)."""

    async def on_event(kind: str, item: OutboxItem) -> None:
        await counted(kind, item)
        if kind == "sent":
            inbound.note_activity(item.account_id)

    return on_event


def _telling_home(
    counted: Callable[[OutboxItem, Any], Awaitable[None]], store: AnyStore, home: Callable[[], HomeService]
) -> Callable[[OutboxItem, Any], Awaitable[None]]:
    """``Delivery.on_failed``: counted, and the channel's owners see the failure on their Home."""

    async def on_failed(item: OutboxItem, failure: Any) -> None:
        await counted(item, failure)
        mapping = await store.get_mapping(item.team_id, item.channel_id)
        if mapping is not None:
            await home().mapping_changed(mapping)

    return on_failed


async def _discard_unconfirmed(connect: ConnectService) -> None:
    """Revoke X's grant for connections whose Slack user never answered (any instance may)."""
    while True:
        await asyncio.sleep(UNCONFIRMED_SWEEP)
        try:
            await connect.discard_expired()
        except Exception as exc:  # the database away for a moment: the next sweep catches up
            log.warning("could not sweep unconfirmed X connections", extra={"error": type(exc).__name__})


def _worker(
    instances: Instances,
    make: Callable[[], Delivery],
    budget: Budget,
    clock: Clock,
    inbound: Inbound,
    push: Push | None,
) -> Worker:
    """Delivery, the inbound poller and poster, and push upkeep: the work that talks to X, run
    by the one instance that leads (on PostgreSQL, while it holds the leader lock)."""
    jobs = [Job("inbound", inbound.run, lambda grace: inbound.stop(grace / 2), inbound.resume)]
    if push is not None:
        jobs.append(_push_job(push))

    async def before_lead() -> None:
        await budget.load(clock.now())  # the previous leader spent from the same windows

    def inbound_notified(what: str) -> None:
        # A standby queued events (wake the poster), took a push (read its DMs), or saw a
        # connect or a mapping (read soon: a history it asked for is in the store).
        inbound.wake()
        if what.startswith(PUSHED):
            account, _, dms = what.removeprefix(PUSHED).partition(" ")
            if account.isdigit():
                inbound.rang(int(account), [_pushed_dm(dm) for dm in dms.split(",")])
            return
        kind, _, account_id = what.partition(":")
        if kind == "active" and account_id.isdigit():
            inbound.note_activity(int(account_id))  # its groups are read at the budget's pace
        if what in ("poll", "connected"):
            inbound.poll_soon()
        if what == "connected" and push is not None:
            push.recheck()

    return instances.worker(make, before_lead=before_lead, jobs=tuple(jobs), on_inbound=inbound_notified)


def _pushed_dm(text: str) -> DmEvent:
    """One ``<id>:<sender>:<recipient>`` of a ``PUSHED`` payload (either id may be empty)."""
    event_id, _, rest = text.partition(":")
    sender, _, recipient = rest.partition(":")
    return DmEvent(event_id, sender_id=sender or None, recipient_id=recipient or None)


def _ring(
    instances: Instances, worker: Worker, inbound: Inbound, account_id: int, dms: Sequence[DmEvent]
) -> None:
    """A push for an account: its reader places the DMs soon, here if this instance leads, else
    the leader's (a NOTIFY payload is at most 8,000 bytes: 100 DMs of three 19-digit ids fit)."""
    said = ",".join(f"{dm.id}:{dm.sender_id or ''}:{dm.recipient_id or ''}" for dm in dms[:100])
    if not instances.to_leader(worker, f"{PUSHED}{account_id} {said}"):
        inbound.rang(account_id, dms)


class _LeadersInbound:
    """``Inbound`` as commands see it on any instance: history a standby's `/xdm link` wants is
    kept in the store and read by the leader (woken by NOTIFY), since only the leader reads X."""

    def __init__(self, inbound: Inbound, worker: Worker, instances: Instances) -> None:
        self._inbound = inbound
        self._worker = worker
        self._instances = instances

    def push_active(self, account_id: int) -> bool:
        return self._inbound.push_active(account_id)

    def wants_history(self) -> bool:
        return self._inbound.wants_history()

    async def history_requested(self, account_id: int) -> None:
        await self._inbound.history_requested(account_id)
        self._instances.to_leader(self._worker, "poll")


def _push_job(push: Push) -> Job:
    """Push upkeep as a leader job: registration, subscriptions, replay of the downtime."""
    running: list[asyncio.Task[None]] = []

    async def run() -> None:
        task = asyncio.create_task(_push_after_start(push), name="push")
        running[:] = [task]
        await asyncio.wait({task})  # a cancelled term stops the task through ``stop``

    async def stop(grace: float) -> None:
        push.stop()
        for task in running:  # an X call in flight need not finish: the next leader re-checks
            task.cancel()

    return Job("push", run, stop, push.resume)


async def _push_after_start(push: Push) -> None:
    await asyncio.sleep(0.5)  # let the site start listening: registering makes X call us back
    try:
        await push.run()
    except Exception:
        log.exception("X push upkeep failed; polling carries on")

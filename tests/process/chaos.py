"""A randomized run of the real server against X on a bad day, and the promises checked after it.

One seed decides everything that is decided: fake X's fault mix (:class:`FaultModel`), the Slack
script (messages over several channels and two accounts, Slack's retries of the same event,
edits, deletes) and when the server is SIGKILLed and restarted. The interleaving still depends
on timing, so a failing seed is re-run a few times before it is called flaky; the report it
prints says what went wrong.

After the run, with X still faulty, every row must settle, and then:

* every accepted message is on X exactly once (one visible DM carrying one of its versions), or
  it failed (only where X refused it for good) with its author told, or it was deleted in Slack
  and no DM of it is visible on X;
* an edit reaches X: the latest version of a message that was not deleted is on X;
* every DM on X is one we meant to send (no unknown text, no version twice);
* per-channel order: the DMs of a channel's rows are in the rows' order;
* no channel waits on another: one channel's conversation is broken (every request to it fails)
  until every other channel has settled;
* the worker never spins: the requests to X in any one second stay bounded, and X hears
  nothing once everything has settled;
* nothing unexpected: the server logs no error (the worker logs what it did not foresee).

A ✅ cut off by a kill (the row marked sent, the process gone before Slack heard) is added again
when the next process starts (``Delivery._recheck_recent_sends``), so every sent message must end
with its ✅.

Used by tests/process/test_fault_model.py (a few fixed seeds) and bench/fault_soak.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from adapters.sandbox.fake_slack import FakeSlack, SlackSender, run_fake_slack
from adapters.sandbox.fake_x import RATE_LIMIT_SHAPES, FakeX, FaultModel, run_fake_x
from adapters.store.crypto import TokenCipher
from adapters.store.select import make_store
from bridge.model import ChannelMapping, MappingKind, TokenSet, XUser
from bridge.settings import Settings
from tests import pg
from tests.harness import ALICE, BOB, CAROL, DORA, ME, SIGNING_SECRET, TEAM, bridge_env, free_port
from tests.process.support import Server

OTHER_ME = "1100"  # the second connected X account
REFUSER = "2099"  # accepts no DMs: every message to them fails, and their author is told
INBOUND_LISTING = "/2/dm_events"  # the inbound poller's read, not delivery's
SICK_CHANNEL = "C02"  # its conversation fails every request until the others have settled
REFUSING_CHANNEL = "C04"
AUTHORS = {"A": ("U100", "Ada"), "B": ("U200", "Bea")}
SPIN_BOUND = 100  # requests to X in any one second; calm runs peak near 25, a hot retry loop makes hundreds
FINAL_STATES = ("sent", "failed", "cancelled")
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99=\x1d\x00\x00\x00\x00IEND\xaeB`\x82"
)


@dataclass(frozen=True)
class ChannelSpec:
    channel: str
    account: str  # "A" or "B"
    kind: MappingKind
    members: tuple[str, ...]  # group members besides the account, or the one DM participant


CHANNELS = (
    ChannelSpec("C01", "A", MappingKind.LINK, (ALICE, BOB)),
    ChannelSpec(SICK_CHANNEL, "A", MappingKind.LINK, (ALICE, CAROL)),
    ChannelSpec("C03", "A", MappingKind.DM, (ALICE,)),
    ChannelSpec(REFUSING_CHANNEL, "A", MappingKind.DM, (REFUSER,)),
    ChannelSpec("C11", "B", MappingKind.LINK, (CAROL, DORA)),
    ChannelSpec("C12", "B", MappingKind.LINK, (BOB, DORA)),
)


@dataclass
class Message:
    """One Slack message of the script and what Slack did to it."""

    channel: str
    index: int
    ts: str
    author: str
    name: str
    versions: list[str]
    accepted: bool = False
    deleted: bool = False  # a delete was accepted
    image: bool = False  # a PNG rides with the text (an upload to X before the send)

    def text(self, version: int) -> str:
        return f"{self.channel} #{self.index} v{version}"


@dataclass
class Report:
    """What one seed did and found."""

    seed: int
    messages: int = 0
    edits: int = 0
    deletes: int = 0
    slack_retries: int = 0
    slack_refused: int = 0  # answers other than 200 (the server down or unable to decide)
    kills: int = 0
    refreshes_cut: int = 0  # kills that fell between X rotating a refresh token and its saving
    x_requests: int = 0
    x_events: int = 0
    peak_per_second: int = 0
    seconds: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)
    states: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
        lines = [
            f"seed {self.seed}: {self.messages} messages, {self.edits} edits, {self.deletes} deletes, "
            f"{self.slack_retries} Slack retries, {self.slack_refused} non-200 answers, {self.kills} kills "
            f"({self.refreshes_cut} cutting a token refresh)",
            f"  X: {self.x_requests} requests, {self.x_events} DMs, peak {self.peak_per_second}/s, "
            f"rows {self.states}, {self.seconds:.1f} s",
            f"  faults: {faults}",
        ]
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass
class Chaos:
    """The running world of one seed."""

    seed: int
    x: FakeX
    slack: FakeSlack
    sender: SlackSender
    session: aiohttp.ClientSession
    server: Server
    url: str
    settings: Settings  # the server's
    conversations: dict[str, str]  # channel -> conversation id (once known)
    channels: tuple[ChannelSpec, ...] = CHANNELS
    messages: list[Message] = field(default_factory=list)
    kill_times: list[float] = field(default_factory=list)
    report: Report = field(init=False)

    def __post_init__(self) -> None:
        self.report = Report(self.seed)

    @property
    def database(self) -> str:
        """The SQLite path or the PostgreSQL URL the server uses."""
        return self.settings.database_url or self.settings.database_path


@asynccontextmanager
async def chaos_world(
    tmp_path: Path, seed: int, channels: tuple[ChannelSpec, ...] = CHANNELS, **env: str
) -> AsyncIterator[Chaos]:
    """Fakes, two connected accounts, the channels mapped; the server started.

    The database is the one the environment selects: SQLite at ``tmp_path/bridge.db``, or
    PostgreSQL when ``DATABASE_URL`` is in ``env`` or in ``tests.harness.DATABASE_ENV``."""
    async with AsyncExitStack() as stack:
        x, x_url = await stack.enter_async_context(run_fake_x())
        for user_id, handle in (
            (ME, "bridge_owner"),
            (OTHER_ME, "second_owner"),
            (ALICE, "alice"),
            (BOB, "bob"),
            (CAROL, "carol"),
            (DORA, "dora"),
        ):
            x.add_user(user_id, handle)
        x.add_user(REFUSER, "zed", accepts_dms=False)
        x.user_limit_15m = x.user_limit_24h = x.app_limit_24h = x.read_limit_15m = 10**6
        x.timeout_seconds = 1.5  # a held answer outlives the bridge's 1 s timeout
        slack, slack_url = await stack.enter_async_context(run_fake_slack(team_id=TEAM))
        for user_id, name in AUTHORS.values():
            slack.add_user(user_id, display_name=name)
        port = free_port()
        db_path = tmp_path / "bridge.db"
        big = str(10**6)
        full_env = bridge_env(
            db_path,
            x_url,
            f"{slack_url}/api/",
            port,
            LOG_FORMAT="json",
            X_TIMEOUT_SECONDS="1",
            X_RETRY_CAP_SECONDS="2",
            X_USER_LIMIT_15M=big,
            X_USER_LIMIT_24H=big,
            X_APP_LIMIT_24H=big,
            X_READ_LIMIT_15M="10000",  # read-backs and the inbound poller read often: no window binds
            **env,
        )
        settings = Settings.from_env(full_env)
        conversations = await _seed_database(settings, x, channels)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        url = f"http://127.0.0.1:{port}"
        sender = SlackSender(session, f"{url}/slack/events", SIGNING_SECRET, team_id=TEAM)
        server = Server(full_env, tmp_path / "server.log")
        chaos = Chaos(seed, x, slack, sender, session, server, url, settings, conversations, channels)
        try:
            await server.start(url, session)
            yield chaos
        finally:
            if server.process is not None and server.process.returncode is None:
                await server.kill()


async def _seed_database(settings: Settings, x: FakeX, channels: tuple[ChannelSpec, ...]) -> dict[str, str]:
    store = make_store(settings)
    await store.open()
    accounts = {}
    for label, (x_user, handle) in {"A": (ME, "bridge_owner"), "B": (OTHER_ME, "second_owner")}.items():
        grant = x.issue_token(x_user)
        accounts[label] = await store.save_account(
            TEAM,
            AUTHORS[label][0],
            XUser(x_user, handle),
            TokenSet(grant.access_token, grant.refresh_token, grant.expires_at),
        )
    conversations: dict[str, str] = {}
    for spec in channels:
        account = accounts[spec.account]
        if spec.kind is MappingKind.DM:
            conversation, participant = None, spec.members[0]
        else:
            conversation = x.create_group(account.x_user_id, list(spec.members))
            participant = None
            conversations[spec.channel] = conversation
        mapping = ChannelMapping(
            TEAM,
            spec.channel,
            spec.kind,
            account.id,
            conversation,
            participant,
            AUTHORS[spec.account][0],
            time.time(),
        )
        await store.create_mapping(mapping)
    await store.close()
    for spec in channels:
        if spec.kind is MappingKind.DM:
            owner = ME if spec.account == "A" else OTHER_ME
            low, high = sorted((owner, spec.members[0]), key=lambda v: (len(v), v))
            conversations[spec.channel] = f"{low}-{high}"
    return conversations


# -- Slack's side ---------------------------------------------------------------


async def _deliver(chaos: Chaos, event: dict[str, Any], rng: random.Random) -> bool:
    """Deliver one event the way Slack does: again (same event id) until it gets a 200."""
    event_id = chaos.sender.new_event_id()
    retry: int | None = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if retry is None and rng.random() < 0.15:
                # Slack timed out on the first try while the bridge was still working on it.
                first = chaos.sender.event(event, event_id=event_id)
                again = chaos.sender.event(event, event_id=event_id, retry_num=1)
                results = await asyncio.gather(first, again)
                chaos.report.slack_retries += 1
                if any(r.status == 200 for r in results):
                    return True
            else:
                result = await chaos.sender.event(event, event_id=event_id, retry_num=retry)
                if result.status == 200:
                    if rng.random() < 0.2:  # the 200 was lost on the way back: Slack retries anyway
                        await chaos.sender.event(event, event_id=event_id, retry_num=(retry or 0) + 1)
                        chaos.report.slack_retries += 1
                    return True
                chaos.report.slack_refused += 1
        except aiohttp.ClientError:
            chaos.report.slack_refused += 1
        retry = (retry or 0) + 1
        chaos.report.slack_retries += 1
        await asyncio.sleep(0.2)
    return False


def _edit_event(chaos: Chaos, message: Message, old: str, new: str) -> dict[str, Any]:
    ts = chaos.sender.new_ts()
    body = {"type": "message", "user": message.author, "ts": message.ts}
    return {
        "type": "message",
        "subtype": "message_changed",
        "channel": message.channel,
        "hidden": True,
        "ts": ts,
        "event_ts": ts,
        "message": {**body, "text": new, "edited": {"user": message.author, "ts": ts}},
        "previous_message": {**body, "text": old},
    }


def _delete_event(chaos: Chaos, message: Message, text: str) -> dict[str, Any]:
    ts = chaos.sender.new_ts()
    return {
        "type": "message",
        "subtype": "message_deleted",
        "channel": message.channel,
        "hidden": True,
        "deleted_ts": message.ts,
        "ts": ts,
        "event_ts": ts,
        "previous_message": {"type": "message", "user": message.author, "text": text, "ts": message.ts},
    }


async def play_slack(chaos: Chaos, rng: random.Random, count: int) -> None:
    """Post ``count`` messages over the channels, with edits and deletes of earlier ones."""
    by_channel: dict[str, list[Message]] = defaultdict(list)
    for index in range(count):
        spec = rng.choice(chaos.channels)
        author, name = AUTHORS[spec.account]
        message = Message(spec.channel, index, chaos.sender.new_ts(), author, name, [])
        message.versions.append(message.text(0))
        files = None
        if rng.random() < 0.15:
            message.image = True
            files = [
                chaos.slack.add_file(
                    f"F{index:04d}", name="dot.png", mimetype="image/png", filetype="png", content=PNG
                )
            ]
        event = chaos.sender.message_event(
            spec.channel, author, message.versions[0], ts=message.ts, blocks=[], files=files
        )
        chaos.messages.append(message)
        message.accepted = await _deliver(chaos, event, rng)
        chaos.report.messages += 1
        by_channel[spec.channel].append(message)
        live = [m for m in by_channel[spec.channel] if m.accepted and not m.deleted]
        roll = rng.random()
        if live and roll < 0.2:
            target = rng.choice(live[-4:])
            old = target.versions[-1]
            new = target.text(len(target.versions))
            if await _deliver(chaos, _edit_event(chaos, target, old, new), rng):
                target.versions.append(new)
                chaos.report.edits += 1
        elif live and roll < 0.3:
            target = rng.choice(live[-4:])
            if await _deliver(chaos, _delete_event(chaos, target, target.versions[-1]), rng):
                target.deleted = True
                chaos.report.deletes += 1
        await asyncio.sleep(rng.uniform(0.0, 0.08))


async def kill_at_random(chaos: Chaos, rng: random.Random, kills: int, done: asyncio.Event) -> None:
    """SIGKILL the server when X has heard a random number of requests, then start it again."""
    thresholds = sorted(rng.randint(5, 40 * (k + 1)) for k in range(kills))
    for threshold in thresholds:
        while len(chaos.x.all_requests) < threshold and not done.is_set():  # noqa: ASYNC110 (X has no event)
            await asyncio.sleep(0.01)
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        chaos.kill_times.append(time.time())
        await chaos.server.kill()
        chaos.report.kills += 1
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        # After the pause: a refresh already on the wire when the process died reaches X in it.
        if await undo_refresh_cut_off(chaos):
            chaos.report.refreshes_cut += 1
        await chaos.server.start(chaos.url, chaos.session)


async def undo_refresh_cut_off(chaos: Chaos) -> bool:
    """Undo at X a token refresh the kill cut off after X rotated the refresh token and before
    the server saved the new one: X's refresh tokens are single-use, so no client survives that
    (fake X's fault model spares the token endpoint such losses for the same reason). Undone,
    it is a kill that came just before the refresh reached X. Whether one was undone."""
    cipher = TokenCipher(chaos.settings.encryption_keys)
    undone = False
    stored = await pg.records(
        chaos.database, "SELECT refresh_token FROM accounts WHERE refresh_token IS NOT NULL"
    )
    for row in stored:
        token = chaos.x.refresh_tokens.get(cipher.decrypt(row["refresh_token"]))
        if token is not None and token.used and not token.revoked:
            token.used = False
            undone = True
    return undone


# -- the run -----------------------------------------------------------------------


async def outbox_rows(chaos: Chaos) -> list[dict[str, Any]]:
    """Every outbox row in send order (``id`` breaks ties, the same on both stores)."""
    return await pg.records(chaos.database, "SELECT * FROM outbox ORDER BY seq, part, id")


async def _settled(chaos: Chaos, channels: set[str] | None = None) -> bool:
    return all(
        r["state"] in FINAL_STATES
        for r in await outbox_rows(chaos)
        if channels is None or r["channel_id"] in channels
    )


async def _wait_settled(chaos: Chaos, channels: set[str] | None, timeout: float, what: str) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await _settled(chaos, channels):
            return True
        await asyncio.sleep(0.25)
    pending = [
        f"{r['channel_id']} row {r['id']} ({r['kind']}) {r['state']}: {r['last_error']}"
        for r in await outbox_rows(chaos)
        if r["state"] not in FINAL_STATES and (channels is None or r["channel_id"] in channels)
    ]
    chaos.report.problems.append(f"{what} did not settle in {timeout:.0f} s: " + "; ".join(pending[:8]))
    return False


async def run_seed(
    tmp_path: Path,
    seed: int,
    *,
    messages: int = 36,
    kills: int = 2,
    settle_timeout: float = 60.0,
    channels: tuple[ChannelSpec, ...] = CHANNELS,
    shapes: tuple[str, ...] = RATE_LIMIT_SHAPES,
    env: dict[str, str] | None = None,
) -> Report:
    """One randomized run; returns its report (``problems`` empty when every promise held).

    ``env`` adds to the server's environment (``{"DATABASE_URL": …}`` runs it on PostgreSQL)."""
    started = time.monotonic()
    rng = random.Random(seed)
    async with chaos_world(tmp_path, seed, channels, **(env or {})) as chaos:
        chaos.x.fault_model = FaultModel(seed, shapes=shapes)
        sick = chaos.conversations[SICK_CHANNEL]
        chaos.x.inject("503", count=10**9, path_contains=sick)
        done = asyncio.Event()
        killer = asyncio.create_task(kill_at_random(chaos, random.Random(rng.random()), kills, done))
        try:
            await play_slack(chaos, random.Random(rng.random()), messages)
            done.set()
            await killer
        finally:
            killer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await killer
        others = {c.channel for c in channels} - {SICK_CHANNEL}
        healthy = await _wait_settled(chaos, others, settle_timeout, "the channels other than the broken one")
        chaos.x.clear_faults()
        if healthy:
            await _wait_settled(chaos, None, settle_timeout, "the outbox")
        chaos.x.fault_model = None
        quiet_from = len(chaos.x.all_requests)
        await asyncio.sleep(1.5)
        # The inbound poller reads GET /2/dm_events on its own clock whatever the outbox does
        # (one poll may page back over the DMs just sent), so only the rest must fall silent.
        heard = [r for r in chaos.x.all_requests[quiet_from:] if r.path != INBOUND_LISTING]
        if healthy and heard:
            paths = Counter(f"{r.method} {r.path}" for r in heard)
            chaos.report.problems.append(
                f"X still heard {len(heard)} requests after everything settled: {paths}"
            )
        await chaos.server.terminate()
        await check(chaos)
    chaos.report.seconds = time.monotonic() - started
    return chaos.report


# -- the promises ------------------------------------------------------------------


async def check(chaos: Chaos) -> None:
    """Add every broken promise to the report."""
    report, x = chaos.report, chaos.x
    problems = report.problems
    rows = await outbox_rows(chaos)
    report.states = dict(Counter(r["state"] for r in rows))
    report.x_requests = len(x.all_requests)
    report.x_events = len(x.events)
    report.faults = Counter(label for _, label, _, _ in x.model_log)
    report.faults.update(f"injected:{kind}" for kind, _ in x.faults_served)
    problems.extend(f"X spec: {v}" for v in x.violations[:5])

    # The worker catches what it did not expect and logs it as an error: none of that may happen.
    errors: Counter[str] = Counter()
    for line in chaos.server.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("level") in ("error", "critical"):
                errors[str(record.get("msg"))] += 1
    problems.extend(f"the server logged an error {n} times: {msg}" for msg, n in errors.items())

    # Requests per second: the worker never spins.
    per_second = Counter(int(r.at) for r in x.all_requests)
    report.peak_per_second = max(per_second.values(), default=0)
    if report.peak_per_second > SPIN_BOUND:
        problems.append(f"{report.peak_per_second} requests to X in one second (bound {SPIN_BOUND})")

    # Every DM on X is one we meant to send, once.
    owners = {spec.channel: (ME if spec.account == "A" else OTHER_ME) for spec in chaos.channels}
    texts: dict[str, tuple[Message, int, bool]] = {}
    for m in chaos.messages:
        for v, text in enumerate(m.versions):
            texts[f"{m.name}: {text}"] = (m, v, False)
            texts[f"{m.name} (edited): {text}"] = (m, v, True)
    visible: dict[str, list[Any]] = defaultdict(list)  # channel -> visible events
    seen: Counter[str] = Counter()
    for event in x.events:
        if event.deleted:
            continue
        known = texts.get(event.text or "")
        if known is None:
            problems.append(f"unknown DM on X: {event.text!r} in {event.conversation_id}")
            continue
        message = known[0]
        if event.conversation_id != chaos.conversations[message.channel]:
            problems.append(f"{event.text!r} went to {event.conversation_id}, not {message.channel}'s")
        if event.sender_id != owners[message.channel]:
            problems.append(f"{event.text!r} was sent by {event.sender_id}")
        seen[event.text or ""] += 1
        visible[message.channel].append(event)
    for text, count in seen.items():
        if count > 1:
            problems.append(f"sent {count} times: {text!r}")

    # Each message: sent once, failed with its author told, or deleted and absent.
    rows_of: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        rows_of[(r["channel_id"], r["ref_ts"] or r["slack_ts"])].append(r)
    told = Counter(e["channel"] for e in chaos.slack.ephemerals() if "message was not sent" in e["text"])
    failed_in: Counter[str] = Counter()
    for m in chaos.messages:
        if not m.accepted:
            problems.append(f"Slack never got a 200 for {m.versions[0]!r}")
            continue
        mine = rows_of.get((m.channel, m.ts), [])
        message_rows = [r for r in mine if r["kind"] == "message"]
        if not message_rows:
            problems.append(f"accepted but no outbox row: {m.versions[0]!r}")
            continue
        on_x = [e for e in visible[m.channel] if texts[e.text][0] is m]
        primaries = [e for e in on_x if not texts[e.text][2]]
        if m.deleted:
            if on_x:
                problems.append(f"deleted in Slack but on X: {[e.text for e in on_x]}")
            continue
        if any(r["state"] == "failed" for r in message_rows):
            failed_in[m.channel] += 1
            if m.channel != REFUSING_CHANNEL:
                reasons = {r["last_error"] for r in message_rows if r["state"] == "failed"}
                problems.append(f"failed though X never refused it for good: {m.versions[0]!r}: {reasons}")
            if primaries:
                problems.append(f"failed but on X: {[e.text for e in primaries]}")
            continue
        if len(primaries) != 1:
            problems.append(
                f"{m.versions[0]!r} is on X {len(primaries)} times (rows: {_brief(message_rows)})"
            )
            continue
        if m.image and len(primaries[0].media_ids) != 1:
            problems.append(f"{m.versions[0]!r} reached X without its image")
        latest = {texts[e.text][1] for e in on_x}
        if len(m.versions) - 1 not in latest:
            problems.append(
                f"the last edit of {m.versions[0]!r} never reached X (on X: {[e.text for e in on_x]})"
            )
        if not {"white_check_mark"} <= chaos.slack.reactions(m.channel, m.ts):
            problems.append(f"{m.versions[0]!r} reached X but has no ✅ in Slack")
    for channel, count in failed_in.items():
        if told[channel] < count:
            problems.append(f"{count} messages failed in {channel} but {told[channel]} authors were told")

    # Per-channel order: the DMs of a channel's rows are in the rows' order.
    by_id = {e.id: e for e in x.events}
    for channel in {c.channel for c in chaos.channels}:
        sent = [r for r in rows if r["channel_id"] == channel and r["dm_event_id"] and r["kind"] != "delete"]
        ids = [int(r["dm_event_id"]) for r in sent if r["dm_event_id"] in by_id]
        if ids != sorted(ids):
            order = [by_id[str(i)].text for i in ids]
            problems.append(f"{channel} reached X out of order: {order}")


def _brief(rows: list[dict[str, Any]]) -> str:
    return json.dumps([(r["id"], r["state"], r["dm_event_id"], r["last_error"]) for r in rows])

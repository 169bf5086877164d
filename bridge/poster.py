"""X → Slack, the poster: each queued X event posted into its channel, once and in X's order.

A channel's head is posted with ``chat.postMessage`` as the X sender, one head per channel at a
time, a window of channels at a time (at most ``InboundConfig.post_channels`` posting at once,
so a backlog leaves the store's time to acks and delivery). The row is marked ``posting`` before
the call and carries the ``dm_event_id`` in Slack message metadata; a row found ``posting`` later
is looked up in the channel's history before any repost. Slack's 429 holds the channel back (in
order); nothing is dropped. Split from ``Inbound`` (bridge/inbound.py), which reads X and queues
the rows this posts, and which holds a channel back while an older pushed DM is placed.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from cachetools import LRUCache

from bridge import translate
from bridge.chat_inbound import ChatInbound
from bridge.errors import (
    SlackChannelRefused,
    SlackError,
    SlackMessageRefused,
    SlackRateLimited,
    SlackRefused,
    SlackTransient,
    XAuthRevoked,
    XError,
    XRefused,
)
from bridge.model import (
    Account,
    EventKind,
    InboundItem,
    InboundState,
)
from bridge.ports import AccountReads, Clock, InboundPosting, OutboxInDoubt, SlackClient, XClient
from bridge.scheduler import Lanes, WakeLoop, backoff
from bridge.tokens import TokenManager

if TYPE_CHECKING:
    from bridge.inbound import InboundConfig

log = logging.getLogger(__name__)

METADATA_TYPE = "xdm_bridge_inbound"  # Slack message metadata event_type of our posts
HISTORY_SKEW = 120.0  # look this far before a post began when searching Slack's history
MAX_USERNAME = 80  # Slack truncates longer usernames
MAX_MEDIA_BYTES = 512 * 1024 * 1024  # X's largest DM media (video)
MEDIA_KEPT_BYTES = 64 * 1024 * 1024  # fetched attachments kept in memory for a refused channel's retry
# Slack keeps the first 40,000 characters of chat.postMessage's text and drops the rest unsaid.
# X allows 10,000 characters, but escaped for Slack ("&" is "&amp;") they can be 50,000.
MAX_TEXT = 40_000


class PosterStore(InboundPosting, AccountReads, OutboxInDoubt, Protocol):
    """The roles the poster uses: the inbound rows' heads and posts, and for its echo check the
    accounts of an X user and the outbox's sends in doubt."""


def _handle(user: dict[str, Any]) -> str:
    if user.get("username"):
        return f"@{user['username']}"
    return f"X user {user['id']}" if user.get("id") else "someone on X"


def render(item: InboundItem) -> tuple[str, str, str | None]:
    """(text, username, icon_url) of the Slack post for one inbound row."""
    payload = item.payload
    sender = payload.get("sender") or {"id": item.sender_id}
    name = str(sender.get("name") or "")
    handle = _handle(sender)
    username = f"{name} ({handle})" if name else handle
    icon = str(sender.get("avatar") or "") or None
    if payload.get("refused"):
        # Not as the sender: their name or avatar may be what Slack refused.
        line = (
            f"A message from {handle} on X could not be shown here: Slack refused it ({payload['refused']})."
        )
        return line, "X", None
    if item.kind.membership:
        who = ", ".join(_handle(p) for p in payload.get("participants") or []) or "someone"
        verb = "joined" if item.kind is EventKind.PARTICIPANTS_JOIN else "left"
        # The emoji itself, not a :shortcode:: the post goes with Slack's markup off.
        return f"\N{BUSTS IN SILHOUETTE} {who} {verb} the conversation on X.", "X", None
    notes = []
    if payload.get("sent_from_channel"):
        notes.append(f"sent from Slack in <#{payload['sent_from_channel']}>")
    elif payload.get("from_self"):
        notes.append("sent from X")
    if payload.get("history"):
        notes.append("history")
    if payload.get("media_note"):
        notes.append(str(payload["media_note"]))
    # Plain parentheses, not _italics_: the post goes with Slack's markup off (post_as), so the
    # X text reads literally.
    tail = f"({'; '.join(notes)})" if notes else ""
    text = _fit(str(payload.get("text") or ""), MAX_TEXT - len(tail) - 1)
    if tail:
        text = f"{text}\n{tail}" if text else tail
    return text or "(empty message)", username[:MAX_USERNAME], icon


def _fit(text: str, room: int) -> str:
    """X's text escaped for Slack in at most ``room`` characters: cut (never inside an escape)
    with a visible count of what was left out, so the notes after it survive Slack's limit.
    Cut, not split into several posts: the whole message stays readable on X, and one post per
    X event keeps exactly-once simple (a split post could be half in Slack after a crash)."""
    escaped = translate.to_slack(text)
    if len(escaped) <= room:
        return escaped
    room -= len(f"…(cut: {len(text)} more characters)")
    used = 0
    for kept, char in enumerate(text):
        used += len(translate.to_slack(char))
        if used > room:
            return f"{translate.to_slack(text[:kept])}…(cut: {len(text) - kept} more characters)"
    return escaped  # not reached: the whole text did not fit


WORKSPACE_LIMITED = 60.0  # 429s on two channels of a workspace this close: the workspace's limit


class _Pace:
    """Slack's pace for ``chat.postMessage``: each channel a token bucket (``post_rate`` a
    second, bursts of ``post_burst``), as Slack allows about one post a second per channel with
    short bursts; and a workspace held back when a second channel of it meets a 429 that Slack's
    client could not wait out (Slack's limit is workspace-wide too, of a size it does not
    publish: every channel posting on into it would meet 429 after 429). One channel's 429
    holds that channel only."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(max(1, burst))
        self._channels: dict[tuple[str, str], tuple[float, float]] = {}  # tokens, as of when
        self._teams: dict[str, float] = {}  # held until
        self._limited: dict[str, tuple[str, float]] = {}  # a workspace's last 429: channel, when

    def _tokens(self, key: tuple[str, str], now: float) -> float:
        tokens, at = self._channels.get(key, (self._burst, now))
        return min(self._burst, tokens + max(0.0, now - at) * self._rate)

    def ready_at(self, key: tuple[str, str], now: float) -> float:
        """When the channel may be posted to next (``now`` or earlier: at once)."""
        ready = self._teams.get(key[0], now)
        if self._rate > 0 and key in self._channels:
            tokens = self._tokens(key, now)
            if tokens < 1.0:
                ready = max(ready, now + (1.0 - tokens) / self._rate)
        return ready

    def posting(self, key: tuple[str, str], now: float) -> None:
        """A post to the channel goes now."""
        if self._rate > 0:
            self._channels[key] = (self._tokens(key, now) - 1.0, now)

    def team_held(self, team_id: str, now: float) -> float | None:
        """Until when the workspace is held back, if it is."""
        until = self._teams.get(team_id)
        return until if until is not None and until > now else None

    def limited(self, key: tuple[str, str], until: float, now: float) -> None:
        """A 429 Slack's client could not wait out, on this channel (held by the caller): a
        second channel of the workspace meeting one within ``WORKSPACE_LIMITED`` holds all of
        it until ``until``."""
        last = self._limited.get(key[0])
        if last is not None and last[0] != key[1] and now - last[1] <= WORKSPACE_LIMITED:
            self.hold_team(key[0], until)
        self._limited[key[0]] = (key[1], now)

    def hold_team(self, team_id: str, until: float) -> None:
        self._teams[team_id] = max(until, self._teams.get(team_id, until))

    def forget(self, now: float) -> None:
        """Drop what no longer holds anything back (bounded by the channels posted to lately)."""
        self._channels = {k: v for k, v in self._channels.items() if self._tokens(k, now) < self._burst}
        self._teams = {k: v for k, v in self._teams.items() if v > now}
        self._limited = {k: v for k, v in self._limited.items() if now - v[1] <= WORKSPACE_LIMITED}


class Poster:
    """Posts the queued rows' channel heads into Slack (in the leader's process)."""

    def __init__(
        self,
        store: PosterStore,
        x: XClient,
        slack: SlackClient,
        tokens: TokenManager,
        clock: Clock,
        config: InboundConfig,
        held_until: Callable[[InboundItem, float], float | None],
        emit: Callable[[str, str], None],
    ) -> None:
        self._store = store
        self._x = x
        self._slack = slack
        self._tokens = tokens
        self._clock = clock
        self._config = config
        self._held_until = held_until
        self._emit = emit
        self._loop = WakeLoop("inbound posting", clock, self._schedule)
        self._lanes: Lanes[tuple[str, str], None] = Lanes("inbound")  # by channel: one post at a time
        self._stopping = False
        # The walk over the channels with rows waiting (``_schedule``): where the next window
        # starts, and the earliest time a head seen in this walk becomes due.
        self._heads_after: tuple[str, str] | None = None
        self._walk_wake = math.inf
        self._pace = _Pace(config.post_rate, config.post_burst)
        self._media: LRUCache[tuple[int, str], bytes] = LRUCache(MEDIA_KEPT_BYTES, getsizeof=len)  # _fetch
        self.chats: ChatInbound | None = None  # an X Chat row's media and edits come through it
        self.on_posted: Callable[[InboundItem], None] | None = None

    def wake(self) -> None:
        """New rows are queued: post them."""
        self._loop.wake()

    def resume(self) -> None:
        """Allow ``run`` again after ``stop`` (an instance that leads again)."""
        self._stopping = False
        self._loop.resume()

    async def run(self) -> None:
        await self._loop.run()

    async def stop(self, grace: float) -> None:
        """Stop starting posts; those cut off stay ``posting`` and are checked on restart."""
        self._stopping = True
        self._loop.stop()
        await self._lanes.drain(grace)

    async def _schedule(self) -> float:
        """Start the due channels' heads, at most ``post_channels`` channels at once.

        The channels with rows waiting are walked in order a window at a time, the walk going on
        where the last window stopped: a backlog of 100,000s of rows in 10,000s of channels costs
        each pass one window (not the backlog, holding the store while acks and /healthz wait),
        and every channel gets its turn. Returns how long to sleep unless woken: 0 to go on with
        the walk, else until the earliest head seen in the whole walk is due.
        """
        now = self._clock.now()
        room = self._config.post_channels - len(self._lanes)
        if room <= 0:
            return 30.0  # a lane that ends wakes the loop
        limit = room + len(self._lanes)  # busy channels may be in the window: room for the others
        heads = await self._store.inbound_heads(self._heads_after, limit)
        started, team_wake = room, math.inf
        for head in heads:
            key = (head.team_id, head.channel_id)
            if room == 0:
                return 30.0  # the walk goes on from the last head started, once a lane ends
            self._heads_after = key
            if self._lanes.busy(key):
                continue
            team_held = self._pace.team_held(head.team_id, now)
            if team_held is not None:
                team_wake = min(team_wake, team_held)
                self._walk_wake = min(self._walk_wake, team_held)
                continue
            if head.next_attempt_at > now:
                self._walk_wake = min(self._walk_wake, head.next_attempt_at)
                continue
            held = self._held_until(head, now)
            if held is not None:
                self._walk_wake = min(self._walk_wake, held)
                continue
            ready = self._pace.ready_at(key, now)
            if ready > now:
                self._walk_wake = min(self._walk_wake, ready)
                continue
            room -= 1
            # The next look once the lane is free again (so it sees the channel's next row).
            self._lanes.start(key, self._drive(head), lambda _: self._loop.wake(), label=head.channel_id)
        if len(heads) == limit and room == started and team_wake < math.inf:
            # A workspace held by Slack's 429, nothing started in this window: its channels fill
            # the windows after it too, and walking them all (a query a window) would be for
            # nothing until the hold ends; a lane that ends wakes the loop sooner.
            return team_wake - now
        if len(heads) == limit:
            return 0.0  # more channels after this window
        # The walk reached the last channel: the next one starts from the first.
        wake_at, self._heads_after, self._walk_wake = min(self._walk_wake, now + 30.0), None, math.inf
        self._pace.forget(now)
        return wake_at - now

    async def _drive(self, item: InboundItem) -> None:
        """Post the channel's head, then its next rows while they are due and Slack's pace
        allows; else the walk comes back to the channel when its next row is due."""
        current: InboundItem | None = item
        key = (item.team_id, item.channel_id)
        try:
            while current is not None and not self._stopping:
                current = await self._post(current)
                now = self._clock.now()
                if current is None:
                    break
                ready = self._pace.ready_at(key, now)
                if ready > now:
                    self._walk_wake = min(self._walk_wake, ready)  # seen busy by the walk
                    break
                if current.next_attempt_at > now or self._held_until(current, now) is not None:
                    break
        except Exception:
            log.exception("inbound post failed", extra={"channel": item.channel_id})

    async def _post(self, item: InboundItem) -> InboundItem | None:
        """Post one row exactly once; returns the channel's next row when this one is done."""
        ids = {"channel": item.channel_id, "dm_event_id": item.dm_event_id}
        refused: SlackMessageRefused | None = None
        ts = ""
        # A row found "posting" may be in Slack already: whatever fails in this attempt (the
        # history lookup itself, a 429, a refusal), it stays "posting" so the next attempt looks
        # before it posts. Only a row that never reached chat.postMessage may go back to "queued".
        unsent = InboundState.POSTING if item.state is InboundState.POSTING else InboundState.QUEUED
        if item.payload.get("from_self") and item.state is InboundState.QUEUED:
            checked = await self._own_echo(item)
            if checked is None:
                return None
            item = checked
        try:
            if item.kind.follow_up:
                return await self._follow(item)
            item = await self._bring_media(item)
            if item.state is InboundState.POSTING:
                since = (item.posting_since or item.created_at) - HISTORY_SKEW
                found = await self._slack.find_posted(item.team_id, item.channel_id, item.dm_event_id, since)
                if found is not None:
                    log.info("already in Slack: not posting again", extra=ids)
                    return await self._posted(item, found)
            claimed = await self._store.mark_posting(item.id, self._clock.now())
            if claimed is None:
                return None
            text, username, icon = render(claimed)
            metadata = {"event_type": METADATA_TYPE, "event_payload": {"dm_event_id": item.dm_event_id}}
            try:
                ts = await self._slack.post_as(
                    item.team_id, item.channel_id, text, username=username, icon_url=icon, metadata=metadata
                )
            except SlackMessageRefused as exc:
                refused = exc  # handled below, out of this try: it posts again
            finally:
                # Counted once Slack answered (it counts the post when it arrives, before that).
                self._pace.posting((item.team_id, item.channel_id), self._clock.now())
        except SlackRateLimited as exc:
            # A 429 means Slack did not post it: the row (and the channel behind it) waits.
            until = self._clock.now() + max(1.0, exc.retry_after)
            log.warning(
                "Slack rate limit: holding the channel", extra={**ids, "retry_after": exc.retry_after}
            )
            await self._store.reschedule_inbound(item.id, unsent, until, str(exc))
            await self._store.hold_channel(item.team_id, item.channel_id, until)
            # The second channel to meet it says the limit is the workspace's: all of it waits.
            self._pace.limited((item.team_id, item.channel_id), until, self._clock.now())
            return None
        except SlackTransient as exc:
            # It may have been posted: stay "posting" so the history is checked before a retry.
            delay = backoff(item.attempts + 1, self._config.retry_base, self._config.retry_cap)
            log.warning("Slack post failed for now", extra={**ids, "error": str(exc)})
            await self._store.reschedule_inbound(
                item.id, InboundState.POSTING, self._clock.now() + delay, str(exc)
            )
            return None
        except SlackRefused as exc:
            # The bot left the channel, say: keep it, retry slowly (nothing accepted is dropped).
            delay = self._config.retry_cap
            log.warning("Slack refused the post", extra={**ids, "error": str(exc)})
            await self._store.reschedule_inbound(item.id, unsent, self._clock.now() + delay, str(exc))
            return None
        if refused is not None:
            return await self._refused(item, refused)
        return await self._posted(item, ts)

    async def _follow(self, item: InboundItem) -> InboundItem | None:
        """An edit or delete made on X: the Slack message its target was posted as is updated or
        deleted, when the target is the editor's own message (both may be done again after a
        crash: the same text, a message already gone). Without such a message here (bridged
        later, refused by Slack, or someone else's) there is nothing to follow: the row is skipped.
        Slack's 429 and failures are handled as a post's."""
        ids = {"channel": item.channel_id, "dm_event_id": item.dm_event_id}
        target = str(item.payload.get("edit_of") or item.payload.get("delete_of") or "")
        ts = None
        if self.chats is not None and target and item.sender_id:
            ts = await self.chats.target_ts(item.team_id, item.channel_id, target, item.sender_id)
        if ts is None:
            log.info(
                "an edit or delete on X of a message not posted here by its sender: nothing to follow",
                extra=ids,
            )
            await self._store.reschedule_inbound(
                item.id, InboundState.SKIPPED, 0.0, "its message is not in this channel, or not its sender's"
            )
            self._loop.wake()
            return None
        claimed = await self._store.mark_posting(item.id, self._clock.now())
        if claimed is None:
            return None
        try:
            if item.kind is EventKind.CHAT_DELETE:
                await self._slack.delete_message(item.team_id, item.channel_id, ts)
            else:
                text, _, _ = render(claimed)
                await self._slack.update_message(item.team_id, item.channel_id, ts, text)
        except SlackChannelRefused:
            raise  # the channel, not this edit: held as a post would be
        except SlackRefused as exc:  # this message (cant_update_message, edit_window_closed…)
            log.warning(
                "Slack refused to follow an edit or delete made on X", extra={**ids, "error": str(exc)}
            )
            await self._store.reschedule_inbound(item.id, InboundState.FAILED, 0.0, str(exc))
            self._loop.wake()
            return None
        log.info("an edit or delete made on X followed in Slack", extra=ids)
        return await self._posted(item, ts)

    async def _refused(self, item: InboundItem, exc: SlackMessageRefused) -> InboundItem | None:
        """Slack refused the message for what it is: sent again, it would be refused again, and
        the channel behind it would wait for ever. One short line goes in its place (posted like
        the message, exactly once); if Slack refuses that too, the row fails for good, Slack's
        reason kept. Either way the channel flows on."""
        ids = {"channel": item.channel_id, "dm_event_id": item.dm_event_id, "error": exc.error}
        first = item.payload.get("refused")
        if first:
            log.warning("Slack refused a message and the line in its place: not posted", extra=ids)
            reason = f"Slack refused the message ({first}) and the line in its place ({exc.error})"
            await self._store.reschedule_inbound(item.id, InboundState.FAILED, 0.0, reason)
            self._emit("failed", str(first))  # the message's own reason: what kind of message fails
            self._loop.wake()
            return None
        log.warning("Slack refused a message for good: a line goes in its place", extra=ids)
        payload = {**item.payload, "refused": exc.error}
        await self._store.set_inbound_payload(item.id, payload)
        # Slack did not post it: no history to search before the line goes.
        await self._store.reschedule_inbound(item.id, InboundState.QUEUED, 0.0, str(exc))
        return replace(item, payload=payload, state=InboundState.QUEUED, next_attempt_at=0.0)

    async def _own_echo(self, item: InboundItem) -> InboundItem | None:
        """A DM the connected account sent: from X itself (post it, marked so), from another
        channel bridged to the same conversation (news here: post it, marked as sent from that
        channel), or from this channel (never posted back)? X rewrites links, so the text need
        not match the outbox: while a channel on this conversation has a send in doubt, wait;
        then the message map decides. Returns the row to post (its note set), or None."""
        # Only a send by the X account that wrote this DM can be its echo: another account's send
        # in doubt (never to be settled, if that account was disconnected) is no reason to wait.
        senders = {a.id for a in await self._store.find_accounts(x_user_id=item.sender_id)}
        # Asked of the pending sends only: a conversation bridged to 10,000 channels, each with
        # its history, made this 10,000 summaries of every row for each message posted.
        if await self._store.send_in_doubt(
            item.team_id, item.channel_id, item.conversation_id, sorted(senders)
        ):
            until = self._clock.now() + max(self._config.retry_base, 0.5)
            await self._store.reschedule_inbound(
                item.id, InboundState.QUEUED, until, "waiting: a send is in doubt"
            )
            return None
        origin = await self._store.sent_from(item.dm_event_id)
        if origin == (item.team_id, item.channel_id):
            log.info("our own DM read back: not posted", extra={"dm_event_id": item.dm_event_id})
            await self._store.reschedule_inbound(
                item.id, InboundState.SKIPPED, 0.0, "relayed from Slack by the bridge"
            )
            self._emit("echo", "core")
            self._loop.wake()
            return None
        if origin is not None and item.payload.get("sent_from_channel") != origin[1]:
            payload = {**item.payload, "sent_from_channel": origin[1]}
            await self._store.set_inbound_payload(item.id, payload)
            return replace(item, payload=payload)
        return item

    async def _bring_media(self, item: InboundItem) -> InboundItem:
        """Fetch each attachment from X and share it into the channel, once (progress is kept in
        the row). One that cannot be brought over is noted; the text goes anyway."""
        payload = dict(item.payload)
        media = [m for m in payload.get("media") or [] if isinstance(m, dict)]
        done = list(payload.get("media_done") or [])
        failed = list(payload.get("media_failed") or [])
        pending = [m for m in media if str(m.get("media_key")) not in done + failed]
        if not pending:
            return item
        account = await self._tokens.account(item.account_id)
        sender = payload.get("sender") or {}
        for entry in pending:
            key = str(entry.get("media_key"))
            url = str(entry.get("url") or "")
            try:
                if account is None:
                    raise XRefused("the X account was disconnected")
                data = await self._fetch(account, item, entry)
                if len(data) > MAX_MEDIA_BYTES:
                    raise XRefused("the attachment is too large")
                name = str(entry.get("filename") or "") or (url.rsplit("/", 1)[-1] if url else f"{key}.bin")
                title = f"From {_handle(sender)} on X" if sender else "From X"
                await self._slack.upload_file(item.team_id, item.channel_id, name, data, title=title)
                done.append(key)
            except (SlackRateLimited, SlackChannelRefused):
                raise  # not the attachment's fault: the row waits, the file goes with it later
            except (XError, XAuthRevoked, SlackError) as exc:
                self._media.pop((item.id, key), None)
                log.warning(
                    "an X attachment could not be brought over",
                    extra={"channel": item.channel_id, "dm_event_id": item.dm_event_id, "error": str(exc)},
                )
                failed.append(key)
            else:
                self._media.pop((item.id, key), None)
            # Progress is kept after each file, so a retry never uploads one twice.
            payload.update(media_done=done, media_failed=failed)
            if failed:
                many = "attachments" if len(failed) > 1 else "an attachment"
                payload["media_note"] = f"{many} could not be brought over from X"
            await self._store.set_inbound_payload(item.id, payload)
        return replace(item, payload=payload)

    async def _fetch(self, account: Account, item: InboundItem, entry: dict[str, Any]) -> bytes:
        """An attachment's bytes: fetched from X once (X bills reads), then kept for the row's
        retries while Slack refuses its channel or holds it back. Kept in memory, up to
        ``MEDIA_KEPT_BYTES`` in all, the oldest dropped first (fetched again if needed); a
        restart fetches again. An X Chat attachment is decrypted (``ChatInbound.media``)."""
        item_id, key = item.id, str(entry.get("media_key"))
        kept = self._media.get((item_id, key))  # a hit makes it the most recent
        if kept is not None:
            return kept
        data: bytes
        if entry.get("chat"):
            if self.chats is None:
                raise XRefused("X Chat attachments are not read by this bridge")
            data = await self.chats.media(account, item.conversation_id, key, str(entry.get("key_version")))
        else:
            url = str(entry.get("url") or "")
            data = await self._tokens.call(account, functools.partial(self._x.download_dm_media, url=url))
        if len(data) <= MEDIA_KEPT_BYTES:  # the cache refuses a single value past its size
            self._media[(item_id, key)] = data  # evicts the least recently used to fit
        return data

    async def _posted(self, item: InboundItem, ts: str) -> InboundItem | None:
        following = await self._store.mark_posted(item.id, ts, self._clock.now())
        log.info("posted to Slack", extra={"channel": item.channel_id, "dm_event_id": item.dm_event_id})
        if self.on_posted is not None:
            self.on_posted(item)
        self._emit("posted", item.origin)
        return following

"""The part of the store Delivery uses, in memory, for its unit tests in virtual time.

Only the semantics Delivery relies on: a channel's head is its oldest unfinished row, a row
leaves the pending states once (a second claim or a late reschedule of a finished row changes
nothing), a send returns the channel's next head. The engines' real SQL is held to the same
rules by tests/contract.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from bridge.errors import Failure
from bridge.model import Account, OutboxItem, OutboxState, RenderedPart, Sent, Target, TokenSet, Unreadable

PENDING = (OutboxState.QUEUED, OutboxState.WAITING, OutboxState.SENDING)


class MemoryOutbox:
    def __init__(self) -> None:
        self.rows: dict[int, OutboxItem] = {}
        self.untold: dict[int, Failure] = {}
        self.budgets: dict[str, tuple[str, int, int, float]] = {}
        self.accounts: dict[int, Account] = {}
        self.known: set[str] = set()  # X event ids the message map holds (sent by the bridge)

    # -- what tests set up ----------------------------------------------------

    def account(self, account_id: int = 1) -> Account:
        account = Account(
            account_id, "T1", f"U{account_id}", str(1000 + account_id), "me", TokenSet("a", None, None)
        )
        self.accounts[account_id] = account
        return account

    def add(self, channel: str, text: str, account_id: int = 1, at: float = 0.0) -> OutboxItem:
        row_id = len(self.rows) + 1
        row = OutboxItem(
            id=row_id,
            seq=row_id,
            part=0,
            parts_total=1,
            team_id="T1",
            channel_id=channel,
            slack_ts=f"{row_id}.000",
            author_id="U1",
            account_id=account_id,
            target=Target(conversation_id=f"{1000 + account_id}-2001"),
            text=text,
            source={},
            state=OutboxState.QUEUED,
            attempts=0,
            next_attempt_at=at,
            last_error=None,
            dm_event_id=None,
            created_at=at,
            sending_since=None,
            held_since=None,
            hourglass=False,
            ref_ts=f"{row_id}.000",
        )
        self.rows[row_id] = row
        return row

    def state(self, row_id: int) -> OutboxState:
        return self.rows[row_id].state

    # -- Store ----------------------------------------------------------------

    async def get_account(self, account_id: int) -> Account | None:
        return self.accounts.get(account_id)

    @asynccontextmanager
    async def refresh_lock(self, account_id: int) -> AsyncIterator[Any]:
        # These tests' tokens never expire: a refresh would be a bug in the test's setup.
        if account_id:
            raise AssertionError("no refresh in these tests")
        yield None

    async def load_budgets(self) -> list[dict[str, Any]]:
        return [
            {"key": k, "limit_": v[1], "remaining": v[2], "reset_at": v[3]} for k, v in self.budgets.items()
        ]

    async def save_budgets(self, windows: Sequence[tuple[str, int, int, float]]) -> None:
        for window in windows:
            self.budgets[window[0]] = window

    def _head(self, team_id: str, channel_id: str) -> OutboxItem | None:
        pending = [
            r
            for r in self.rows.values()
            if (r.team_id, r.channel_id) == (team_id, channel_id) and r.state in PENDING
        ]
        return min(pending, key=lambda r: (r.seq, r.part), default=None)

    async def outbox_heads(self) -> list[OutboxItem | Unreadable]:
        channels = {(r.team_id, r.channel_id) for r in self.rows.values() if r.state in PENDING}
        return [head for key in sorted(channels) if (head := self._head(*key)) is not None]

    def _update(self, row_id: int, **changes: Any) -> OutboxItem | None:
        row = self.rows.get(row_id)
        if row is None or row.state not in PENDING:
            return None
        self.rows[row_id] = replace(row, **changes)
        return self.rows[row_id]

    async def mark_sending(
        self,
        item_id: int,
        now: float,
        budgets: Sequence[tuple[str, int, int, float]] = (),
        *,
        parts: Sequence[RenderedPart] | None = None,
        source: dict[str, Any] | None = None,
    ) -> OutboxItem | None:
        row = self.rows[item_id]
        claimed = self._update(
            item_id, state=OutboxState.SENDING, attempts=row.attempts + 1, sending_since=now
        )
        if claimed is not None:
            await self.save_budgets(budgets)
        return claimed

    async def mark_sent(
        self, item_id: int, sent: Sent, now: float, budgets: Sequence[tuple[str, int, int, float]] = ()
    ) -> OutboxItem | None:
        row = self._update(item_id, state=OutboxState.SENT, dm_event_id=sent.dm_event_id, sending_since=None)
        if row is not None and sent.dm_event_id is not None:
            self.known.add(sent.dm_event_id)
        await self.save_budgets(budgets)
        return self._head(row.team_id, row.channel_id) if row is not None else None

    async def reschedule(
        self,
        item_id: int,
        state: OutboxState,
        next_attempt_at: float,
        error: str | None,
        *,
        held_since: float | None = None,
    ) -> None:
        row = self.rows[item_id]
        self._update(
            item_id,
            state=state,
            next_attempt_at=next_attempt_at,
            last_error=error,
            held_since=row.held_since if row.held_since is not None else held_since,
        )

    async def mark_done(self, item_id: int, now: float) -> None:
        self._update(item_id, state=OutboxState.SENT)

    async def mark_failed(self, item_id: int, error: str, failure: Failure = Failure.OTHER) -> None:
        if self._update(item_id, state=OutboxState.FAILED, last_error=error) is not None:
            self.untold[item_id] = failure

    async def failures_to_tell(self, limit: int = 100) -> list[tuple[OutboxItem | Unreadable, Failure]]:
        told: list[tuple[OutboxItem | Unreadable, Failure]] = [
            (self.rows[i], f) for i, f in sorted(self.untold.items())
        ]
        return told[:limit]

    async def failure_told(self, item_id: int) -> None:
        self.untold.pop(item_id, None)

    async def set_hourglass(self, item_id: int, on: bool) -> None:
        self._update(item_id, hourglass=on)

    async def recently_sent(self, since: float, limit: int) -> list[OutboxItem]:
        return []

    async def known_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        return self.known & set(event_ids)

    async def keep_chat(self, item_id: int, text: str, chat: dict[str, Any]) -> OutboxItem | None:
        row = self.rows.get(item_id)
        if row is not None and row.chat is None and row.text == text and not row.deleted:
            row = self._update(item_id, chat=chat) or row  # a finished row keeps nothing
        return row if row is not None and row.text == text and row.chat is not None else None

    async def drop_chat(self, item_id: int) -> None:
        self.rows[item_id] = replace(self.rows[item_id], chat=None)

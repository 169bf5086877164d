"""The poller's pass (bridge/inbound.py) over an in-memory store, in virtual time: which accounts
it reads in full, and its loops' start and stop."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from bridge.budget import Budget
from bridge.errors import RateFacts, XTransient
from bridge.inbound import Inbound, InboundConfig, InboundWorkStore
from bridge.model import Account, EventPage, InboundItem, ReadGap, TokenSet
from bridge.ports import AccountStore, SlackClient, XClient, XOAuth
from bridge.tokens import TokenManager
from tests.virtual_clock import VirtualClock


class Accounts:
    """The store as one poll pass sees it: accounts by id (each read in full counted), no cursor
    yet, nothing bridged, no history wanted; the budget's rows too."""

    def __init__(self, accounts: list[Account]) -> None:
        self.accounts = {a.id: a for a in accounts}
        self.read_in_full: list[int] = []
        self.next_reads: dict[int, float] = {}
        self.budgets: dict[str, tuple[str, int, int, float]] = {}

    async def account_ids_to_read(self) -> list[int]:
        return sorted(self.accounts)

    async def list_accounts(self) -> list[Account]:
        raise AssertionError("a pass must not read every account (each decrypts its tokens)")

    async def accounts_by_id(self, ids: list[int]) -> list[Account]:
        self.read_in_full.extend(ids)
        return [self.accounts[i] for i in ids if i in self.accounts]

    async def accounts_with_groups(self) -> set[int]:
        return set()

    async def pending_backfills(self) -> list[tuple[int, str, float]]:
        return []

    async def get_cursor(self, account_id: int) -> str | None:
        return None

    async def read_gap(self, account_id: int) -> ReadGap | None:
        return None

    async def first_bridged_at(self, account_id: int) -> float | None:
        return None

    async def set_next_read(self, account_id: int, at: float, *, pushed: bool = False) -> None:
        self.next_reads[account_id] = at

    async def inbound_heads(
        self, after: tuple[str, str] | None = None, limit: int | None = None
    ) -> list[InboundItem]:
        return []

    async def load_budgets(self) -> list[dict[str, Any]]:
        return []

    async def save_budgets(self, windows: Any) -> None:
        for window in windows:
            self.budgets[window[0]] = window


class FailingX:
    """X answering 503 to every read, each read's token kept."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def dm_events(self, token: str, **_: Any) -> tuple[EventPage, RateFacts]:
        self.tokens.append(token)
        raise XTransient("X answered 503")


def _account(account_id: int, *, needs_reconnect: bool = False) -> Account:
    tokens = TokenSet(f"token-{account_id}", None, None)
    return Account(account_id, "T1", f"U{account_id}", str(1000 + account_id), "me", tokens, needs_reconnect)


def _inbound(store: Accounts, x: FailingX, clock: VirtualClock, config: InboundConfig) -> Inbound:
    tokens = TokenManager(
        cast(AccountStore, store), cast(XOAuth, None), clock, on_revoked=lambda *_: asyncio.sleep(0)
    )
    budget = Budget(cast(Any, store), user_15m=15, user_24h=1440, app_24h=1440)
    return Inbound(
        cast(InboundWorkStore, store),
        cast(XClient, x),
        cast(SlackClient, None),
        tokens,
        budget,
        clock,
        config,
    )


async def test_a_pass_reads_in_full_only_the_accounts_it_reads_from_x() -> None:
    """Listing the accounts decrypted every token on every pass: only the due ones are read now
    (and one whose tokens no key opens, which shows as needing reconnection, is not asked of X)."""
    clock = VirtualClock()
    store = Accounts([_account(1), _account(2), _account(3), _account(4, needs_reconnect=True)])
    x = FailingX()
    config = InboundConfig(min_interval=5.0)
    inbound = _inbound(store, x, clock, config)
    inbound._next_poll[2] = inbound._next_poll[3] = clock.now() + 100.0

    wait = await inbound._poll_due()

    assert store.read_in_full == [1, 4]
    assert x.tokens == ["token-1"]
    retry = clock.now() + config.min_interval * 4  # X failing: read again soon
    assert store.next_reads == {1: retry}
    assert wait == retry - clock.now()


async def test_a_stop_before_inbound_has_started_still_ends_it() -> None:
    """A bridge stopped right after it started leading: ``run``'s task had not begun when
    ``stop`` came. Resuming is the worker's, when it leads, never ``run``'s."""
    clock = VirtualClock()
    store = Accounts([_account(1)])
    inbound = _inbound(store, FailingX(), clock, InboundConfig())
    inbound.resume()
    running = asyncio.create_task(inbound.run())
    await inbound.stop(grace=1.0)
    await clock.advance(60)
    assert running.done() and running.exception() is None
    assert store.read_in_full == []  # no pass ran


async def test_inbound_runs_again_once_resumed_after_a_stop() -> None:
    """An instance that leads again (PostgreSQL): the worker resumes it before its next term."""
    clock = VirtualClock()
    store = Accounts([_account(1)])
    inbound = _inbound(store, FailingX(), clock, InboundConfig())
    inbound.resume()
    first = asyncio.create_task(inbound.run())
    await clock.advance(1)
    await inbound.stop(grace=1.0)
    await clock.advance(1)
    assert first.done()
    store.read_in_full.clear()
    inbound.resume()
    again = asyncio.create_task(inbound.run())
    await clock.advance(30)  # past the read X failed
    assert store.read_in_full == [1] and not again.done()  # polling again
    await inbound.stop(grace=1.0)
    await clock.advance(1)
    assert again.done()

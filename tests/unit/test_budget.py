"""The DM budget's starting figures, and how X's headers move them (bridge/budget.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.sqlite import SqliteStore
from bridge.budget import Budget
from bridge.errors import RateFacts, XAuthExpired, XRateLimited, XRefused, XTransient
from bridge.settings import Settings
from tests.memory_accounts import MemoryBudgets

NOW = 1_000_000.0
ACCOUNT = 1


def headers(limit: int, remaining: int, *, day: tuple[int, int] | None = None) -> RateFacts:
    """What a DM POST answer says: the 15-minute window and, optionally, the 24-hour caps."""
    facts = RateFacts(window_limit=limit, window_remaining=remaining, window_reset=NOW + 900)
    if day is not None:
        facts.user_day_limit, facts.user_day_remaining, facts.user_day_reset = day[0], day[1], NOW + 86400
        facts.app_day_limit, facts.app_day_remaining, facts.app_day_reset = day[0], day[1], NOW + 86400
    return facts


def limits(budget: Budget) -> dict[str, Any]:
    snap = budget.snapshot(ACCOUNT, NOW)
    return {k: (v["limit"], v["remaining"]) for k, v in snap.items()}


def env(**extra: str) -> dict[str, str]:
    return {
        "SLACK_SIGNING_SECRET": "s",
        "SLACK_BOT_TOKEN": "xoxb-1",
        "X_CLIENT_ID": "c",
        "BRIDGE_ENCRYPTION_KEY": generate_key(),
        **extra,
    }


def budget_from(settings: Settings) -> Budget:
    # Stores are only touched by load/consume/observe; count/correct are pure.
    return Budget(
        None,  # type: ignore[arg-type]
        user_15m=settings.x_user_limit_15m,
        user_24h=settings.x_user_limit_24h,
        app_24h=settings.x_app_limit_24h,
    )


def test_unset_limits_start_at_what_x_documents_today() -> None:
    settings = Settings.from_env(env())
    assert (settings.x_user_limit_15m, settings.x_user_limit_24h, settings.x_app_limit_24h) == (None,) * 3
    assert limits(budget_from(settings)) == {"15m": (15, 15), "24h": (1440, 1440), "app_24h": (1440, 1440)}


def test_without_a_ceiling_headers_raise_the_limit() -> None:
    budget = budget_from(Settings.from_env(env()))
    budget.count(ACCOUNT, NOW)
    budget.correct(ACCOUNT, headers(200, 199, day=(15000, 14999)))
    assert limits(budget) == {"15m": (200, 199), "24h": (15000, 14999), "app_24h": (15000, 14999)}


def test_without_a_ceiling_headers_lower_the_limit() -> None:
    budget = budget_from(Settings.from_env(env()))
    budget.count(ACCOUNT, NOW)
    budget.correct(ACCOUNT, headers(5, 4, day=(500, 499)))
    assert limits(budget) == {"15m": (5, 4), "24h": (500, 499), "app_24h": (500, 499)}


def test_a_limit_set_in_the_environment_is_a_ceiling_headers_only_lower() -> None:
    settings = Settings.from_env(env(X_USER_LIMIT_15M="50", X_USER_LIMIT_24H="300", X_APP_LIMIT_24H="400"))
    assert (settings.x_user_limit_15m, settings.x_user_limit_24h, settings.x_app_limit_24h) == (50, 300, 400)
    budget = budget_from(settings)
    assert limits(budget) == {"15m": (50, 50), "24h": (300, 300), "app_24h": (400, 400)}
    budget.count(ACCOUNT, NOW)
    budget.correct(ACCOUNT, headers(200, 199, day=(15000, 14999)))  # X would allow more: not taken
    assert limits(budget) == {"15m": (50, 49), "24h": (300, 299), "app_24h": (400, 399)}
    budget.count(ACCOUNT, NOW)
    budget.correct(ACCOUNT, headers(10, 8, day=(250, 248)))  # X allows less: obeyed
    assert limits(budget) == {"15m": (10, 8), "24h": (250, 248), "app_24h": (250, 248)}


async def test_a_restart_keeps_what_headers_taught_and_still_caps_at_the_ceiling(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "b.db"), TokenCipher([generate_key()]))
    await store.open()
    try:
        learned = Budget(store)
        await learned.consume(ACCOUNT, NOW)
        await learned.observe(ACCOUNT, headers(200, 199))
        unset = Budget(store)
        await unset.load(NOW)
        assert unset.snapshot(ACCOUNT, NOW)["15m"]["limit"] == 200
        capped = Budget(store, user_15m=50)
        await capped.load(NOW)
        assert capped.snapshot(ACCOUNT, NOW)["15m"] == {"limit": 50, "remaining": 50, "reset_at": NOW + 900}
    finally:
        await store.close()


async def test_a_read_429_naming_no_reset_pauses_reads_for_the_fallback_not_the_window(
    tmp_path: Path,
) -> None:
    # Found by the fault model (tests/process/test_fault_model.py seeds 11 and 37 after inbound
    # landed): a read answered 429 with no usable reset held every read of the account, read-backs
    # before a resend included, until the end of the bridge's own 15-minute guess.
    store = SqliteStore(str(tmp_path / "b.db"), TokenCipher([generate_key()]))
    await store.open()
    try:
        budget = Budget(store, fallback_pause=2.0)

        async def limited() -> tuple[None, RateFacts]:
            raise XRateLimited("429", reset_at=NOW + 2.0, facts=RateFacts())

        with pytest.raises(XRateLimited):
            await budget.read(ACCOUNT, lambda: NOW, limited)
        assert budget.read_blocked_until(ACCOUNT, NOW) == NOW + 2.0
        assert budget.read_blocked_until(ACCOUNT, NOW + 2.0) is None
    finally:
        await store.close()


async def _reads(budget: Budget, answer: Exception, times: int) -> None:
    async def refused() -> tuple[None, RateFacts]:
        raise answer

    for _ in range(times):
        with pytest.raises(type(answer)):
            await budget.read(ACCOUNT, lambda: NOW, refused)


async def test_reads_x_refused_without_counting_them_leave_the_read_window_as_it_was(
    tmp_path: Path,
) -> None:
    # Found on PostgreSQL (issue 14): X refused every read (403, no rate headers) for a few seconds;
    # counted, they spent the window, whose end the bridge could only guess (15 minutes), and
    # the read-back that would have found the DM once X let it read waited all that time.
    store = SqliteStore(str(tmp_path / "b.db"), TokenCipher([generate_key()]))
    await store.open()
    try:
        budget = Budget(store)
        await _reads(budget, XRefused("403", status=403), 20)
        await _reads(budget, XAuthExpired("401", status=401), 20)
        assert budget.reads_left(ACCOUNT, NOW) == (15, 15, None)
        assert budget.read_blocked_until(ACCOUNT, NOW) is None
        assert budget.reads_made == 40  # they went to X all the same
        reloaded = Budget(store)
        await reloaded.load(NOW)
        assert reloaded.reads_left(ACCOUNT, NOW) == (15, 15, None)
    finally:
        await store.close()


async def test_a_refusal_x_counted_or_a_read_x_may_have_served_is_counted(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "b.db"), TokenCipher([generate_key()]))
    await store.open()
    try:
        budget = Budget(store)
        counted = RateFacts(window_limit=15, window_remaining=9, window_reset=NOW + 60)
        await _reads(budget, XRefused("403", status=403, facts=counted), 1)
        assert budget.reads_left(ACCOUNT, NOW) == (9, 15, NOW + 60)  # X's headers say it counted
        await _reads(budget, XTransient("503", status=503), 2)  # X may have served them
        assert budget.reads_left(ACCOUNT, NOW) == (7, 15, NOW + 60)
    finally:
        await store.close()


async def test_a_read_429_naming_a_reset_pauses_reads_until_then_not_the_end_headers_gave_earlier(
    tmp_path: Path,
) -> None:
    # Found by the fault model (tests/process/test_fault_model.py, seed 23 under load): a read
    # answered 429 "reset in 3 s" while the window's end, from an earlier read's headers, was 15
    # minutes ahead; the later of the two held every read-back before a resend for 15 minutes.
    store = SqliteStore(str(tmp_path / "b.db"), TokenCipher([generate_key()]))
    await store.open()
    try:
        budget = Budget(store)

        async def fine() -> tuple[None, RateFacts]:
            return None, RateFacts(window_limit=15, window_remaining=14, window_reset=NOW + 900)

        async def limited() -> tuple[None, RateFacts]:
            facts = RateFacts(window_limit=15, window_remaining=0, window_reset=NOW + 3)
            raise XRateLimited("429", reset_at=NOW + 3, facts=facts)

        await budget.read(ACCOUNT, lambda: NOW, fine)
        with pytest.raises(XRateLimited):
            await budget.read(ACCOUNT, lambda: NOW, limited)
        assert budget.read_blocked_until(ACCOUNT, NOW) == NOW + 3
        assert budget.read_blocked_until(ACCOUNT, NOW + 3) is None
    finally:
        await store.close()


async def test_a_read_on_another_instance_spends_from_what_the_leader_saved(tmp_path: Path) -> None:
    """`/xdm link` checks a conversation with one read, on whichever instance took the command: a
    standby's windows were loaded at its start, so it first takes the leader's saved spending."""
    store = SqliteStore(str(tmp_path / "b.db"), TokenCipher([generate_key()]))
    await store.open()
    try:
        standby, leader = Budget(store, reads_15m=15), Budget(store, reads_15m=15)
        await standby.load(NOW)

        async def ok() -> tuple[None, RateFacts]:
            return None, RateFacts()

        for _ in range(10):
            await leader.read(ACCOUNT, lambda: NOW, ok)
        assert standby.reads_left(ACCOUNT, NOW)[0] == 15  # its own view knows nothing of them
        await standby.adopt_stored_reads(ACCOUNT, NOW)
        await standby.read(ACCOUNT, lambda: NOW, ok)
        assert await standby.stored_reads_left(ACCOUNT, NOW) == (4, 15, NOW + 900)
    finally:
        await store.close()


async def test_a_window_x_said_is_spent_still_holds_sends_after_a_restart() -> None:
    """Over the in-memory budgets role (tests/memory_accounts.py), as the bridge's own restart
    would over the store: what X's headers said is saved, and the next process waits for it."""
    store = MemoryBudgets()
    budget = Budget(store)
    await budget.consume(ACCOUNT, NOW)
    await budget.observe(ACCOUNT, headers(15, 0))
    assert budget.blocked_until(ACCOUNT, NOW) == NOW + 900
    restarted = Budget(store)
    await restarted.load(NOW + 1)
    assert restarted.blocked_until(ACCOUNT, NOW + 1) == NOW + 900
    assert limits(restarted)["15m"] == (15, 0)
    assert restarted.blocked_until(ACCOUNT, NOW + 900) is None  # the window X named is over

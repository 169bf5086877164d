"""ConnectService's answer to a connect question (bridge/connect.py), over the in-memory store
(tests/memory_store.py): who may bind a pending connection, once, and what binding
another X account does to the channels of the previous one."""

from __future__ import annotations

from typing import Any

from bridge.connect import ConnectAnswer, ConnectService
from bridge.model import ChannelMapping, MappingKind, PendingConnection, TokenSet, XUser
from tests.memory_store import MemoryStore
from tests.virtual_clock import VirtualClock

ME, OTHER = XUser("1000", "me"), XUser("3000", "other")


class Slack:
    """What the bridge said in Slack: answers to clicks, and channel announcements."""

    def __init__(self) -> None:
        self.responses: list[tuple[str, str]] = []
        self.posts: list[tuple[str, str]] = []

    async def respond(self, response_url: str, text: str, *, replace: bool = False, **_: Any) -> None:
        self.responses.append((response_url, text))

    async def post_message(self, team_id: str, channel_id: str, text: str) -> str:
        self.posts.append((channel_id, text))
        return f"{len(self.posts)}.000"


class OAuth:
    def __init__(self) -> None:
        self.revoked: list[str] = []

    async def revoke(self, token: str) -> None:
        self.revoked.append(token)


async def connected_world() -> tuple[MemoryStore, Slack, OAuth, ConnectService, VirtualClock]:
    """U1 bridges C1 (a conversation of @me's) and C2 (a 1-to-1 by person), and has authorized
    @other in a browser: the question waits for their click."""
    store, slack, oauth, clock = MemoryStore(), Slack(), OAuth(), VirtualClock()
    account = await store.save_account("T1", "U1", ME, TokenSet("old-access", "old-refresh", None))
    await store.create_mapping(
        ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "1000-2001", None, "U1", 1.0)
    )
    await store.create_mapping(
        ChannelMapping("T1", "C2", MappingKind.DM, account.id, None, "2001", "U1", 1.0)
    )
    pending = PendingConnection(
        "p1",
        "T1",
        "U1",
        "C1",
        "https://r/1",
        OTHER,
        TokenSet("new-access", "new-refresh", None),
        clock.t + 600,
    )
    await store.save_pending_connection(pending)
    service = ConnectService(
        store=store,
        oauth=oauth,  # type: ignore[arg-type]
        x=None,  # type: ignore[arg-type]  # answering asks nothing of X's API
        slack=slack,  # type: ignore[arg-type]
        clock=clock,
    )
    return store, slack, oauth, service, clock


async def test_only_the_slack_user_asked_binds_the_connection_and_only_once() -> None:
    store, slack, _, service, _ = await connected_world()
    await service.answer(ConnectAnswer("p1", "T1", "U2", True, "https://r/2"))
    assert slack.responses[-1][0] == "https://r/2" and "only they can connect" in slack.responses[-1][1]
    assert (await store.account_for_user("T1", "U1")).x_user_id == ME.id  # type: ignore[union-attr]

    await service.answer(ConnectAnswer("p1", "T1", "U1", True, "https://r/1"))
    assert (await store.account_for_user("T1", "U1")).x_user_id == OTHER.id  # type: ignore[union-attr]
    await service.answer(ConnectAnswer("p1", "T1", "U1", True, "https://r/1"))  # replayed
    assert "already answered or has expired" in slack.responses[-1][1]


async def test_binding_another_x_account_holds_the_previous_ones_channels_and_gives_back_its_grant() -> None:
    store, slack, oauth, service, _ = await connected_world()
    await service.answer(ConnectAnswer("p1", "T1", "U1", True, "https://r/1"))
    account = await store.account_for_user("T1", "U1")
    assert account is not None and account.tokens == TokenSet("new-access", "new-refresh", None)
    assert oauth.revoked == ["old-refresh", "old-access"]  # the previous grant, refresh token first
    held = await store.get_mapping("T1", "C1")
    assert held is not None and (held.held_for, held.paused_by) == (ME.id, "switch")
    assert (await store.get_mapping("T1", "C2")).paused_at is None  # type: ignore[union-attr]
    [(url, text)] = slack.responses
    assert url == "https://r/1" and "Connected X account @other" in text and "<#C1> stay paused" in text
    assert [channel for channel, _ in slack.posts] == ["C1"]  # told why it stays paused

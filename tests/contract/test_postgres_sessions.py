"""What every PostgreSQL session of the bridge asks of the server, so a dead peer cannot hold locks."""

from __future__ import annotations

from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.postgres import Conn, PostgresStore, connect
from bridge.model import ChannelMapping, IncomingMessage, MappingKind, RenderedPart, Sent, TokenSet, XUser

EXPECTED = {
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "60000",  # shown in ms
    "idle_in_transaction_session_timeout": "1min",
}


async def settings_of(conn: Conn) -> dict[str, str]:
    return {name: str(await conn.fetchval(f"SHOW {name}")) for name in EXPECTED}


async def test_pool_and_leader_connections_let_the_server_drop_a_silent_client(pg_url: str) -> None:
    store = PostgresStore(pg_url, TokenCipher([generate_key()]))
    await store.open()
    try:
        async with store.pool.acquire() as conn:
            assert await settings_of(conn) == EXPECTED
    finally:
        await store.close()
    own = await connect(pg_url)  # the leader's, and the CLI's
    try:
        assert await settings_of(own) == EXPECTED
    finally:
        await own.close()


async def test_a_poolers_discard_all_leaves_the_hot_path_working(pg_url: str) -> None:
    """Poolers (PgBouncer's server_reset_query) run DISCARD ALL between clients. The hot path's
    functions live in the database (migration 0024), not in a connection's temporary schema, so a
    discarded connection still accepts and records sends."""
    store = PostgresStore(pg_url, TokenCipher([generate_key()]), pool_size=1)
    await store.open()
    try:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        await store.create_mapping(
            ChannelMapping("T1", "C1", MappingKind.LINK, account.id, "1000-2001", None, "U1", 0.0)
        )
        async with store.pool.acquire() as conn:  # the pool's only connection
            await conn.execute("DISCARD ALL")
        first = await store.accept_if_mapped(
            IncomingMessage("T1", "C1", "1.000", "U1", "m1", event_id="E1"), 1.0
        )
        assert first is not None and first.new and first.head is not None
        assert await store.accept_if_mapped(
            IncomingMessage("T1", "C1", "2.000", "U1", "m2", event_id="E2"), 2.0
        )
        async with store.pool.acquire() as conn:
            await conn.execute("DISCARD ALL")
        assert await store.mark_sending(
            first.head.id, 3.0, parts=[RenderedPart("Me: m1")], source=first.head.source
        )
        following = await store.mark_sent(first.head.id, Sent("1000-2001", "9001"), 4.0)
        assert following is not None and following.slack_ts == "2.000"
    finally:
        await store.close()

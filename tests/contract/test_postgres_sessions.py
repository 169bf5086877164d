"""What every PostgreSQL session of the bridge asks of the server, so a dead peer cannot hold locks."""

from __future__ import annotations

from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.postgres import Conn, PostgresStore, connect

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

"""The SQLite store's outbox bookkeeping, checked against plain SQL over the same rows."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from adapters.crypto import TokenCipher, generate_key
from adapters.sqlite_store import SqliteStore
from bridge.model import IncomingMessage, Mapping, MappingKind, OutboxState, Sent, TokenSet, XUser

PENDING = ("queued", "sending", "waiting")


def naive_heads(db_path: Path) -> set[int]:
    """The oldest unfinished row of each channel, by a full scan (the definition)."""
    db = sqlite3.connect(db_path)
    rows = db.execute(
        "SELECT id, team_id, channel_id, seq, part FROM outbox WHERE state IN (?, ?, ?)", PENDING
    ).fetchall()
    heads: dict[tuple[str, str], tuple[int, int, int]] = {}
    for row_id, team, channel, seq, part in rows:
        key = (team, channel)
        if key not in heads or (seq, part) < heads[key][1:]:
            heads[key] = (row_id, seq, part)
    return {v[0] for v in heads.values()}


async def test_heads_match_a_full_scan_through_random_transitions(tmp_path: Path) -> None:
    db_path = tmp_path / "store.db"
    store = SqliteStore(str(db_path), TokenCipher([generate_key()]))
    await store.open()
    try:
        account = await store.save_account("T1", "U1", XUser("1000", "me"), TokenSet("a", "r", None))
        channels = [f"C{i}" for i in range(6)]
        mappings = {}
        for channel in channels:
            mapping = Mapping("T1", channel, MappingKind.LINK, account.id, "1000-2001", None, "U1", 0.0)
            await store.create_mapping(mapping)
            mappings[channel] = mapping
        rng = random.Random(42)
        ts = 0
        for step in range(400):
            action = rng.random()
            heads = await store.outbox_heads()
            assert {h.id for h in heads} == naive_heads(db_path), f"step {step}"
            if action < 0.45 or not heads:
                ts += 1
                channel = rng.choice(channels)
                message = IncomingMessage("T1", channel, f"{ts}.000", "U1", f"m{ts}", event_id=f"E{ts}")
                assert await store.accept(message, mappings[channel], float(ts))
                continue
            head = rng.choice(heads)
            if action < 0.65:
                await store.mark_sent(head.id, Sent("1000-2001", str(10**15 + step)), float(ts))
            elif action < 0.75:
                await store.mark_failed(head.id, "refused")
            elif action < 0.85:
                await store.reschedule(head.id, OutboxState.WAITING, 0.0, "budget")
            elif action < 0.92:
                await store.accept_delete("T1", head.channel_id, head.slack_ts, f"{ts}.999", float(ts))
            else:
                # What `xdm-bridge outbox retry` does to a failed row, straight in SQL.
                with sqlite3.connect(db_path) as db:
                    db.execute("UPDATE outbox SET state = 'queued' WHERE state = 'failed'")
        final = sqlite3.connect(db_path)
        pending = {
            r
            for r in final.execute(
                "SELECT DISTINCT team_id, channel_id FROM outbox WHERE state IN (?, ?, ?)", PENDING
            )
        }
        assert set(final.execute("SELECT team_id, channel_id FROM pending_channels")) == pending
    finally:
        await store.close()


async def test_migration_backfills_pending_channels(tmp_path: Path) -> None:
    """A database written before 0003 gets its pending channels when it migrates."""
    from sqlite_utils import Database

    from migrations import migrations

    db_path = tmp_path / "old.db"
    old = Database(sqlite3.connect(db_path))
    migrations.apply(old, stop_before="0003_pending_channels")
    old.execute(
        "INSERT INTO accounts (id, team_id, slack_user_id, x_user_id, x_username, access_token) "
        "VALUES (1, 'T1', 'U1', '1', 'me', 'x')"
    )
    for i, state in enumerate(("queued", "sent", "waiting")):
        old.execute(
            "INSERT INTO outbox (seq, part, team_id, channel_id, slack_ts, account_id, target_conversation, "
            "state, created_at) VALUES (?, 0, 'T1', ?, ?, 1, '1-2', ?, 0)",
            [i + 1, f"C{i}", f"{i}.0", state],
        )
    old.close()
    store = SqliteStore(str(db_path), TokenCipher([generate_key()]))
    await store.open()
    try:
        heads = await store.outbox_heads()
        assert sorted(h.channel_id for h in heads) == ["C0", "C2"]
    finally:
        await store.close()

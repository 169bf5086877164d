"""`xdm-bridge mappings | accounts | outbox`: against a database filled through the real store."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.sqlite import SqliteStore
from bridge.model import (
    ChannelMapping,
    IncomingMessage,
    MappingKind,
    OutboxState,
    RenderedPart,
    Sent,
    TokenSet,
    XUser,
)
from tests.harness import ALICE, FAST, ME, TEAM, running_bridge
from tests.ops.support import run, run_beside
from tests.outbox import accepted

ACCESS, REFRESH = "access-token-plaintext", "refresh-token-plaintext"
SCOPES = "dm.read dm.write tweet.read users.read offline.access media.write"


@dataclass
class Rows:
    sent: int
    failed: int
    waiting: int
    queued: int
    sending: int


async def fill(db_path: Path) -> Rows:
    """One account, two mappings, and an outbox row in each state."""
    store = SqliteStore(str(db_path), TokenCipher([generate_key()]))
    await store.open()
    try:
        now = time.time()
        account = await store.save_account(
            TEAM, "U100", XUser(ME, "bridge_owner"), TokenSet(ACCESS, REFRESH, now + 3600, SCOPES)
        )
        link = ChannelMapping(TEAM, "C100", MappingKind.LINK, account.id, "1000-2001", None, "U100", now)
        dm = ChannelMapping(TEAM, "C200", MappingKind.DM, account.id, None, ALICE, "U100", now)
        assert await store.create_mapping(link) and await store.create_mapping(dm)
        for i in range(5):
            message = IncomingMessage(TEAM, "C100", f"1700000000.00000{i}", "U100", f"message {i}")
            assert await accepted(store, message, now - 600 + i)
        ids = [item.id for item in await store.list_outbox([OutboxState.QUEUED])]
        await store.mark_sent(ids[0], Sent("1000-2001", "9001"), now)
        await store.mark_failed(
            ids[1], "X refused it (HTTP 403): the recipient only accepts DMs from verified"
        )
        await store.reschedule(ids[2], OutboxState.WAITING, 1e15, "waiting for <@U100> to reconnect")
        # A claim renders an unrendered row in the same write (an edit may have reset its text).
        [last] = [item for item in await store.list_outbox([OutboxState.QUEUED]) if item.id == ids[4]]
        await store.mark_sending(ids[4], now, parts=[RenderedPart("Ada: message 4")], source=last.source)
        return Rows(sent=ids[0], failed=ids[1], waiting=ids[2], queued=ids[3], sending=ids[4])
    finally:
        await store.close()


def states(db_path: Path) -> dict[int, tuple[str, str | None, float]]:
    with sqlite3.connect(db_path) as db:
        return {
            r[0]: (r[1], r[2], r[3])
            for r in db.execute("SELECT id, state, last_error, next_attempt_at FROM outbox")
        }


@pytest.fixture
def db_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "bridge.db"
    monkeypatch.setenv("DATABASE_PATH", str(path))
    return path


async def test_accounts_and_mappings_list_rows_and_never_tokens(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await fill(db_path)
    ciphertexts = (
        sqlite3.connect(db_path).execute("SELECT access_token, refresh_token FROM accounts").fetchone()
    )

    code, text = await run_beside(capsys, "accounts")
    assert code == 0
    assert "@bridge_owner" in text and "U100" in text and "ok" in text
    code, raw = await run_beside(capsys, "accounts", "--json")
    assert code == 0
    [account] = json.loads(raw)
    assert account["x_username"] == "bridge_owner" and account["mappings"] == 2
    assert account["has_refresh_token"] is True and account["needs_reconnect"] is False
    assert "dm.write" in account["scopes"]

    code, text = await run_beside(capsys, "mappings")
    assert code == 0
    assert "C100" in text and "1000-2001" in text and "with X user 2001" in text
    code, raw = await run_beside(capsys, "mappings", "--json")
    rows = json.loads(raw)
    assert [(r["channel_id"], r["kind"], r["x_username"]) for r in rows] == [
        ("C100", "link", "bridge_owner"),
        ("C200", "dm", "bridge_owner"),
    ]

    everything = (
        text
        + raw
        + (await run_beside(capsys, "accounts"))[1]
        + (await run_beside(capsys, "accounts", "--json"))[1]
    )
    for secret in (ACCESS, REFRESH, *ciphertexts):
        assert secret not in everything


async def test_outbox_lists_waiting_and_failed_rows(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = await fill(db_path)
    code, raw = await run_beside(capsys, "outbox", "--json")
    assert code == 0
    listed = json.loads(raw)
    by_id = {item["id"]: item for item in listed["items"]}
    assert set(by_id) == {rows.failed, rows.waiting, rows.queued, rows.sending}  # not the sent one
    failed = by_id[rows.failed]
    assert failed["state"] == "failed" and "verified" in failed["last_error"]
    assert failed["channel_id"] == "C100" and failed["slack_ts"] == "1700000000.000001"
    assert 590 <= failed["age_seconds"] <= 700
    assert by_id[rows.waiting]["waiting_for_reconnect"] is True
    assert by_id[rows.sending]["attempts"] == 1
    assert listed["summary"]["counts"] == {"sent": 1, "failed": 1, "waiting": 1, "queued": 1, "sending": 1}

    code, text = await run_beside(capsys, "outbox")
    assert code == 0
    assert "1 failed" in text and "on reconnect" in text and " 9m " in text
    line = next(line for line in text.splitlines() if line.startswith(f"{rows.failed} "))
    assert "failed" in line and "1700000000.000001" in line and "verified" in line

    code, raw = await run_beside(capsys, "outbox", "--state", "failed", "--json")
    assert [i["id"] for i in json.loads(raw)["items"]] == [rows.failed]


async def test_retry_makes_rows_due_now_and_keeps_sending_rows_for_reconciliation(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = await fill(db_path)
    before = time.time()
    code, text = await run_beside(
        capsys, "outbox", "retry", str(rows.failed), str(rows.waiting), str(rows.sending)
    )
    assert code == 0, text
    assert "3 row(s) queued for another attempt" in text
    after = states(db_path)
    for item in (rows.failed, rows.waiting):
        assert after[item][0] == "queued" and before - 1 <= after[item][2] <= time.time()
    # A row that may already be on X stays "sending": the worker checks X before resending.
    assert after[rows.sending][0] == "sending" and after[rows.sending][2] >= before - 1

    code, raw = await run_beside(capsys, "outbox", "retry", str(rows.sent), "999", "--json")
    assert code == 1
    result = json.loads(raw)
    assert result["retried"] == []
    reasons = {s["id"]: s["reason"] for s in result["skipped"]}
    assert "sent" in reasons[rows.sent] and "no such" in reasons[999]
    assert states(db_path)[rows.sent][0] == "sent"


async def test_retry_all_failed_and_drop(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = await fill(db_path)
    code, text = await run_beside(capsys, "outbox", "drop", str(rows.queued), str(rows.waiting))
    assert code == 0, text
    after = states(db_path)
    assert after[rows.queued][:2] == ("failed", "dropped by operator")
    assert after[rows.waiting][:2] == ("failed", "dropped by operator")

    code, raw = await run_beside(capsys, "outbox", "drop", str(rows.sent), "--json")
    assert code == 1
    assert json.loads(raw)["dropped"] == [] and states(db_path)[rows.sent][0] == "sent"

    code, raw = await run_beside(capsys, "outbox", "retry", "--all-failed", "--json")
    assert code == 0
    assert sorted(json.loads(raw)["retried"]) == sorted([rows.failed, rows.queued, rows.waiting])
    assert [s for s in states(db_path).values() if s[0] == "failed"] == []

    code, text = await run_beside(capsys, "outbox", "retry", "--all-failed")
    assert code == 0 and "nothing to do" in text


def test_usage_and_missing_database_exit_codes(
    db_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run(capsys, "outbox")
    assert code == 1 and "no database at" in text and "DATABASE_PATH" in text
    assert not db_path.exists()  # a typo in DATABASE_PATH must not create an empty bridge
    code, text = run(capsys, "outbox", "retry")
    assert code == 2 and "required" in text
    code, text = run(capsys, "outbox", "retry", "5", "--all-failed")
    assert code == 2


async def test_retry_is_picked_up_by_a_running_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The server notices an operator's change at its next rescan (the harness's is 600 s: a
    # lost wake-up must not hide behind it; the command, its own process, wakes nothing).
    async with running_bridge(tmp_path, delivery=replace(FAST, rescan_every=0.5)) as bridge:
        await bridge.connect()
        await bridge.map_link("1000-2001")
        bridge.x.inject("403")
        _, ts = await bridge.post("second chance")
        await bridge.wait_reaction("C100", ts, "warning")
        assert bridge.texts() == []

        monkeypatch.setenv("DATABASE_PATH", str(bridge.db_path))
        code, raw = await run_beside(capsys, "outbox", "--state", "failed", "--json")
        [item] = json.loads(raw)["items"]
        assert code == 0 and item["slack_ts"] == ts
        code, _ = await run_beside(capsys, "outbox", "retry", str(item["id"]))
        assert code == 0
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert bridge.texts() == ["Ada: second chance"]
        code, raw = await run_beside(capsys, "outbox", "--json")
        assert json.loads(raw)["items"] == []


def test_a_file_that_is_not_a_database_is_an_error_not_a_traceback(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_path.write_text("not sqlite at all " * 100)
    code, text = run(capsys, "accounts")
    assert code == 1 and "not a database" in text and "Traceback" not in text

"""Delivery that no fault can stall or double (issue 11, items 1, 2, 3, 5, 8, 9).

Each test drives the whole bridge between the simulators into one of the holes a hostile
tester found, and checks the promise: an accepted message reaches X exactly once, in order,
or its author is told why; nothing waits silently forever; one bad row stalls nobody else.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from adapters.sandbox.fake_x import FakeX
from adapters.store.crypto import generate_key
from tests.harness import ALICE, ME, Bridge, linked, running_bridge, wait_until

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99=\x1d\x00\x00\x00\x00IEND\xaeB`\x82"
)


def on_postgres(bridge: Bridge) -> bool:
    return bridge.settings.database_url is not None


async def states(bridge: Bridge) -> list[tuple[str, str, str]]:
    found = await bridge.sql("SELECT slack_ts, kind, state FROM outbox ORDER BY id")
    return [(r[0], r[1], r[2]) for r in found]


async def edit(bridge: Bridge, ts: str, old: str, new: str, channel: str = "C100") -> None:
    edit_ts = bridge.sender.new_ts()
    event = {
        "type": "message",
        "subtype": "message_changed",
        "channel": channel,
        "hidden": True,
        "ts": edit_ts,
        "event_ts": edit_ts,
        "message": {"type": "message", "user": "U100", "text": new, "ts": ts},
        "previous_message": {"type": "message", "user": "U100", "text": old, "ts": ts},
    }
    assert (await bridge.sender.event(event)).status == 200


async def delete(bridge: Bridge, ts: str, text: str, channel: str = "C100") -> None:
    event = {
        "type": "message",
        "subtype": "message_deleted",
        "channel": channel,
        "hidden": True,
        "deleted_ts": ts,
        "ts": bridge.sender.new_ts(),
        "previous_message": {"type": "message", "user": "U100", "text": text, "ts": ts},
    }
    assert (await bridge.sender.event(event)).status == 200


def requests_to(bridge: Bridge, fragment: str, method: str | None = None) -> int:
    """Requests from delivery (inbound's reads of X are left out: they are not delivery's)."""
    return sum(
        1
        for r in bridge.x.all_requests
        if fragment in r.path
        and (method is None or r.method == method)
        and r.path != "/2/dm_events"
        and r.query.get("event_types") != "MessageCreate,ParticipantsJoin,ParticipantsLeave"
    )


async def first_post_timed_out(bridge: Bridge) -> None:
    """Wait until fake X holds the first DM POST (a ``timeout`` fault): the row is ``sending``."""
    await wait_until(lambda: any(k == "timeout" for k, _ in bridge.x.faults_served), 5.0, "the held POST")


# -- 1. one bad row stops nobody else -----------------------------------------------------------


# PostgreSQL too: its typed columns take other nonsense than SQLite (a NaN time).
@pytest.mark.usefixtures("on_both_stores")
async def test_corrupt_row_is_failed_with_its_reason_and_every_other_row_flows(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge, "1000-2001", "C100")
        await bridge.map_link("1000-2002", channel="C200")
        # Rows no code path should write, at the head of C100 (both targets; a kind that does not
        # exist; a time that is no time: text where SQLite keeps any type, NaN in PostgreSQL's
        # typed column, infinity in both; a source that is not JSON, or JSON that is no object): each must be
        # failed, its author told, and none may stop anyone.
        no_time: object = float("nan") if on_postgres(bridge) else "soon"
        corrupt = [
            ("1.000001", "message", ALICE, 0.0, '{"text":"x"}'),
            ("1.000002", "frobnicate", None, 0.0, '{"text":"x"}'),
            ("1.000003", "message", None, no_time, '{"text":"x"}'),
            ("1.000004", "message", None, 0.0, "{not json"),
            ("1.000005", "message", None, 0.0, '["x"]'),
            ("1.000006", "message", None, float("inf"), '{"text":"x"}'),  # never due, yet the head
        ]
        [(account_id,)] = await bridge.sql("SELECT id FROM accounts")
        for ts, kind, participant, next_at, source in corrupt:
            [(row_id,)] = await bridge.sql(
                "INSERT INTO outbox (seq, part, parts_total, team_id, channel_id, slack_ts, ref_ts, "
                "author_id, account_id, target_participant, target_conversation, text, source, state, "
                "attempts, next_attempt_at, created_at, hourglass, kind) VALUES "
                "(0, 0, 1, 'T0001', 'C100', ?, ?, 'U100', ?, ?, '1000-2001', NULL, ?, "
                "'queued', 0, ?, ?, 0, ?) RETURNING id",
                ts,
                ts,
                account_id,
                participant,
                source,
                next_at,
                time.time(),
                kind,
            )
            await bridge.sql("UPDATE outbox SET seq = id WHERE id = ?", row_id)
        _, other = await bridge.post("other channel", channel="C200")
        _, same = await bridge.post("same channel, after the bad rows", channel="C100")
        await bridge.wait_reaction("C200", other, "white_check_mark")
        await bridge.wait_reaction("C100", same, "white_check_mark")
        assert sorted(bridge.texts()) == ["Ada: other channel", "Ada: same channel, after the bad rows"]
        bad = await bridge.sql(
            "SELECT state, last_error FROM outbox WHERE slack_ts LIKE '1.00000%' ORDER BY id"
        )
        assert [state for state, _ in bad] == ["failed"] * len(corrupt)
        assert all("could not be read" in (error or "") for _, error in bad)
        told = [e["text"] for e in bridge.slack.ephemerals("U100")]
        assert sum("not sent to X" in t and "could not be read" in t for t in told) == len(corrupt)


async def test_edit_and_delete_in_a_one_to_one_dm_channel_reach_x(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await bridge.connect()
        _, response_url = await bridge.command("dm @alice")
        await bridge.follow_up(response_url)
        await bridge.map_link("1000-2002", channel="C200")
        _, ts = await bridge.post("meet at 3")
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        await edit(bridge, ts, "meet at 3", "meet at 4")
        await bridge.wait_dms(2)
        assert bridge.texts() == ["Ada: meet at 3", "Ada (edited): meet at 4"]
        await delete(bridge, ts, "meet at 4")
        await wait_until(lambda: all(e.deleted for e in bridge.x.events), 10.0, "both DMs deleted on X")
        # And the other channel was never held up by these follow-ups.
        _, other = await bridge.post("still flowing", channel="C200")
        await bridge.wait_reaction("C200", other, "white_check_mark")
        assert not [s for s in await states(bridge) if s[2] not in ("sent",)]


# -- 2. every X call refreshes on a 401; a dead account is flagged, told, and released ----------


@pytest.mark.parametrize("where", ["/dm_events", "/media/upload"])
async def test_401_on_read_back_or_upload_refreshes_and_delivers(tmp_path: Path, where: str) -> None:
    async with running_bridge(tmp_path, env={"X_TIMEOUT_SECONDS": "0.5"}) as bridge:
        await linked(bridge)
        bridge.x.timeout_seconds = 2.0
        refreshes = len(bridge.x.token_requests)
        bridge.x.inject("401", path_contains=where)
        if where.endswith("/dm_events"):
            bridge.x.inject("timeout")  # the POST times out: the row is read back before a resend
            _, ts = await bridge.post("read me back")
        else:
            photo = bridge.slack.add_file(
                "F1", name="photo.png", mimetype="image/png", filetype="png", content=PNG
            )
            _, ts = await bridge.post("with a photo", files=[photo], blocks=[])
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert len(bridge.x.events) == 1
        grants = [r["grant_type"] for r in bridge.x.token_requests[refreshes:]]
        assert grants == ["refresh_token"]


@pytest.mark.parametrize("where", [None, "/dm_events"])
async def test_a_401_that_outlives_a_refresh_is_retried_not_parked_silently(
    tmp_path: Path, where: str | None
) -> None:
    # X refuses the token, then the token just refreshed: not proof the account is gone (its
    # refresh worked), so neither a silent park nor a flag: the row tries again later.
    async with running_bridge(tmp_path, env={"X_TIMEOUT_SECONDS": "0.5"}) as bridge:
        await linked(bridge)
        bridge.x.timeout_seconds = 2.0
        if where is not None:
            bridge.x.inject("timeout")  # the row is read back before a resend
        bridge.x.inject("401", count=2, path_contains=where)
        _, ts = await bridge.post("twice refused")
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert bridge.texts() == ["Ada: twice refused"]
        assert await bridge.sql("SELECT needs_reconnect FROM accounts") == [(0,)]


async def test_account_revoked_during_read_back_is_flagged_told_and_released_by_reconnect(
    tmp_path: Path,
) -> None:
    async with running_bridge(tmp_path, env={"X_TIMEOUT_SECONDS": "0.5"}) as bridge:
        await linked(bridge)
        bridge.x.timeout_seconds = 2.0
        bridge.x.inject("timeout")
        _, ts = await bridge.post("caught mid-send")
        await first_post_timed_out(bridge)
        bridge.x.revoke_user_tokens(ME)  # the read-back before the resend meets a dead token
        told = await bridge.slack.wait_for(
            lambda c: c.method == "chat.postMessage" and "/xdm connect" in str(c.params.get("text"))
        )
        assert told
        assert await bridge.sql("SELECT needs_reconnect FROM accounts") == [(1,)]
        assert await bridge.sql("SELECT state FROM outbox") == [("sending",)]
        await bridge.connect()
        await bridge.wait_reaction("C100", ts, "white_check_mark")
        assert bridge.texts() == ["Ada: caught mid-send"]
        assert await bridge.sql("SELECT needs_reconnect FROM accounts") == [(0,)]


# -- 3. absurd rate-limit headers are ignored or bounded at the edge ----------------------------

ABSURD_RESETS = ["1700000000000", "999999999999999999", "-5", "1", "soon", "1e400"]


@pytest.mark.parametrize("reset", ABSURD_RESETS)
async def test_absurd_reset_header_is_not_saved_and_status_answers(tmp_path: Path, reset: str) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        bridge.x.override_headers = {"x-rate-limit-reset": reset, "x-user-limit-24hour-reset": reset}
        stamps = [(await bridge.post(f"m{i}"))[1] for i in range(3)]
        for ts in stamps:
            await bridge.wait_reaction("C100", ts, "white_check_mark")
        ack, _ = await bridge.command("status")
        assert ack.status == 200 and "X DM budget left" in ack.text
        horizon = time.time() + 2 * 86_400
        for key, reset_at in await bridge.sql("SELECT key, reset_at FROM budgets"):
            assert reset_at is None or 0 <= reset_at < horizon, (key, reset_at)


async def test_stored_absurd_budget_is_sanitised_on_start(tmp_path: Path) -> None:
    env = {"BRIDGE_ENCRYPTION_KEY": generate_key()}
    fake_x = FakeX()  # the same X across both runs: it still knows the account's tokens
    async with running_bridge(tmp_path, env=env, fake_x=fake_x) as bridge:
        await linked(bridge)
        [(account_id,)] = await bridge.sql("SELECT id FROM accounts")
        await bridge.sql(
            "INSERT INTO budgets (key, limit_, remaining, reset_at) VALUES (?, 200, 0, 1.7e12), "
            "('app:24h', 15000, -3, -50)",
            f"account:{account_id}:15m",
        )
    # The same database, a new process: an old bridge saved these before the edge checked them.
    async with running_bridge(tmp_path, env=env, fake_x=fake_x) as bridge:
        ack, _ = await bridge.command("status")
        assert ack.status == 200 and "X DM budget left" in ack.text
        _, ts = await bridge.post("after the restart")
        await bridge.wait_reaction("C100", ts, "white_check_mark")


# The read-back's own path: the inbound poller's GET /2/dm_events shares the read budget, and a
# 429 there would (rightly) hold every read of the account, the read-back included.
@pytest.mark.parametrize("where", ["/media/upload", "/1000-2001/dm_events"])
async def test_429_with_absurd_reset_on_upload_or_read_back_does_not_spin(tmp_path: Path, where: str) -> None:
    async with running_bridge(tmp_path, env={"X_TIMEOUT_SECONDS": "0.5"}) as bridge:
        await linked(bridge)
        bridge.x.timeout_seconds = 2.0
        bridge.x.fault_headers = {"x-rate-limit-reset": "1700000000000"}
        bridge.x.inject("429", count=1000, path_contains=where)
        if where.endswith("/dm_events"):
            bridge.x.inject("timeout")
            await bridge.post("read back under a 429")
        else:
            photo = bridge.slack.add_file(
                "F1", name="photo.png", mimetype="image/png", filetype="png", content=PNG
            )
            await bridge.post("upload under a 429", files=[photo], blocks=[])
        await wait_until(lambda: requests_to(bridge, where) >= 1, 5.0, f"a request to {where}")
        await asyncio.sleep(2.0)
        assert requests_to(bridge, where) <= 2
        ack, _ = await bridge.command("status")
        assert ack.status == 200 and "X DM budget left" in ack.text


# -- 5. a delete in Slack cancels a message caught mid-send -------------------------------------


async def test_delete_of_a_sending_message_never_sends_it(tmp_path: Path) -> None:
    # The delete must land while the POST is in doubt: give it a generous second and a half.
    async with running_bridge(tmp_path, env={"X_TIMEOUT_SECONDS": "1.5"}) as bridge:
        await linked(bridge)
        bridge.x.timeout_seconds = 3.0
        bridge.x.inject("timeout")  # X did not take it, but the bridge cannot know
        _, ts = await bridge.post("please do not send")
        await first_post_timed_out(bridge)
        await delete(bridge, ts, "please do not send")
        _, after = await bridge.post("next one")
        await bridge.wait_reaction("C100", after, "white_check_mark")
        assert bridge.texts() == ["Ada: next one"]
        assert requests_to(bridge, "/dm_events", "GET") >= 1  # it looked before giving up
        assert ("message", "cancelled") in [(k, s) for t, k, s in await states(bridge) if t == ts]


async def test_delete_of_a_sending_message_that_landed_deletes_it_on_x(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env={"X_TIMEOUT_SECONDS": "0.5"}) as bridge:
        await linked(bridge)
        bridge.x.timeout_seconds = 2.0
        bridge.x.inject("record_then_hang")  # X took it; the answer never comes
        _, ts = await bridge.post("landed anyway")
        await wait_until(lambda: len(bridge.x.events) == 1, 5.0, "X recorded the DM")
        await delete(bridge, ts, "landed anyway")
        await wait_until(lambda: bridge.x.events[0].deleted, 10.0, "the DM deleted on X")
        assert bridge.x.dm_posts == 1


# -- 8. an edit before the first send replaces the text -----------------------------------------


async def test_edit_of_a_message_held_for_budget_replaces_its_text(tmp_path: Path) -> None:
    async with running_bridge(tmp_path) as bridge:
        await linked(bridge)
        bridge.x.user_limit_15m = 1
        bridge.x.window_15m_seconds = 2.0
        _, first = await bridge.post("goes now")
        await bridge.wait_reaction("C100", first, "white_check_mark")
        _, held = await bridge.post("must wait")
        await bridge.wait_reaction("C100", held, "hourglass_flowing_sand")
        await edit(bridge, held, "must wait", "must wait, fixed")
        await bridge.wait_reaction("C100", held, "white_check_mark", timeout=10.0)
        await asyncio.sleep(0.3)
        assert bridge.texts() == ["Ada: goes now", "Ada: must wait, fixed"]


async def test_edit_of_a_rendered_but_unsent_message_replaces_its_text(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env={"X_TIMEOUT_SECONDS": "0.5"}) as bridge:
        await linked(bridge)
        bridge.x.timeout_seconds = 2.0
        bridge.x.inject("timeout", path_contains="/media/upload")  # rendered, then stuck uploading
        photo = bridge.slack.add_file(
            "F1", name="photo.png", mimetype="image/png", filetype="png", content=PNG
        )
        _, ts = await bridge.post("photo, typo", files=[photo], blocks=[])
        await wait_until(lambda: bool(bridge.x.faults_served), 5.0, "the held upload")
        await edit(bridge, ts, "photo, typo", "photo, fixed")
        await bridge.wait_reaction("C100", ts, "white_check_mark", timeout=10.0)
        await asyncio.sleep(0.3)
        assert bridge.texts() == ["Ada: photo, fixed"]
        assert len(bridge.x.events[0].media_ids) == 1


# -- 9. an unclear read-back never concludes "not sent" -----------------------------------------


@pytest.mark.parametrize("answer", ["403", "503", "garbage"])
async def test_unclear_read_back_waits_and_reads_again(tmp_path: Path, answer: str) -> None:
    async with running_bridge(tmp_path, env={"X_TIMEOUT_SECONDS": "0.5"}) as bridge:
        await linked(bridge)
        bridge.x.timeout_seconds = 2.0
        bridge.x.inject("record_then_hang")  # X has it
        # The conversation's read-back, not the inbound poller's GET /2/dm_events.
        bridge.x.inject(answer, count=2, path_contains="/1000-2001/dm_events")  # type: ignore[arg-type]
        _, ts = await bridge.post("it did arrive")
        await bridge.wait_reaction("C100", ts, "white_check_mark", timeout=10.0)
        assert bridge.texts() == ["Ada: it did arrive"] and bridge.x.dm_posts == 1
        assert requests_to(bridge, "/dm_events", "GET") == 3
        assert not [e for e in bridge.slack.ephemerals("U100") if "not sent" in e["text"]]
        assert "warning" not in bridge.slack.reactions("C100", ts)

"""X on a bad day, Slack retrying, editing and deleting, the server SIGKILLed: every promise holds.

One fixed seed of the randomized run in tests/process/chaos.py, on SQLite and on PostgreSQL
(about half a minute per store on two cores): the seed whose mix covers the most faults and
kills. The sweep is bench/fault_soak.py (``--seeds 20``, ``--postgres`` for the PostgreSQL
store), which replays any seed with ``--seed N``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import pg
from tests.harness import wait_until
from tests.process.chaos import CHANNELS, chaos_world, run_seed, undo_refresh_cut_off

SEEDS = (23,)


@pytest.mark.parametrize("seed", SEEDS)
async def test_every_promise_holds_through_faults_and_kills(
    tmp_path: Path, seed: int, on_both_stores: dict[str, str]
) -> None:
    report = await run_seed(tmp_path, seed)
    print(report.summary())
    assert report.messages > 0 and report.kills > 0
    assert sum(report.faults.values()) > 0
    assert report.problems == [], report.summary()


async def test_a_kill_between_xs_token_rotation_and_its_saving_is_undone_at_x(
    tmp_path: Path, on_both_stores: dict[str, str]
) -> None:
    """The one loss no client survives (X rotated the single-use refresh token, the process died
    before saving the new one) is taken back at X by the killer, so a seed never fails on it."""
    async with chaos_world(tmp_path, 0, CHANNELS[:1]) as chaos:
        chaos.x.inject("401")  # the first send: refresh
        # X rotates the refresh token, and its answer is lost: the moment a kill can land in.
        chaos.x.inject("lost_response", path_contains="/2/oauth2/token")
        event = chaos.sender.message_event("C01", "U100", "C01 #0 v0", blocks=[])
        assert (await chaos.sender.event(event)).status == 200
        await wait_until(lambda: any(t.used for t in chaos.x.refresh_tokens.values()), 10, "a refresh at X")
        await chaos.server.kill()
        for token in chaos.x.access_tokens.values():  # the next process must refresh
            token.revoked = True
        assert await undo_refresh_cut_off(chaos)
        assert not await undo_refresh_cut_off(chaos)  # nothing left to undo
        await chaos.server.start(chaos.url, chaos.session)
        await wait_until(lambda: any(e.text == "Ada: C01 #0 v0" for e in chaos.x.events), 20, "the DM")
        flags = await pg.query(chaos.database, "SELECT needs_reconnect FROM accounts ORDER BY id")
        assert flags == [(0,), (0,)]
        await chaos.server.terminate()

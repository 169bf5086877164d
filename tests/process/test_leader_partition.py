"""A leader cut off from PostgreSQL without a reset (a silent partition) hands over in seconds."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from adapters.sandbox.fake_slack import SlackSender
from tests.freezing_proxy import freezing_proxy
from tests.harness import SIGNING_SECRET, TEAM, free_port, wait_until
from tests.process.support import world
from tests.process.test_instances import leader_of


def first_line(log: Path, message: str) -> dict[str, object]:
    """The first JSON log line whose message starts with ``message``."""
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if str(record.get("msg", record.get("message", ""))).startswith(message):
                return dict(record)
    raise AssertionError(f"no {message!r} in {log}:\n{log.read_text()}")


@pytest.mark.usefixtures("on_postgres")
async def test_a_leader_partitioned_from_the_database_steps_down_and_a_standby_takes_over(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, lambda x: {"C100": "1000-2001"}, METRICS_TOKEN="operator") as w:
        direct = urlsplit(w.env["DATABASE_URL"])
        assert direct.hostname is not None and direct.port is not None
        async with freezing_proxy(direct.hostname, direct.port) as proxy:
            cut = w.server(tmp_path / "cut.log")
            cut.env["DATABASE_URL"] = urlunsplit(
                direct._replace(netloc=f"{direct.username}@127.0.0.1:{proxy.port}")
            )
            await cut.start(cut.url, w.session)
            assert await leader_of([cut], w.session) is cut
            standby = w.server(tmp_path / "standby.log", port=free_port())
            await standby.start(standby.url, w.session)
            health = await standby.health(w.session)
            assert health is not None and health["status"] == "ok" and health["worker"] == "standby"
            assert health["leader_heartbeat_age"] < 5  # the leader's renewals are visible to it

            sender = SlackSender(w.session, f"{standby.url}/slack/events", SIGNING_SECRET, team_id=TEAM)
            assert (await sender.message("C100", "U100", "before"))[0].status == 200
            await wait_until(lambda: len(w.x.events) == 1, 10, "the first DM, sent by the leader")

            proxy.freeze()  # the leader's connections stay open, and nothing crosses them
            assert (await sender.message("C100", "U100", "after"))[0].status == 200
            # A correctness deadline (the lease is 10 s), not a speed figure.
            assert await leader_of([standby], w.session, timeout=30) is standby
            await wait_until(lambda: len(w.x.events) == 2, 30, "the DM accepted after the partition")
            assert [e.text for e in w.x.events] == ["Ada: before", "Ada: after"]

            cut_health = await cut.health(w.session)
            assert cut_health is not None and cut_health["status"] == "unavailable"
            # Not leading; and, unable to read the lease, it cannot vouch for anyone else's.
            assert cut_health["worker"] in ("standby", "leaderless") and cut_health["database"] == "error"
            # Fenced by time: the cut-off leader stopped before the new one began.
            stopped = first_line(cut.log_path, "stopped leading")
            began = first_line(standby.log_path, "leading: this instance")
            assert str(stopped["ts"]) < str(began["ts"])
            assert await standby.terminate() == 0
            assert await cut.terminate() == 0  # its shutdown ends too, database or not

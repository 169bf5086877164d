"""The PostgreSQL leader's lease: visible to standbys, fenced, taken over when its holder is gone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from adapters.store.leader import LEADER_LOCK, OLD_LEADER_LOCK
from adapters.store.postgres import NOW, connect
from adapters.web.app import SERVICES
from tests.harness import Bridge, running_bridge, wait_until

pytestmark = pytest.mark.usefixtures("on_postgres")


async def health(bridge: Bridge) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": "Bearer ops-token"}
    async with bridge.session.get(f"{bridge.url}/healthz", headers=headers) as response:
        return response.status, await response.json()


async def test_a_lease_nobody_renews_is_reported_and_its_dead_holder_replaced_at_once(tmp_path: Path) -> None:
    async with running_bridge(tmp_path, env={"METRICS_TOKEN": "ops-token"}) as bridge:
        worker = bridge.app[SERVICES].worker
        await wait_until(lambda: worker.role == "leader", 10, "the only instance leading")
        assert bridge.settings.database_url is not None
        # Another "instance" takes the lease and then never renews it, its session still open.
        ghost = await asyncpg.connect(bridge.settings.database_url)
        try:
            term = int(await ghost.fetchval("SELECT term FROM leader_lease")) + 1
            await ghost.execute("SELECT pg_advisory_lock($1, $2::integer)", LEADER_LOCK, term)
            await ghost.execute(
                f"UPDATE leader_lease SET holder = 'ghost', term = $1, renewed_at = {NOW} - 100, "
                f"expires_at = {NOW} + 3600",
                term,
            )
            # Its renewal refused, the leader steps down; as a standby it sees no one lead.
            await wait_until(lambda: worker.role == "standby", 10, "the leader stepping down")
            await wait_until(
                lambda: (worker.leader_heartbeat_age() or 0.0) >= 100, 10, "the standby reading the lease"
            )
            status, body = await health(bridge)
            assert status == 503 and body["worker"] == "leaderless", body
            assert body["leader_heartbeat_age"] >= 100
        finally:
            await ghost.close()
        # The holder's session has ended: its lease is taken at once, not an hour later.
        await wait_until(lambda: worker.role == "leader", 10, "leading again")
        status, body = await health(bridge)
        assert status == 200 and body["worker"] in ("ok", "starting"), body


async def test_a_rolling_deploy_never_has_two_leaders(tmp_path: Path, on_postgres: dict[str, str]) -> None:
    """The previous version elected its leader with one advisory lock (``OLD_LEADER_LOCK``)."""
    url = on_postgres["DATABASE_URL"]
    old = await asyncpg.connect(url)  # a previous version's leader
    try:
        assert await old.fetchval("SELECT pg_try_advisory_lock($1)", OLD_LEADER_LOCK)
        async with running_bridge(tmp_path, env={"METRICS_TOKEN": "ops-token"}) as bridge:
            worker = bridge.app[SERVICES].worker
            await asyncio.sleep(1.5)  # three polls for the lease
            status, body = await health(bridge)
            assert status == 200 and body["worker"] == "standby"  # while the previous version leads
            assert await bridge.sql("SELECT holder FROM leader_lease") == [("",)]  # never taken
            await old.execute("SELECT pg_advisory_unlock($1)", OLD_LEADER_LOCK)
            await wait_until(lambda: worker.role == "leader", 10, "leading once it has gone")
            # A previous version's standby, polling its lock, stays a standby.
            assert not await old.fetchval("SELECT pg_try_advisory_lock($1)", OLD_LEADER_LOCK)
    finally:
        await old.close()


async def test_a_leader_whose_lease_session_alone_ends_never_leads_beside_its_successor(pg_url: str) -> None:
    """The database ends only the leader's lease session (an operator's pg_terminate_backend, a
    reset of that one connection): the leader's work, on other connections, goes on until its next
    renewal fails. A standby that took the term at once, because its lock was gone, led beside it."""
    from adapters.store.leader import Leadership
    from adapters.store.postgres import migrate

    await migrate(pg_url)
    loop = asyncio.get_running_loop()
    leading: list[str] = []
    overlaps: list[tuple[str, ...]] = []

    def lead_as(name: str) -> Any:
        async def lead() -> None:
            leading.append(name)
            if len(leading) > 1:
                overlaps.append(tuple(leading))
            try:
                await loop.create_future()
            finally:
                leading.remove(name)

        return lead

    first = Leadership(pg_url, instance="first", on_notify=lambda: None, poll=0.05)
    second = Leadership(pg_url, instance="second", on_notify=lambda: None, poll=0.05)
    runs = [asyncio.create_task(first.run(lead_as("first")))]
    # The first instance's other sessions (its store's pool), over which its work goes on.
    its_pool = await connect(pg_url, "first")
    try:
        await wait_until(lambda: first.leading, 10, "the first instance leading")
        runs.append(asyncio.create_task(second.run(lead_as("second"))))
        await asyncio.sleep(0.3)  # the second is a standby, polling the lease
        admin = await asyncpg.connect(pg_url)
        try:
            await asyncio.sleep(0.1)  # just after a renewal: the next one is most of a second away
            ended = await admin.fetchval(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid = $1 AND objsubid = 2 "
                # This test's database only: other tests may run beside it on the same server.
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                LEADER_LOCK,
            )
            assert ended == 1
        finally:
            await admin.close()
        await wait_until(lambda: not first.leading, 10, "the first instance stepping down")
        await wait_until(lambda: bool(leading), 20, "a leader again")
        await asyncio.sleep(1.5)
        assert overlaps == []
    finally:
        await its_pool.close()
        first.stop()
        second.stop()
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)


async def test_a_leader_whose_process_left_no_session_is_followed_at_once(pg_url: str) -> None:
    """Every session of the leader's process gone (it died, or lost its connections with a reset):
    nothing of it can still be working, so a standby leads at once, not after the 6 s a leader
    that lost only its lease connection is given to notice."""
    from adapters.store.leader import _READ_ROW, Leadership
    from adapters.store.postgres import migrate

    await migrate(pg_url)
    first = Leadership(pg_url, instance="first", on_notify=lambda: None, poll=0.05)
    second = Leadership(pg_url, instance="second", on_notify=lambda: None, poll=0.05)

    async def never_ends() -> None:
        await asyncio.get_running_loop().create_future()

    runs = [asyncio.create_task(first.run(never_ends))]
    try:
        await wait_until(lambda: first.leading, 10, "the first instance leading")
        admin = await asyncpg.connect(pg_url)
        try:
            ended = await admin.fetchval(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'xdm-bridge first' AND datname = current_database()"
            )
            assert ended == 1  # the lease connection was its only session
        finally:
            await admin.close()
        # What the standby reads right after: no lock, no session of the first's process, a
        # renewal younger than the 6 s a leader with sessions left is given. Gone all the same.
        check = await asyncpg.connect(pg_url)
        try:
            async with check.transaction():
                row = await check.fetchrow(_READ_ROW, LEADER_LOCK)
        finally:
            await check.close()
        assert row is not None and row["holder"] == "first"
        assert not row["alive"] and not row["holder_connected"] and float(row["age"]) < 6.0
        assert second._gone(row["alive"], row["holder_connected"], float(row["age"]))
        runs.append(asyncio.create_task(second.run(never_ends)))
        await wait_until(lambda: second.leading, 10, "the standby leading")
    finally:
        first.stop()
        second.stop()
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)

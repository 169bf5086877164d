"""The composition root outside any web app, as the CLI uses it: one engine question, asked once."""

from __future__ import annotations

from pathlib import Path

from adapters.sandbox.fake_slack import run_fake_slack
from adapters.sandbox.fake_x import run_fake_x
from adapters.services import build_services, open_clients
from adapters.slack.api import SlackApi
from adapters.store.postgres import PostgresStore
from adapters.web.instances import SharedDatabase, SingleInstance
from bridge.settings import Settings
from tests.harness import FAST, FAST_INBOUND, TEAM, bridge_env, wait_until


async def test_the_services_lead_alone_on_sqlite_and_by_lease_on_postgresql(
    tmp_path: Path, on_both_stores: dict[str, str]
) -> None:
    async with run_fake_x() as (x, x_url), run_fake_slack(team_id=TEAM) as (slack, slack_url):
        settings = Settings.from_env(bridge_env(tmp_path / "bridge.db", x_url, f"{slack_url}/api/", 9))
        async with build_services(settings, delivery_config=FAST, inbound_config=FAST_INBOUND) as services:
            shared = isinstance(services.store, PostgresStore)
            assert isinstance(services.instances, SharedDatabase if shared else SingleInstance)
            # The only instance leads (on PostgreSQL once it holds the lease): what it is woken
            # for, it does itself rather than pass on.
            await wait_until(lambda: services.worker.current is not None, 20.0, "the worker leading")
            assert services.worker.role == "leader"
            assert services.instances.to_leader(services.worker, "poll") is False
            assert await services.store.ping()
            await wait_until(lambda: services.slack_auth.ready, 10.0, "Slack's auth.test")
        assert slack.calls_to("auth.test")
        assert x.violations == []


async def test_the_cli_clients_are_serves(tmp_path: Path) -> None:
    async with run_fake_x() as (_, x_url), run_fake_slack(team_id=TEAM) as (_, slack_url):
        settings = Settings.from_env(bridge_env(tmp_path / "bridge.db", x_url, f"{slack_url}/api/", 9))
        async with open_clients(settings) as clients:
            assert isinstance(clients.slack, SlackApi) and clients.workspaces is None
            assert await clients.store.list_accounts() == []
            session = clients.session
        assert session.closed  # and the store closed with it

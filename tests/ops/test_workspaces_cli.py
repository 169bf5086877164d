"""`xdm-bridge workspaces`: the operator's list per Slack workspace, on both stores, never a token."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from slack_sdk.oauth.installation_store.models.installation import Installation

from adapters.ops import doctor
from adapters.store.crypto import TokenCipher, generate_key
from adapters.store.postgres import PostgresStore
from adapters.store.slack_installs import SlackInstallStore
from adapters.store.sqlite import SqliteStore
from bridge.model import ChannelMapping, MappingKind, TokenSet, XUser
from bridge.settings import Settings
from tests import pg
from tests.ops.support import run


@pytest.fixture(params=["sqlite", "postgres"])
def database(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[SqliteStore | PostgresStore, TokenCipher]]:
    key = TokenCipher([generate_key()])
    if request.param == "sqlite":
        path = tmp_path / "bridge.db"
        monkeypatch.setenv("DATABASE_PATH", str(path))
        yield SqliteStore(str(path), key), key
        return
    server = request.getfixturevalue("pg_server")
    url = asyncio.run(pg.create_database(server))
    monkeypatch.setenv("DATABASE_URL", url)
    yield PostgresStore(url, key), key
    asyncio.run(pg.drop_database(server, url))


async def fill(store: SqliteStore | PostgresStore, cipher: TokenCipher) -> None:
    """Two workspaces installed, one of which then removed the app; a third never installed."""
    await store.open()
    try:
        installs = SlackInstallStore(store.engine, cipher, lambda: 1_700_000_000.0)
        for team, name in (("T1", "One"), ("T2", "Two")):
            await installs.async_save(
                Installation(team_id=team, team_name=name, bot_token=f"xoxb-{team}-secret", user_id="U1")
            )
            account = await store.save_account(team, "U1", XUser(f"{team}0", "me"), TokenSet("a", "r", None))
            await store.create_mapping(
                ChannelMapping(team, "C1", MappingKind.DM, account.id, None, "9", "U1", 0.0)
            )
        await installs.pause_workspace("T2", 5.0)
        await installs.async_delete_all(enterprise_id=None, team_id="T2")
        await store.save_account("T3", "U9", XUser("T30", "other"), TokenSet("a", "r", None))
    finally:
        await store.close()


def test_workspaces_are_listed_apart_with_their_install_and_channels(
    database: tuple[SqliteStore | PostgresStore, TokenCipher], capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(fill(*database))
    code, out = run(capsys, "workspaces", "--json")
    assert code == 0, out
    rows = {w["team_id"]: w for w in json.loads(out)}
    assert set(rows) == {"T1", "T2", "T3"}
    assert (rows["T1"]["installed"], rows["T1"]["team_name"], rows["T1"]["mappings"]) == (True, "One", 1)
    assert (rows["T2"]["installed"], rows["T2"]["paused"]) == (False, 1)
    assert (rows["T3"]["installed"], rows["T3"]["accounts"], rows["T3"]["mappings"]) == (False, 1, 0)
    code, text = run(capsys, "workspaces")
    assert code == 0 and "T1" in text and "One" in text and "removed: channels paused" in text
    assert "xoxb-" not in out + text


@pytest.mark.parametrize(("public_url", "status"), [("https://bridge.example.org", "ok"), (None, "fail")])
def test_doctor_in_install_mode_names_the_install_page_or_the_missing_public_url(
    public_url: str | None, status: str
) -> None:
    env = {
        "SLACK_SIGNING_SECRET": "s",
        "SLACK_CLIENT_ID": "1.2",
        "SLACK_CLIENT_SECRET": "c",
        "X_CLIENT_ID": "x",
        "BRIDGE_ENCRYPTION_KEY": generate_key(),
        **({"PUBLIC_URL": public_url} if public_url else {}),
    }
    check = doctor.install_mode(Settings.from_env(env))
    assert check.status == status
    if public_url:
        assert f"{public_url}/slack/install" in check.detail and "/slack/oauth_redirect" in check.detail
    else:
        assert check.fix is not None and "/slack/oauth_redirect" in check.fix

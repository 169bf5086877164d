"""Install mode ("Add to Slack"): the app's client id and secret instead of one bot token."""

from __future__ import annotations

import pytest

from adapters.store.crypto import generate_key
from bridge.errors import ConfigError
from bridge.settings import Settings


def env(**extra: str) -> dict[str, str]:
    base = {
        "SLACK_SIGNING_SECRET": "secret",
        "X_CLIENT_ID": "client",
        "BRIDGE_ENCRYPTION_KEY": generate_key(),
    }
    return {**base, **extra}


def test_a_client_id_and_secret_without_a_bot_token_select_install_mode() -> None:
    settings = Settings.from_env(
        env(SLACK_CLIENT_ID="1.2", SLACK_CLIENT_SECRET="shh", PUBLIC_URL="https://bridge.example.org")
    )
    assert settings.slack_install_mode
    assert settings.bot_token == ""
    assert settings.slack_authorize_url == "https://slack.com/oauth/v2/authorize"
    assert settings.slack_redirect_uri == "https://bridge.example.org/slack/oauth_redirect"
    assert "shh" in settings.secrets and "shh" not in repr(settings)


def test_the_authorize_page_can_be_moved_for_the_simulator() -> None:
    settings = Settings.from_env(
        env(SLACK_CLIENT_ID="1.2", SLACK_CLIENT_SECRET="s", SLACK_AUTHORIZE_URL="http://127.0.0.1:9/oauth")
    )
    assert settings.slack_authorize_url == "http://127.0.0.1:9/oauth"


def test_a_bot_token_alone_keeps_the_single_workspace_mode() -> None:
    settings = Settings.from_env(env(SLACK_BOT_TOKEN="xoxb-1"))
    assert not settings.slack_install_mode and settings.bot_token == "xoxb-1"


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_CLIENT_ID": "1.2", "SLACK_CLIENT_SECRET": "s"}, "both set"),
        ({}, "SLACK_BOT_TOKEN is not set"),
        ({"SLACK_CLIENT_ID": "1.2"}, "SLACK_CLIENT_ID is set but SLACK_CLIENT_SECRET is not"),
        ({"SLACK_CLIENT_SECRET": "s"}, "SLACK_CLIENT_SECRET is set but SLACK_CLIENT_ID is not"),
    ],
)
def test_both_modes_or_neither_is_one_line_saying_what_to_set(extra: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env(**extra))
    lines = str(caught.value).splitlines()
    assert len(lines) == 1 and says in lines[0], lines

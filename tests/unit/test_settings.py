"""Settings refuse, at start-up, what would fail every message later."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from adapters.services import default_inbound_config
from adapters.store.crypto import generate_key
from bridge.errors import ConfigError
from bridge.settings import Settings


def env(**extra: str) -> dict[str, str]:
    return {
        "SLACK_SIGNING_SECRET": "secret",
        "SLACK_BOT_TOKEN": "xoxb-1",
        "X_CLIENT_ID": "client",
        "BRIDGE_ENCRYPTION_KEY": generate_key(),
        **extra,
    }


@pytest.mark.parametrize(
    "fmt",
    [
        "{name!s}: {text}",  # a conversion
        "{name}: {text} {text}",  # text twice
        "{name:>5}: {text}",  # a format spec
        "{who}: {text}",  # an unknown field
        "{name}: {text} {0}",  # a positional field
        "{name}: {text.upper}",  # an attribute
        "{name}: {text",  # unbalanced
        "{name}",  # no text
    ],
)
def test_a_relay_format_that_cannot_render_a_message_is_refused_in_one_line(fmt: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env(RELAY_FORMAT=fmt))
    lines = str(caught.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith("RELAY_FORMAT="), lines


@pytest.mark.parametrize("fmt", ["{name}: {text}", "{text}", "[{name}] {text} — {name}", "{{x}} {text}"])
def test_formats_the_delivery_can_render_are_accepted(fmt: str) -> None:
    assert Settings.from_env(env(RELAY_FORMAT=fmt)).relay_format == fmt


@pytest.mark.parametrize(("raw", "rate"), [(None, 1.0), ("0", 0.0), ("2.5", 2.5)])
def test_the_slack_posting_pace_reaches_the_poster(raw: str | None, rate: float) -> None:
    given = {} if raw is None else {"SLACK_POSTS_PER_SECOND": raw}
    assert default_inbound_config(Settings.from_env(env(**given))).post_rate == rate


@pytest.mark.parametrize("raw", ["-1", "fast", "1000"])
def test_a_slack_posting_pace_out_of_range_is_refused_in_one_line(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env(SLACK_POSTS_PER_SECOND=raw))
    lines = str(caught.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith("SLACK_POSTS_PER_SECOND="), lines


@pytest.mark.process
def test_serve_exits_2_naming_the_variable(tmp_path: Path) -> None:
    # A real process: before the fix it would start serving, so the timeout guards the suite.
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "serve"],
        env={**env(RELAY_FORMAT="{name!s}: {text}"), "DATABASE_PATH": str(tmp_path / "b.db"), "PORT": "9"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "RELAY_FORMAT" in lines[0], lines

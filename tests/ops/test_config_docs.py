"""Every place that documents configuration lists exactly the variables Settings reads."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from adapters.ops.config_doc import BY_NAME, ENV_VARS, fix_for
from adapters.store.crypto import generate_key
from bridge.errors import ConfigError
from bridge.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
READERS = {"get", "required", "integer", "number", "url", "choice", "limit", "flag", "slack_user_ids"}
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]+$")
# The README and the docs/ pages it links: where a newcomer and an operator copy commands from.
DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def docs_text() -> str:
    return "\n".join(page.read_text() for page in DOC_PAGES)


def settings_reads() -> set[str]:
    """Names passed to the environment readers in bridge/settings.py (``self.integer("PORT", …)``)."""
    tree = ast.parse((ROOT / "bridge" / "settings.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in READERS
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and ENV_NAME.match(node.args[0].value)
        ):
            names.add(node.args[0].value)
    return names


def documented() -> set[str]:
    return {var.name for var in ENV_VARS}


def test_the_ast_scan_sees_settings_reads() -> None:
    names = settings_reads()
    assert {"SLACK_BOT_TOKEN", "PORT", "BRIDGE_ENCRYPTION_KEY", "RELAY_FORMAT", "LOG_FORMAT"} <= names


def test_config_doc_lists_exactly_what_settings_reads() -> None:
    assert len(ENV_VARS) == len(BY_NAME), "a variable is listed twice"
    assert documented() == settings_reads(), (
        f"undocumented: {sorted(settings_reads() - documented())}; "
        f"not read: {sorted(documented() - settings_reads())}"
    )


def test_required_ones_are_exactly_those_settings_refuses_to_start_without() -> None:
    try:
        Settings.from_env({})
    except Exception as exc:
        missing = {line.split(" ", 1)[0] for line in str(exc).splitlines()}
    else:
        raise AssertionError("Settings started with an empty environment")
    assert missing == {v.name for v in ENV_VARS if v.required}


def test_env_example_lists_every_variable_once() -> None:
    text = (ROOT / ".env.example").read_text()
    assigned = re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", text, re.MULTILINE)
    assert sorted(assigned) == sorted(documented())
    for var in ENV_VARS:
        if var.required:
            assert re.search(rf"^{var.name}=", text, re.MULTILINE), (
                f"{var.name} is required: not commented out"
            )
        if var.default is not None:
            assert f"{var.name}={var.default}" in text, f"{var.name} should show its default {var.default}"


def test_app_json_lists_every_variable_with_a_description() -> None:
    app = json.loads((ROOT / "app.json").read_text())
    env = app["env"]
    assert set(env) == documented()
    for name, entry in env.items():
        assert entry["description"], name
        assert entry["required"] is BY_NAME[name].required, name
    # Heroku's "secret" generator makes hex, which is not a Fernet key: the user must paste one.
    assert "generator" not in env["BRIDGE_ENCRYPTION_KEY"]
    assert "keygen" in env["BRIDGE_ENCRYPTION_KEY"]["description"]
    # /metrics is private by default: a deploy from the button gets a token to scrape with.
    assert env["METRICS_TOKEN"]["generator"] == "secret"
    assert app["formation"]["web"]["quantity"] == 1  # SQLite: exactly one writer
    assert "Persistence" in env["DATABASE_PATH"]["description"]


def test_the_docs_configuration_table_lists_every_variable() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    section = page.split("# Configuration", 1)[1].split("\n## ", 1)[0]
    in_table = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", section, re.MULTILINE))
    assert in_table == documented()


def test_procfile_serves_on_web_and_migrates_in_the_release_phase() -> None:
    # app.json provisions Heroku Postgres: the release phase migrates the database every dyno
    # shares before the new code serves. (On SQLite it would migrate a throwaway dyno's copy,
    # harmlessly; `serve` migrates as it starts, which is what counts there.)
    lines = (ROOT / "Procfile").read_text().splitlines()
    assert "web: xdm-bridge serve" in lines and "release: xdm-bridge migrate" in lines
    app = json.loads((ROOT / "app.json").read_text())
    assert [a["plan"].split(":")[0] for a in app["addons"]] == ["heroku-postgresql"]


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda page: page.name)
def test_every_command_in_the_docs_copies_as_one_line(page: Path) -> None:
    text = page.read_text()
    blocks = re.findall(r"```(?:sh|bash)?\n(.*?)```", text, re.DOTALL)
    for block in blocks:
        for line in block.splitlines():
            assert not line.rstrip().endswith("\\"), f"continued line: {line}"
    # Inline commands too: a code span that breaks across lines pastes as two commands.
    spans = re.findall(r"(?<!`)`([^`]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    assert [span for span in spans if "\n" in span] == []


def test_the_docs_hold_the_commands_checked_above() -> None:
    """So that the test above cannot pass on pages that lost their command blocks."""
    assert len(re.findall(r"```(?:sh|bash)?\n(.*?)```", docs_text(), re.DOTALL)) >= 5
    assert len(DOC_PAGES) >= 2


def test_fix_names_the_variable_and_where_to_find_it() -> None:
    assert fix_for("X_CLIENT_ID is not set: the X app's OAuth 2.0 Client ID").startswith("set X_CLIENT_ID:")
    assert "whole number" not in fix_for("PORT='x' is not a whole number")
    assert fix_for("PORT='x' is not a whole number").startswith("set PORT:")
    assert "docs/configuration.md" in fix_for("SOMETHING_ELSE went wrong")


# Variables whose documented examples can only ever be placeholders (secrets, ids, the host).
NO_REAL_EXAMPLE = ("SLACK_SIGNING_SECRET", "SLACK_BOT_TOKEN", "X_CLIENT_ID", "X_CLIENT_SECRET", "PUBLIC_URL")


def documented_examples() -> set[tuple[str, str]]:
    """Every ``NAME=value`` the README, docs/ and .env.example show for these, and app.json's e.g."""
    text = docs_text() + "\n" + (ROOT / ".env.example").read_text()
    found = set()
    for name in NO_REAL_EXAMPLE:
        for value in re.findall(rf"\b{name}=([^\s`\\]+)", text):
            if not value.startswith("$("):  # a command that makes the real value
                found.add((name, value))
    app = json.loads((ROOT / "app.json").read_text())
    for name in NO_REAL_EXAMPLE:
        for value in re.findall(r"e\.g\. (\S+?)[\s,;)]", app["env"][name]["description"] + " "):
            found.add((name, value))
    return found


def complete_env(**extra: str) -> dict[str, str]:
    env = {
        "SLACK_SIGNING_SECRET": "0123abcd",
        "SLACK_BOT_TOKEN": "xoxb-1-2-abc",
        "X_CLIENT_ID": "client-id",
        "BRIDGE_ENCRYPTION_KEY": generate_key(),
    }
    env.update(extra)
    return env


def problems(env: dict[str, str]) -> list[str]:
    try:
        Settings.from_env(env)
    except ConfigError as exc:
        return str(exc).splitlines()
    return []


def test_every_placeholder_the_docs_show_is_refused_naming_its_variable() -> None:
    examples = documented_examples()
    # The ones the issue names, so a docs change cannot quietly empty this test.
    assert {
        ("SLACK_BOT_TOKEN", "xoxb-…"),
        ("SLACK_BOT_TOKEN", "xoxb-"),
        ("X_CLIENT_ID", "…"),
        ("PUBLIC_URL", "https://YOUR-HOST"),
        ("PUBLIC_URL", "https://your-host"),
        ("PUBLIC_URL", "https://your-bridge-1234.herokuapp.com"),
        ("PUBLIC_URL", "https://your-app.herokuapp.com"),
    } <= examples
    for name, value in sorted(examples):
        found = problems(complete_env(**{name: value}))
        assert len(found) == 1 and found[0].startswith(f"{name} still holds a placeholder"), (name, value)
        assert "README or .env.example" in found[0]


def test_a_placeholder_in_a_secret_is_named_without_echoing_the_secret() -> None:
    [line] = problems(complete_env(SLACK_SIGNING_SECRET="d3adbeef-real-part…"))
    assert line.startswith("SLACK_SIGNING_SECRET") and "d3adbeef" not in line


def test_real_looking_values_are_not_mistaken_for_placeholders() -> None:
    assert (
        problems(
            complete_env(PUBLIC_URL="https://bridge-7f3a.herokuapp.com", RELAY_FORMAT="{name}... {text}")
        )
        == []
    )


@pytest.mark.parametrize(
    "url",
    ["https://bridge.example.org", "http://localhost:3000", "http://127.0.0.1:8000", "http://[::1]:3000"],
)
def test_public_url_is_https_or_loopback(url: str) -> None:
    assert problems(complete_env(PUBLIC_URL=url)) == []


def test_plain_http_public_url_off_loopback_is_refused() -> None:
    [line] = problems(complete_env(PUBLIC_URL="http://bridge.example.org"))
    assert line.startswith("PUBLIC_URL='http://bridge.example.org' must be https")
    assert fix_for(line).startswith("set PUBLIC_URL:")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PUBLIC_URL", "https://bridge.your-company.com"),  # real hosts may say "your-"
        ("PUBLIC_URL", "https://your-move.io"),
        ("PUBLIC_URL", "https://xdm.your-apps.example"),
        ("DATABASE_PATH", "/data/your_team/bridge.db"),
    ],
)
def test_real_values_that_happen_to_say_your_are_not_placeholders(name: str, value: str) -> None:
    assert problems(complete_env(**{name: value})) == []


@pytest.mark.parametrize(
    "url",
    [
        "https://bridge.example.org?x=1",
        "https://bridge.example.org/#top",
        "https://user:pw@bridge.example.org",
        "https://bridge.example.org:99999",
    ],
)
def test_public_url_must_be_an_origin_x_can_append_a_path_to(url: str) -> None:
    [line] = problems(complete_env(PUBLIC_URL=url))
    assert line.startswith("PUBLIC_URL=") and "PUBLIC_URL" in fix_for(line)


def test_public_url_in_capitals_is_used_in_the_spelling_x_compares() -> None:
    settings = Settings.from_env(complete_env(PUBLIC_URL="HTTPS://Bridge.Example.ORG/"))
    assert settings.redirect_uri == "https://bridge.example.org/x/oauth/callback"

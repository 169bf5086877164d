"""Every place that documents configuration lists exactly the variables Settings reads."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from adapters.ops.config_doc import BY_NAME, ENV_VARS, fix_for
from bridge.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
READERS = {"get", "required", "integer", "number", "url", "choice", "flag", "slack_user_ids"}
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]+$")


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
    assert app["formation"]["web"]["quantity"] == 1  # SQLite: exactly one writer
    assert "Persistence" in env["DATABASE_PATH"]["description"]


def test_readme_configuration_table_lists_every_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    in_table = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", section, re.MULTILINE))
    assert in_table == documented()


def test_procfile_runs_migrate_on_release_and_serve_on_web() -> None:
    procfile = (ROOT / "Procfile").read_text().splitlines()
    assert "web: xdm-bridge serve" in procfile and "release: xdm-bridge migrate" in procfile


def test_fix_names_the_variable_and_where_to_find_it() -> None:
    assert fix_for("X_CLIENT_ID is not set: the X app's OAuth 2.0 Client ID").startswith("set X_CLIENT_ID:")
    assert "whole number" not in fix_for("PORT='x' is not a whole number")
    assert fix_for("PORT='x' is not a whole number").startswith("set PORT:")
    assert "README" in fix_for("SOMETHING_ELSE went wrong")

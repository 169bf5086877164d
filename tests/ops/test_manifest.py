"""manifest.yml against the code: routes, Bolt listeners, Slack Web API calls and their scopes.

Adding a listener, a Slack API call or a route without updating the manifest (and
adapters/slack/scopes.py) fails here, before a deployed app silently lacks a scope.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.scopes import BOT_SCOPES, COMMAND_SCOPES, EVENT_SCOPES, METHOD_SCOPES, slack_method
from adapters.web.app import SERVICES, create_app
from bridge.confirm import ACTIONS as CONFIRMATION_ACTIONS
from bridge.connect import CANCEL_ACTION, CONFIRM_ACTION
from bridge.home import CONNECT_ACTION, DISCONNECT_ACTION, NEW_BRIDGE_ACTION, UNLINK_ACTION
from bridge.modals import BRIDGE_MODAL, PEOPLE_ACTION
from bridge.settings import Settings
from tests.harness import running_bridge

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "manifest.yml"
# Code that talks to the real Slack. The simulators and the sandbox only talk to simulated Slack.
HOME_ACTIONS = (CONNECT_ACTION, DISCONNECT_ACTION, NEW_BRIDGE_ACTION, UNLINK_ACTION)
NOT_REAL_SLACK = ("adapters/sandbox/", "adapters/sandbox/sandbox")
SLACK_METHODS = {name for name in vars(AsyncWebClient) if not name.startswith("_")}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    data = yaml.safe_load(MANIFEST.read_text())
    assert isinstance(data, dict)
    return data


def slack_api_calls() -> dict[str, list[str]]:
    """Slack method → places in adapters/ that call it (``x.reactions_add(...)`` and the like)."""
    calls: dict[str, list[str]] = {}
    for path in sorted((ROOT / "adapters").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(NOT_REAL_SLACK):
            continue
        for node in ast.walk(ast.parse(path.read_text(), relative)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in SLACK_METHODS
            ):
                calls.setdefault(slack_method(node.func.attr), []).append(f"{relative}:{node.lineno}")
    return calls


def test_manifest_has_the_one_paste_shape(manifest: dict[str, Any]) -> None:
    assert manifest["_metadata"]["major_version"] == 1
    settings = manifest["settings"]
    assert settings["socket_mode_enabled"] is False
    assert settings["interactivity"]["is_enabled"] is True
    [command] = manifest["features"]["slash_commands"]
    assert command["command"] == "/xdm"
    assert command["usage_hint"] and command["description"]
    # Slack must pass "@alice" through untouched: the bridge parses X handles, not Slack mentions.
    assert command["should_escape"] is False
    assert "should_escape: false, on purpose" in MANIFEST.read_text()
    urls = [
        command["url"],
        settings["event_subscriptions"]["request_url"],
        settings["interactivity"]["request_url"],
    ]
    assert all(url.startswith("https://YOUR-HOST/") for url in urls), urls
    assert {"message.channels", "message.groups"} <= set(settings["event_subscriptions"]["bot_events"])


def test_every_slack_url_in_the_manifest_is_a_post_route(manifest: dict[str, Any]) -> None:
    settings = manifest["settings"]
    urls = [
        *(c["url"] for c in manifest["features"]["slash_commands"]),
        settings["event_subscriptions"]["request_url"],
        settings["interactivity"]["request_url"],
    ]
    app = create_app(
        Settings(signing_secret="s", bot_token="xoxb-t", x_client_id="c", encryption_keys=("k",))
    )
    post_routes = {r.resource.canonical for r in app.router.routes() if r.method == "POST" and r.resource}
    for url in urls:
        assert urlsplit(url).path in post_routes, f"{url} is not served (POST routes: {sorted(post_routes)})"


def test_scopes_are_exactly_what_the_code_uses(manifest: dict[str, Any]) -> None:
    requested = set(manifest["oauth_config"]["scopes"]["bot"])
    assert requested == BOT_SCOPES, (
        f"missing from manifest: {sorted(BOT_SCOPES - requested)}; unused: {sorted(requested - BOT_SCOPES)}"
    )
    assert "user" not in manifest["oauth_config"]["scopes"]  # the bridge acts only as its bot
    events = manifest["settings"]["event_subscriptions"]["bot_events"]
    assert set(events) == set(EVENT_SCOPES), "manifest bot_events and slack_scopes.EVENT_SCOPES differ"
    assert set(COMMAND_SCOPES) <= requested


def test_the_readme_lists_the_same_scopes() -> None:
    """One list (adapters/slack/scopes.py): the manifest, the code's calls and the README agree."""
    readme = (ROOT / "README.md").read_text()
    sentence = re.search(r"exactly the bot scopes the code uses:(.*?)\.\s", readme, re.DOTALL)
    assert sentence is not None, "the README no longer lists the bot scopes"
    assert set(re.findall(r"`([a-z:.]+)`", sentence.group(1))) == BOT_SCOPES


def test_every_slack_api_call_in_the_adapters_has_its_scopes_listed() -> None:
    calls = slack_api_calls()
    assert "reactions.add" in calls and "users.info" in calls, "the AST scan found no Slack calls at all"
    unlisted = {method: where for method, where in calls.items() if method not in METHOD_SCOPES}
    assert not unlisted, (
        f"Slack Web API calls without an entry in adapters/slack/scopes.METHOD_SCOPES: {unlisted}; "
        "add the method with its scopes, and the scopes to manifest.yml"
    )
    # And nothing listed that the code no longer calls (Bolt itself calls auth.test).
    stale = set(METHOD_SCOPES) - set(calls) - {"auth.test"}
    assert not stale, f"METHOD_SCOPES lists methods nothing calls: {sorted(stale)}"


def probes(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One request body per event subscription and slash command in the manifest."""
    bodies: dict[str, dict[str, Any]] = {}
    for subscription in manifest["settings"]["event_subscriptions"]["bot_events"]:
        event_type, _, where = subscription.partition(".")
        event = {"type": event_type, "channel": "C1", "user": "U1", "ts": "1.000001", "text": "hi"}
        if where:
            event["channel_type"] = {"channels": "channel", "groups": "group"}[where]
        bodies[subscription] = {"type": "event_callback", "team_id": "T1", "event_id": "Ev1", "event": event}
    interactivity = manifest["settings"].get("interactivity", {})
    if interactivity.get("is_enabled"):
        # The connect question's buttons, the Home's, Confirm / Cancel of unlink and disconnect.
        for action_id in (CONFIRM_ACTION, CANCEL_ACTION, *HOME_ACTIONS, *CONFIRMATION_ACTIONS):
            bodies[f"block_actions {action_id}"] = {
                "type": "block_actions",
                "team": {"id": "T1"},
                "user": {"id": "U1", "team_id": "T1"},
                "actions": [{"action_id": action_id, "type": "button", "value": "p1"}],
            }
        bodies["view_submission"] = {
            "type": "view_submission",
            "team": {"id": "T1"},
            "user": {"id": "U1", "team_id": "T1"},
            "view": {"type": "modal", "callback_id": BRIDGE_MODAL, "state": {"values": {}}},
        }
    if interactivity.get("message_menu_options_url"):
        bodies["block_suggestion"] = {
            "type": "block_suggestion",
            "team": {"id": "T1"},
            "user": {"id": "U1", "team_id": "T1"},
            "action_id": PEOPLE_ACTION,
            "block_id": "b",
            "value": "ali",
        }
    for command in manifest["features"]["slash_commands"]:
        bodies[command["command"]] = {
            "command": command["command"],
            "text": "help",
            "team_id": "T1",
            "user_id": "U1",
            "channel_id": "C1",
        }
    return bodies


async def test_bolt_listeners_and_manifest_subscriptions_match(
    tmp_path: Path, manifest: dict[str, Any]
) -> None:
    """Every subscription has a listener (else Slack gets 404s) and every listener a subscription."""
    bodies = probes(manifest)
    async with running_bridge(tmp_path) as bridge:
        bolt = bridge.app[SERVICES].bolt
        listeners = bolt._async_listeners  # Bolt keeps no public list; the composition built these
        assert listeners, "no Bolt listeners registered"
        matched: dict[str, set[int]] = {name: set() for name in bodies}
        for index, listener in enumerate(listeners):
            for name, body in bodies.items():
                # socket_mode only lets the request carry an already-parsed body; matching is the same.
                request = AsyncBoltRequest(body=body, headers={}, mode="socket_mode")
                if await listener.async_matches(req=request, resp=BoltResponse(status=200)):
                    matched[name].add(index)
        unheard = [name for name, hits in matched.items() if not hits]
        assert not unheard, f"manifest subscribes to {unheard} but no Bolt listener handles them"
        covered = set().union(*matched.values())
        orphans = [i for i in range(len(listeners)) if i not in covered]
        assert not orphans, (
            f"Bolt listeners {orphans} match nothing manifest.yml subscribes to: add the event "
            "(and its scopes in adapters/slack/scopes.py) to the manifest"
        )


def test_the_install_redirect_url_is_served_in_install_mode(manifest: dict[str, Any]) -> None:
    [redirect] = manifest["oauth_config"]["redirect_urls"]
    assert redirect.startswith("https://YOUR-HOST/")
    assert manifest["settings"]["org_deploy_enabled"] is False  # org-wide installs are refused
    settings = Settings(
        signing_secret="s",
        bot_token="",
        x_client_id="c",
        encryption_keys=("k",),
        slack_client_id="1.2",
        slack_client_secret="secret",
    )
    gets = {
        r.resource.canonical for r in create_app(settings).router.routes() if r.method == "GET" and r.resource
    }
    assert {urlsplit(redirect).path, "/slack/install"} <= gets
    # One workspace (a bot token): no install pages to find.
    single = Settings(signing_secret="s", bot_token="xoxb-t", x_client_id="c", encryption_keys=("k",))
    single_gets = {r.resource.canonical for r in create_app(single).router.routes() if r.resource}
    assert "/slack/install" not in single_gets

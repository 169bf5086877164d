"""What the README and docs/ name exists: the commands, settings, routes and links a newcomer copies."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.ops.cli import build_parser
from adapters.ops.config_doc import BY_NAME
from adapters.web.app import create_app
from bridge.commands import Help, parse
from bridge.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
WORD = re.compile(r"^[a-z][a-z-]*$")


def text_outside_fences(page: Path) -> str:
    return re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def positional_choices(parser: argparse.ArgumentParser) -> set[str]:
    return {
        str(choice)
        for action in parser._actions
        if not action.option_strings and action.choices and not isinstance(action, argparse._SubParsersAction)
        for choice in action.choices
    }


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._actions for name in action.option_strings}


def check_cli(words: list[str]) -> str | None:
    """Walk ``xdm-bridge WORDS…`` down the real parser; say what it does not know, else None."""
    parser = build_parser()
    for position, word in enumerate(words):
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            if flag not in options(parser):
                return f"no option {flag} after {words[:position]}"
            continue
        if not WORD.match(word):
            return None  # an argument (ID, @handle, URL…): the rest is the command's own
        nested = subparsers(parser)
        if word in nested:
            parser = nested[word]
        elif word in positional_choices(parser):
            continue
        elif nested or position == 0:
            return f"no command {' '.join(words[: position + 1])}"
        else:
            return None
    return None


def code(page: Path) -> str:
    """The page's code: fenced blocks and inline spans (where commands are; prose names the app)."""
    text = page.read_text()
    blocks = re.findall(r"```.*?\n(.*?)```", text, re.DOTALL)
    spans = re.findall(r"(?<!`)`([^`]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    return "\n".join(blocks + spans)


def cli_mentions(page: Path) -> list[list[str]]:
    """Every ``xdm-bridge …`` the page shows, as the words after it (``|`` alternatives split)."""
    found = []
    for match in re.finditer(r"xdm-bridge((?: [^\s`|)\]]+)+)", code(page)):
        found.append(match.group(1).split())
    for match in re.finditer(r"xdm-bridge ([a-z-]+) \[?([a-z|-]+)\]?", code(page)):
        for word in match.group(2).split("|"):
            found.append([match.group(1), word])
    return found


def test_the_walk_refuses_what_the_cli_lacks() -> None:
    assert check_cli(["xchat", "setup", "@team"]) is None
    assert check_cli(["webhook", "replay", "--minutes", "5"]) is None
    assert check_cli(["outbox", "retry", "--all-failed"]) is None
    assert check_cli(["xchat", "forgett"]) is not None
    assert check_cli(["keygen", "--keep"]) is not None
    assert check_cli(["install"]) is not None


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_cli_command_the_docs_name_exists(page: Path) -> None:
    mentions = cli_mentions(page)
    unknown = {" ".join(words): why for words in mentions if (why := check_cli(words))}
    assert not unknown, unknown


def test_the_readme_names_the_cli_commands_it_relies_on() -> None:
    """So that the test above cannot pass on a README that lost them."""
    named = {" ".join(words[:2]) for words in cli_mentions(README)}
    assert {"keygen --save", "xchat setup", "xchat forget", "accounts disconnect"} <= named
    assert {"sandbox", "serve", "doctor", "workspaces", "copy-db"} <= {
        words[0] for words in cli_mentions(README)
    }


def test_every_slash_command_the_readme_names_is_one_the_bridge_knows() -> None:
    verbs = set(re.findall(r"`/xdm ([a-z-]+)", README.read_text()))
    assert {"connect", "dm", "new-group", "link", "unlink", "disconnect", "status", "help"} <= verbs
    for verb in verbs:
        example = {"dm": "dm @alice", "new-group": "new-group @alice @bob", "link": "link 1000-2001"}
        command = parse(example.get(verb, verb))
        assert not (isinstance(command, Help) and command.unknown), verb


def test_every_setting_the_readme_names_is_read() -> None:
    named = set(re.findall(r"`([A-Z][A-Z0-9_]{3,})(?:=[^`]*)?`", README.read_text()))
    named |= set(re.findall(r"\b([A-Z][A-Z0-9_]+)=", README.read_text()))
    assert {"SLACK_BOT_TOKEN", "SLACK_CLIENT_ID", "DATABASE_URL", "RETENTION_DAYS"} <= named
    not_settings = {"YOUR", "YOUR-HOST"}
    assert sorted(n for n in named - not_settings if n not in BY_NAME) == []


def routes(settings: Settings) -> set[str]:
    app = create_app(settings)
    return {r.resource.canonical for r in app.router.routes() if r.resource}


def test_every_route_the_readme_names_is_served() -> None:
    base = {"signing_secret": "s", "x_client_id": "c", "encryption_keys": ("k",)}
    served = routes(Settings(bot_token="xoxb-t", **base)) | routes(  # type: ignore[arg-type]
        Settings(bot_token="", slack_client_id="1.2", slack_client_secret="c", **base)  # type: ignore[arg-type]
    )
    named = set(re.findall(r"`(/(?:slack/|x/|healthz|metrics)[a-z_/]*)`", README.read_text()))
    named |= {urlpath for urlpath in re.findall(r"https://YOUR-HOST(/[a-z_/]+)", README.read_text())}
    assert {"/slack/events", "/slack/install", "/x/oauth/callback", "/healthz", "/metrics"} <= named
    assert sorted(named - served) == []


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text_outside_fences(page), re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text_outside_fences(page)):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in anchors(linked)):
            broken.append(target)
    assert broken == []


def test_the_anchor_rule_matches_githubs() -> None:
    assert github_anchor('One workspace or many ("Add to Slack")') == "one-workspace-or-many-add-to-slack"
    assert github_anchor("Push from X (real-time replies)") == "push-from-x-real-time-replies"
    assert (
        github_anchor("Slack's surfaces: the Home tab, the `/xdm` form, Confirm / Cancel")
        == "slacks-surfaces-the-home-tab-the-xdm-form-confirm--cancel"
    )


def test_the_quickstart_is_the_two_commands_that_need_nothing_else() -> None:
    """The README's first commands work on a fresh clone: the sandbox and the tests."""
    text = README.read_text()
    first = re.search(r"```sh\n(.*?)```", text, re.DOTALL)
    assert first is not None and text.index("```sh") < text.index("## What it does")
    commands = [line for line in first.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install -e '.[sandbox]' && .venv/bin/xdm-bridge sandbox",
        "bash .ci/run",
    ]
    assert (ROOT / ".ci" / "run").is_file()


def test_the_readme_stays_short_and_in_a_newcomers_order() -> None:
    text = README.read_text()
    assert len(text.split()) < 2500
    order = ["## Quickstart", "## What it does and does not do", "## What it costs", "## Set up", "## Deploy"]
    order.append("## Data and privacy")
    assert [text.index(heading) for heading in order] == sorted(text.index(heading) for heading in order)


@pytest.mark.parametrize(
    "stale",
    [
        "does not reach X's encrypted",
        "serves one Slack workspace",
        "Serve more than one Slack workspace",
        "being built",
    ],
)
def test_no_page_repeats_a_claim_the_code_outgrew(stale: str) -> None:
    assert [page.name for page in PAGES if stale.lower() in page.read_text().lower()] == []


@pytest.mark.process
def test_the_heroku_lines_pasted_twice_set_the_same_key(tmp_path: Path) -> None:
    """``$(xdm-bridge keygen)`` in ``heroku config:set`` made a new key on every paste, and the
    second paste left the stored tokens unreadable. The README's lines take the key from ``.env``."""
    [block] = [
        b for b in re.findall(r"```sh\n(.*?)```", README.read_text(), re.DOTALL) if "heroku create" in b
    ]
    lines = [line for line in block.splitlines() if "keygen" in line or "BRIDGE_ENCRYPTION_KEY" in line]
    assert len(lines) == 2 and "$(" not in lines[0]
    # Run as a shell runs them, with this checkout's command for `.venv/bin/xdm-bridge` and a
    # stand-in for `heroku config:set` that prints what it would set.
    script = "\n".join(lines).replace(".venv/bin/xdm-bridge", f"{sys.executable} -m bridge")
    script = script.replace("heroku config:set", "printf '%s\\n'")
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "DATABASE_", "SLACK_", "X_"))
    }
    clean["PYTHONPATH"] = str(ROOT)
    runs = [
        subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=60
        )
        for _ in range(2)
    ]
    assert [run.returncode for run in runs] == [0, 0], [run.stderr for run in runs]
    first, second = (run.stdout.strip() for run in runs)
    assert first == second and re.fullmatch(r"BRIDGE_ENCRYPTION_KEY=[A-Za-z0-9_-]{43}=", first)

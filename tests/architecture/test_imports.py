"""The layout's promises, checked on the real import graph of a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What `xdm-bridge serve` loads: the CLI, its parser, then the web app and everything it wires.
SERVE_PATH = """
import json, sys
from adapters.ops import cli
args = cli.build_parser().parse_args(["serve"])
assert args.func is cli.cmd_serve
import adapters.web.app
print(json.dumps(sorted(sys.modules)))
"""


def loaded_modules(script: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout)
    return modules


def test_serve_imports_nothing_from_the_sandbox() -> None:
    modules = loaded_modules(SERVE_PATH)
    assert "adapters.web.app" in modules and "adapters.ops.cli" in modules  # the script did run
    assert [m for m in modules if m.startswith("adapters.sandbox")] == []


def test_the_core_imports_no_edge_library() -> None:
    script = (
        "import json, sys, pkgutil, importlib, bridge\n"
        "for m in pkgutil.iter_modules(bridge.__path__):\n"
        "    if m.name == '__main__': continue\n"
        "    importlib.import_module(f'bridge.{m.name}')\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    modules = loaded_modules(script)
    assert "bridge.delivery" in modules
    edges = ("aiohttp", "slack_bolt", "slack_sdk", "sqlite_utils", "asyncpg", "authlib", "adapters")
    assert [m for m in modules if m.split(".")[0] in edges] == []


def test_a_production_install_needs_no_simulator_library_and_the_sandbox_says_which_extra() -> None:
    """`serve` loads no spec validator (the sandbox extra) and no Litestream (its own extra), and
    `xdm-bridge sandbox` without its extra says in one line what to install."""
    modules = loaded_modules(SERVE_PATH)
    heavy = ("openapi_schema_validator", "jsonschema", "pydantic", "litestream")
    assert [m for m in modules if m.split(".")[0] in heavy] == []

    blocked = (
        "import sys\n"
        "sys.modules['openapi_schema_validator'] = None  # as if the extra were not installed\n"
        "from adapters.ops.cli import main\n"
        "raise SystemExit(main(['sandbox', '--no-open']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert "'.[sandbox]'" in line

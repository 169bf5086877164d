"""``xdm-bridge sandbox``: placeholder until the sandbox lands (issue 5)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8000, help="port of the sandbox page")


def run(args: argparse.Namespace) -> int:
    raise SystemExit("xdm-bridge sandbox is not built yet")

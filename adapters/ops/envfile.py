"""The ``.env`` file: where a local install keeps its settings, and above all its key.

``serve``, ``migrate`` and the operator commands read ``.env`` from the directory they run in,
as ``heroku local``, foreman and docker compose do; a variable already in the environment wins
over the file. ``keygen --save .env`` writes a key there once and never replaces one, so the
README's commands can be pasted twice without losing the key that opens the stored tokens.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from dotenv import dotenv_values, set_key
from dotenv.parser import parse_stream

from adapters.store.crypto import generate_key

log = logging.getLogger("adapters.ops.envfile")

DEFAULT = Path(".env")
KEY = "BRIDGE_ENCRYPTION_KEY"


def load(path: Path = DEFAULT) -> list[str]:
    """Put the file's variables into ``os.environ`` where the environment has none (or an
    empty one); returns the names taken from the file. No file: nothing, quietly."""
    if not path.is_file():
        return []
    taken = []
    for name, value in dotenv_values(path).items():
        if value is not None and not os.environ.get(name, "").strip():
            os.environ[name] = value
            taken.append(name)
    return taken


class HiddenKey(Exception):
    """The file has a key on one line and an empty one on a later line, which hides it."""


def _keys_in(path: Path) -> list[str]:
    """Every value the file gives ``KEY``, in order (a file may set a name twice)."""
    with path.open(encoding="utf-8") as source:
        return [(b.value or "").strip() for b in parse_stream(source) if b.key == KEY and not b.error]


def save_key(path: Path) -> tuple[bool, str]:
    """Make sure ``path`` holds a ``BRIDGE_ENCRYPTION_KEY``: write one only where there is none
    or an empty one, the environment's if it has one, else a new one. Returns (whether a key was
    written, the key in the file).

    Writing replaces every line that sets the name, so a key on any line stops it: with an empty
    line after it (``.env.example`` appended) the key is hidden, and ``HiddenKey`` says so."""
    existing = (dotenv_values(path).get(KEY) or "").strip() if path.is_file() else ""
    if existing:
        return False, existing
    if path.is_file() and any(_keys_in(path)):
        raise HiddenKey(
            f"{path} sets {KEY} more than once and a later empty line hides the key above it: "
            "remove the empty line (no new key was written, as it would replace that one)"
        )
    # A key this environment already uses (not from this file, which has none) opens what is
    # stored: that is the one to keep, never a new one beside it.
    key = os.environ.get(KEY, "").strip() or generate_key()
    # Private: it holds the key to every stored token. A file copied from .env.example is
    # usually readable by everyone on the machine; it is made the owner's before the key goes in.
    if not path.exists():
        path.touch(mode=0o600)
    else:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            path.chmod(mode & ~0o077)
    set_key(path, KEY, key, quote_mode="never")
    return True, key

"""Logging: one structured line per event; JSON on a dyno, readable text on a terminal.

Context (team, channel, outbox ids…) travels in ``extra=``. A filter masks anything
that looks like a credential, as a last line of defence: code never logs tokens.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from time import monotonic
from typing import Any

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName"}
# Slack's tokens (bot, user, app; a rotating one, xoxe.xoxb-…, and its refresh token, xoxe-…),
# and bearer or basic credentials (16+ characters, so "Basic Information" stays).
_SECRET = re.compile(
    r"(xox[a-z](?:\.xox[a-z])?-[A-Za-z0-9-]+|Bearer\s+[A-Za-z0-9._~+/=-]+|Basic\s+[A-Za-z0-9+/]{16,}={0,2})"
)
_KNOWN: list[str] = []  # the configured secrets' values, longest first


def _mask(value: str) -> str:
    for secret in _KNOWN:
        if secret in value:
            value = value.replace(secret, "[redacted]")
    return _SECRET.sub("[redacted]", value)


def _masked(value: Any) -> Any:
    """``value`` for a JSON line, with every string in it masked: context may be headers, a
    list or an exception object, whose text ``json.dumps(default=str)`` would write unmasked."""
    if isinstance(value, str):
        return _mask(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {_mask(str(k)): _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_masked(v) for v in value]
    return _mask(str(value))


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _mask(record.getMessage()),
        }
        for key, value in _context(record).items():
            line[key] = _masked(value)
        if record.exc_info:
            line["exc"] = _mask(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        context = " ".join(f"{k}={v}" for k, v in _context(record).items())
        text = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if context:
            text += f"  [{context}]"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return _mask(text)


def setup_logging(level: str = "INFO", fmt: str = "auto", secrets: tuple[str, ...] = ()) -> None:
    """Configure the root logger once; ``fmt`` is json, text or auto (text on a TTY).

    ``secrets`` (the configured ones: signing secret, tokens, keys) are masked wherever they
    would appear, whatever logged them; tokens made at run time are masked by their shape.
    """
    _KNOWN[:] = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log would be one line per Slack event; keep it at warning.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class Sparse:
    """Log a recurring line at most once per ``every`` seconds per reason, with how many were
    folded in since: a flood of refused requests costs a line a minute, not a line each."""

    def __init__(self, logger: logging.Logger, every: float = 60.0, clock: Callable[[], float] = monotonic):
        self._log = logger
        self._every = every
        self._clock = clock
        self._last: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def warning(self, message: str, reason: str, **extra: Any) -> bool:
        """Log ``message`` for ``reason`` unless it was logged within ``every``; True if it was."""
        now = self._clock()
        last = self._last.get(reason)
        if last is not None and now - last < self._every:
            self._folded[reason] = self._folded.get(reason, 0) + 1
            return False
        self._last[reason] = now
        folded = self._folded.pop(reason, 0)
        self._log.warning(message, extra={**extra, "reason": reason, "similar_since_last": folded})
        return True

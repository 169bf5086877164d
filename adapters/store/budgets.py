"""X's rate-limit windows (``bridge.ports.BudgetStore``), kept so a restart keeps respecting them:
one SQL for both engines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapters.store.engine import Engine
from adapters.store.roles import StoreBase

Window = tuple[str, int, int, float]  # key, limit, remaining, reset_at

ON_CONFLICT = (
    "ON CONFLICT (key) DO UPDATE SET limit_ = excluded.limit_, remaining = excluded.remaining, "
    "reset_at = excluded.reset_at"
)


def save_sql(count: int) -> str:
    """An upsert of ``count`` windows in one statement (``?`` placeholders, four per window)."""
    values = ", ".join(["(?, ?, ?, ?)"] * count)
    return f"INSERT INTO budgets (key, limit_, remaining, reset_at) VALUES {values} {ON_CONFLICT}"


def latest(windows: Sequence[Window]) -> list[Window]:
    """One window per key, the last one given winning (as saving them one by one would;
    PostgreSQL refuses one upsert touching a row twice)."""
    return list({key: (key, limit, left, float(reset)) for key, limit, left, reset in windows}.values())


def save_params(windows: Sequence[Window]) -> tuple[int, list[Any]]:
    """How many rows (``latest``) and their values."""
    rows = latest(windows)
    return len(rows), [value for window in rows for value in window]


async def save_windows(engine: Engine, windows: Sequence[Window]) -> None:
    """Upsert the windows with one statement, on ``engine`` (or a transaction of it, so they commit
    with the caller's other work)."""
    count, params = save_params(windows)
    if count:
        await engine.execute(save_sql(count), *params)


class BudgetsRole(StoreBase):
    """The ``budgets`` table: one row per window key."""

    async def load_budgets(self) -> list[dict[str, Any]]:
        return await self.engine.fetch("SELECT key, limit_, remaining, reset_at FROM budgets")

    async def save_budgets(self, windows: Sequence[Window]) -> None:
        """Several windows in one statement, so one commit (a send touches three)."""
        await save_windows(self.engine, windows)

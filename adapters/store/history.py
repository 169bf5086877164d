"""How far a newly bridged conversation's history is (``bridge.commands.HistoryProgress``): one
SQL for both engines, read by `/xdm status` on whichever instance answers."""

from __future__ import annotations

from adapters.store.engine import Engine
from bridge.model import HistoryState


class HistoryStore:
    """Reads ``backfills`` (a history still to read from X) and the channel's ``inbound`` rows of
    origin ``backfill`` (read, then posted one by one)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def history(
        self, account_id: int, conversation_id: str, team_id: str, channel_id: str
    ) -> HistoryState:
        asked = await self._engine.fetch(
            "SELECT bridged_at FROM backfills WHERE account_id = ? AND conversation_id = ?",
            account_id,
            conversation_id,
        )
        counts = await self._engine.fetch(
            "SELECT state, COUNT(*) AS n FROM inbound WHERE team_id = ? AND channel_id = ? "
            "AND origin = 'backfill' GROUP BY state",
            team_id,
            channel_id,
        )
        by_state = {str(r["state"]): int(r["n"]) for r in counts}
        waiting = sum(n for state, n in by_state.items() if state in ("queued", "posting", "held"))
        return HistoryState(to_read=bool(asked), posted=by_state.get("posted", 0), waiting=waiting)

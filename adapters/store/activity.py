"""When a channel last carried a message (``bridge.home.Activity``): one SQL for both engines."""

from __future__ import annotations

from adapters.store.engine import Engine


class ActivityStore:
    """Reads the outbox (sent to X) and inbound (posted from X) rows of a channel."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def last_activity(self, team_id: str, channel_id: str) -> float | None:
        rows = await self._engine.fetch(
            "SELECT (SELECT MAX(sent_at) FROM outbox WHERE team_id = ? AND channel_id = ?) AS sent, "
            "(SELECT MAX(posted_at) FROM inbound WHERE team_id = ? AND channel_id = ?) AS posted",
            team_id,
            channel_id,
            team_id,
            channel_id,
        )
        found = [float(v) for v in (rows[0]["sent"], rows[0]["posted"]) if v is not None] if rows else []
        return max(found) if found else None

"""Consents (``bridge.connect.Consents``): one SQL for both engines."""

from __future__ import annotations

from adapters.store.engine import Engine
from bridge.connect import Consent


class ConsentStore:
    """The ``consents`` table: append-only, one row per connection confirmed."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def record_consent(self, consent: Consent) -> None:
        await self._engine.execute(
            "INSERT INTO consents (team_id, slack_user_id, x_user_id, x_username, text, given_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            consent.team_id,
            consent.slack_user_id,
            consent.x_user_id,
            consent.x_username,
            consent.text,
            consent.given_at,
        )

    async def consents_of(self, team_id: str, slack_user_id: str) -> list[Consent]:
        rows = await self._engine.fetch(
            "SELECT team_id, slack_user_id, x_user_id, x_username, text, given_at FROM consents "
            "WHERE team_id = ? AND slack_user_id = ? ORDER BY given_at",
            team_id,
            slack_user_id,
        )
        return [
            Consent(
                r["team_id"],
                r["slack_user_id"],
                r["x_user_id"],
                r["x_username"],
                r["text"],
                float(r["given_at"]),
            )
            for r in rows
        ]

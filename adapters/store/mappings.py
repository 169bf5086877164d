"""Channel mappings (a Slack channel bridged to an X conversation): one SQL for both engines
(``bridge.ports.MappingStore``)."""

from __future__ import annotations

import json
from typing import Any

from adapters.store import rows
from adapters.store.engine import Engine
from adapters.store.inbound import request_backfill_in
from adapters.store.roles import StoreBase
from bridge.model import ChannelMapping, OutboxItem
from migrations import PENDING_STATES

LIST_PAGE = 1_000  # mappings a read of list_mappings
_IN_ORDER = " ORDER BY team_id, channel_id LIMIT ?"


class MappingsRole(StoreBase):
    """The ``mappings`` table."""

    async def get_mapping(self, team_id: str, channel_id: str) -> ChannelMapping | None:
        row = await self.engine.fetchone(
            "SELECT * FROM mappings WHERE team_id = ? AND channel_id = ?", team_id, channel_id
        )
        return rows.mapping(row) if row else None

    async def create_mapping(
        self, mapping: ChannelMapping, *, history: bool = False
    ) -> ChannelMapping | None:
        conversation_id = mapping.conversation_id
        if history and conversation_id:

            async def work(tx: Engine) -> bool:
                created = await _insert(tx, mapping)
                if created:
                    await request_backfill_in(tx, mapping.account_id, conversation_id, mapping.created_at)
                return created

            created = await self.engine.atomic(work)
        else:
            # One statement needs no transaction of its own (on PostgreSQL: no BEGIN/COMMIT trips).
            created = await _insert(self.engine, mapping)
        return mapping if created else None

    async def delete_mapping(
        self, team_id: str, channel_id: str, *, made: ChannelMapping | None = None
    ) -> ChannelMapping | None:
        sql = "DELETE FROM mappings WHERE team_id = ? AND channel_id = ?"
        params: list[Any] = [team_id, channel_id]
        if made is not None:
            sql += " AND created_by = ? AND created_at = ?"
            params += [made.created_by, made.created_at]
        row = await self.engine.fetchone(sql + " RETURNING *", *params)
        return rows.mapping(row) if row else None

    async def abandon_group(
        self, team_id: str, channel_id: str, group: tuple[str, ...]
    ) -> tuple[ChannelMapping | None, list[OutboxItem]]:
        members = json.dumps(list(group))  # as create_mapping and accept write it

        async def work(tx: Engine) -> tuple[ChannelMapping | None, list[OutboxItem]]:
            # Deleting the mapping row waits for (and then excludes) an accept holding its lock.
            row = await tx.fetchone(
                "DELETE FROM mappings WHERE team_id = ? AND channel_id = ? AND kind = 'group' "
                "AND conversation_id IS NULL AND participant_ids = ? RETURNING *",
                team_id,
                channel_id,
                members,
            )
            found = await tx.fetch(
                "SELECT * FROM outbox WHERE team_id = ? AND channel_id = ? AND target_group = ? "
                f"AND state IN {PENDING_STATES} ORDER BY seq, part",
                team_id,
                channel_id,
                members,
            )
            return (rows.mapping(row) if row else None), [rows.item(r) for r in found]

        return await self.engine.atomic(work)

    async def set_conversation_id(self, team_id: str, channel_id: str, conversation_id: str) -> None:
        await self.engine.execute(
            "UPDATE mappings SET conversation_id = ? WHERE team_id = ? AND channel_id = ?",
            conversation_id,
            team_id,
            channel_id,
        )

    async def list_mappings(self) -> list[ChannelMapping]:
        # A page a read, by the key: 100,000 mappings in one read held SQLite's only thread for
        # over a second, and every ack and send with it; between pages they go.
        found: list[ChannelMapping] = []
        page = await self.engine.fetch(f"SELECT * FROM mappings{_IN_ORDER}", LIST_PAGE)
        while True:
            found += [rows.mapping(r) for r in page]
            if len(page) < LIST_PAGE:
                return found
            team_id, channel_id = page[-1]["team_id"], page[-1]["channel_id"]
            page = await self.engine.fetch(
                f"SELECT * FROM mappings WHERE team_id > ? OR (team_id = ? AND channel_id > ?){_IN_ORDER}",
                team_id,
                team_id,
                channel_id,
                LIST_PAGE,
            )


async def _insert(engine: Engine, mapping: ChannelMapping) -> bool:
    """Whether the mapping was written (no other is there for its channel)."""
    row = rows.mapping_row(mapping)
    written = await engine.execute(
        rows.insert_sql("mappings", row) + " ON CONFLICT DO NOTHING", *row.values()
    )
    return written == 1

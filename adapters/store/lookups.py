"""Targeted reads of accounts and mappings, written once over the ``Engine`` seam.

The hot paths (a push, an echo check, a Home view, a poll's starting point) used to list every
account and mapping and filter in Python: their cost grew with the deployment, and listing
accounts decrypts every account's tokens. These read only the rows asked for, by index.
"""

from __future__ import annotations

from collections.abc import Sequence

from adapters.store import rows
from adapters.store.engine import marks, where
from adapters.store.roles import StoreBase
from bridge.model import Account, ChannelMapping


class LookupsRole(StoreBase):
    """Accounts and mappings by what the caller knows of them."""

    async def find_accounts(
        self, *, team_id: str | None = None, x_user_id: str | None = None
    ) -> list[Account]:
        clause, params = where(team_id=team_id, x_user_id=x_user_id)
        found = await self.engine.fetch(f"SELECT * FROM accounts{clause} ORDER BY id", *params)
        return [rows.account(r, self._cipher, self._unreadable_accounts) for r in found]

    async def find_mappings(
        self,
        *,
        team_id: str | None = None,
        account_id: int | None = None,
        conversation_id: str | None = None,
    ) -> list[ChannelMapping]:
        clause, params = where(team_id=team_id, account_id=account_id, conversation_id=conversation_id)
        found = await self.engine.fetch(
            f"SELECT * FROM mappings{clause} ORDER BY team_id, channel_id", *params
        )
        return [rows.mapping(r) for r in found]

    async def accounts_with_groups(self) -> set[int]:
        # A group: made by the bridge (one being created has no id yet), or linked by its id (a
        # 1-to-1's id is "A-B"). Ids only: the poller asks on each pass, and converting 100,000
        # mappings for it cost more than the pass.
        found = await self.engine.fetch(
            "SELECT DISTINCT account_id FROM mappings WHERE kind = 'group' "
            "OR (conversation_id <> '' AND conversation_id NOT LIKE '%-%')"
        )
        return {int(r["account_id"]) for r in found}

    async def first_bridged_at(self, account_id: int) -> float | None:
        # By ``mappings_account``: the account's own mappings only.
        row = await self.engine.fetchone(
            "SELECT MIN(created_at) AS t FROM mappings WHERE account_id = ?", account_id
        )
        return None if row is None or row["t"] is None else float(row["t"])

    async def account_ids_to_read(self) -> list[int]:
        # Ids only: the poller asks on each pass, and listing the accounts decrypted every token.
        found = await self.engine.fetch("SELECT id FROM accounts WHERE needs_reconnect = 0 ORDER BY id")
        return [int(r["id"]) for r in found]

    async def accounts_by_id(self, ids: Sequence[int]) -> list[Account]:
        # The accounts a pass works on in one read (its first pass: every account), not one each.
        found: list[Account] = []
        for start in range(0, len(ids), 500):  # under any engine's limit of parameters
            chunk = ids[start : start + 500]
            got = await self.engine.fetch(
                f"SELECT * FROM accounts WHERE id IN ({marks(chunk)}) ORDER BY id", *chunk
            )
            found += [rows.account(r, self._cipher, self._unreadable_accounts) for r in got]
        return found

"""Every role, written once over the ``Engine`` seam, in one class both stores inherit (the host's
side of a role, and what the stores add, is said in ``roles``)."""

from __future__ import annotations

from adapters.store.accounts import AccountsRole, ConnectFlowRole
from adapters.store.budgets import BudgetsRole
from adapters.store.inbound import CursorsRole, InboundRole
from adapters.store.lookups import LookupsRole
from adapters.store.mappings import MappingsRole
from adapters.store.outbox import OutboxMediaRole, OutboxRole
from adapters.store.relay import RelayRole
from adapters.store.roles import StoreBase
from adapters.store.upkeep import UpkeepRole


class RoleStore(
    AccountsRole,
    ConnectFlowRole,
    LookupsRole,
    MappingsRole,
    RelayRole,
    OutboxRole,
    OutboxMediaRole,
    UpkeepRole,
    InboundRole,
    CursorsRole,
    BudgetsRole,
    StoreBase,
):
    """The store's behaviour on either engine."""

    async def ping(self) -> bool:
        return await self.engine.fetchone("SELECT 1 AS ok") is not None

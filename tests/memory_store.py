"""Every role of the store in memory over one set of tables (``MemoryStore``), as the contract
tests and the unit tests use a store: the account side (tests/memory_accounts.py), the inbound
and cursor roles (tests/memory_inbound.py) and the relay, outbox, media and upkeep roles
(tests/memory_outbox.py), each role's rules written once, in its own module.

``MemoryEngine.store()`` is another store on the same tables: what a restart, or a second
instance, of an engine sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.ports import Store
from tests.memory_accounts import MemoryAccounts, MemoryBudgets, MemoryConnectFlow, MemoryMappings
from tests.memory_inbound import MemoryInbound
from tests.memory_outbox import MemoryOutbox
from tests.memory_tables import MemoryTables


class MemoryStore(
    MemoryAccounts, MemoryConnectFlow, MemoryMappings, MemoryBudgets, MemoryInbound, MemoryOutbox
):
    """The whole ``bridge.ports.Store`` in memory, on ``tables``, opened and closed as a store is."""

    async def open(self) -> None:
        """Nothing to open: the tables are there."""

    async def close(self) -> None:
        """Nothing to close: the tables stay for the next store on them."""

    async def ping(self) -> bool:
        return True


@dataclass
class MemoryEngine:
    """The memory "engine" of the contract tests: each ``store()`` another store on one set of
    tables (a restart, or a second instance). It has no SQL to inspect: checks of the stored
    columns stay on the engines."""

    name: str = "memory"
    tables: MemoryTables = field(default_factory=MemoryTables)

    def store(self) -> MemoryStore:
        return MemoryStore(self.tables)


# mypy holds the fake to the whole port (a method missing or of another shape fails the check).
_: Store = MemoryStore()

"""What every role store written once over the ``Engine`` seam may rely on from its host.

A role (accounts, mappings, outbox, inbound, budgets) is a class in its own module whose SQL is
written once, with ``?`` placeholders, against ``self.engine``; ``SqliteStore`` and
``PostgresStore`` inherit it, so the engine-specific classes keep only what really differs
(opening the database, locks across processes, PostgreSQL's NOTIFY and server functions).
"""

from __future__ import annotations

from adapters.store.crypto import TokenCipher
from adapters.store.engine import Engine


class StoreBase:
    """The host's side of a role: its engine, and the token cipher for rows holding secrets."""

    def __init__(self, cipher: TokenCipher) -> None:
        self._cipher = cipher
        # Ids of accounts whose tokens no key opens, logged once per store (``rows.account``).
        self._unreadable_accounts: set[int] = set()

    @property
    def engine(self) -> Engine:
        raise NotImplementedError

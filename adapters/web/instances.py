"""Who else runs this bridge: the one place that knows which engine decides it.

On SQLite the bridge is a single instance (the database file is locked to one process):
it always leads, and a wake-up is always for itself. On PostgreSQL several instances share
the database: one leads the work that talks to X (while it holds the leader's lease) and
the others are standbys that pass what they accepted or were told on to it, by ``NOTIFY``.
``instances_for`` picks one of the two; nothing else asks which engine runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from adapters.store.leader import Leadership
from adapters.store.postgres import PostgresStore
from adapters.store.select import AnyStore
from adapters.web.worker import Job, Worker
from bridge.delivery import Delivery


class Instances(Protocol):
    """The bridge's instances as the composition root sees them: who leads, and how to reach it."""

    def worker(
        self,
        make: Callable[[], Delivery],
        *,
        before_lead: Callable[[], Awaitable[None]],
        jobs: tuple[Job, ...],
        on_inbound: Callable[[str], None],
    ) -> Worker:
        """This instance's worker: it leads alone, or while it holds the lease; ``on_inbound``
        hears what standbys pass on to the leader (a message of ``to_leader``)."""
        ...

    def to_leader(self, worker: Worker, what: str) -> bool:
        """Pass ``what`` to the leader when another instance leads (True); False when this
        instance leads, or is the only one: then it must act on ``what`` itself."""
        ...


class SingleInstance:
    """SQLite: this instance is the only one, and leads from the start."""

    def worker(
        self,
        make: Callable[[], Delivery],
        *,
        before_lead: Callable[[], Awaitable[None]],
        jobs: tuple[Job, ...],
        on_inbound: Callable[[str], None],
    ) -> Worker:
        return Worker(make, before_lead=before_lead, jobs=jobs)

    def to_leader(self, worker: Worker, what: str) -> bool:
        return False


class SharedDatabase:
    """PostgreSQL: instances elect a leader by lease and wake it with ``NOTIFY``."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    def worker(
        self,
        make: Callable[[], Delivery],
        *,
        before_lead: Callable[[], Awaitable[None]],
        jobs: tuple[Job, ...],
        on_inbound: Callable[[str], None],
    ) -> Worker:
        store = self._store

        async def lead() -> None:
            await before_lead()
            store.announce = False  # the leader offers its own rows to its workers directly

        def standby() -> None:
            store.announce = True

        worker: Worker
        leadership = Leadership(
            store.url,
            instance=store.instance_id,
            on_notify=lambda: worker.wake(),
            on_inbound=on_inbound,
        )
        worker = Worker(
            make,
            before_lead=lead,
            after_lead=standby,
            leadership=leadership,
            notify=store.notify_outbox,
            jobs=jobs,
        )
        return worker

    def to_leader(self, worker: Worker, what: str) -> bool:
        if worker.current is not None:
            return False
        store = self._store
        worker.pass_on(lambda: store.notify_inbound(what))
        return True


def instances_for(store: AnyStore) -> Instances:
    """The instances the store's engine allows: several on PostgreSQL, one on SQLite."""
    if isinstance(store, PostgresStore):
        return SharedDatabase(store)
    return SingleInstance()

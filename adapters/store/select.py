"""Which store the settings ask for: PostgreSQL when ``DATABASE_URL`` is set, else SQLite."""

from __future__ import annotations

from adapters.store.crypto import TokenCipher
from adapters.store.postgres import PostgresStore
from adapters.store.sqlite import SqliteStore
from bridge.settings import Settings, redacted

AnyStore = SqliteStore | PostgresStore


def make_store(settings: Settings) -> AnyStore:
    """The store (not yet opened) for these settings."""
    cipher = TokenCipher(settings.encryption_keys)
    if settings.database_url:
        return PostgresStore(settings.database_url, cipher)
    return SqliteStore(settings.database_path, cipher)


def describe(settings: Settings) -> str:
    """Where the data lives, for logs and ``doctor`` (never a password)."""
    if settings.database_url:
        return redacted(settings.database_url)
    return settings.database_path

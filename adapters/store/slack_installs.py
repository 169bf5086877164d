"""Installs ("Add to Slack"): slack-sdk's async installation and OAuth-state stores, one SQL for both
engines.

slack-sdk ships SQLite stores, but they call ``sqlite3`` on the event loop's thread (every request
would wait on the disk); these run on the store's ``Engine`` (SQLite's owner thread, or asyncpg).
Only the bot's installation is kept (the bridge asks for no user scopes). The bot token and its
refresh token are Fernet-encrypted with ``BRIDGE_ENCRYPTION_KEY`` like X's tokens, and
``rotate-keys`` re-encrypts them (``adapters.store.keys.SECRETS``).

Rows are keyed by (enterprise, team): a workspace of an Enterprise Grid org is its own row, and an
org-wide install (``is_enterprise_install``) is keyed by the enterprise alone.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

from slack_sdk.oauth.installation_store.async_installation_store import AsyncInstallationStore
from slack_sdk.oauth.installation_store.models.bot import Bot
from slack_sdk.oauth.installation_store.models.installation import Installation
from slack_sdk.oauth.state_store.async_state_store import AsyncOAuthStateStore

from adapters.store.crypto import TokenCipher
from adapters.store.engine import Engine

log = logging.getLogger("adapters.store.slack_installs")

STATE_TTL = 600.0  # seconds an install link stays usable (Bolt's state cookie lives as long)
STATE_CAP = 10_000  # install links open at once (each lives STATE_TTL); more are refused for now
# Slack's event_time is whole seconds (up to 1 s before the event) and its clock is not ours: an
# install made less than this after a removal's event_time counts as made before it.
REMOVAL_CLOCK_SLACK = 2.0
UNINSTALLED = "slack-uninstalled"  # ``mappings.paused_by`` while the workspace has no install
COLUMNS = (
    "enterprise_id, team_id, enterprise_name, team_name, app_id, bot_id, bot_user_id, bot_scopes, "
    "bot_token, bot_refresh_token, bot_token_expires_at, installer_user_id, is_enterprise_install, "
    "installed_at"
)


def install_id(enterprise_id: str | None, team_id: str | None, is_enterprise_install: bool | None) -> str:
    """The row key: ``{enterprise}/{team}``; an org-wide install has no team."""
    team = "" if is_enterprise_install else (team_id or "")
    return f"{enterprise_id or ''}/{team}"


class SlackInstallStore(AsyncInstallationStore):
    """The ``slack_installations`` table, as slack-sdk's ``AsyncInstallationStore`` (bot only)."""

    def __init__(self, engine: Engine, cipher: TokenCipher, now: Callable[[], float]) -> None:
        self.engine = engine
        self._engine = engine
        self._cipher = cipher
        self.now = now
        self._now = now

    @property
    def logger(self) -> logging.Logger:
        return log

    async def async_save(self, installation: Installation) -> None:
        """Keep the installation's bot (a reinstall replaces the workspace's row)."""
        await self._save(installation.to_bot(), installation.user_id or None)

    async def async_save_bot(self, bot: Bot) -> None:
        await self._save(bot, None)

    async def _save(self, bot: Bot, installer: str | None) -> None:
        if not bot.bot_token:
            raise ValueError("an installation without a bot token cannot be kept")
        expires_at = bot.bot_token_expires_at
        await self._engine.execute(
            f"INSERT INTO slack_installations (install_id, {COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (install_id) DO UPDATE SET enterprise_name = excluded.enterprise_name, "
            "team_name = excluded.team_name, app_id = excluded.app_id, bot_id = excluded.bot_id, "
            "bot_user_id = excluded.bot_user_id, bot_scopes = excluded.bot_scopes, "
            "bot_token = excluded.bot_token, bot_refresh_token = excluded.bot_refresh_token, "
            "bot_token_expires_at = excluded.bot_token_expires_at, "
            "installer_user_id = excluded.installer_user_id, installed_at = excluded.installed_at, "
            "refresh_claim = NULL, refresh_claimed_at = NULL",
            install_id(bot.enterprise_id, bot.team_id, bot.is_enterprise_install),
            bot.enterprise_id or "",
            "" if bot.is_enterprise_install else (bot.team_id or ""),
            bot.enterprise_name,
            bot.team_name,
            bot.app_id,
            bot.bot_id,
            bot.bot_user_id,
            ",".join(bot.bot_scopes),
            self._cipher.encrypt(bot.bot_token),
            self._cipher.encrypt(bot.bot_refresh_token) if bot.bot_refresh_token else None,
            None if expires_at is None else float(expires_at),
            installer,
            int(bool(bot.is_enterprise_install)),
            float(bot.installed_at or self._now()),
        )

    async def async_find_bot(
        self,
        *,
        enterprise_id: str | None,
        team_id: str | None,
        is_enterprise_install: bool | None = False,
    ) -> Bot | None:
        """The bot installed in exactly this workspace (or org, for an org-wide install)."""
        rows = await self._engine.fetch(
            f"SELECT {COLUMNS} FROM slack_installations WHERE install_id = ?",
            install_id(enterprise_id, team_id, is_enterprise_install),
        )
        return self._bot(rows[0]) if rows else None

    async def find_team(self, team_id: str) -> Bot | None:
        """The bot installed in workspace ``team_id``, whatever its org (Slack's team ids are
        unique across orgs; the core names workspaces by team id alone)."""
        rows = await self._engine.fetch(
            f"SELECT {COLUMNS} FROM slack_installations WHERE team_id = ? AND is_enterprise_install = 0 "
            "ORDER BY install_id",
            team_id,
        )
        return self._bot(rows[0]) if rows and team_id else None

    async def async_find_installation(
        self,
        *,
        enterprise_id: str | None,
        team_id: str | None,
        user_id: str | None = None,
        is_enterprise_install: bool | None = False,
    ) -> Installation | None:
        bot = await self.async_find_bot(
            enterprise_id=enterprise_id, team_id=team_id, is_enterprise_install=is_enterprise_install
        )
        if bot is None:
            return None
        return Installation(
            app_id=bot.app_id,
            enterprise_id=bot.enterprise_id,
            enterprise_name=bot.enterprise_name,
            team_id=bot.team_id,
            team_name=bot.team_name,
            bot_token=bot.bot_token,
            bot_id=bot.bot_id,
            bot_user_id=bot.bot_user_id,
            bot_scopes=bot.bot_scopes,
            bot_refresh_token=bot.bot_refresh_token,
            bot_token_expires_at=bot.bot_token_expires_at,
            user_id=user_id or "",
            is_enterprise_install=bot.is_enterprise_install,
            installed_at=bot.installed_at,
        )

    async def async_delete_bot(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        await self._engine.execute(
            "DELETE FROM slack_installations WHERE install_id = ?", install_id(enterprise_id, team_id, False)
        )

    async def async_delete_installation(
        self, *, enterprise_id: str | None, team_id: str | None, user_id: str | None = None
    ) -> None:
        # Only the bot's installation is kept: deleting it is deleting the bot.
        if user_id is None:
            await self.async_delete_bot(enterprise_id=enterprise_id, team_id=team_id)

    async def list_bots(self) -> list[Bot]:
        """Every installed workspace (for the operator's listing)."""
        rows = await self._engine.fetch(f"SELECT {COLUMNS} FROM slack_installations ORDER BY install_id")
        return [self._bot(row) for row in rows]

    # -- token rotation: one refresh across instances -----------------------------------------

    async def claim_refresh(self, bot: Bot) -> str | None:
        """Take the right to present ``bot``'s refresh token, once: a claim id, or None when another
        instance (or an earlier attempt) holds it or the token changed meanwhile.

        The claim is never taken again for the same refresh token (Slack's are single-use: one
        presented twice is refused and the installation lost); ``save_refreshed`` clears it, and
        ``release_refresh`` gives it back when Slack surely did not see the token.
        """
        claim = secrets.token_urlsafe(16)
        touched = await self._engine.execute(
            "UPDATE slack_installations SET refresh_claim = ?, refresh_claimed_at = ? "
            "WHERE install_id = ? AND refresh_claim IS NULL AND bot_refresh_token IS NOT NULL "
            "AND bot_token_expires_at = ?",
            claim,
            self._now(),
            install_id(bot.enterprise_id, bot.team_id, bot.is_enterprise_install),
            float(bot.bot_token_expires_at or 0),
        )
        return claim if touched else None

    async def save_refreshed(
        self, bot: Bot, claim: str, token: str, refresh_token: str, expires_at: float
    ) -> bool:
        """The refreshed tokens, kept only under the claim that refreshed them; False otherwise."""
        return (
            await self._engine.execute(
                "UPDATE slack_installations SET bot_token = ?, bot_refresh_token = ?, "
                "bot_token_expires_at = ?, refresh_claim = NULL, refresh_claimed_at = NULL "
                "WHERE install_id = ? AND refresh_claim = ?",
                self._cipher.encrypt(token),
                self._cipher.encrypt(refresh_token),
                float(int(expires_at)),  # whole seconds, as slack-sdk's Bot holds it (claims compare it)
                install_id(bot.enterprise_id, bot.team_id, bot.is_enterprise_install),
                claim,
            )
            > 0
        )

    async def refresh_claimed_at(self, bot: Bot) -> float | None:
        """When the refresh of ``bot``'s token was claimed (by any instance), or None."""
        rows = await self._engine.fetch(
            "SELECT refresh_claimed_at FROM slack_installations WHERE install_id = ?",
            install_id(bot.enterprise_id, bot.team_id, bot.is_enterprise_install),
        )
        return (
            None
            if not rows or rows[0]["refresh_claimed_at"] is None
            else float(rows[0]["refresh_claimed_at"])
        )

    async def release_refresh(self, bot: Bot, claim: str) -> None:
        """Give the claim back: the refresh token never reached Slack."""
        await self._engine.execute(
            "UPDATE slack_installations SET refresh_claim = NULL, refresh_claimed_at = NULL "
            "WHERE install_id = ? AND refresh_claim = ?",
            install_id(bot.enterprise_id, bot.team_id, bot.is_enterprise_install),
            claim,
        )

    # -- uninstall and reinstall ---------------------------------------------------------------

    async def pause_workspace(self, team_id: str, now: float) -> int:
        """The workspace removed the app: pause its bridged channels (their history and queued
        messages stay); returns how many were paused now."""
        return await self._engine.execute(
            "UPDATE mappings SET paused_at = ?, paused_by = ? WHERE team_id = ? AND paused_at IS NULL",
            now,
            UNINSTALLED,
            team_id,
        )

    async def remove_workspace(
        self, enterprise_id: str | None, team_id: str, *, as_of: float | None, now: float
    ) -> int | None:
        """The workspace removed the app (``as_of``: when Slack says it did): its install is deleted
        and its bridged channels paused (their history and queued messages stay); returns how
        many were paused now.

        An install made after ``as_of`` (more than ``REMOVAL_CLOCK_SLACK`` later) is kept and
        nothing paused (None): the event is a late redelivery of a removal the workspace has since
        undone by installing the app again."""
        key = install_id(enterprise_id, team_id, False)
        if as_of is None:
            await self._engine.execute("DELETE FROM slack_installations WHERE install_id = ?", key)
        else:
            await self._engine.execute(
                "DELETE FROM slack_installations WHERE install_id = ? AND installed_at < ?",
                key,
                float(as_of) + REMOVAL_CLOCK_SLACK,
            )
            if await self._engine.fetch("SELECT 1 FROM slack_installations WHERE install_id = ?", key):
                return None
        # Only while no install is left: a reinstall committed meanwhile resumes what it finds
        # paused, and one committed before this statement keeps its channels running.
        return await self._engine.execute(
            "UPDATE mappings SET paused_at = ?, paused_by = ? WHERE team_id = ? AND paused_at IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM slack_installations AS s WHERE s.install_id = ?)",
            now,
            UNINSTALLED,
            team_id,
            key,
        )

    async def resume_workspace(self, team_id: str) -> int:
        """The workspace installed the app again: resume what its removal paused (a channel whose X
        account was disconnected meanwhile stays paused for that); returns how many."""
        return await self._engine.execute(
            "UPDATE mappings SET paused_at = NULL, paused_by = NULL "
            "WHERE team_id = ? AND paused_by = ? AND held_for IS NULL AND account_id IN "
            "(SELECT id FROM accounts WHERE disconnected_at IS NULL)",
            team_id,
            UNINSTALLED,
        )

    async def fail_waiting(self, older_than: float, reason: str) -> int:
        """X messages that waited past ``older_than`` for a workspace that removed the app fail
        with ``reason`` (kept, not posted); returns how many."""
        return await self._engine.execute(
            "UPDATE inbound SET state = 'failed', last_error = ? WHERE state = 'queued' AND created_at < ? "
            "AND EXISTS (SELECT 1 FROM mappings AS m WHERE m.team_id = inbound.team_id "
            "AND m.channel_id = inbound.channel_id AND m.paused_by = ?)",
            reason,
            older_than,
            UNINSTALLED,
        )

    def _bot(self, row: dict[str, Any]) -> Bot:
        refresh = row["bot_refresh_token"]
        return Bot(
            app_id=row["app_id"],
            enterprise_id=row["enterprise_id"] or None,
            enterprise_name=row["enterprise_name"],
            team_id=row["team_id"] or None,
            team_name=row["team_name"],
            bot_token=self._cipher.decrypt(row["bot_token"]),
            bot_id=row["bot_id"],
            bot_user_id=row["bot_user_id"],
            bot_scopes=row["bot_scopes"],
            bot_refresh_token=self._cipher.decrypt(refresh) if refresh else None,
            bot_token_expires_at=None
            if row["bot_token_expires_at"] is None
            else int(row["bot_token_expires_at"]),
            is_enterprise_install=bool(row["is_enterprise_install"]),
            installed_at=float(row["installed_at"]),
        )


class TooManyInstalls(Exception):
    """Too many install links are open at once (``STATE_CAP``): try again in a few minutes."""


class SlackStateStore(AsyncOAuthStateStore):
    """The ``slack_oauth_states`` table, as slack-sdk's ``AsyncOAuthStateStore``: single-use states
    that expire after ``STATE_TTL``."""

    def __init__(
        self, engine: Engine, now: Callable[[], float], ttl: float = STATE_TTL, cap: int | None = None
    ) -> None:
        self._engine = engine
        self._now = now
        self._ttl = ttl
        self._cap = STATE_CAP if cap is None else cap

    @property
    def logger(self) -> logging.Logger:
        return log

    async def async_issue(self, *args: Any, **kwargs: Any) -> str:
        """A new state; ``TooManyInstalls`` when ``cap`` unexpired ones exist already (anyone can
        open the install page, so a flood must not grow the table without end)."""
        state = secrets.token_urlsafe(32)
        now = self._now()
        # Expired states go as new ones come: the table holds only the last few minutes' links.
        await self._engine.execute("DELETE FROM slack_oauth_states WHERE expires_at <= ?", now)
        live = await self._engine.fetch("SELECT COUNT(*) AS n FROM slack_oauth_states")
        if int(live[0]["n"]) >= self._cap:
            raise TooManyInstalls(f"{self._cap} install links are open already")
        await self._engine.execute(
            "INSERT INTO slack_oauth_states (state, expires_at) VALUES (?, ?)", state, now + self._ttl
        )
        return state

    async def async_consume(self, state: str) -> bool:
        """Use ``state`` once: True only for the first use of a state issued here, unexpired."""
        touched = await self._engine.execute(
            "UPDATE slack_oauth_states SET used = 1 WHERE state = ? AND used = 0 AND expires_at > ?",
            state,
            self._now(),
        )
        return touched == 1

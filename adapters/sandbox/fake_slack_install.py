"""The fake Slack's side of "Add to Slack": the authorize page and ``oauth.v2.access``.

:class:`FakeSlack` owns one :class:`SlackInstalls`. Workspaces (``add_team``) install the app:
``GET /oauth/v2/authorize`` (Slack's page: pick a workspace, Allow or Cancel) sends the browser
back to the app's ``redirect_uri`` with a one-time ``code`` and the app's ``state``; the app
exchanges the code with ``oauth.v2.access`` (HTTP Basic with its client id and secret) for that
workspace's own bot token. With ``token_rotation`` on, tokens expire (``expires_in``) and come with
a refresh token that ``grant_type=refresh_token`` trades, once, for new ones; a refresh token
presented twice is refused (``invalid_refresh_token``), as Slack does.
"""

from __future__ import annotations

import base64
import html
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

Clock = Callable[[], float]
TOKEN_LIFETIME = 43_200  # seconds: Slack's rotating tokens last 12 hours


class InstallError(Exception):
    """An ``oauth.v2.access`` refusal: Slack's ``error`` code."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass
class Team:
    """A workspace the app can be installed in (or, with ``org_wide``, an Enterprise Grid org)."""

    team_id: str
    name: str
    enterprise_id: str | None = None
    bot_user_id: str = "UBOT"
    bot_id: str = "BBOT"
    org_wide: bool = False


@dataclass
class _Code:
    team: Team
    redirect_uri: str | None
    scope: str
    installer: str
    used: bool = False


@dataclass
class Issued:
    """A bot token the fake handed out."""

    team: Team
    expires_at: float | None
    revoked: bool = False


@dataclass
class SlackInstalls:
    """Installs and their tokens; ``FakeSlack`` routes the authorize page and the methods here."""

    clock: Clock = time.time
    client_id: str = "1111.2222"
    client_secret: str = "fake-slack-client-secret"
    app_id: str = "A0001"
    token_rotation: bool = False
    token_lifetime: int = TOKEN_LIFETIME
    teams: dict[str, Team] = field(default_factory=dict)
    tokens: dict[str, Issued] = field(default_factory=dict)
    #: Every refresh token presented to ``oauth.v2.access``, in order (a repeat is a bug to catch).
    refreshes: list[str] = field(default_factory=list)
    _codes: dict[str, _Code] = field(default_factory=dict)
    _refresh_tokens: dict[str, Team] = field(default_factory=dict)  # unused ones

    def add_team(self, team_id: str, name: str, **kw: Any) -> Team:
        """A workspace (``org_wide=True`` with ``enterprise_id``: an org) that may install the app."""
        team = Team(team_id, name, **kw)
        self.teams[team_id] = team
        return team

    def grant(self, team_id: str) -> dict[str, Any]:
        """The token part of ``oauth.v2.access``'s answer for ``team_id``, as an install would get
        it (for tests that start from an installed workspace)."""
        return self._issue(self.teams[team_id])

    def tokens_of(self, team_id: str) -> list[str]:
        """The live bot tokens issued to ``team_id``, oldest first."""
        return [t for t, i in self.tokens.items() if i.team.team_id == team_id and not i.revoked]

    def uninstall(self, team_id: str) -> None:
        """The workspace removed the app: its tokens and refresh tokens stop working."""
        for issued in self.tokens.values():
            if issued.team.team_id == team_id:
                issued.revoked = True
        self._refresh_tokens = {r: t for r, t in self._refresh_tokens.items() if t.team_id != team_id}

    def team_of(self, token: str) -> Team | None:
        """The workspace a bot token belongs to; None when unknown. Raises ``InstallError`` for a
        token that was revoked (``token_revoked``) or has expired (``token_expired``)."""
        issued = self.tokens.get(token)
        if issued is None:
            return None
        if issued.revoked:
            raise InstallError("token_revoked")
        if issued.expires_at is not None and self.clock() >= issued.expires_at:
            raise InstallError("token_expired")
        return issued.team

    # -- the authorize page --------------------------------------------------------------------

    async def authorize(self, request: web.Request) -> web.Response:
        """Slack's authorize page: with ``team`` (as a person's click on a workspace would choose)
        it redirects at once; without, it lists the workspaces to choose from."""
        query = request.query
        if query.get("client_id") != self.client_id:
            return _page("Invalid client_id parameter", "<p>The app's client id is not known.</p>", 400)
        redirect_uri = query.get("redirect_uri", "")
        if not redirect_uri.startswith(("http://", "https://")):
            return _page("Invalid redirect_uri", "<p>No redirect_uri to send you back to.</p>", 400)
        state = query.get("state", "")
        back = {"state": state} if state else {}
        if query.get("deny"):
            raise web.HTTPFound(_with_query(redirect_uri, {"error": "access_denied", **back}))
        chosen = self.teams.get(query.get("team", ""))
        if chosen is not None:
            code = secrets.token_urlsafe(16)
            installer = query.get("user", "UINSTALLER")
            self._codes[code] = _Code(chosen, redirect_uri, query.get("scope", ""), installer)
            raise web.HTTPFound(_with_query(redirect_uri, {"code": code, **back}))
        links = "".join(
            f"<li><a href='{html.escape(_with_query(str(request.url), {'team': t.team_id}), quote=True)}'>"
            f"Allow in {html.escape(t.name)}</a></li>"
            for t in self.teams.values()
        )
        cancel = html.escape(_with_query(str(request.url), {"deny": "1"}), quote=True)
        body = f"<ul>{links}</ul><p><a href='{cancel}'>Cancel</a></p>"
        return _page("xdm-bridge is requesting permission", body, 200)

    # -- oauth.v2.access -----------------------------------------------------------------------

    def access(self, params: Mapping[str, Any], authorization: str) -> dict[str, Any]:
        """``oauth.v2.access``: a code (or, with rotation, a refresh token) for a bot token."""
        client_id, client_secret = _basic(authorization) or (
            str(params.get("client_id") or ""),
            str(params.get("client_secret") or ""),
        )
        if client_id != self.client_id:
            raise InstallError("invalid_client_id")
        if client_secret != self.client_secret:
            raise InstallError("bad_client_secret")
        if params.get("grant_type") == "refresh_token":
            return self._refresh(str(params.get("refresh_token") or ""))
        code = self._codes.get(str(params.get("code") or ""))
        if code is None or code.used:
            raise InstallError("invalid_code")
        code.used = True  # a code is good once, even when the rest of the exchange fails
        if params.get("redirect_uri") and params.get("redirect_uri") != code.redirect_uri:
            raise InstallError("bad_redirect_uri")
        team = code.team
        answer: dict[str, Any] = {
            "ok": True,
            "app_id": self.app_id,
            "authed_user": {"id": code.installer},
            "scope": code.scope,
            "token_type": "bot",
            "bot_user_id": team.bot_user_id,
            "team": None if team.org_wide else {"id": team.team_id, "name": team.name},
            "enterprise": None
            if team.enterprise_id is None
            else {"id": team.enterprise_id, "name": f"{team.name} org"},
            "is_enterprise_install": team.org_wide,
        }
        return {**answer, **self._issue(team)}

    def _refresh(self, refresh_token: str) -> dict[str, Any]:
        self.refreshes.append(refresh_token)
        team = self._refresh_tokens.pop(refresh_token, None)
        if team is None:
            raise InstallError("invalid_refresh_token")
        return {"ok": True, "app_id": self.app_id, "token_type": "bot", **self._issue(team)}

    def _issue(self, team: Team) -> dict[str, Any]:
        token = f"xoxb-{team.team_id}-{secrets.token_hex(8)}"
        if not self.token_rotation:
            self.tokens[token] = Issued(team, None)
            return {"access_token": token}
        refresh = f"xoxe-1-{secrets.token_hex(12)}"
        self.tokens[token] = Issued(team, self.clock() + self.token_lifetime)
        self._refresh_tokens[refresh] = team
        return {"access_token": token, "refresh_token": refresh, "expires_in": self.token_lifetime}


def _basic(authorization: str) -> tuple[str, str] | None:
    if not authorization.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[len("Basic ") :]).decode()
    except ValueError:
        return None
    client_id, _, secret = decoded.partition(":")
    return client_id, secret


def _with_query(url: str, extra: Mapping[str, str]) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode(extra)}"


def _page(title: str, inner: str, status: int) -> web.Response:
    body = f"<!doctype html><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>{inner}"
    return web.Response(text=body, status=status, content_type="text/html")

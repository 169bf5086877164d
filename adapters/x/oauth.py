"""X OAuth 2.0 (Authorization Code with PKCE) from authlib's transport-free pieces, over aiohttp.

authlib's own clients are synchronous or httpx-based; we already run aiohttp, so we
take authlib's parameter builders, PKCE and client authentication and do the HTTP
ourselves: no hand-written OAuth, and no second HTTP stack beside aiohttp.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlencode

import aiohttp
from authlib.common.security import generate_token
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc6749 import OAuth2Token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from bridge.errors import XAuthRevoked, XRefused, XTransient
from bridge.model import AuthorizationRequest, TokenSet
from bridge.settings import SCOPES, Settings

log = logging.getLogger("adapters.x.oauth")

VERIFIER_LENGTH = 64  # RFC 7636 allows 43-128 characters
# Errors after which the refresh token will never work again.
PERMANENT_REFRESH_ERRORS = frozenset(
    {"invalid_grant", "invalid_request", "unauthorized_client", "invalid_client"}
)


class XOAuthClient:
    """Implements ``bridge.ports.XOAuth``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        client_id: str,
        client_secret: str | None,
        authorize_url: str,
        token_url: str,
        redirect_uri: str | None,
        timeout: float = 20.0,
    ) -> None:
        self._session = session
        self._client_id = client_id
        self._client_secret = client_secret
        self._authorize_url = authorize_url
        self._token_url = token_url
        # X serves revoke next to its token endpoint: /2/oauth2/token → /2/oauth2/revoke.
        self._revoke_url = token_url.rsplit("/", 1)[0] + "/revoke"
        self._redirect_uri = redirect_uri
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def begin(self) -> AuthorizationRequest:
        state = generate_token(32)
        verifier = generate_token(VERIFIER_LENGTH)
        return AuthorizationRequest(
            url=self.authorize_url(state, verifier), state=state, code_verifier=verifier
        )

    def authorize_url(self, state: str, code_verifier: str) -> str:
        url: str = prepare_grant_uri(
            self._authorize_url,
            self._client_id,
            "code",
            redirect_uri=self._redirect_uri,
            scope=" ".join(SCOPES),
            state=state,
            code_challenge=create_s256_code_challenge(code_verifier),  # type: ignore[no-untyped-call]
            code_challenge_method="S256",
        )
        return url

    async def exchange(self, code: str, code_verifier: str) -> TokenSet:
        body = prepare_token_request(
            "authorization_code",
            code=code,
            redirect_uri=self._redirect_uri,
            code_verifier=code_verifier,
            **self._public_client_id(),
        )
        status, payload = await self._token_request(body)
        if status != 200:
            raise XAuthRevoked(f"X did not accept the authorization code: {_oauth_error(payload)}")
        return _token_set(payload)

    async def refresh(self, refresh_token: str) -> TokenSet:
        body = prepare_token_request("refresh_token", refresh_token=refresh_token, **self._public_client_id())
        status, payload = await self._token_request(body)
        if status == 200:
            return _token_set(payload)
        error = str(payload.get("error", ""))
        if status in (400, 401) and (error in PERMANENT_REFRESH_ERRORS or not error):
            raise XAuthRevoked(f"X refused to refresh the token: {_oauth_error(payload)}")
        raise XTransient(f"token refresh failed with HTTP {status}", status=status)

    async def revoke(self, token: str) -> None:
        body = urlencode({"token": token, **self._public_client_id()})
        status, payload = await self._token_request(body, url=self._revoke_url)
        if status != 200:
            raise XRefused(f"X did not revoke the token: {_oauth_error(payload)}", status=status)

    def _public_client_id(self) -> dict[str, str]:
        # Public clients name themselves in the body; confidential ones use HTTP Basic.
        return {} if self._client_secret else {"client_id": self._client_id}

    async def _token_request(self, body: str, *, url: str | None = None) -> tuple[int, dict[str, Any]]:
        url = url or self._token_url
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        if self._client_secret:
            auth = ClientAuth(self._client_id, self._client_secret, "client_secret_basic")
            _, headers, body = auth.prepare("POST", url, headers, body)  # type: ignore[no-untyped-call]
        try:
            async with self._session.post(url, data=body, headers=headers, timeout=self._timeout) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise XTransient(f"X's token endpoint did not answer: {type(exc).__name__}") from exc
        try:
            payload = json.loads(text) if text else {}
        except ValueError:
            payload = {}
        if status >= 500:
            raise XTransient(f"X's token endpoint failed with HTTP {status}", status=status)
        return status, payload if isinstance(payload, dict) else {}


def _token_set(payload: dict[str, Any]) -> TokenSet:
    token = OAuth2Token.from_dict(payload)  # type: ignore[no-untyped-call]
    access = token.get("access_token")
    if not access:
        raise XTransient("X's token response had no access_token")
    expires_at = token.get("expires_at")
    return TokenSet(
        access_token=str(access),
        refresh_token=str(token["refresh_token"]) if token.get("refresh_token") else None,
        expires_at=float(expires_at) if expires_at is not None else None,
        scope=str(token.get("scope", "")),
    )


def _oauth_error(payload: dict[str, Any]) -> str:
    error = payload.get("error") or "unknown error"
    description = payload.get("error_description")
    return f"{error} ({description})" if description else str(error)


def oauth_client(session: aiohttp.ClientSession, settings: Settings) -> XOAuthClient:
    """The X OAuth client as this deployment's settings describe it (serve and operator commands)."""
    return XOAuthClient(
        session,
        client_id=settings.x_client_id,
        client_secret=settings.x_client_secret,
        authorize_url=settings.x_authorize_url,
        token_url=settings.x_token_url,
        redirect_uri=settings.redirect_uri,
        timeout=settings.x_timeout_seconds,
    )

"""The "Add to Slack" install: Bolt's OAuth flow over the bridge's own stores, with its own pages.

Bolt's ``AsyncOAuthFlow`` does what Slack's OAuth v2 asks (a state stored and bound to the browser
by a cookie, consumed once; the code exchanged with ``oauth.v2.access`` through ``SLACK_API_URL``;
the installation saved), so it is used as it is, with the bridge's stores
(``adapters.store.slack_installs``) and three changes: Slack not answering is a page, not a 500;
an org-wide (Enterprise Grid) install is refused with a page saying to install per workspace; and
every outcome is a page of the bridge's own, saying what happened and what to do.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
from slack_bolt.error import BoltError
from slack_bolt.oauth.async_callback_options import AsyncCallbackOptions, AsyncFailureArgs, AsyncSuccessArgs
from slack_bolt.oauth.async_oauth_flow import AsyncOAuthFlow
from slack_bolt.oauth.async_oauth_settings import AsyncOAuthSettings
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.oauth.installation_store.models.installation import Installation
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.scopes import BOT_SCOPES
from adapters.store.slack_installs import STATE_TTL, SlackInstallStore, SlackStateStore, TooManyInstalls
from adapters.web.edge import PAGE_HEADERS
from adapters.web.logs import Sparse

log = logging.getLogger("adapters.slack.install")
# Anyone can open these pages with a bad or stale link, in floods: a line a minute per reason.
REFUSALS = Sparse(log)

INSTALL_PATH = "/slack/install"
REDIRECT_PATH = "/slack/oauth_redirect"
ORG_WIDE = "org_wide_install"  # the BoltError message store_installation raises for one
NO_ANSWER = "slack_no_answer"
BUSY = "too_many_installs"
OTHER = "unexpected"  # a reason not shaped as Slack's codes (see ``slack_reason``)
_SLACK_CODE = re.compile(r"[a-z][a-z0-9_.]{0,59}")
# Why an install failed (Bolt's reason, or Slack's error) → HTTP status and what the person reads.
FAILURES: dict[str, tuple[int, str]] = {
    "access_denied": (200, "You cancelled on Slack: nothing was installed. You can close this tab."),
    "invalid_browser": (
        400,
        "This install was not started in this browser (or its cookie expired). Start again from the "
        "bridge's install page.",
    ),
    "invalid_state": (
        400,
        "This install link was already used or has expired (they last 10 minutes). Start again from "
        "the bridge's install page.",
    ),
    "missing_code": (400, "Slack sent no authorization code back. Start again from the install page."),
    "invalid_code": (
        502,
        "Slack did not accept the authorization code, so nothing was installed. Start again from the "
        "install page; if it keeps failing, the operator should check SLACK_CLIENT_ID and "
        "SLACK_CLIENT_SECRET.",
    ),
    NO_ANSWER: (502, "Slack did not answer the bridge, so nothing was installed. Try again in a moment."),
    ORG_WIDE: (
        403,
        "This bridge does not take org-wide (Enterprise Grid) installs: nothing was installed. An "
        "admin can install it into each workspace of the org instead.",
    ),
    BUSY: (503, "Too many installs are in progress at once. Try again in a few minutes."),
    "storage_error": (503, "The bridge could not save the install (its database). Try again in a moment."),
}


class InstallFlow(AsyncOAuthFlow):
    """Bolt's OAuth flow with Slack's silence a failure page and org-wide installs refused."""

    async def build_install_page_html(self, url: str, request: AsyncBoltRequest) -> str:
        link = html.escape(url, quote=True)
        return page_html(
            "Add xdm-bridge to Slack",
            "<p>xdm-bridge relays direct messages between Slack channels and X (Twitter). Installing "
            "it adds its bot to the workspace you choose on Slack's next page; nothing else in that "
            "workspace can reach another workspace's X accounts or channels.</p>"
            f"<p><a href='{link}' style='display:inline-block;padding:.6rem 1rem;background:#4a154b;"
            "color:#fff;border-radius:4px;text-decoration:none'>Add to Slack</a></p>",
        )

    async def run_installation(self, code: str) -> Installation | None:
        try:
            return await super().run_installation(code)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "Slack install: Slack did not answer the code exchange", extra={"error": type(exc).__name__}
            )
            raise _NoAnswer from exc

    async def store_installation(self, request: AsyncBoltRequest, installation: Installation) -> None:
        if installation.is_enterprise_install:
            log.warning(
                "Slack install refused: org-wide installs are not supported",
                extra={"enterprise": installation.enterprise_id},
            )
            raise BoltError(ORG_WIDE)
        try:
            await super().store_installation(request, installation)
        except Exception as exc:
            log.exception("Slack install could not be saved", extra={"team": installation.team_id})
            raise BoltError("storage_error") from exc

    async def handle_installation(self, request: AsyncBoltRequest) -> BoltResponse:
        try:
            return await super().handle_installation(request)
        except TooManyInstalls:
            REFUSALS.warning("Slack install page refused: too many install links open at once", BUSY)
            return failure_response(BUSY, self.settings.state_utils.build_set_cookie_for_deletion())

    async def handle_callback(self, request: AsyncBoltRequest) -> BoltResponse:
        try:
            return await super().handle_callback(request)
        except _NoAnswer:
            return failure_response(NO_ANSWER, self.settings.state_utils.build_set_cookie_for_deletion())


class _NoAnswer(Exception):
    """Slack did not answer ``oauth.v2.access`` or ``auth.test`` during an install."""


def install_flow(
    *,
    client_id: str,
    client_secret: str,
    redirect_uri: str | None,
    authorize_url: str,
    client: AsyncWebClient,
    installs: SlackInstallStore,
    states: SlackStateStore,
    on_installed: Callable[[str], Awaitable[object]],
) -> InstallFlow:
    """The flow for ``GET /slack/install`` and ``GET /slack/oauth_redirect``; ``on_installed`` is
    called with the team id once an install is saved (its paused channels resume)."""

    async def success(args: AsyncSuccessArgs) -> BoltResponse:
        installation = args.installation
        await on_installed(installation.team_id or "")
        team = installation.team_name or installation.team_id or "your workspace"
        log.info("Slack workspace installed", extra={"team": installation.team_id})
        body = page_html(
            "Installed",
            f"<p>xdm-bridge is installed in <strong>{html.escape(team)}</strong>. Invite its bot to a "
            "channel (<code>/invite @xdm</code>), then run <code>/xdm connect</code> there to connect "
            "your X account. You can close this tab.</p>",
        )
        return _response(200, body, args.settings.state_utils.build_set_cookie_for_deletion())

    async def failure(args: AsyncFailureArgs) -> BoltResponse:
        reason = str(args.error) if args.reason == "storage_error" and args.error else args.reason
        reason = slack_reason(reason)
        # A line a minute per known reason; every other one (anyone can make up an error=) shares one.
        key = reason if reason in FAILURES else OTHER
        REFUSALS.warning("Slack install did not complete", key, slack_reason=reason)
        return failure_response(reason, args.settings.state_utils.build_set_cookie_for_deletion())

    settings = AsyncOAuthSettings(
        client_id=client_id,
        client_secret=client_secret,
        scopes=sorted(BOT_SCOPES),
        user_scopes=[],
        redirect_uri=redirect_uri,
        install_path=INSTALL_PATH,
        redirect_uri_path=REDIRECT_PATH,
        authorization_url=authorize_url,
        installation_store=installs,
        installation_store_bot_only=True,
        state_store=states,
        state_expiration_seconds=int(STATE_TTL),
        callback_options=AsyncCallbackOptions(success=success, failure=failure),
        logger=log,
    )
    return InstallFlow(client=client, settings=settings, logger=log)


def slack_reason(reason: str) -> str:
    """``reason`` when it is shaped as Slack's error codes (``invalid_team_for_non_distributed_app``),
    else ``OTHER``: the redirect's ``error=`` is whatever the link that was opened says, and its
    words are neither shown on the bridge's page nor written to its log."""
    return reason if _SLACK_CODE.fullmatch(reason) else OTHER


def failure_response(reason: str, delete_cookie: str) -> BoltResponse:
    status, message = FAILURES.get(
        reason, (400, f"Slack did not complete the install ({reason}). Start again from the install page.")
    )
    return _response(status, page_html("Not installed", f"<p>{html.escape(message)}</p>"), delete_cookie)


def _response(status: int, body: str, set_cookie: str) -> BoltResponse:
    headers: dict[str, str | Sequence[str]] = {"Content-Type": "text/html; charset=utf-8", **PAGE_HEADERS}
    headers["Set-Cookie"] = [set_cookie]
    return BoltResponse(status=status, body=body, headers=headers)


def page_html(title: str, inner: str) -> str:
    """A page around ``inner`` (HTML the caller escaped), as the bridge's other pages look."""
    return (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)} · xdm-bridge</title>"
        "<body style='font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem'>"
        f"<h1>{html.escape(title)}</h1>{inner}</body></html>"
    )

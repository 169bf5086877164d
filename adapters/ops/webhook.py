"""``xdm-bridge webhook status|register|replay``: see and fix X's push for an operator.

Registering makes X call the running server back (the CRC), so run it while the server
is up. The server itself registers, subscribes each connected account and replays
after downtime; these commands are for looking, and for nudging when that failed.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from adapters.x.api import XApiClient, XAppClient
from bridge.settings import Settings

NOT_CONFIGURED = (
    "push is not configured: set X_CONSUMER_SECRET and X_BEARER_TOKEN (and PUBLIC_URL); "
    "the bridge polls X meanwhile"
)


class PushNotConfigured(Exception):
    """The settings do not turn push on."""


def _client(settings: Settings, session: aiohttp.ClientSession) -> tuple[XAppClient, str]:
    if settings.push_url is None or settings.x_bearer_token is None:
        raise PushNotConfigured(NOT_CONFIGURED)
    x = XApiClient(session, settings.x_api_url, timeout=settings.x_timeout_seconds)
    return XAppClient(x, settings.x_bearer_token), settings.push_url


async def status(settings: Settings) -> dict[str, Any]:
    """Our webhook (valid or not) and the subscriptions that point at it."""
    async with aiohttp.ClientSession() as session:
        app, url = _client(settings, session)
        webhooks = await app.list_webhooks()
        mine = next((w for w in webhooks if w.get("url") == url), None)
        subscriptions = await app.list_subscriptions()
    ours = [s for s in subscriptions if mine is not None and str(s.get("webhook_id")) == str(mine["id"])]
    return {
        "url": url,
        "webhook": mine,
        "other_webhooks": [w for w in webhooks if w is not mine],
        "subscriptions": [
            {"event_type": s.get("event_type"), "user_id": (s.get("filter") or {}).get("user_id")}
            for s in ours
        ],
    }


async def register(settings: Settings) -> dict[str, Any]:
    """Create the webhook, or re-run its CRC when it exists (re-enabling an invalid one)."""
    async with aiohttp.ClientSession() as session:
        app, url = _client(settings, session)
        mine = next((w for w in await app.list_webhooks() if w.get("url") == url), None)
        if mine is None:
            created = await app.create_webhook(url)
            return {"action": "created", "webhook": created}
        valid = await app.validate_webhook(str(mine["id"]))
        return {"action": "revalidated", "webhook": {**mine, "valid": valid}}


async def replay(settings: Settings, minutes: int) -> dict[str, Any]:
    """Ask X to push again what it pushed in the last ``minutes`` (at most 24 hours)."""
    async with aiohttp.ClientSession() as session:
        app, url = _client(settings, session)
        mine = next((w for w in await app.list_webhooks() if w.get("url") == url), None)
        if mine is None:
            raise PushNotConfigured(
                "no webhook is registered for this bridge: run `xdm-bridge webhook register`"
            )
        now = time.time()
        job = await app.replay(str(mine["id"]), now - min(minutes, 24 * 60) * 60, now)
    return {"webhook_id": mine["id"], "job_id": job, "minutes": minutes}


def status_text(report: dict[str, Any]) -> str:
    webhook = report["webhook"]
    lines = [f"push URL: {report['url']}"]
    if webhook is None:
        lines.append("webhook: not registered (run `xdm-bridge webhook register` while the server runs)")
    else:
        state = "valid" if webhook.get("valid") else "INVALID (run `xdm-bridge webhook register` to re-check)"
        lines.append(f"webhook: {webhook['id']}, {state}")
    subscriptions = report["subscriptions"]
    lines.append(f"subscriptions: {len(subscriptions)}")
    lines.extend(f"  {s['event_type']} for X user {s['user_id']}" for s in subscriptions)
    return "\n".join(lines)

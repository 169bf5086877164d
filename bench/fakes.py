"""Bench helper process: the fake X API and the fake Slack Web API, plus a control port.

Started by ``bench/run.py`` so the simulators do not share the load generator's event loop.
Prints one JSON line ``{"x_url", "slack_url", "control_url"}`` when ready, then serves until
SIGTERM/SIGINT.

Every DM POST that reaches the fake X is stamped with ``time.monotonic()`` by a middleware that
runs *before* the fake's own work (spec validation, rate-limit windows, the response), so the
bench can measure "event sent → X received the POST" with X's own latency left out. On Linux
``time.monotonic()`` is CLOCK_MONOTONIC, one clock for every process on the machine.

Control endpoints (JSON):
- ``POST /issue?user_id=…``: mint X tokens for a user (so the bench can pre-populate accounts);
- ``GET /arrivals?since=N``: ``{"next": M, "arrivals": [[marker, t], …]}`` in arrival order;
- ``GET /stats``: DMs accepted, violations of X's OpenAPI spec, Slack reactions added.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from adapters.sandbox.fake_slack import FakeSlack, PostLimits
from adapters.sandbox.fake_x import FakeX
from adapters.sandbox.openapi import SpecValidator

TEAM = "T0001"
MARKER = re.compile(r"\bbench (\S+)")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class NoValidation(SpecValidator):
    """Routing and scopes from the spec, without the per-request schema checks."""

    def validate_request(self, *args: object, **kwargs: object) -> list[str]:
        return []

    def validate_response(self, *args: object, **kwargs: object) -> list[str]:
        return []


class Recorder:
    def __init__(self) -> None:
        self.arrivals: list[tuple[str, float]] = []

    @web.middleware
    async def stamp(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        now = time.monotonic()
        if request.method == "POST" and request.path.endswith("/messages"):
            body = await request.read()  # cached: the fake reads it again
            match = MARKER.search(body.decode("utf-8", "replace"))
            if match:
                self.arrivals.append((match.group(1), now))
        return await handler(request)


def control_app(fake_x: FakeX, fake_slack: FakeSlack, recorder: Recorder) -> web.Application:
    async def issue(request: web.Request) -> web.Response:
        user_id = request.query["user_id"]
        if user_id not in fake_x.users:
            fake_x.add_user(user_id, f"bench{user_id}", f"Bench {user_id}")
        grant = fake_x.issue_token(user_id)
        return web.json_response(
            {
                "access_token": grant.access_token,
                "refresh_token": grant.refresh_token,
                "expires_at": grant.expires_at,
                "scope": " ".join(sorted(grant.scopes)),
            }
        )

    async def arrivals(request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return web.json_response({"next": len(recorder.arrivals), "arrivals": recorder.arrivals[since:]})

    async def stats(request: web.Request) -> web.Response:
        reactions = sum(1 for c in fake_slack.calls if c.method == "reactions.add" and c.ok)
        return web.json_response(
            {
                "dms": len(fake_x.events),
                "violations": len(fake_x.violations),
                "first_violations": fake_x.violations[:5],
                "reactions": reactions,
                "posts": sum(1 for c in fake_slack.calls if c.method == "chat.postMessage" and c.ok),
                "slack_calls": len(fake_slack.calls),
            }
        )

    app = web.Application()
    app.router.add_post("/issue", issue)
    app.router.add_get("/arrivals", arrivals)
    app.router.add_get("/stats", stats)
    return app


async def serve(users: int, validate: bool, workspace_posts: float) -> None:
    fake_x = FakeX() if validate else FakeX(spec=NoValidation())
    fake_x.user_limit_15m = fake_x.user_limit_24h = fake_x.app_limit_24h = 10**9
    fake_x.add_user("2001", "bench_peer", "Bench Peer")
    for index in range(users):
        fake_x.add_user(str(1000 + index), f"bench{index}", f"Bench {index}")
    fake_slack = FakeSlack(team_id=TEAM)
    if workspace_posts >= 0:
        # Slack's chat.postMessage limits: a second per channel with short bursts (documented),
        # and a workspace-wide limit Slack gives no number for (``--slack-workspace-posts``).
        fake_slack.post_limits = PostLimits(
            per_channel_per_s=1.0, channel_burst=3, workspace_per_min=workspace_posts or None
        )
    for index in range(users):
        fake_slack.add_user(f"U{100 + index}", display_name=f"Bench User {index}")
        fake_slack.add_channel(f"C{100 + index}", f"bench-{index}")
    recorder = Recorder()
    x_app = fake_x.make_app()
    x_app.middlewares.insert(0, recorder.stamp)

    runners: list[web.AppRunner] = []
    urls: list[str] = []
    for app in (x_app, fake_slack.app, control_app(fake_x, fake_slack, recorder)):
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        urls.append(f"http://127.0.0.1:{port}")
    fake_slack.base_url = urls[1]
    print(json.dumps({"x_url": urls[0], "slack_url": urls[1], "control_url": urls[2]}), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=10, help="X accounts / Slack users / channels")
    parser.add_argument(
        "--no-validate", action="store_true", help="skip the fake X's OpenAPI checks (less CPU)"
    )
    parser.add_argument(
        "--slack-workspace-posts",
        type=float,
        default=-1,
        help="enforce Slack's posting limits: a second per channel with bursts of 3, and this many "
        "posts a minute in the workspace (0: no workspace limit); unset: no limits at all",
    )
    args = parser.parse_args()
    asyncio.run(serve(args.users, validate=not args.no_validate, workspace_posts=args.slack_workspace_posts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

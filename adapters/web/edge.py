"""The listening edge: what one client may hold, so slow clients cannot starve Slack's events.

aiohttp bounds idle keep-alive but not how long a client may take to send a request head,
nor how many connections are open. A few hundred connections that trickle a header byte
now and then (slowloris) or never send anything would hold sockets until the file
descriptors run out, and Slack's events (which must be acknowledged within 3 s) would
find no room. So every connection here is wrapped:

* its request head must arrive within ``HEAD_TIMEOUT`` (and again after each response,
  within the keep-alive time plus ``HEAD_TIMEOUT``), else it is closed;
* a body must arrive within ``BODY_TIMEOUT`` (``body_deadline`` middleware), else 408;
* at most ``max_connections`` are open, well under the process's descriptor limit; at the
  cap the oldest connection whose request has not fully arrived (head or body) is dropped
  to admit the new one, so a flood of slow clients, trickling heads or bodies, cannot shut
  out a real one;
* what is dropped is counted and logged at most once per ``LOG_EVERY`` seconds.

Only public interfaces are used: the listening socket is asyncio's own server, whose
protocol factory wraps the protocols aiohttp's public ``web.Server`` makes (the runner's
``server``); the wrapper speaks asyncio's ``Protocol`` interface and forwards every call to
aiohttp's handler, which writes to the transport directly; the body deadline is a middleware,
and finds its connection by the request's public ``transport``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import resource
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("adapters.web.edge")

HEAD_TIMEOUT = 10.0  # seconds to send a complete request line and headers
BODY_TIMEOUT = 10.0  # seconds to send the body once the head is in
KEEPALIVE_TIMEOUT = 15.0  # an idle keep-alive connection is closed after this
MAX_CONNECTIONS = 1000
LOG_EVERY = 10.0
END_OF_HEAD = b"\r\n\r\n"
# The bridge's own HTML pages (the X connect flow, the Slack install flow) must not be framed
# (a hidden "Continue" button), cached, or leak their URL (it holds a state) through Referer.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def connection_cap(limit: int = MAX_CONNECTIONS) -> int:
    """``limit``, but at most half the process's descriptors: the rest are for the database,
    the calls to X and Slack, the log, and a batch of accepts (``accept_backlog``)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limit
    return max(8, min(limit, soft // 2))


def accept_backlog(limit: int = 512) -> int:
    """The listen backlog, which is also how many sockets asyncio accepts in one go before any
    of them can be refused: a quarter of the descriptors at most."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limit
    return max(8, min(limit, soft // 4))


class QuietAccept:
    """A loop exception handler: asyncio reports every accept() that fails for want of file
    descriptors (once per socket of a batch, again every second): thousands of lines a
    minute under a flood. One line per ``LOG_EVERY`` says it, with how many were folded in."""

    def __init__(self) -> None:
        self._last = -LOG_EVERY
        self._folded = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        if not str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            loop.default_exception_handler(context)
            return
        now = loop.time()
        if now - self._last < LOG_EVERY:
            self._folded += 1
            return
        log.error(
            "out of file descriptors: new connections wait in the listen queue",
            extra={"error": str(context.get("exception")), "similar_since_last": self._folded},
        )
        self._last, self._folded = now, 0


class Guard:
    """The open connections, oldest first, and what has been dropped."""

    def __init__(self, max_connections: int | None = None, head_timeout: float = HEAD_TIMEOUT) -> None:
        self.max_connections = max_connections or connection_cap()
        self.head_timeout = head_timeout
        self.open: collections.OrderedDict[GuardedConnection, None] = collections.OrderedDict()
        self.by_transport: dict[asyncio.BaseTransport, GuardedConnection] = {}
        self._dropped: collections.Counter[str] = collections.Counter()
        self._last_log = 0.0

    def admit(self, connection: GuardedConnection) -> bool:
        """Make room for ``connection``; False when every open one is being answered (refuse it)."""
        if len(self.open) >= self.max_connections:
            waiting = next((c for c in self.open if not c.handling), None)
            if waiting is None:
                self.dropped("refused: every connection busy")
                return False
            waiting.close("evicted: its request had not arrived when the connection cap was reached")
        self.open[connection] = None
        if connection.transport is not None:
            self.by_transport[connection.transport] = connection
        return True

    def forget(self, connection: GuardedConnection) -> None:
        self.open.pop(connection, None)
        if connection.transport is not None:
            self.by_transport.pop(connection.transport, None)

    def dropped(self, why: str) -> None:
        """Count a dropped connection; log the counts at most once per ``LOG_EVERY``."""
        self._dropped[why] += 1
        now = asyncio.get_running_loop().time()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            counts = dict(self._dropped)
            self._dropped.clear()
            log.warning(
                "slow or excess HTTP connections dropped",
                extra={"dropped": counts, "open": len(self.open), "cap": self.max_connections},
            )


class GuardedConnection(asyncio.Protocol):
    """One client connection in front of aiohttp's request handler (``inner``, any protocol)."""

    def __init__(self, guard: Guard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self.inner = inner
        self._started = False
        self.transport: asyncio.Transport | None = None  # the request's ``transport`` too
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""
        self.head_done = False
        self.handling = False  # a whole request is in and being answered: never evicted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self._guard.admit(self):
            transport.abort()
            return
        self._arm(self._guard.head_timeout)
        self._started = True
        self.inner.connection_made(transport)

    def _arm(self, seconds: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = asyncio.get_running_loop().call_later(seconds, self._head_late)

    def _head_late(self) -> None:
        self._deadline = None
        if not self.head_done:
            self.close("closed: request head not sent in time")

    def close(self, why: str) -> None:
        self._guard.dropped(why)
        self._guard.forget(self)
        if self.transport is not None:
            self.transport.abort()

    def request_done(self) -> None:
        """A response went out: the next request's head has the keep-alive time plus its own."""
        self.head_done = False
        self.handling = False
        self._tail = b""
        self._arm(KEEPALIVE_TIMEOUT + self._guard.head_timeout)

    def data_received(self, data: bytes) -> None:
        if not self.head_done:
            seen = self._tail + data
            if END_OF_HEAD in seen:
                self.head_done = True
                if self._deadline is not None:
                    self._deadline.cancel()
                    self._deadline = None
            else:
                self._tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        self.inner.eof_received()
        return None  # let the transport close, as aiohttp's handler does

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._guard.forget(self)
        if self._started:
            self.inner.connection_lost(exc)


GUARD = web.AppKey("edge_guard", Guard)


@web.middleware
async def body_deadline(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Read a request's body within ``BODY_TIMEOUT`` (408 otherwise); then tell the connection's
    guard the request is done, so the next head on a kept-alive connection is timed too."""
    guard = request.app.get(GUARD)
    transport = request.transport
    connection = guard.by_transport.get(transport) if guard is not None and transport else None
    try:
        if request.can_read_body:
            try:
                async with asyncio.timeout(BODY_TIMEOUT):
                    await request.read()  # cached: handlers read it again for free
            except TimeoutError:
                if guard is not None:
                    guard.dropped("closed: request body not sent in time")
                return web.json_response(
                    {"error": "request body not sent in time"}, status=408, headers={"Connection": "close"}
                )
        if connection is not None:
            connection.handling = True  # till its answer is out: a slow body may be evicted, not this
        return await handler(request)
    finally:
        if connection is not None:
            connection.request_done()


class Listener:
    """A listening socket whose every connection goes through a ``Guard`` to the runner's server.

    asyncio's own server with a protocol factory of ours (not a ``web.BaseSite``, whose
    subclasses must set its private attributes); ``GuardedRunner`` closes it first at cleanup,
    as the runner stops its sites, so nothing new is accepted while in-flight requests finish.
    """

    def __init__(self, server: asyncio.AbstractServer, name: str) -> None:
        self._server = server
        self.name = name

    def close(self) -> None:
        """Stop accepting; open connections are left to the runner's graceful shutdown."""
        self._server.close()


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` that stops its ``Listener``s first when it cleans up."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.listeners: list[Listener] = []

    async def cleanup(self) -> None:
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()
        await super().cleanup()


def runner(app: web.Application, *, shutdown_timeout: float, handle_signals: bool = False) -> GuardedRunner:
    """The app's runner with the edge's keep-alive bound (and no access log); ``handle_signals``
    turns SIGTERM and SIGINT into a graceful stop, as ``web.run_app`` does."""
    app[GUARD] = Guard()
    app.middlewares.insert(0, body_deadline)
    return GuardedRunner(
        app,
        access_log=None,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        shutdown_timeout=shutdown_timeout,
        handle_signals=handle_signals,
    )


async def start(
    app_runner: GuardedRunner,
    host: str | None = None,
    port: int | None = None,
    *,
    sock: socket.socket | None = None,
    backlog: int | None = None,
) -> Listener:
    """Listen on ``host:port``, or on ``sock`` (bound already, so a port in use is found early),
    behind the app's guard (``runner`` made the runner)."""
    await app_runner.setup()
    server = app_runner.server
    assert server is not None  # set up just now
    guard = app_runner.app[GUARD]

    def connection() -> GuardedConnection:
        return GuardedConnection(guard, server())

    loop = asyncio.get_running_loop()
    backlog = backlog or accept_backlog()
    if sock is not None:
        listening = await loop.create_server(connection, sock=sock, backlog=backlog)
        bound, bound_port = sock.getsockname()[:2]
        name = f"http://{bound}:{bound_port}"
    else:
        assert port is not None, "a port, or a bound socket"
        listening = await loop.create_server(connection, host, port, backlog=backlog, reuse_address=True)
        name = f"http://{host}:{port}"
    listener = Listener(listening, name)
    app_runner.listeners.append(listener)
    return listener


def serve(app: web.Application, *, sock: socket.socket, shutdown_timeout: float) -> None:
    """``web.run_app`` for the guarded edge: serve until SIGTERM or SIGINT, then drain and stop."""

    async def main() -> None:
        app_runner = runner(app, shutdown_timeout=shutdown_timeout, handle_signals=True)
        try:
            site = await start(app_runner, sock=sock)
            cap = app[GUARD].max_connections
            log.info("listening", extra={"address": site.name, "max_connections": cap})
            await asyncio.Event().wait()  # until a signal raises GracefulExit
        finally:
            await app_runner.cleanup()

    # As web.run_app does: on a signal only the main task is cancelled, so its cleanup (the
    # workers' grace period) runs while everything else still works; the rest goes after.
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(QuietAccept())
    asyncio.set_event_loop(loop)
    task = loop.create_task(main())
    try:
        with contextlib.suppress(web.GracefulExit, KeyboardInterrupt):
            loop.run_until_complete(task)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)
        rest = asyncio.all_tasks(loop)
        for other in rest:
            other.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()

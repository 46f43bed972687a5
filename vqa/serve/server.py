"""How ``vqa serve`` runs uvicorn: a clean stop on Ctrl-C or SIGTERM, and bounded connections.

Stopping. The first Ctrl-C (or SIGTERM) closes the listening socket, lets every request already
received finish, then the app's lifespan stops the engine and ``Server.run`` returns, for SIGTERM
too (uvicorn's own ``Server`` raises the signal again once it has stopped, so SIGTERM killed the
process with status 143). A second Ctrl-C does not force uvicorn's exit, which cancelled the
requests still waiting into plain-text 500s and tracebacks: it cancels them here, and
``StopAnswers`` turns each cancelled request into a JSON 503. Requests still running ``GRACE_S``
after the first signal are cancelled, and answered, the same way.

Connections. uvicorn's h11 protocol arms its keep-alive timeout only after a response, so a
connection that never sends a byte stays open for ever, and its ``limit_concurrency`` counts such
connections, so a few hundred idle sockets would turn every real request away.
``BoundedH11Protocol`` closes a connection that has not sent a whole request head within
``timeout_keep_alive`` of opening (or of its last response); when ``limit_concurrency``
connections are open, a new one closes the one idle the longest, so a real request still gets
in; and a request beyond ``limit_concurrency`` requests in flight gets a JSON 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from typing import Callable

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from vqa.serve.engine import BUSY, SHUTTING_DOWN

MAX_CONNECTIONS = 100  # connections open at once, and requests in flight
IDLE_TIMEOUT_S = 5  # how long a connection may take to send a whole request head
GRACE_S = 30  # how long requests in flight have, after Ctrl-C, before they are answered 503


def server_config(app, max_connections: int = MAX_CONNECTIONS, idle_timeout_s: float = IDLE_TIMEOUT_S,
                  grace_s: float = GRACE_S) -> uvicorn.Config:
    """uvicorn's settings for ``app``: quiet logs, the lifespan on, and the bounds above."""
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", http=BoundedH11Protocol,
                          limit_concurrency=max_connections, timeout_keep_alive=idle_timeout_s,
                          timeout_graceful_shutdown=grace_s)


class Server(uvicorn.Server):
    """uvicorn's server, stopped by Ctrl-C or SIGTERM as the module docstring says.

    Args:
        config: ``server_config(app)``.
        log: where the line saying it is stopping goes (nowhere when None).
    """

    def __init__(self, config: uvicorn.Config, log: Callable[[str], None] | None = None):
        super().__init__(config)
        self.log = log
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    @contextlib.contextmanager
    def capture_signals(self):
        """uvicorn's signal handlers while serving, without raising the signal again after the stop."""
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig, frame) -> None:
        if not self.should_exit:
            self.should_exit = True
        elif self._loop is not None:  # in a signal handler: the cancelling is left to the event loop
            self._loop.call_soon_threadsafe(self.answer_waiting)

    def answer_waiting(self) -> None:
        """Cancel every request in flight; ``StopAnswers`` answers each with a JSON 503."""
        for task in list(self.server_state.tasks):
            task.cancel()

    async def shutdown(self, sockets=None) -> None:
        if self.log is not None and self.server_state.tasks:
            self.log(f"stopping: answering the {len(self.server_state.tasks)} requests in flight; "
                     "press Ctrl-C again to stop at once.")
        await super().shutdown(sockets)


class StopAnswers:
    """ASGI middleware: a request cancelled by the server's stop gets a JSON 503, not uvicorn's plain-text 500."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_watched)
        except asyncio.CancelledError:
            # The task is the request's own, and its server wants it answered and finished: the cancel ends here.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if not started:
                await send_json(send, 503, SHUTTING_DOWN)


async def send_json(send, status: int, detail: str) -> None:
    """Answer ``{"detail": detail}`` with ``status`` through an ASGI ``send``, closing the connection after."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), (b"x-content-type-options", b"nosniff")]})
    await send({"type": "http.response.body", "body": body})


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the bounds the module docstring describes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_connections = self.limit_concurrency
        self.limit_concurrency = None  # uvicorn's own check answers plain text; ``admit`` answers in JSON
        self.served_app, self.app = self.app, self.admit
        self.idle_since = time.monotonic()
        self.head_timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> bool:
        """No request in progress: none yet, or its response is sent."""
        return self.cycle is None or self.cycle.response_complete

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._watch_head()
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            idle = [other for other in self.connections if other is not self and isinstance(other, BoundedH11Protocol)
                    and other.waiting and not other.transport.is_closing()]
            if idle:
                min(idle, key=lambda other: other.idle_since).timeout_keep_alive_handler()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def on_response_complete(self) -> None:
        self.idle_since = time.monotonic()
        super().on_response_complete()
        self._watch_head()

    def connection_lost(self, exc) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        super().connection_lost(exc)

    def _watch_head(self) -> None:
        """A waiting connection must send a whole request head within ``timeout_keep_alive``; bytes do not reset it."""
        if not self.waiting:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None
        elif self.head_timer is None and not self.transport.is_closing():
            self.head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_overdue)

    def _head_overdue(self) -> None:
        self.head_timer = None
        if self.waiting:
            self.timeout_keep_alive_handler()  # uvicorn's own close of an idle connection

    async def admit(self, scope, receive, send) -> None:
        """The app, or a JSON 503 when more than ``max_connections`` requests are in flight (this one counted)."""
        if self.max_connections is not None and len(self.tasks) > self.max_connections:
            await send_json(send, 503, BUSY)
            return
        await self.served_app(scope, receive, send)

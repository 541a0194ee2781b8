"""Graceful shutdown on SIGTERM: stop reporting ready, keep answering for a while, then stop.

A rolling deploy (Kubernetes) sends SIGTERM and takes the server out of the load balancer when
its readiness probe fails; requests already sent, and those sent until the balancer notices,
must still be answered. uvicorn alone stops accepting at the first SIGTERM: connections
waiting in the listen queue are reset and idle keep-alive connections closed under clients
that are sending on them (issue 18 measured it: of 48 requests in flight at SIGTERM, 28 were
answered, 6 reset and 14 refused).

So the first SIGTERM only starts a drain: ``/v2/health/ready`` and every model's ``ready``
answer 503, answers carry ``Connection: close`` (clients reconnect, to another server once the
balancer has moved on), and everything else works as before. After ``drain_s`` seconds
uvicorn's own graceful shutdown runs: stop accepting, finish what is in flight, exit 0. A
second SIGTERM, or SIGINT, stops at once (uvicorn's behaviour).

Works in every uvicorn worker process: each installs the hook when its application starts.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time

logger = logging.getLogger("uvicorn.error")


class Drain:
    """The draining state of one server process.

    Args:
        drain_s: how long to keep answering after SIGTERM (0: stop at once, as uvicorn does).
    """

    def __init__(self, drain_s: float):
        self.drain_s = max(0.0, drain_s)
        self.since: float | None = None
        self._server = None  # the uvicorn.Server whose SIGTERM handler was wrapped

    @property
    def draining(self) -> bool:
        """True from the first SIGTERM on."""
        return self.since is not None

    def install(self) -> bool:
        """Wrap uvicorn's SIGTERM handler; False (nothing changed) where that is not possible.

        Only from the main thread of a process that uvicorn serves (its handler is a bound
        method of ``uvicorn.Server``); an in-thread test server keeps uvicorn's behaviour.
        """
        if self.drain_s <= 0 or threading.current_thread() is not threading.main_thread():
            return False
        import uvicorn

        previous = signal.getsignal(signal.SIGTERM)
        server = getattr(previous, "__self__", None)
        if not isinstance(server, uvicorn.Server):
            return False
        self._server = server

        def on_sigterm(sig, frame):
            if self.draining:  # the second SIGTERM: stop now
                previous(sig, frame)
                return
            self.since = time.monotonic()  # only a flag: watch() does the rest, outside the handler

        signal.signal(signal.SIGTERM, on_sigterm)
        return True

    async def watch(self) -> None:
        """Runs beside the server: when the drain period is over, start uvicorn's graceful shutdown."""
        while True:
            if self.since is not None:
                logger.info("SIGTERM: not ready; answering for %.1f s more, then stopping", self.drain_s)
                await asyncio.sleep(max(0.0, self.since + self.drain_s - time.monotonic()))
                # Set directly rather than through uvicorn's handler, which would re-raise
                # SIGTERM once shut down and so exit with 143 instead of 0.
                self._server.should_exit = True
                return
            await asyncio.sleep(0.05)


class CloseWhileDraining:
    """ASGI middleware: while draining, every answer says ``Connection: close``."""

    def __init__(self, app, drain: Drain):
        self.app, self.drain = app, drain

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.drain.draining:
            await self.app(scope, receive, send)
            return

        async def send_closing(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)

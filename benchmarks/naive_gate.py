"""The naive baseline: a pure-ASGI semaphore with a bounded FIFO queue of waiters.

This is the original plan's "Option 1" without ``BaseHTTPMiddleware``: at most
``max_concurrent`` requests run, up to ``queue_capacity`` more wait (FIFO, as
``asyncio.Semaphore`` hands out permits in arrival order) for at most ``wait_timeout``
seconds, everything else gets a ``503`` with a constant ``Retry-After: 1``. No lanes, no
queue management: what a careful engineer writes in an afternoon.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from lockgate._types import ASGIApp, Receive, Scope, Send


class NaiveGate:
    """Semaphore + bounded FIFO queue + wait timeout, answering the overflow ``503``."""

    def __init__(
        self,
        app: ASGIApp,
        max_concurrent: int,
        *,
        queue_capacity: int,
        wait_timeout: float,
        bypass_paths: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.queue_capacity = queue_capacity
        self.wait_timeout = wait_timeout
        self.bypass_paths = frozenset(bypass_paths)
        self._seats = asyncio.Semaphore(max_concurrent)
        self._waiting = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.bypass_paths:
            await self.app(scope, receive, send)
            return
        if self._seats.locked():
            if self._waiting >= self.queue_capacity:
                await _reject(send, b"QUEUE_FULL")
                return
            self._waiting += 1
            try:
                async with asyncio.timeout(self.wait_timeout):
                    await self._seats.acquire()
            except TimeoutError:
                await _reject(send, b"QUEUE_TIMEOUT")
                return
            finally:
                self._waiting -= 1
        else:
            await self._seats.acquire()
        try:
            await self.app(scope, receive, send)
        finally:
            self._seats.release()


async def _reject(send: Send, code: bytes) -> None:
    body = b'{"success":false,"error":{"code":"' + code + b'","retry_after":1}}'
    await send({
        "type": "http.response.start",
        "status": 503,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"1")],
    })
    await send({"type": "http.response.body", "body": body})

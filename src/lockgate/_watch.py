"""The disconnect watcher of a queued request.

While a request waits for a seat, a watcher reads its messages (buffering any body) so that
a client that leaves is seen at once: its waiter leaves the queue and takes no seat.

A read the watcher has started when the request is admitted is never cancelled: a server's
``receive()`` need not survive a cancellation (one that hands messages over through a
future, or httpx's ``ASGITransport``, loses or breaks the message in flight). The read is
handed over instead: the app's ``receive()`` returns the buffered messages, then waits for
the read in flight, then calls the server's ``receive()`` itself. The watcher ends with
that read, or is cancelled once the app has finished (nothing then wants the message).

On asyncio the watcher is a plain task; on trio, a system task (a read in flight must
outlive the scope in which the request waited; trio has no other task that can).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Callable

import anyio

from ._types import Message, Receive, Scope

__all__ = ["MAX_BUFFERED_BODY", "Watcher"]

MAX_BUFFERED_BODY = 64 << 10
"""Body bytes read ahead while a request waits (to notice a disconnect); past it, the watcher
stops reading and the wait is bounded by the timeout alone. Kept small: every waiter may
hold this much (1,000 waiters x 64 KiB = 64 MiB; it was 1 MiB, 1 GiB in all)."""


class Watcher:
    """Reads a queued request's messages until it is admitted, refused or its client leaves.
    Not a body parser: it only buffers what it read, in order, for the app."""

    __slots__ = (
        "_closed", "_done", "_on_disconnect", "_receive", "_scope", "_stopping", "_task",
        "_waiter", "buffered", "disconnected",
    )

    def __init__(self, receive: Receive) -> None:
        self.buffered: deque[Message] = deque()
        self.disconnected = False
        """The client left (``http.disconnect`` read) while the request waited."""
        self._receive = receive
        self._on_disconnect: Callable[[], object] = _nothing
        self._stopping = self._closed = self._done = False
        self._waiter: anyio.Event | None = None  # made only when the app must wait for a read
        self._task: asyncio.Future[None] | None = None
        self._scope: anyio.CancelScope | None = None

    def start(
        self, scope: Scope, on_disconnect: Callable[[], object], *, trio: bool = False
    ) -> None:
        """Start watching, in an asyncio task (``trio``: a trio system task); call
        ``on_disconnect`` if the client leaves before ``hand_over``. Not at all for a request
        that expects ``100 Continue``: reading would make the server send it, and the client
        upload a body that may only meet a 503."""
        self._on_disconnect = on_disconnect
        if _expects_continue(scope):
            self._done = True
        elif not trio:
            self._task = asyncio.ensure_future(self._watch())
        else:
            from trio.lowlevel import spawn_system_task

            spawn_system_task(self._watch_scoped, context=contextvars.copy_context())

    async def _watch_scoped(self) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self._closed:
                scope.cancel()
            await self._watch()

    async def _watch(self) -> None:
        size = 0
        try:
            while size <= MAX_BUFFERED_BODY and not self._stopping:
                message = await self._receive()
                self.buffered.append(message)
                if message["type"] == "http.disconnect":
                    self.disconnected = True
                    if not self._stopping:
                        self._on_disconnect()
                    return
                size += len(message.get("body", b""))
        except Exception:  # the app will meet the same error on its own receive()
            return
        finally:
            self._done = True
            if self._waiter is not None:
                self._waiter.set()

    def hand_over(self) -> Receive:
        """The request is admitted: stop after the read in flight, and return the app's
        ``receive``: the buffered messages, the read in flight, then the server's."""
        self._stopping = True
        buffered, receive = self.buffered, self._receive
        if self._done and not buffered:
            return receive

        async def replay() -> Message:
            if not buffered and not self._done:
                if self._waiter is None:
                    self._waiter = anyio.Event()
                await self._waiter.wait()
            if buffered:
                return buffered.popleft()
            return await receive()

        return replay

    def close(self) -> None:
        """Stop watching now, cancelling a read in flight (the request was refused, its
        client left, or its app has finished)."""
        self._stopping = self._closed = True
        # Let go of the tasks first: a cancelled task keeps its exception, whose traceback
        # keeps the watcher's frame, and so this object; holding the task here would make a
        # cycle that only the garbage collector frees (8x the gen-0 collections, measured).
        task, scope, self._task, self._scope = self._task, self._scope, None, None
        self._on_disconnect = _nothing
        if task is not None:
            task.cancel()
        elif scope is not None:
            scope.cancel()


def _nothing() -> None:
    return None


def _expects_continue(scope: Scope) -> bool:
    """Does the request wait for ``100 Continue`` before sending its body?"""
    return any(
        name == b"expect" and value.lower() == b"100-continue"
        for name, value in scope.get("headers", ())
    )

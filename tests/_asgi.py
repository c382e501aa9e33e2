"""A hand-driven ASGI client for tests: push messages in, read what the app sent."""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import anyio

from lockgate._types import ASGIApp, Message, Scope
from lockgate.testing import make_scope


class Exchange:
    """One request to an ASGI app, driven message by message.

    ``push()`` queues a message for the app's ``receive``; ``run()`` calls the app.
    ``sent`` holds what the app (or the gate) sent back.
    """

    def __init__(self, app: ASGIApp, scope: Scope | None = None, **scope_kwargs: Any) -> None:
        self.app = app
        self.scope = scope if scope is not None else make_scope(**scope_kwargs)
        self.inbox: deque[Message] = deque()
        self._arrived = anyio.Event()
        self.sent: list[Message] = []
        self.done = False
        self.error: BaseException | None = None

    def push(self, message: Message) -> None:
        self.inbox.append(message)
        self._arrived.set()

    def push_body(self, body: bytes = b"", more: bool = False) -> None:
        self.push({"type": "http.request", "body": body, "more_body": more})

    def disconnect(self) -> None:
        self.push({"type": "http.disconnect"})

    async def receive(self) -> Message:
        while not self.inbox:
            self._arrived = anyio.Event()
            await self._arrived.wait()
        return self.inbox.popleft()

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def run(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        except Exception as exc:
            self.error = exc
        finally:
            self.done = True

    @property
    def status(self) -> int | None:
        for message in self.sent:
            if message["type"] == "http.response.start":
                return int(message["status"])
        return None

    @property
    def headers(self) -> dict[str, str]:
        for message in self.sent:
            if message["type"] == "http.response.start":
                return {k.decode(): v.decode() for k, v in message.get("headers", [])}
        return {}

    @property
    def body(self) -> bytes:
        return b"".join(
            m.get("body", b"") for m in self.sent if m["type"] == "http.response.body"
        )

    def json(self) -> Any:
        return json.loads(self.body)

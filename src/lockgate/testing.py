"""Helpers for testing code that uses lockgate: a fake clock, scopes and tiny ASGI apps.

Nothing here is used by the gate itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._clock import FakeClock as FakeClock
from ._types import Message, Receive, Scope, Send

__all__ = ["FakeClock", "make_scope", "ok_app"]


def make_scope(
    path: str = "/",
    method: str = "GET",
    headers: Iterable[tuple[bytes, bytes]] = (),
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
    type: str = "http",
) -> Scope:
    """An ASGI HTTP scope with sensible defaults."""
    return {
        "type": type,
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": list(headers),
        "client": client,
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers ``200 ok`` to every HTTP request."""
    start: Message = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
    }
    await send(start)
    await send({"type": "http.response.body", "body": b"ok"})

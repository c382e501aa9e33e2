"""The gate's own responses: structured 503 rejections and the JSON status document.

Everything that does not change per response (messages, header names, content type) is built
once at import; only ``Retry-After`` and the body's ``retry_after`` are filled in per response.
"""

from __future__ import annotations

import json

from ._exceptions import RejectReason
from ._stats import GateStats
from ._types import Send

__all__ = ["send_json", "send_rejection", "status_body"]

MESSAGES: dict[RejectReason, str] = {
    RejectReason.SYSTEM_OVERLOAD: "The service is overloaded; retry after the indicated delay.",
    RejectReason.QUEUE_FULL: "Too many requests are waiting; retry after the indicated delay.",
    RejectReason.QUEUE_TIMEOUT: "The request waited too long for capacity; retry later.",
    RejectReason.DEADLINE_UNREACHABLE: "The request's deadline cannot be met under current load.",
    RejectReason.READ_ONLY: "The service is read-only under load; writes are refused for now.",
    RejectReason.CIRCUIT_OPEN: "A dependency is failing; the service refuses requests for now.",
}
_BODY_PREFIX = {
    reason: (
        f'{{"success":false,"error":{{"code":"{reason.value}",'
        f'"message":{json.dumps(message)},"retry_after":'
    ).encode()
    for reason, message in MESSAGES.items()
}
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")


async def send_json(
    send: Send, status: int, body: bytes, extra_headers: list[tuple[bytes, bytes]] = []  # noqa: B006
) -> None:
    """Send a complete JSON response."""
    headers = [_JSON, (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_rejection(send: Send, reason: RejectReason, retry_after: int) -> None:
    """A ``503`` with the structured JSON body and an integer ``Retry-After``."""
    seconds = str(retry_after).encode()
    body = _BODY_PREFIX[reason] + seconds + b"}}"
    await send_json(send, 503, body, [(b"retry-after", seconds), _NO_STORE])


def status_body(stats: GateStats, backend_mode: str | None = None) -> bytes:
    """The JSON of the status endpoint; ``backend_mode`` (a backend's ``mode``, e.g. the
    Redis backend's ``"local"`` fallback) is added to it when the backend has one."""
    body = stats.as_status_json()
    if backend_mode is not None:
        body["data"]["backend_mode"] = backend_mode
    return json.dumps(body, separators=(",", ":")).encode()

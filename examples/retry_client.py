"""Client retry policy: how to call a gated service (docs/clients.md).

* Retry only 503 and 429, and only what is safe to repeat: an idempotent method, a request
  with an ``Idempotency-Key``, or a request lockgate itself refused (its JSON ``error.code``
  says so: the app never saw the request).
* Wait at least ``Retry-After``, plus a full-jitter exponential backoff, so refused clients
  do not come back together. Never retry in a tight loop.
* Spend from a retry budget: retries stay a small fraction of the requests (10 % here), so a
  fleet of clients cannot multiply the load on a service that is already overloaded.
* Give up when the wait would overrun the caller's own deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
LOCKGATE_CODES = frozenset({
    "SYSTEM_OVERLOAD", "QUEUE_FULL", "QUEUE_TIMEOUT", "DEADLINE_UNREACHABLE",
    "READ_ONLY", "CIRCUIT_OPEN",
})  # fmt: skip


class RetryBudget:
    """A token bucket shared by all calls of a client: every request earns ``ratio`` of a
    retry, every retry costs one; ``reserve`` retries are allowed before any were earned."""

    def __init__(self, ratio: float = 0.1, reserve: float = 10.0) -> None:
        self.ratio = ratio
        self.cap = reserve
        self.tokens = reserve

    def on_request(self) -> None:
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def try_spend(self) -> bool:
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (lockgate always sends an integer), or ``None``."""
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None  # absent, or an HTTP date: fall back to the backoff alone


def refused_by_lockgate(response: httpx.Response) -> bool:
    """Is this lockgate's own 503 (the request never reached the app)?"""
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return False
    return code in LOCKGATE_CODES


def safe_to_retry(request: httpx.Request, response: httpx.Response) -> bool:
    return (
        request.method in IDEMPOTENT_METHODS
        or "idempotency-key" in request.headers
        or refused_by_lockgate(response)
    )


async def send_with_retries(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    budget: RetryBudget,
    attempts: int = 4,
    base: float = 0.2,
    cap: float = 10.0,
    deadline: float | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: Callable[[], float] = random.random,
    **kwargs: Any,
) -> httpx.Response:
    """Send a request; retry a 503/429 politely. Returns the last response.

    ``deadline``: seconds the caller can wait in all; a retry that would start after it is
    not made, and the 503 is returned (e.g. to be shown, or to fail over).
    """
    start = time.monotonic()
    budget.on_request()
    for attempt in range(attempts - 1):
        response = await client.request(method, url, **kwargs)
        if response.status_code not in RETRY_STATUSES:
            return response
        if not safe_to_retry(response.request, response):
            return response
        backoff = min(cap, base * 2**attempt)
        delay = (retry_after(response) or 0.0) + rng() * backoff  # full jitter on top
        if deadline is not None and time.monotonic() - start + delay > deadline:
            return response
        if not budget.try_spend():
            return response
        await sleep(delay)
    return await client.request(method, url, **kwargs)


async def main() -> None:
    budget = RetryBudget()  # one per client process, shared by every call
    async with httpx.AsyncClient(base_url="http://127.0.0.1:8000", timeout=10) as client:
        response = await send_with_retries(client, "GET", "/api/v1/users/me", budget=budget)
        print(response.status_code, response.text)


if __name__ == "__main__":
    asyncio.run(main())

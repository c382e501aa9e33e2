"""What lockgate's locustfiles share: a user that counts the gate's 503s as shed, not failed.

A ``503`` whose JSON body carries ``error.code`` is lockgate rejecting a request: the gate
doing its job. ``GateAwareUser.call`` reports it as a success under the request type ``SHED``
and the name ``503 shed: <code> <METHOD> <name>``, so it gets its own rows in the stats table
and the ``--csv`` files and never counts as a failure. Anything else that is not 2xx (a 500, a
plain 503 from a proxy, a timeout, a refused connection) stays a failure.

``--honour-retry-after`` (or ``LOCUST_HONOUR_RETRY_AFTER=true``) makes the users behave like
well-behaved clients: after a shed response a user waits at least ``Retry-After`` seconds
before its next task, instead of its usual think time.

Copy this file next to your own locustfile and subclass ``GateAwareUser``; set ``think_time``
(not ``wait_time``, which ``GateAwareUser`` uses for the back-off).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar

from locust import FastHttpUser, User, between, events
from locust.argument_parser import LocustArgumentParser

__all__ = ["SHED", "GateAwareUser", "gate_error_code", "retry_after_seconds"]

SHED = "SHED"
"""Request type of the shed rows in locust's stats and CSV files."""


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]  # locust's EventHook is untyped
def _add_arguments(parser: LocustArgumentParser) -> None:
    parser.add_argument(
        "--honour-retry-after",
        action="store_true",
        default=False,
        env_var="LOCUST_HONOUR_RETRY_AFTER",
        help="after a shed 503, wait at least Retry-After seconds before the next task",
    )


def gate_error_code(body: str | None) -> str | None:
    """``error.code`` of a lockgate rejection body, or ``None`` if it is not one."""
    if not body:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) and code else None


def retry_after_seconds(value: str | None) -> float:
    """``Retry-After`` in seconds (lockgate sends an integer); 0 when absent or unreadable."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:  # the HTTP-date form: lockgate never sends it
        return 0.0
    return seconds if seconds > 0 else 0.0


class GateAwareUser(FastHttpUser):
    """A ``FastHttpUser`` whose ``call`` reports the gate's 503s as ``SHED``, not as failures."""

    abstract = True
    network_timeout = 30.0
    connection_timeout = 10.0
    think_time: ClassVar[Callable[[User], float]] = between(0.5, 1.5)
    """The pause between tasks while the gate admits this user's requests."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = self.environment.parsed_options
        self.honour_retry_after = bool(getattr(options, "honour_retry_after", False))
        self.backoff = 0.0

    def wait_time(self) -> float:
        """The think time, or the pending ``Retry-After`` back-off when that is longer."""
        backoff, self.backoff = self.backoff, 0.0
        return max(self.think_time(), backoff)

    def call(self, method: str, path: str, name: str | None = None, **kwargs: Any) -> None:
        """Send one request; a gate 503 is recorded as shed, any other non-2xx as a failure."""
        label = name or path
        with self.client.request(
            method, path, name=label, catch_response=True, **kwargs
        ) as response:
            status = response.status_code
            code = gate_error_code(response.text) if status == 503 else None
            if code is not None:
                response.request_meta["request_type"] = SHED
                response.request_meta["name"] = f"503 shed: {code} {method} {label}"
                response.success()
                if self.honour_retry_after and response.headers is not None:
                    wait = retry_after_seconds(response.headers.get("Retry-After"))
                    self.backoff = max(self.backoff, wait)
            elif status and not 200 <= status < 300:
                response.failure(f"HTTP {status}")
            # status 0 (connection error, timeout): locust reports the exception as a failure

"""lockgate's exceptions.

```
LockgateError
└── Rejected               a request was not admitted; ``reason`` says why
    ├── SystemOverload     active + queued reached ``reject_threshold``
    ├── QueueFull          no room in the queue, or displaced by a higher lane
    ├── QueueTimeout       waited ``wait_timeout`` (or the standing-queue target) in vain
    └── DeadlineUnreachable  the request's own deadline cannot be met
```

``Gate`` turns each ``Rejected`` into a ``503``; code that calls the scheduler directly
catches them. Settings errors are ``pydantic.ValidationError``, not listed here.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "DeadlineUnreachable",
    "LockgateError",
    "QueueFull",
    "QueueTimeout",
    "RejectReason",
    "Rejected",
    "SystemOverload",
]


class RejectReason(StrEnum):
    """Why a request was answered ``503``: the ``error.code`` of the JSON body."""

    SYSTEM_OVERLOAD = "SYSTEM_OVERLOAD"
    QUEUE_FULL = "QUEUE_FULL"
    QUEUE_TIMEOUT = "QUEUE_TIMEOUT"
    DEADLINE_UNREACHABLE = "DEADLINE_UNREACHABLE"
    READ_ONLY = "READ_ONLY"
    CIRCUIT_OPEN = "CIRCUIT_OPEN"

    @property
    def label(self) -> str:
        """The lowercase form used as a metric label (``"queue_full"``)."""
        return self.value.lower()


class LockgateError(Exception):
    """Base of every exception lockgate raises on purpose."""


class Rejected(LockgateError):
    """The request was not admitted."""

    reason: RejectReason

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.reason.value)


class SystemOverload(Rejected):
    reason = RejectReason.SYSTEM_OVERLOAD


class QueueFull(Rejected):
    reason = RejectReason.QUEUE_FULL


class QueueTimeout(Rejected):
    reason = RejectReason.QUEUE_TIMEOUT


class DeadlineUnreachable(Rejected):
    reason = RejectReason.DEADLINE_UNREACHABLE

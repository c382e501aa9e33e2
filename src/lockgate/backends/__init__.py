"""Where seats are counted. ``Backend`` is what the gate needs from one.

The default, in-process backend is ``lockgate.PriorityScheduler`` itself. Other backends
(``lockgate.backends.redis.RedisBackend``, global seats shared by many instances) implement
the same protocol and the same lane semantics, and hand out the same ``Permit`` objects.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .._exceptions import RejectReason
from .._lanes import LaneSeats, Priority
from .._permit import Permit
from .._stats import GateStats

__all__ = ["Backend"]


@runtime_checkable
class Backend(Protocol):
    """Seats, lanes and a queue, as the gate uses them."""

    @property
    def limit(self) -> int:
        """Seats in all, now."""
        ...

    @property
    def seats(self) -> tuple[LaneSeats, ...]:
        """Nominal / guaranteed / max seats per lane under the current limit."""
        ...

    @property
    def adaptive(self) -> bool:
        """Does an adaptive limit move ``limit`` (so every permit must be timed)?"""
        ...

    def try_acquire(self, lane: Priority) -> Permit | None:
        """A permit at once, without waiting or I/O, or ``None``."""
        ...

    async def acquire(
        self,
        lane: Priority,
        timeout: float | None = None,  # noqa: ASYNC109 - a queue budget, answered QueueTimeout
        *,
        budget: float | None = None,
    ) -> Permit:
        """Wait for a seat; raise a ``Rejected`` subclass when it cannot be had."""
        ...

    def retry_after(self, lane: Priority) -> int:
        """``Retry-After`` seconds for a request of ``lane`` refused now."""
        ...

    def record_rejection(self, lane: Priority, reason: RejectReason) -> None:
        """Count a rejection decided outside the backend."""
        ...

    def stats(self) -> GateStats:
        """A frozen snapshot."""
        ...

    def _release(self, permit: Permit, dropped: bool, sample: bool) -> None:
        """Called once by ``Permit.release()``."""
        ...

"""Clocks: where the scheduler reads the time and gets its timeout scopes.

``MonotonicClock`` is the real one. ``FakeClock`` (re-exported by ``lockgate.testing``) only
moves when told to, and fires the timeout scopes whose deadline it passes: timeouts are tested
in zero wall time, like trio's ``MockClock``.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Protocol

import anyio

__all__ = ["Clock", "FakeClock", "MonotonicClock"]


class Clock(Protocol):
    """The time source of a scheduler."""

    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    def deadline_scope(self, deadline: float) -> anyio.CancelScope:
        """A cancel scope that is cancelled once ``now() >= deadline``."""
        ...


class MonotonicClock:
    """``time.monotonic``; timeouts via the event loop's own timers."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    def deadline_scope(self, deadline: float) -> anyio.CancelScope:
        return anyio.CancelScope(deadline=anyio.current_time() + (deadline - time.monotonic()))


class FakeClock:
    """A clock that stands still until ``advance()``; then it fires the scopes it passed."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._seq = itertools.count()
        self._pending: list[tuple[float, int, anyio.CancelScope]] = []

    def now(self) -> float:
        return self._now

    def deadline_scope(self, deadline: float) -> anyio.CancelScope:
        scope = anyio.CancelScope()
        if deadline <= self._now:
            scope.cancel()
        else:
            heapq.heappush(self._pending, (deadline, next(self._seq), scope))
        return scope

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0) and cancel every scope now due."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += seconds
        while self._pending and self._pending[0][0] <= self._now:
            heapq.heappop(self._pending)[2].cancel()

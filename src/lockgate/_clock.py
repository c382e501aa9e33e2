"""Clocks: where the scheduler reads the time and gets its timeout scopes.

``MonotonicClock`` is the real one. ``FakeClock`` (re-exported by ``lockgate.testing``) only
moves when told to, and fires the timeout scopes whose deadline it passes: timeouts are tested
in zero wall time, like trio's ``MockClock``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol

import anyio

__all__ = ["Clock", "FakeClock", "MonotonicClock", "Timer"]


class Timer(Protocol):
    """A scheduled callback that can be called off."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """The time source of a scheduler."""

    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    def deadline_scope(self, deadline: float) -> anyio.CancelScope:
        """A cancel scope that is cancelled once ``now() >= deadline``."""
        ...

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback`` once ``now() >= deadline`` (asyncio only: a bare loop timer is
        far lighter than a cancel scope, which matters with thousands of waiters)."""
        ...


class MonotonicClock:
    """``time.monotonic``; timeouts via the event loop's own timers."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    def deadline_scope(self, deadline: float) -> anyio.CancelScope:
        return anyio.CancelScope(deadline=anyio.current_time() + (deadline - time.monotonic()))

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        loop = asyncio.get_running_loop()
        return loop.call_at(loop.time() + (deadline - time.monotonic()), callback)


class FakeClock:
    """A clock that stands still until ``advance()``; then it fires the scopes it passed."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._seq = itertools.count()
        self._pending: list[tuple[float, int, _FakeTimer]] = []

    def now(self) -> float:
        return self._now

    def deadline_scope(self, deadline: float) -> anyio.CancelScope:
        scope = anyio.CancelScope()
        self.call_at(deadline, scope.cancel)
        return scope

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        timer = _FakeTimer(callback)
        if deadline <= self._now:
            callback()
        else:
            heapq.heappush(self._pending, (deadline, next(self._seq), timer))
        return timer

    @property
    def next_deadline(self) -> float | None:
        """The earliest pending deadline (a simulation steps to it), or None."""
        while self._pending and self._pending[0][2].callback is None:
            heapq.heappop(self._pending)
        return self._pending[0][0] if self._pending else None

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0) and fire every scope and timer now due."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += seconds
        while self._pending and self._pending[0][0] <= self._now:
            callback = heapq.heappop(self._pending)[2].callback
            if callback is not None:
                callback()


class _FakeTimer:
    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None

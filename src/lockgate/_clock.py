"""Clocks: where the scheduler reads the time and gets its timeout scopes.

``MonotonicClock`` is the real one. ``FakeClock`` (re-exported by ``lockgate.testing``) only
moves when told to, and fires the timeout scopes whose deadline it passes: timeouts are tested
in zero wall time, like trio's ``MockClock``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import anyio

__all__ = ["Clock", "FakeClock", "MonotonicClock", "Timer"]

logger = logging.getLogger("lockgate")


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
        """Call ``callback`` once ``now() >= deadline``: far lighter than a cancel scope,
        which matters with thousands of waiters. Raises ``RuntimeError`` where it has no
        timers (outside an event loop; a clock may also support asyncio only)."""
        ...


class MonotonicClock:
    """``time.monotonic``; timeouts via the event loop's own timers."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    def deadline_scope(self, deadline: float) -> anyio.CancelScope:
        return anyio.CancelScope(deadline=anyio.current_time() + (deadline - time.monotonic()))

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # trio's, or none (then this raises RuntimeError too)
            return _trio_timers().call_later(deadline - time.monotonic(), callback)
        return loop.call_at(loop.time() + (deadline - time.monotonic()), callback)


class _TrioTimers:
    """Timers for trio, which has no ``call_at``: a heap of callbacks served by one system task
    per run. A cancel scope per waiter would cost about 1 KiB; an entry here about 150 B.
    Called-off entries are dropped once they are most of the heap (asyncio's rule): a
    waiter admitted at once would otherwise keep its entry for its whole ``wait_timeout``."""

    __slots__ = ("_called_off", "_heap", "_scope", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Handle]] = []
        self._seq = itertools.count()
        self._scope: Any = None  # the sleeping task's trio.CancelScope, its deadline the next
        self._called_off = 0  # entries in the heap whose callback is None

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        trio = sys.modules["trio"]
        when = trio.current_time() + delay
        timer = _TrioHandle(callback, self)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        scope = self._scope
        if scope is not None and when < scope.deadline:
            scope.deadline = when
        return timer

    def called_off(self) -> None:
        """One entry was called off; drop them all when they are most of the heap."""
        self._called_off += 1
        heap = self._heap
        if self._called_off > 100 and 2 * self._called_off > len(heap):
            heap[:] = [entry for entry in heap if entry[2].callback is not None]
            heapq.heapify(heap)
            self._called_off = 0

    async def run(self) -> None:
        trio, heap = sys.modules["trio"], self._heap
        while True:
            while heap and heap[0][2].callback is None:
                heapq.heappop(heap)
                self._called_off -= 1
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as self._scope:
                await trio.sleep_forever()
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                timer = heapq.heappop(heap)[2]
                callback, timer.callback = timer.callback, None
                if callback is None:
                    self._called_off -= 1
                    continue
                try:
                    callback()
                except Exception:  # in a system task it would crash the whole run
                    logger.exception("a timer callback failed")


_trio_runvar: Any = None


def _trio_timers() -> _TrioTimers:
    """This trio run's timers (started on first use); ``RuntimeError`` outside a trio run."""
    global _trio_runvar
    trio = sys.modules.get("trio")  # not imported: no trio run (and no import paid for)
    if trio is None:
        raise RuntimeError("no running event loop")
    if _trio_runvar is None:
        _trio_runvar = trio.lowlevel.RunVar("lockgate_timers")
    try:
        timers: _TrioTimers = _trio_runvar.get()  # RuntimeError outside a run
    except LookupError:
        timers = _TrioTimers()
        _trio_runvar.set(timers)
        trio.lowlevel.spawn_system_task(timers.run, name="lockgate timers")
    return timers


class FakeClock:
    """A clock that stands still until ``advance()``; then it fires the scopes it passed."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._seq = itertools.count()
        self._pending: list[tuple[float, int, _Handle]] = []

    def now(self) -> float:
        return self._now

    def deadline_scope(self, deadline: float) -> anyio.CancelScope:
        scope = anyio.CancelScope()
        self.call_at(deadline, scope.cancel)
        return scope

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        timer = _Handle(callback)
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


class _Handle:
    """A callback in a heap of timers; ``cancel()`` leaves it there, called off."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None


class _TrioHandle(_Handle):
    """A ``_TrioTimers`` entry, which tells its heap when it is called off."""

    __slots__ = ("_timers",)

    def __init__(self, callback: Callable[[], None], timers: _TrioTimers) -> None:
        super().__init__(callback)
        self._timers = timers

    def cancel(self) -> None:
        if self.callback is not None:
            self.callback = None
            self._timers.called_off()

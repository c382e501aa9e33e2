"""``Permit``: one seat held by one request, given back exactly once. Either backend hands
them out; nothing here knows how seats are counted."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol

from ._lanes import Priority

__all__ = ["Permit"]


class _Releaser(Protocol):
    def _release(self, permit: Permit, dropped: bool, sample: bool) -> None: ...


class Permit:
    """One seat, held until ``release()``. Releasing twice is a no-op, never a double release.

    Use it as a context manager (``async with await scheduler.acquire(lane): ...``) or call
    ``release()`` in a ``finally``.
    """

    __slots__ = ("_backend", "inflight", "lane", "released", "since", "waited")

    def __init__(
        self,
        backend: _Releaser,
        lane: Priority,
        waited: float = 0.0,
        since: float | None = None,
        inflight: int = 0,
    ) -> None:
        self._backend = backend
        self.lane = lane
        self.waited = waited
        """Seconds spent in the queue before the seat was handed over (0.0 when immediate)."""
        self.since = since
        """Clock time the seat was taken, when this permit is timed (a sample), else None."""
        self.inflight = inflight
        """Seats in use once this one was taken (timed permits only)."""
        self.released = False

    def release(self, *, dropped: bool = False, sample: bool = True) -> None:
        """Give the seat back (to the next waiter, if any). Only the first call counts.

        ``dropped``: the request failed from overload (the app's own 503/429/504 or timeout);
        an adaptive limit backs off. ``sample=False``: the hold time says nothing about the
        service (cancelled, client gone), so it is not fed to the limit.
        """
        if not self.released:
            self.released = True
            self._backend._release(self, dropped, sample)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<Permit lane={self.lane.label} {state} waited={self.waited:.3f}s>"

"""Limit algorithms: how many seats exist right now, apart from how they are handed out.

A ``Limit`` is told about finished requests and answers the current limit; the gate moves the
scheduler's limit when it changes (Netflix concurrency-limits' ``limit/`` vs ``limiter/``).
Only ``FixedLimit`` exists yet; the adaptive ones arrive with the overload work.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["FixedLimit", "Limit"]


@runtime_checkable
class Limit(Protocol):
    """The current number of seats, possibly moved by latency samples."""

    @property
    def limit(self) -> int: ...

    def on_sample(self, rtt: float, inflight: int, dropped: bool) -> int:
        """Record one finished request; return the (possibly new) limit."""
        ...


class FixedLimit:
    """A limit that never moves: ``settings.max_concurrent``."""

    __slots__ = ("_limit",)

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, rtt: float, inflight: int, dropped: bool) -> int:
        return self._limit

    def __repr__(self) -> str:
        return f"FixedLimit({self._limit})"

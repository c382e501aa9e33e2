"""``ReadOnlyPolicy``: stop writes while the service is near its limit.

Above ``threshold`` utilisation the service turns read-only: requests with a method other than
GET, HEAD or OPTIONS are answered ``503 READ_ONLY`` at once, so the seats go to reads, which
are usually cheaper and safe to retry. Reads pass untouched.

The mode has hysteresis so it does not flap around the threshold: it is entered when the load
reaches ``threshold`` and left only when it falls below ``release_below`` (default ``threshold
- 0.1``), and, with ``min_dwell``, not before it has lasted that many seconds.

What it is not: a rate limiter or a write queue. A refused write is not retried by lockgate;
the client sees ``Retry-After``. The mode is per policy instance (per process), decided from
the gate's ``GateStats``; it does not coordinate instances.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from .._exceptions import RejectReason
from .._stats import GateStats
from ._base import Answer, RequestInfo, ResponseInfo

__all__ = ["ReadOnlyPolicy", "utilization"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def utilization(stats: GateStats) -> float:
    """The default load signal: the share of usable seats in use (``GateStats.utilization``)."""
    return stats.utilization


class ReadOnlyPolicy:
    """Answer ``READ_ONLY`` to writes while the load is high. See the module docstring.

    ``measure`` maps a ``GateStats`` to the load compared with the thresholds (default:
    ``stats.utilization``, the share of the usable seats in use).
    """

    wants_body = False
    _ANSWER = Answer(reason=RejectReason.READ_ONLY)

    def __init__(
        self,
        threshold: float = 0.9,
        release_below: float | None = None,
        *,
        min_dwell: float = 0.0,
        safe_methods: Iterable[str] = SAFE_METHODS,
        measure: Callable[[GateStats], float] = utilization,
    ) -> None:
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError("threshold must be a finite number > 0")
        if release_below is None:
            release_below = max(0.0, threshold - 0.1)
        if not (math.isfinite(release_below) and 0 <= release_below <= threshold):
            raise ValueError("release_below must be between 0 and threshold")
        if not (math.isfinite(min_dwell) and min_dwell >= 0):
            raise ValueError("min_dwell must be a finite number >= 0")
        self.threshold = threshold
        self.release_below = release_below
        self.min_dwell = min_dwell
        self.safe_methods = frozenset(m.upper() for m in safe_methods)
        self.measure = measure
        self._since: float | None = None
        """When read-only mode was entered; ``None`` while writes are allowed."""

    @property
    def active(self) -> bool:
        """Is the service read-only now (as of the last ``update``/``before``)?"""
        return self._since is not None

    def update(self, stats: GateStats, now: float) -> bool:
        """Enter or leave read-only mode from ``stats``; returns whether it is on."""
        load = self.measure(stats)
        if self._since is None:
            if load >= self.threshold:
                self._since = now
        elif load < self.release_below and now - self._since >= self.min_dwell:
            self._since = None
        return self._since is not None

    def before(self, request: RequestInfo, stats: GateStats, now: float) -> Answer | None:
        # Every request updates the mode (reads too), so the mode follows the load even in
        # a read-mostly stream; only writes are refused.
        if self.update(stats, now) and request.method.upper() not in self.safe_methods:
            return self._ANSWER
        return None

    def after(self, request: RequestInfo, response: ResponseInfo, now: float) -> None:
        return None

    def __repr__(self) -> str:
        return (
            f"ReadOnlyPolicy(threshold={self.threshold}, release_below={self.release_below},"
            f" min_dwell={self.min_dwell})"
        )

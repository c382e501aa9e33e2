"""What a load run measured: per-lane counts, latency percentiles and goodput.

Pure functions over a load generator's ``Results``; shared by ``lockgate demo`` and
``benchmarks/overload.py`` so that both count the same way. *Goodput* is DESIGN §11's: the
seat-time of responses completed within ``GOOD_WITHIN`` x their route's service time, over the
pool's seat-time in the window. Latencies are from the scheduled send time; percentiles are of
``200`` responses only (timeouts are counted, not ranked).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ._loadgen import OVERFLOW, TIMEOUT, Results
from ._service import Route

__all__ = ["ALL", "GOOD_WITHIN", "Stats", "goodput", "lanes_of", "percentile", "tally"]

GOOD_WITHIN = 5.0
"""A response counts toward goodput when it completes within this many service times."""
ALL = "all"
"""The key of the every-lane total in the dicts below."""


@dataclass(slots=True)
class Stats:
    """What happened to the requests of one lane (or all) in one time window."""

    sent: int = 0
    ok: int = 0
    shed: int = 0
    timeouts: int = 0
    errors: int = 0
    overflow: int = 0
    ok_latency: list[float] = field(default_factory=list)
    shed_latency: list[float] = field(default_factory=list)

    def add(self, status: int, latency: float) -> None:
        if status == OVERFLOW:
            self.overflow += 1
            return
        self.sent += 1
        if status == 200:
            self.ok += 1
            self.ok_latency.append(latency)
        elif status == 503:
            self.shed += 1
            self.shed_latency.append(latency)
        elif status == TIMEOUT:
            self.timeouts += 1
        else:
            self.errors += 1

    @property
    def shed_pct(self) -> float:
        return 100.0 * self.shed / self.sent if self.sent else 0.0

    def pct(self, q: float) -> float:
        """Latency percentile of the ``200`` responses (seconds; NaN for none)."""
        return percentile(self.ok_latency, q)

    def summary(self, goodput: float, unloaded: float = math.nan) -> dict[str, float]:
        return {
            "sent": self.sent, "ok": self.ok, "shed": self.shed, "timeouts": self.timeouts,
            "errors": self.errors, "overflow": self.overflow, "shed_pct": self.shed_pct,
            "p50": self.pct(0.50), "p95": self.pct(0.95), "p99": self.pct(0.99),
            "shed_p99": percentile(self.shed_latency, 0.99),
            "goodput": goodput,
            "unloaded_p50": unloaded,
        }  # fmt: skip


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def lanes_of(routes: Sequence[Route]) -> tuple[str, ...]:
    """The lane labels the routes cover, in lane order (critical first)."""
    return tuple(p.label for p in sorted({r.lane for r in routes}))


def tally(res: Results, routes: Sequence[Route], lo: float, hi: float) -> dict[str, Stats]:
    """Per lane and ``"all"``, for the requests *scheduled* in ``[lo, hi)``."""
    out = {label: Stats() for label in (*lanes_of(routes), ALL)}
    every = out[ALL]
    lane = [r.lane.label for r in routes]
    for route, t, latency, status in zip(
        res.route, res.sched, res.latency, res.status, strict=True
    ):
        if lo <= t < hi:
            out[lane[route]].add(status, latency)
            every.add(status, latency)
    return out


def goodput(
    res: Results, routes: Sequence[Route], pool: int, lo: float, hi: float
) -> dict[str, float]:
    """Per lane and ``"all"``: seat-time of the good responses *completed* in ``[lo, hi)`` /
    the pool's seat-time over it. (By completion, not by scheduled time: under LIFO the
    requests scheduled late in a window are served after it, which would count seat-time from
    outside the window.)"""
    good = dict.fromkeys((*lanes_of(routes), ALL), 0.0)
    for route, t, latency, status in zip(
        res.route, res.sched, res.latency, res.status, strict=True
    ):
        service = routes[route].service_time
        if status == 200 and latency <= GOOD_WITHIN * service and lo <= t + latency < hi:
            good[routes[route].lane.label] += service
            good[ALL] += service
    pool_seconds = pool * (hi - lo)
    return {label: seconds / pool_seconds for label, seconds in good.items()}

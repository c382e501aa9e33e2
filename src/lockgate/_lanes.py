"""Priority lanes and seat apportionment: pure functions, no I/O.

Given the limit ``C`` and each lane's settings, every lane gets

* ``nominal`` seats ``N_i``: a largest-remainder split of ``C`` by share, so ``sum(N_i) == C``
  exactly (Kubernetes APF's ``ceil`` split overshoots ``C``);
* ``guaranteed`` seats ``G_i = N_i - floor(N_i * lendable_i)``: never used by another lane;
* ``max`` seats ``Max_i = min(C, max(1, N_i + round(N_i * borrow_limit_i)))`` (``C`` when
  ``borrow_limit`` is ``None``).

With a small ``C`` a lane may get ``N_i = 0``: it then runs only on borrowed seats, at least
one (else a low lane of a 5-seat gate could never run at all).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from fractions import Fraction
from typing import Protocol

__all__ = ["LaneSeats", "Priority", "apportion", "lane_seats"]


class Priority(IntEnum):
    """A lane. Lower value = served first."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3

    @property
    def label(self) -> str:
        """The lowercase name used in metrics, JSON and settings (``"high"``)."""
        return self.name.lower()


class _LaneShape(Protocol):
    @property
    def share(self) -> float: ...
    @property
    def lendable(self) -> float: ...
    @property
    def borrow_limit(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class LaneSeats:
    """The seats of one lane under the current limit."""

    nominal: int
    guaranteed: int
    max: int


@functools.lru_cache(maxsize=256)
def _as_written(x: float) -> Fraction:
    """The decimal a user wrote (``0.57``), exactly: ``Fraction(repr(x))``.

    In binary floating point ``100 * 0.57`` is 56.99999999999999, and floors, rounding and
    remainder ties would be decided by noise in the last bit.
    """
    return Fraction(repr(float(x)))


@functools.lru_cache(maxsize=64)
def _weights(shares: tuple[float, ...]) -> tuple[int, ...]:
    """``shares`` as written, scaled to integers with the same ratios."""
    exact = [_as_written(s) for s in shares]
    scale = math.lcm(*(f.denominator for f in exact))
    return tuple(int(f * scale) for f in exact)


def apportion(total: int, shares: Sequence[float]) -> list[int]:
    """Split ``total`` seats by ``shares`` with the largest-remainder method.

    The result sums to ``total`` exactly. Ties in the remainder go to the earlier
    (higher-priority) lane. All shares zero is an error. The arithmetic is exact (integer),
    on the shares as written.
    """
    if total < 0:
        raise ValueError("total must be >= 0")
    if math.fsum(shares) <= 0 or any(s < 0 for s in shares):
        raise ValueError("shares must be >= 0 with a positive sum")
    weights = _weights(tuple(shares))
    weight = sum(weights)
    seats = [total * w // weight for w in weights]
    left = total - sum(seats)
    remainders = [total * w % weight for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in by_remainder[:left]:
        seats[i] += 1
    return seats


def lane_seats(limit: int, lanes: Sequence[_LaneShape]) -> tuple[LaneSeats, ...]:
    """Nominal, guaranteed and max seats of each lane for ``limit`` total seats."""
    nominal = apportion(limit, [lane.share for lane in lanes])
    out = []
    for n, lane in zip(nominal, lanes, strict=True):
        lendable = _as_written(lane.lendable)
        guaranteed = n - n * lendable.numerator // lendable.denominator
        if lane.borrow_limit is None:
            most = limit
        else:  # a lane whose share rounds to 0 seats still runs on one borrowed seat
            most = min(limit, max(1, n + round(n * _as_written(lane.borrow_limit))))
        out.append(LaneSeats(nominal=n, guaranteed=guaranteed, max=most))
    return tuple(out)

"""Per-lane waiter queues: the structure the in-process scheduler and the Redis backend share.

``LaneQueues`` is a base class holding, per lane, a deque of waiters (appended at the right:
oldest on the left), the count of live ones, and the count of dead ones (cancelled or timed
out, skipped when popped, compacted when they outnumber the live). Its methods apply the queue
rules of DESIGN §3-§4 that both backends follow: FIFO or newest-first pops, displacement of a
lower lane's youngest waiter, shedding of stale waiters only while no lower lane holds seats
beyond its guarantee, and refusing a lane while a higher lane's queue stands.

It also keeps what both count the same way (admissions, rejections by reason, the total wait)
and ends a wait the same way: a seat granted to a waiter cancelled in that instant is passed
on; a waiter whose own deadline passed is answered ``QUEUE_TIMEOUT``.

It knows nothing of seats or I/O: a subclass says how many seats a lane holds (``_held``), its
guarantee (``_guarantee``), and what counting a waiter out means (``_dequeued``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from typing import Generic, NoReturn, Protocol, TypeVar

from ._discipline import QueueDiscipline
from ._exceptions import (
    DeadlineUnreachable,
    QueueFull,
    QueueTimeout,
    Rejected,
    RejectReason,
    SystemOverload,
)
from ._lanes import Priority
from ._permit import Permit

__all__ = ["GONE", "GRANTED", "WAITING", "LaneQueues"]

WAITING = 0
"""The state of a waiter still in its queue (every other state means it left)."""
GRANTED = 1
"""The state of a waiter that left its queue with a seat (its ``permit``)."""
GONE = 2
"""The state of a waiter that left without one (cancelled, timed out, turned away)."""
_LANES = tuple(Priority)
_REJECTIONS: dict[RejectReason, type[Rejected]] = {
    cls.reason: cls for cls in (SystemOverload, QueueFull, QueueTimeout, DeadlineUnreachable)
}


class _Queued(Protocol):
    lane: Priority
    enqueued: float
    state: int
    permit: Permit | None
    reason: RejectReason | None

    def notify(self) -> None: ...


W = TypeVar("W", bound=_Queued)


class LaneQueues(ABC, Generic[W]):
    """Four lanes of waiters and the rules for taking them out. See the module docstring."""

    discipline: QueueDiscipline

    def __init__(self) -> None:
        self._queues: list[deque[W]] = [deque() for _ in _LANES]
        self._queued = [0] * len(_LANES)
        self._dead = [0] * len(_LANES)
        self._admitted = [0] * len(_LANES)
        self._rejected: list[dict[str, int]] = [{} for _ in _LANES]
        self._wait_sum = 0.0

    @abstractmethod
    def _dequeued(self, lane: Priority, served: bool = False) -> None:
        """Count one live waiter of ``lane`` out (``served``: it was granted a seat)."""

    @abstractmethod
    def _held(self, lane: Priority) -> int:
        """Seats ``lane`` holds now."""

    @abstractmethod
    def _guarantee(self, lane: Priority) -> int:
        """Seats guaranteed to ``lane``."""

    @abstractmethod
    def _capped(self, lane: Priority) -> bool:
        """Is ``lane`` at a Max below the limit (so seats other lanes free do not go to it)?"""

    def record_rejection(self, lane: Priority, reason: RejectReason) -> None:
        """Count a rejection decided elsewhere (e.g. by a degradation policy)."""
        counts = self._rejected[lane]
        counts[reason.value] = counts.get(reason.value, 0) + 1

    def _reject_arrival(self, lane: Priority, reason: RejectReason) -> NoReturn:
        """Count and raise the rejection of a request that never queued."""
        self.record_rejection(lane, reason)
        raise _REJECTIONS[reason]()

    def _ahead(self, lane: Priority) -> int:
        """Waiters served before a newcomer of ``lane``: its own and every higher lane's."""
        return sum(self._queued[: lane + 1])

    def _slack(self, lane: Priority, budget: float, seats: int) -> float:
        """The wait a request with ``budget`` seconds left can afford (its budget less the
        lane's service time); refuses it at once (``DEADLINE_UNREACHABLE``) when the predicted
        wait for ``seats`` seats already exceeds that."""
        discipline = self.discipline
        if discipline.mean_service <= 0.0:  # nothing has finished yet: no prediction to
            return budget  # refuse on, but the wait still ends within the budget
        slack = budget - discipline.service_time(lane)
        if discipline.predicted_wait(self._ahead(lane), seats) > slack:
            self._reject_arrival(lane, RejectReason.DEADLINE_UNREACHABLE)
        return slack

    def _turn_away(self, waiter: W, reason: RejectReason) -> None:
        """Answer a waiter that is already out of its queue with a rejection."""
        self._dequeued(waiter.lane)
        waiter.state = GONE
        waiter.reason = reason
        self.record_rejection(waiter.lane, reason)
        waiter.notify()

    def _abandon(self, waiter: W) -> None:
        """The waiting task was cancelled (or failed): it leaves the queue, and a seat granted
        to it in that very instant is passed on."""
        if waiter.state == WAITING:
            self._remove(waiter, GONE)
        else:
            self._pass_on(waiter)

    def _pass_on(self, waiter: W) -> None:
        """A seat granted to a waiter that will not use it goes on, and its admission is not
        counted. (No-op for a waiter granted nothing.)"""
        permit = waiter.permit
        if waiter.state == GRANTED and permit is not None:
            self._admitted[permit.lane] -= 1
            self._wait_sum -= permit.waited
            permit.release(sample=False)  # held for no time: not a service time

    def _outcome(self, waiter: W) -> Permit:
        """After a wait: the permit granted, or the rejection raised (``QUEUE_TIMEOUT`` when
        the waiter's own deadline passed and it is still queued)."""
        if waiter.state == GRANTED:
            assert waiter.permit is not None
            return waiter.permit
        if waiter.state == WAITING:
            self._remove(waiter, GONE)
            waiter.reason = RejectReason.QUEUE_TIMEOUT
            self.record_rejection(waiter.lane, waiter.reason)
        assert waiter.reason is not None
        raise _REJECTIONS[waiter.reason]()

    def _pop(self, lane: Priority, newest: bool) -> W:
        """The oldest (FIFO) or newest (LIFO) live waiter of a lane that has one."""
        queue = self._queues[lane]
        waiter = queue.pop() if newest else queue.popleft()
        while waiter.state != WAITING:
            self._dead[lane] -= 1
            waiter = queue.pop() if newest else queue.popleft()
        return waiter

    def _remove(self, gone: W, state: int) -> None:
        """Take a still-waiting waiter out of its queue (cancelled or timed out)."""
        lane = gone.lane
        gone.state = state
        self._dequeued(lane)
        queue = self._queues[lane]
        if queue[0] is gone:
            queue.popleft()
        elif queue[-1] is gone:
            queue.pop()
        else:
            self._dead[lane] += 1
            if self._dead[lane] > 32 and self._dead[lane] > self._queued[lane]:
                self._queues[lane] = deque(w for w in queue if w.state == WAITING)
                self._dead[lane] = 0

    def _displace_below(self, lane: Priority) -> bool:
        """Turn away the youngest waiter of the lowest lane below ``lane``; False if none."""
        for victim_lane in reversed(_LANES[lane + 1 :]):
            if self._queued[victim_lane]:
                self._turn_away(self._pop(victim_lane, newest=True), RejectReason.QUEUE_FULL)
                return True
        return False

    def _shed_stale(self, lane: Priority, now: float) -> None:
        """In an overloaded lane, answer every waiter older than the target at once -- unless
        a lower lane still holds seats beyond its guarantee: those come to this lane first.
        (``now=inf`` answers every waiter of the lane.)"""
        if self._lower_surplus(lane):
            return
        oldest_allowed = now - self.discipline.target(lane)
        queue = self._queues[lane]
        while self._queued[lane]:
            head = queue[0]
            if head.state != WAITING:
                queue.popleft()
                self._dead[lane] -= 1
            elif head.enqueued < oldest_allowed:
                queue.popleft()
                self._turn_away(head, RejectReason.QUEUE_TIMEOUT)
            else:
                return

    def _lower_surplus(self, lane: Priority) -> bool:
        """Does a lane below ``lane`` hold seats beyond its guarantee (seats ``lane`` will
        get back by priority, so its waiters must not be shed yet)?"""
        return any(self._held(low) > self._guarantee(low) for low in _LANES[lane + 1 :])

    def _standing_above(self, lane: Priority, now: float) -> bool:
        """Does a higher lane's queue stand, so that ``lane`` may take no seat (and no lower
        lane has seats to give back)? A higher lane at its Max takes no seat the other lanes
        free, so it does not count."""
        return (
            bool(lane)
            and not self._lower_surplus(lane)
            and any(
                self.discipline.overloaded(high, now) and not self._capped(high)
                for high in _LANES[:lane]
            )
        )

    def _below_a_standing_queue(self, lane: Priority, now: float) -> bool:
        """Must an arrival of ``lane`` be refused because a higher lane's queue stands? If so,
        ``lane``'s waiters are answered too: they would only wait to be shed."""
        if not self._standing_above(lane, now):
            return False
        self._shed_stale(lane, math.inf)
        return True

"""The priority scheduler: seats, lanes and the queue of waiters. No ASGI, OTel or Redis here.

A ``PriorityScheduler`` owns ``limit`` seats split into four lanes (see ``_lanes``). A request
asks for a seat in its lane and gets a ``Permit``, which it gives back exactly once.

What it guarantees, with ``u_i`` the seats lane ``i`` holds (``N``/``G``/``Max`` as in
``_lanes``):

* I1 ``sum(u_i) <= C``; I2 ``u_i <= Max_i``; I3 ``sum(max(u_i, G_i)) <= C``: a lane under its
  guarantee is admitted at once, because nobody else ever sits in its guaranteed seats.
* No barging: a newcomer takes a free seat only when no waiter could take it.
* Direct hand-off: a released seat goes straight to the next waiter (lanes under their
  guarantee first, then strict priority; FIFO inside a lane, newest-first while the lane is
  overloaded). No count is bumped that a newcomer could steal.
* Work conservation: at rest, a free seat and a waiter that could use it never coexist --
  except for a seat *held back*: with queue control on, a seat phase-locked with the one
  freed just before it (see ``_discipline``) is handed on up to half a service time later,
  and nobody else may take it meanwhile.
* Lowest lanes shed first: a lane's waiters are shed for standing too long, and its arrivals
  refused because a higher lane is overloaded, only while every lower lane is down to its
  guaranteed seats.

Because of work conservation the arrival rule is short: admit when ``u_i < G_i``, or when a
seat is free under I3 and ``u_i < Max_i`` -- unless a higher lane's queue stands (DESIGN §4:
lower arrivals are refused while it does). (Every lane that waits while a seat is free is at
its ``Max``, so no waiter of an equal or higher lane is passed over.)

Guaranteed seats are the hard part of a lane's share; the rest of the nominal share is soft:
above the guarantees, seats go by priority. (DESIGN §3 first had lanes under their nominal
repaid before higher lanes borrow; under a 2x overload that shed logins in bursts while batch
jobs kept their share. To protect a lower lane, give it guaranteed seats: lower ``lendable``.)

What it is not: a rate limiter, a fair queue between clients, or a thread-safe object. It
lives on one event loop; every method but ``acquire`` is synchronous and never blocks.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Final, cast

import anyio

from ._clock import Clock, MonotonicClock
from ._discipline import QueueDiscipline
from ._exceptions import RejectReason
from ._lanes import LaneSeats, Priority, lane_seats
from ._permit import Permit
from ._queues import GRANTED, WAITING, LaneQueues
from ._settings import GateSettings, LaneSettings, LanesSettings
from ._stats import GateStats, LaneStats
from .limits import FixedLimit, Limit, make_limit, sampler

if TYPE_CHECKING:
    from trio.lowlevel import Abort, Task

__all__ = ["PriorityScheduler"]

_LANES = tuple(Priority)
SAMPLE_EVERY = 4
"""One permit in this many admitted at once is timed (waiters always are)."""
NOTIFIED: Final = True
"""A trio waiter's ``wake`` once it has been woken (or cancelled)."""


class _Waiter:
    """One queued request: about 0.6 KiB on asyncio, where it parks on a bare future, and
    1 KiB on trio, where its task parks itself (``wake``: ``None`` until it sleeps, then the
    task, ``NOTIFIED`` once woken). Its deadline is a timer (``Clock.call_at``), not a cancel
    scope: with an ``anyio.Event`` and a cancel scope a trio waiter took 2.5 KiB."""

    __slots__ = ("enqueued", "lane", "permit", "reason", "state", "wake")

    def __init__(self, lane: Priority, enqueued: float) -> None:
        self.lane = lane
        self.enqueued = enqueued
        try:
            self.wake: asyncio.Future[None] | Task | bool | None = (
                asyncio.get_running_loop().create_future()
            )
        except RuntimeError:  # trio: ``sleep`` sets it
            self.wake = None
        self.state = WAITING
        self.permit: Permit | None = None
        self.reason: RejectReason | None = None

    def notify(self) -> None:
        """Wake the waiting task (idempotent; woken before it sleeps, it does not sleep)."""
        wake = self.wake
        if isinstance(wake, asyncio.Future):
            if not wake.done():
                wake.set_result(None)
        elif wake is not NOTIFIED:
            self.wake = NOTIFIED
            if wake is not None:
                sys.modules["trio"].lowlevel.reschedule(wake)

    def sleep(self) -> Awaitable[object] | None:
        """What to await until ``notify()``; ``None`` if it came already (on trio). A plain
        function, not a coroutine: one frame fewer a waiter. On trio a cancellation ends
        the sleep, and ``notify`` then does nothing."""
        wake = self.wake
        if isinstance(wake, asyncio.Future):
            return wake
        if wake is not None:  # NOTIFIED: granted or refused before it slept
            return None
        lowlevel = sys.modules["trio"].lowlevel
        self.wake = lowlevel.current_task()
        return cast("Awaitable[object]", lowlevel.wait_task_rescheduled(self._aborted))

    def _aborted(self, _: object) -> Abort:
        self.wake = NOTIFIED
        return cast("Abort", sys.modules["trio"].lowlevel.Abort.SUCCEEDED)


class PriorityScheduler(LaneQueues[_Waiter]):
    """Seats split into priority lanes with reserved shares, and a bounded queue for the rest.

    ``try_acquire(lane)`` admits at once or returns ``None``; ``acquire(lane, timeout)`` waits
    in the lane's queue and raises a ``Rejected`` subclass when it cannot be admitted. Both
    return a ``Permit`` whose ``release()`` hands the seat on.
    """

    def __init__(
        self,
        limit: int = 100,
        lanes: LanesSettings | Sequence[LaneSettings] | None = None,
        *,
        queue_capacity: int = 1000,
        wait_timeout: float = 3.0,
        reject_threshold: int | None = None,
        target_wait: float | None = None,
        limit_algorithm: Limit | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``limit`` seats, or ``limit_algorithm.limit`` seats that the algorithm moves
        (``AIMDLimit``, ``Gradient2Limit``) as permits report their hold times."""
        super().__init__()
        if limit_algorithm is not None:
            limit = limit_algorithm.limit
        if limit < 1:
            raise ValueError("limit must be >= 1")
        if isinstance(lanes, LanesSettings):
            lanes = lanes.ordered()
        self._lane_settings: tuple[LaneSettings, ...] = tuple(
            lanes if lanes is not None else LanesSettings().ordered()
        )
        if len(self._lane_settings) != len(_LANES):
            raise ValueError(f"expected {len(_LANES)} lanes, got {len(self._lane_settings)}")
        self._clock: Clock = clock or MonotonicClock()
        self._queue_capacity = queue_capacity
        self._wait_timeout = wait_timeout
        self._reject_threshold_setting = reject_threshold
        self._queue_limits = [lane.queue_limit for lane in self._lane_settings]
        self._used = [0, 0, 0, 0]
        self._queued_total = 0
        self._active = 0
        self._occupied = 0  # sum over lanes of max(u_i, G_i), plus held seats: I3's left side
        self._holds: deque[float] = deque()  # until when each held-back seat is held
        adaptive = limit_algorithm is not None and not isinstance(limit_algorithm, FixedLimit)
        self._limiter = (
            sampler(limit_algorithm) if adaptive and limit_algorithm is not None else None
        )
        self._sample_every = 1 if adaptive else SAMPLE_EVERY
        self._countdown = self._sample_every
        self.discipline = QueueDiscipline(len(_LANES), target_wait, wait_timeout)
        self.set_limit(limit)

    @classmethod
    def from_settings(
        cls, settings: GateSettings, clock: Clock | None = None,
        limit_algorithm: Limit | None = None,
    ) -> PriorityScheduler:
        """A scheduler sized and shaped by ``settings``; ``limit_algorithm`` (a ``Limit``
        built with your own parameters) replaces the one ``settings.limit`` names."""
        if limit_algorithm is None:
            limit_algorithm = make_limit(settings.limit, settings.max_concurrent)
        return cls(
            settings.max_concurrent,
            settings.lanes,
            queue_capacity=settings.queue_capacity,
            wait_timeout=settings.wait_timeout,
            reject_threshold=settings.reject_threshold,
            target_wait=settings.target_wait,
            limit_algorithm=limit_algorithm,
            clock=clock,
        )

    # -- limit ------------------------------------------------------------------------------

    @property
    def limit(self) -> int:
        """Seats in all (``C``)."""
        return self._limit

    @property
    def adaptive(self) -> bool:
        """Does an adaptive limit algorithm move the limit (every permit is timed)?"""
        return self._limiter is not None

    @property
    def seats(self) -> tuple[LaneSeats, ...]:
        """Nominal / guaranteed / max seats per lane under the current limit."""
        return self._seats

    def set_limit(self, limit: int) -> None:
        """Change ``C``; lane seats are re-apportioned, waiters served if seats appeared.

        Holders above a lowered limit keep their seats; new admissions above a lane's
        guarantee wait until the lanes are back under it (a lane under its guarantee is still
        admitted: that is what the guarantee is for).
        """
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit
        self._seats = lane_seats(limit, self._lane_settings)
        self._guaranteed = [s.guaranteed for s in self._seats]
        self._max = [s.max for s in self._seats]
        self._occupied = len(self._holds) + sum(
            max(u, g) for u, g in zip(self._used, self._guaranteed, strict=True)
        )
        threshold = self._reject_threshold_setting
        if threshold is None:
            threshold = limit + self._queue_capacity
        self._reject_threshold = threshold
        self._dispatch()

    # -- admission --------------------------------------------------------------------------

    def try_acquire(self, lane: Priority) -> Permit | None:
        """A permit if a seat in ``lane`` is free for a newcomer now, else ``None``."""
        used = self._used
        u = used[lane]
        if u >= self._guaranteed[lane]:  # ``_take`` inlined: this is the hot path
            if u >= self._max[lane]:
                return None
            if self._occupied >= self._limit and not (self._holds and self._expire_holds()):
                return None
            if lane > self.discipline.standing_from and self._below_standing(lane):
                return None  # ``acquire`` refuses it: a higher lane's queue stands
            self._occupied += 1
        used[lane] = u + 1
        self._active += 1
        self._admitted[lane] += 1
        self._countdown -= 1
        if self._countdown:
            return Permit(self, lane)
        self._countdown = self._sample_every
        return Permit(self, lane, 0.0, self._clock.now(), self._active)

    def _take_untimed(self, lane: Priority) -> bool:
        """Take a seat of ``lane`` without a ``Permit``: the gate's hot path (a permit costs an
        object and two calls per request). True only when ``try_acquire`` would admit at
        once *and* this admission is not one to time; the caller gives the seat back with
        ``_give_untimed(lane)``, exactly once. False means: ask ``try_acquire``."""
        if self._countdown <= 1:  # the next admission is timed: it needs a permit
            return False
        used = self._used
        u = used[lane]
        if u >= self._guaranteed[lane]:
            if u >= self._max[lane] or self._occupied >= self._limit:
                return False
            if lane > self.discipline.standing_from:
                return False  # try_acquire looks for standing queues
            self._occupied += 1
        used[lane] = u + 1
        self._active += 1
        self._admitted[lane] += 1
        self._countdown -= 1
        return True

    def _give_untimed(self, lane: Priority) -> None:
        """Give back a seat taken with ``_take_untimed`` (or by an untimed permit)."""
        if self._holds:  # ``_vacate`` inlined: this is the hot path
            self._expire_holds()
        used = self._used
        u = used[lane] - 1
        used[lane] = u
        self._active -= 1
        if u >= self._guaranteed[lane]:
            self._occupied -= 1
        if self._queued_total:
            self._dispatch()

    async def acquire(
        self,
        lane: Priority,
        timeout: float | None = None,  # noqa: ASYNC109 - a queue budget, answered QueueTimeout
        *,
        budget: float | None = None,
    ) -> Permit:
        """Wait for a seat in ``lane``, at most ``timeout`` seconds (default ``wait_timeout``).

        ``budget`` is the time the caller has left for the whole request (its deadline): when
        the predicted wait plus the lane's service time exceeds it, ``DeadlineUnreachable``
        is raised at once, and the wait never outlasts it.

        Raises ``SystemOverload`` or ``QueueFull`` at once when the request may not wait,
        ``QueueFull`` later if a higher lane displaced it, ``QueueTimeout`` when time ran out
        (or, in an overloaded lane, when it waited past the standing-queue target).
        Cancellation is safe: a cancelled waiter leaves the queue, and a seat granted to it
        in the same instant is passed on.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        permit = self.try_acquire(lane)
        if permit is not None:
            return permit
        wait = self._wait_timeout if timeout is None else timeout
        if budget is not None:
            wait = min(wait, self._slack(lane, budget, self._limit))
        if not wait > 0:  # no time to wait: it must not displace anyone either
            self._reject_arrival(lane, RejectReason.QUEUE_TIMEOUT)
        waiter = self._enqueue(lane)
        if self._holds:
            self._expire_holds()
        if self._occupied < self._limit:  # a seat freed (or a standing queue ended) since
            self._dispatch()  # the fast path looked: the best waiter, maybe this one, gets it
        deadline = waiter.enqueued + wait
        try:
            try:
                timer = self._clock.call_at(deadline, waiter.notify)
            except RuntimeError:  # a clock with asyncio timers only, on trio
                with self._clock.deadline_scope(deadline):
                    if (sleep := waiter.sleep()) is not None:
                        await sleep
            else:
                try:
                    if (sleep := waiter.sleep()) is not None:
                        await sleep
                finally:
                    timer.cancel()
        except BaseException:
            self._abandon(waiter)
            raise
        return self._outcome(waiter)

    def retry_after(self, lane: Priority) -> int:
        """``Retry-After`` seconds for a request of ``lane`` refused now: the predicted time
        for the waiters ahead of it to drain, with jitter (see ``QueueDiscipline``)."""
        return self.discipline.retry_after(self._ahead(lane), self._limit)

    # -- the queue --------------------------------------------------------------------------

    def _enqueue(self, lane: Priority) -> _Waiter:
        now = self._clock.now()
        if self.discipline.overloaded(lane, now):
            self._shed_stale(lane, now)
        if self._below_a_standing_queue(lane, now):
            self._reject_arrival(lane, RejectReason.QUEUE_FULL)
        limit = self._queue_limits[lane]
        overload = self._active + self._queued_total >= self._reject_threshold
        if limit is not None and self._queued[lane] >= limit:
            self._reject_arrival(lane, RejectReason.QUEUE_FULL)
        full = self._queued_total >= self._queue_capacity
        if (full or overload) and not self._displace_below(lane):
            reason = RejectReason.QUEUE_FULL if full else RejectReason.SYSTEM_OVERLOAD
            self._reject_arrival(lane, reason)
        waiter = _Waiter(lane, now)
        self._queues[lane].append(waiter)
        if not self._queued[lane]:
            self.discipline.queue_started(lane, now)
        self._queued[lane] += 1
        self._queued_total += 1
        return waiter

    def _below_standing(self, lane: Priority) -> bool:
        """May ``lane`` not take a free seat because a higher lane's queue stands? (Between
        two arrivals of a shed lane its queue can be empty and a seat free for a moment: a
        200 ms batch request must not take it.) Refreshes ``discipline.standing_from``."""
        now = self._clock.now()
        return lane > self.discipline.refresh_standing(now) and self._standing_above(lane, now)

    def _dequeued(self, lane: Priority, served: bool = False) -> None:
        """Count one live waiter of ``lane`` out of the queue (``served``: granted a seat)."""
        self._queued_total -= 1
        self._queued[lane] -= 1
        if not self._queued[lane]:
            self.discipline.queue_emptied(lane, self._clock.now(), served)

    # -- seats ------------------------------------------------------------------------------

    def _take(self, lane: Priority) -> None:
        u = self._used[lane]
        if u >= self._guaranteed[lane]:
            self._occupied += 1
        self._used[lane] = u + 1
        self._active += 1

    def _held(self, lane: Priority) -> int:
        return self._used[lane]

    def _guarantee(self, lane: Priority) -> int:
        return self._guaranteed[lane]

    def _capped(self, lane: Priority) -> bool:
        most = self._max[lane]
        return most < self._limit and self._used[lane] >= most

    def _vacate(self, lane: Priority) -> bool:
        """Count one seat of ``lane`` out (ending holds whose time has passed first); True if
        it was a shared seat, not one of the lane's guaranteed ones."""
        if self._holds:
            self._expire_holds()
        used = self._used
        u = used[lane] - 1
        used[lane] = u
        self._active -= 1
        if u >= self._guaranteed[lane]:
            self._occupied -= 1
            return True
        return False

    def _release(self, permit: Permit, dropped: bool, sample: bool) -> None:
        since = permit.since
        if since is None:  # untimed: its hold time teaches nothing
            self._give_untimed(permit.lane)
            return
        lane = permit.lane
        shared = self._vacate(lane)
        now = self._clock.now()
        rtt = now - since
        if sample:
            self.discipline.record_service(lane, rtt)
        if self._limiter is not None and (sample or dropped):
            limit = self._limiter(now, rtt, permit.inflight, dropped, lane, permit.waited > 0.0)
            if limit != self._limit:
                self.set_limit(limit)
                return  # set_limit dispatched
        if shared and sample and self._queued_total:
            at = self.discipline.stagger(now, since, self._limit)
            if at is not None and self._next_lane() is not None and self._hold(at):
                return  # held for a waiter that could take it, not for nobody
        if self._queued_total:
            self._dispatch()

    @property
    def _held_back(self) -> int:
        """Freed seats held back from everyone for a moment (``_hold``)."""
        return len(self._holds)

    def _hold(self, until: float) -> bool:
        """Keep a freed seat from everyone until ``until``, then hand it on; False (hand it on
        now) where the clock has no timers to do that with (outside an event loop, or a
        custom clock's asyncio-only timers on trio). The timer only makes the hand-on prompt:
        a hold past its time also ends at the next release or refused arrival, so a loop
        that stops with holds pending loses no seat."""
        self._holds.append(until)
        self._occupied += 1
        try:
            self._clock.call_at(until, self._unhold)
        except RuntimeError:  # no asyncio loop running
            self._holds.pop()
            self._occupied -= 1
            return False
        return True

    def _unhold(self) -> None:
        """A hold's timer: end the earliest hold (its own, unless already ended)."""
        if self._holds:
            self._holds.popleft()
            self._occupied -= 1
        if self._queued_total:
            self._dispatch()

    def _expire_holds(self) -> bool:
        """End the holds whose time has passed and hand their seats on; True if a seat is
        free afterwards."""
        holds, now = self._holds, self._clock.now()
        ended = False
        while holds and holds[0] <= now:
            holds.popleft()
            self._occupied -= 1
            ended = True
        if ended and self._queued_total:
            self._dispatch()
        return self._occupied < self._limit

    def _dispatch(self) -> None:
        """Hand free seats to waiters until no waiter can take one.

        An overloaded lane first sheds its waiters older than the target, then is served
        newest-first; any other lane oldest-first.
        """
        now = self._clock.now()
        while self._queued_total:
            lane = self._next_lane()
            if lane is None:
                return
            overloaded = self.discipline.overloaded(lane, now)
            if overloaded:
                self._shed_stale(lane, now)
                if not self._queued[lane]:
                    continue
            waiter = self._pop(lane, newest=overloaded)
            self._dequeued(lane, served=True)
            self._take(lane)
            self._admitted[lane] += 1
            waited = now - waiter.enqueued
            self._wait_sum += waited
            waiter.permit = Permit(self, lane, waited, now, self._active)
            waiter.state = GRANTED
            waiter.notify()

    def _next_lane(self) -> Priority | None:
        """The lane whose waiter gets the next seat: under its guarantee, else by priority."""
        queued, used = self._queued, self._used
        free = self._occupied < self._limit
        first: Priority | None = None
        for lane in _LANES:
            if not queued[lane]:
                continue
            u = used[lane]
            if u < self._guaranteed[lane]:
                return lane
            if first is None and free and u < self._max[lane]:
                first = lane
        return first

    # -- observation ------------------------------------------------------------------------

    def stats(self) -> GateStats:
        """A frozen snapshot of seats, queue and counters."""
        lanes = tuple(
            LaneStats(
                lane=lane,
                active=self._used[lane],
                queued=self._queued[lane],
                nominal=seats.nominal,
                guaranteed=seats.guaranteed,
                max=seats.max,
                admitted=self._admitted[lane],
                rejected=dict(self._rejected[lane]),
            )
            for lane, seats in zip(_LANES, self._seats, strict=True)
        )
        admitted = sum(self._admitted)
        return GateStats(
            limit=self._limit,
            active=self._active,
            queued=self._queued_total,
            rejected=sum(sum(lane.rejected.values()) for lane in lanes),
            admitted=admitted,
            avg_wait_time_ms=1000.0 * self._wait_sum / admitted if admitted else 0.0,
            lanes=lanes,
        )

    def __repr__(self) -> str:
        return (
            f"<PriorityScheduler limit={self._limit} active={self._active} "
            f"queued={self._queued_total}>"
        )


"""Queue discipline: the measurements that decide how a lane's queue is served.

* **Service times** per lane: a running median of how long permits are held (sampled).
* **Standing-queue detection** (Facebook's adaptive LIFO + CoDel): a lane is *overloaded* while
  its queue has not been empty for the last ``interval``. While overloaded it is served
  newest-first and waiters older than ``target`` are answered ``QUEUE_TIMEOUT`` at once. Both
  numbers scale with the lane's own service time, so a queue that drains within about one
  service time is not called standing: ``interval = max(100 ms, 2 x median)``,
  ``target = max(target_wait, median)``. Like CoDel, it remembers: a queue that an overloaded
  lane served empty and that starts again within an interval is overloaded again after one
  target.
* **Drain predictions** for deadline admission and ``Retry-After``, by Little's law: with every
  seat busy the queue moves at ``limit / mean service time``, so a waiter with ``ahead``
  waiters before it is served after ``(ahead + 1) x mean / limit``. The mean is a moving
  average of sampled hold times across lanes. (A completion-rate meter was tried first: after
  an idle hour its first window says "one request a minute" and the first rejections of a
  spike would tell clients to come back in a minute.)
* **Phase-locked seats.** Behind a service that takes the same time for every request, two
  seats handed on in the same event-loop tick come back in the same tick, are handed on
  together again, and stay locked for ever (the loop's clock ticks in milliseconds, so nothing
  pulls them apart). Over a minute of overload most seats merge into a few bursts, one per
  service time, and a high-priority arrival between bursts waits for the next one: up to a
  whole service time although its lane comes first. (Measured: T2's login p99 at 1.9x the
  unloaded latency, where spread-out releases give 1.3x.) So a seat freed within
  ``LOCKSTEP`` of the one before it, by a permit taken within ``LOCKSTEP`` of that one's (or
  within half the gap below, if that is shorter: seats spread evenly are not locked), is
  handed on ``mean service / limit`` after the last seat so delayed (the gap between releases
  spread evenly), never more than half a service time after it was freed. Each lock costs its
  seat that delay once; seats whose hold times vary are never locked and never delayed.

Pure arithmetic over numbers the scheduler hands in; no clock of its own, no I/O.
"""

from __future__ import annotations

import math
import random

__all__ = ["QueueDiscipline"]

_SAMPLES = 31  # odd: the median is one element
MIN_INTERVAL = 0.1
RETRY_AFTER_MAX = 60
LOCKSTEP = 0.001
"""Seats freed, and taken, within this of each other are phase-locked (uvloop's clock tick)."""


class _Median:
    """Median of the last ``_SAMPLES`` values, recomputed once per full round."""

    __slots__ = ("_i", "_values", "value")

    def __init__(self) -> None:
        self._values: list[float] = []
        self._i = 0
        self.value = 0.0

    def add(self, x: float) -> None:
        values = self._values
        if len(values) < _SAMPLES:
            values.append(x)
            if len(values) in (1, 3, 7, 15, _SAMPLES):  # early estimates while warming up
                self.value = sorted(values)[len(values) // 2]
            return
        values[self._i] = x
        self._i = (self._i + 1) % _SAMPLES
        if self._i == 0:
            self.value = sorted(values)[_SAMPLES // 2]


class QueueDiscipline:
    """Per-lane service times, standing-queue detection and drain predictions."""

    def __init__(self, lanes: int, target_wait: float | None, wait_timeout: float) -> None:
        self.target_wait = target_wait
        self.wait_timeout = wait_timeout
        self._service = [_Median() for _ in range(lanes)]
        self._standing_since: list[float | None] = [None] * lanes
        self._emptied_at = [0.0] * lanes
        self._empty = [True] * lanes
        self._relapse_from = [-math.inf] * lanes  # when an overloaded queue was last served empty
        self.mean_service = 0.0
        self.standing_from = lanes
        """The first lane whose queue may stand (``lanes``: none). Lowered whenever a queue
        starts; recomputed by ``refresh_standing`` (a cheap test for the scheduler's fast
        path: only lanes after it can be refused for a standing queue)."""
        self._last_freed = (-math.inf, -math.inf)  # (when, taken at) of the last seat freed
        self._next_slot = -math.inf

    # -- service times and standing queues -------------------------------------------------

    def record_service(self, lane: int, seconds: float) -> None:
        """One permit of ``lane`` was held ``seconds``."""
        if seconds >= 0.0:
            self._service[lane].add(seconds)
            mean = self.mean_service
            self.mean_service = seconds if mean == 0.0 else mean + 0.05 * (seconds - mean)

    def service_time(self, lane: int) -> float:
        """Median hold time of ``lane``'s permits; the mean over all lanes until the lane has
        a sample of its own; 0.0 before any sample at all."""
        return self._service[lane].value or self.mean_service

    def target(self, lane: int) -> float:
        """Longest wait of a waiter in an overloaded lane (``inf`` when control is off)."""
        if self.target_wait is None:
            return math.inf
        return max(self.target_wait, self.service_time(lane))

    def interval(self, lane: int) -> float:
        """How long a queue must stand before the lane is called overloaded."""
        return max(MIN_INTERVAL, 2.0 * self.service_time(lane))

    def queue_started(self, lane: int, now: float) -> None:
        """``lane``'s queue went from empty to one waiter."""
        since = self._standing_since[lane]
        self._empty[lane] = False
        if lane < self.standing_from:
            self.standing_from = lane
        interval = self.interval(lane)
        if since is None or now - self._emptied_at[lane] >= interval:
            start = now
            if now - self._relapse_from[lane] < interval:  # served empty while overloaded:
                start -= interval - self.target(lane)  # overloaded again after one target
            self._standing_since[lane] = start

    def queue_emptied(self, lane: int, now: float, served: bool) -> None:
        """``lane``'s queue became empty: by serving its last waiter (the queue is gone), or
        by shedding, displacement, cancellation (it still stands unless it stays empty for
        an interval -- else shedding would reset the overload it answers). A queue served
        empty while overloaded that starts again within an interval is overloaded again once
        it has stood one target, not a whole interval (CoDel's memory of a recent drop state):
        under a sustained overload a lane's queue empties now and then, and the interval after
        each would otherwise be served oldest-first, with waits up to the whole interval."""
        if served and self.overloaded(lane, now):
            self._relapse_from[lane] = now
        self._empty[lane] = True
        if served:
            self._standing_since[lane] = None
        else:
            self._emptied_at[lane] = now

    def overloaded(self, lane: int, now: float) -> bool:
        """Has ``lane``'s queue stood (not been emptied by service) for one interval?

        Never before the first service-time sample: until something has finished, nothing
        says how long a queue may stand, and a slow endpoint must not be shed on start-up.
        Nor once the queue has stayed empty for an interval, however it emptied.
        """
        since = self._standing_since[lane]
        if (
            since is not None
            and self._empty[lane]
            and now - self._emptied_at[lane] >= self.interval(lane)
        ):
            self._standing_since[lane] = since = None
        if (
            since is not None
            and self.target_wait is not None
            and self.mean_service > 0.0
            and now - since >= self.interval(lane)
        ):
            return True
        return False

    def refresh_standing(self, now: float) -> int:
        """Recompute ``standing_from`` (forgetting queues left empty for an interval)."""
        first = len(self._standing_since)
        for lane in range(first):
            self.overloaded(lane, now)
            if self._standing_since[lane] is not None:
                first = lane
                break
        self.standing_from = first
        return first

    def stagger(self, now: float, since: float, seats: int) -> float | None:
        """When to hand on a seat freed ``now`` by a permit taken at ``since``: ``None`` for at
        once, or a later time when it is phase-locked with the seat freed before it (see the
        module docstring). ``None`` too while queue control is off or nothing has finished."""
        last_freed, last_since = self._last_freed
        self._last_freed = (now, since)
        mean = self.mean_service
        gap = mean / seats  # between releases, were they spread evenly
        window = min(LOCKSTEP, 0.5 * gap)  # evenly spread seats are never "locked"
        if (
            now - last_freed >= window
            or abs(since - last_since) >= window
            or self.target_wait is None
            or mean <= 0.0
        ):
            return None
        at = max(now, self._next_slot) + gap
        if at - now > 0.5 * mean:
            return None
        self._next_slot = at
        return at

    # -- predictions ----------------------------------------------------------------------

    def predicted_wait(self, ahead: int, limit: int) -> float:
        """Seconds until a waiter with ``ahead`` waiters before it is served, all ``limit``
        seats busy; before any sample, one ``wait_timeout``."""
        if self.mean_service <= 0.0:
            return self.wait_timeout
        return (ahead + 1) * self.mean_service / limit

    def retry_after(self, ahead: int, limit: int, jitter: float | None = None) -> int:
        """``Retry-After``: the predicted drain time for ``ahead`` waiters, plus up to 50 %
        jitter so refused clients do not come back together; an integer in 1..60."""
        drain = min(self.predicted_wait(ahead, limit), float(RETRY_AFTER_MAX))
        if jitter is None:
            jitter = random.random() * 0.5
        return max(1, min(RETRY_AFTER_MAX, math.ceil(drain * (1.0 + jitter))))

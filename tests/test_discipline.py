"""Queue discipline: standing-queue control (adaptive LIFO + CoDel target), service-time
scaling, deadline admission and Retry-After. All on a fake clock: zero wall time."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from hypothesis import event, given, settings
from hypothesis import strategies as st

from lockgate import (
    DeadlineUnreachable,
    LanesSettings,
    Permit,
    Priority,
    PriorityScheduler,
    QueueTimeout,
    Rejected,
)
from lockgate._clock import Timer
from lockgate._discipline import QueueDiscipline
from lockgate._scheduler import SAMPLE_EVERY
from lockgate.testing import FakeClock

pytestmark = pytest.mark.anyio
NORMAL = Priority.NORMAL


class Waiters:
    """Starts waiters and records, per name, the permit or the exception they ended with."""

    def __init__(self, scheduler: PriorityScheduler, tg: anyio.abc.TaskGroup) -> None:
        self.scheduler, self.tg = scheduler, tg
        self.outcome: dict[str, Permit | Exception] = {}
        self.order: list[str] = []

    async def add(self, name: str, lane: Priority = NORMAL, budget: float | None = None) -> None:
        async def wait() -> None:
            try:
                permit = await self.scheduler.acquire(lane, budget=budget)
            except Exception as exc:
                self.outcome[name] = exc
            else:
                self.outcome[name] = permit
                self.order.append(name)

        self.tg.start_soon(wait)
        await wait_all_tasks_blocked()

    def release(self, name: str) -> None:
        permit = self.outcome[name]
        assert isinstance(permit, Permit)
        permit.release()


def start_leaver(tg: anyio.abc.TaskGroup, scheduler: PriorityScheduler) -> anyio.CancelScope:
    """Start a NORMAL waiter that leaves (without a seat) when the returned scope is
    cancelled."""
    leaving = anyio.CancelScope()

    async def leave_later() -> None:
        with leaving:
            await scheduler.acquire(NORMAL)

    tg.start_soon(leave_later)
    return leaving


def teach_service_time(scheduler: PriorityScheduler, clock: FakeClock, seconds: float) -> None:
    """Run enough immediate admissions, each held ``seconds``, for one to be timed."""
    for _ in range(SAMPLE_EVERY):
        permit = scheduler.try_acquire(NORMAL)
        assert permit is not None
        clock.advance(seconds)
        permit.release()


def make(limit: int = 1, target_wait: float | None = 0.05) -> tuple[PriorityScheduler, FakeClock]:
    clock = FakeClock()
    return PriorityScheduler(limit, target_wait=target_wait, wait_timeout=10, clock=clock), clock


async def test_standing_queue_sheds_old_waiters_and_serves_newest_first() -> None:
    """After the queue stood one interval: waiters older than the target are answered
    QUEUE_TIMEOUT at the next event, and the newest waiter is served first."""
    scheduler, clock = make()
    teach_service_time(scheduler, clock, 0.02)  # target 50 ms, interval 100 ms
    holder = scheduler.try_acquire(NORMAL)
    assert holder is not None
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await w.add("old")
        clock.advance(0.11)
        await w.add("mid")  # the queue has stood 110 ms: "old" (110 ms) is shed now
        assert isinstance(w.outcome["old"], QueueTimeout)
        clock.advance(0.01)
        await w.add("new")
        holder.release()
        await wait_all_tasks_blocked()
        assert w.order == ["new"]
        w.release("new")
        await wait_all_tasks_blocked()
        assert w.order == ["new", "mid"]
        w.release("mid")
    assert scheduler.stats().lanes[NORMAL].rejected == {"QUEUE_TIMEOUT": 1}
    assert (scheduler.stats().active, scheduler.stats().queued) == (0, 0)


async def test_short_lived_queue_stays_fifo() -> None:
    """A queue younger than one interval is not standing: oldest first, nobody shed."""
    scheduler, clock = make()
    teach_service_time(scheduler, clock, 0.02)
    holder = scheduler.try_acquire(NORMAL)
    assert holder is not None
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await w.add("first")
        clock.advance(0.06)  # older than the target, but the queue stood only 60 ms
        await w.add("second")
        holder.release()
        await wait_all_tasks_blocked()
        w.release("first")
        await wait_all_tasks_blocked()
        w.release("second")
    assert w.order == ["first", "second"]


async def test_target_and_interval_scale_with_service_time() -> None:
    """A 2-second endpoint queues for seconds: target = median service, interval = 2x it."""
    scheduler, clock = make()
    teach_service_time(scheduler, clock, 2.0)
    assert scheduler.discipline.target(NORMAL) == 2.0
    assert scheduler.discipline.interval(NORMAL) == 4.0
    holder = scheduler.try_acquire(NORMAL)
    assert holder is not None
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await w.add("a")
        clock.advance(3.9)
        await w.add("b")  # the queue stood 3.9 s < 4 s: not overloaded, nobody shed
        assert "a" not in w.outcome
        clock.advance(0.2)
        await w.add("c")  # stood 4.1 s: "a" (4.1 s) is past the 2 s target, "b" is not
        assert isinstance(w.outcome["a"], QueueTimeout)
        assert "b" not in w.outcome
        tg.cancel_scope.cancel()
    holder.release()


async def test_no_shedding_before_any_service_sample() -> None:
    """Cold start: until something finished, a standing queue is left alone (FIFO)."""
    scheduler, clock = make()
    holder = scheduler.try_acquire(NORMAL)
    assert holder is not None
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await w.add("a")
        clock.advance(5.0)
        await w.add("b")
        assert w.outcome == {}
        holder.release()
        await wait_all_tasks_blocked()
        assert w.order == ["a"]
        tg.cancel_scope.cancel()


async def test_control_off_with_target_wait_none() -> None:
    """target_wait=None: pure FIFO and wait_timeout, however long the queue stands."""
    scheduler, clock = make(target_wait=None)
    teach_service_time(scheduler, clock, 0.02)
    holder = scheduler.try_acquire(NORMAL)
    assert holder is not None
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await w.add("a")
        clock.advance(1.0)
        await w.add("b")
        holder.release()
        await wait_all_tasks_blocked()
        assert w.order == ["a"] and "b" not in w.outcome
        tg.cancel_scope.cancel()


async def test_deadline_unreachable_is_answered_at_once() -> None:
    """A budget below the predicted wait (Little's law) plus service time is refused at
    arrival; a sufficient budget waits, but never longer than budget minus service time."""
    scheduler, clock = make(limit=2)
    teach_service_time(scheduler, clock, 0.1)  # mean 0.1 s; 2 seats → 20 waiters/s drain
    holders = [scheduler.try_acquire(NORMAL), scheduler.try_acquire(NORMAL)]
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        for i in range(3):
            await w.add(f"w{i}")
        # Three waiters ahead: predicted wait (3 + 1) x 0.1 / 2 = 0.2 s; service 0.1 s.
        await w.add("tight", budget=0.29)
        assert isinstance(w.outcome["tight"], DeadlineUnreachable)
        await w.add("enough", budget=0.31)
        assert "enough" not in w.outcome
        clock.advance(0.31 - 0.1 - 1e-9)
        await wait_all_tasks_blocked()
        assert "enough" not in w.outcome
        clock.advance(2e-9)
        await wait_all_tasks_blocked()
        assert isinstance(w.outcome["enough"], QueueTimeout)
        tg.cancel_scope.cancel()
    for holder in holders:
        assert holder is not None
        holder.release()
    assert scheduler.stats().lanes[NORMAL].rejected == {
        "DEADLINE_UNREACHABLE": 1,
        "QUEUE_TIMEOUT": 1,
    }


def test_retry_after_is_the_drain_time_with_bounded_jitter() -> None:
    """ceil(drain x (1 + jitter)); drain = (ahead + 1) x mean service / seats; 1..60."""
    d = QueueDiscipline(4, 0.05, wait_timeout=3.0)
    assert d.retry_after(ahead=10, limit=5, jitter=0.0) == 3  # no sample: one wait_timeout
    d.record_service(2, 0.5)
    assert d.predicted_wait(ahead=9, limit=5) == pytest.approx(1.0)
    assert d.retry_after(ahead=9, limit=5, jitter=0.0) == 1
    assert d.retry_after(ahead=29, limit=5, jitter=0.0) == 3
    assert d.retry_after(ahead=29, limit=5, jitter=0.49) == math.ceil(3 * 1.49)
    assert d.retry_after(ahead=10**6, limit=1, jitter=0.0) == 60
    assert d.retry_after(ahead=0, limit=1000, jitter=0.0) == 1
    values = {d.retry_after(ahead=99, limit=5) for _ in range(200)}
    assert values <= set(range(10, 16)) and len(values) > 1


def test_service_time_median_ignores_outliers() -> None:
    """The per-lane service time is a running median: one slow request does not move it."""
    d = QueueDiscipline(4, 0.05, wait_timeout=3.0)
    for x in [0.05] * 20 + [30.0] + [0.05] * 10:
        d.record_service(1, x)
    assert d.service_time(1) == 0.05
    assert d.service_time(3) == d.mean_service > 0.05  # no sample of its own: the mean


async def test_queue_emptied_by_service_or_left_empty_is_no_longer_standing() -> None:
    """Serving the last waiter ends the standing queue; so does staying empty an interval.
    Emptying it by shedding alone does not (else shedding would reset the overload)."""
    scheduler, clock = make()
    teach_service_time(scheduler, clock, 0.02)
    holder = scheduler.try_acquire(NORMAL)
    assert holder is not None
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await w.add("a")
        clock.advance(0.11)
        assert scheduler.discipline.overloaded(NORMAL, clock.now())
        await w.add("b")  # sheds "a": the queue was emptied by shedding, still standing
        assert isinstance(w.outcome["a"], QueueTimeout)
        assert scheduler.discipline.overloaded(NORMAL, clock.now())
        holder.release()  # serves "b", the last waiter: the queue is gone
        await wait_all_tasks_blocked()
        assert w.order == ["b"]
        await w.add("c")
        assert not scheduler.discipline.overloaded(NORMAL, clock.now())
        clock.advance(0.11)
        assert scheduler.discipline.overloaded(NORMAL, clock.now())
        tg.cancel_scope.cancel()  # "c" leaves by cancellation: emptied, not served
    clock.advance(0.2)  # ... and the queue stays empty longer than an interval
    w.release("b")
    async with anyio.create_task_group() as tg:
        w2 = Waiters(scheduler, tg)
        blocker = scheduler.try_acquire(NORMAL)
        assert blocker is not None
        await w2.add("d")
        assert not scheduler.discipline.overloaded(NORMAL, clock.now())
        blocker.release()
    assert w2.order == ["d"]
    w2.release("d")
    assert (scheduler.stats().active, scheduler.stats().queued) == (0, 0)


async def test_lower_lane_is_refused_at_once_while_a_higher_lane_stands() -> None:
    """While NORMAL's queue stands, a LOW arrival is refused at once (QUEUE_FULL) and the
    LOW waiters already queued are answered too: they would only wait to be shed. Not so
    while a LOW seat beyond its guarantee is still to come back to NORMAL first."""
    scheduler, clock = make(limit=2)
    teach_service_time(scheduler, clock, 0.02)
    holders = [scheduler.try_acquire(NORMAL), scheduler.try_acquire(NORMAL)]
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await w.add("low-early", Priority.LOW)
        await w.add("normal")
        clock.advance(0.11)  # NORMAL's queue has stood an interval: overloaded
        assert scheduler.discipline.overloaded(NORMAL, clock.now())
        await w.add("low-late", Priority.LOW)
        assert type(w.outcome["low-late"]).__name__ == "QueueFull"
        assert isinstance(w.outcome["low-early"], QueueTimeout)
        assert "normal" not in w.outcome
        tg.cancel_scope.cancel()
    for holder in holders:
        assert holder is not None
        holder.release()
    assert scheduler.stats().lanes[Priority.LOW].rejected == {"QUEUE_FULL": 1, "QUEUE_TIMEOUT": 1}


async def test_a_free_seat_is_not_taken_by_a_lower_lane_while_a_higher_queue_stands() -> None:
    """NORMAL's queue stands but is empty for a moment (its last waiter left) and a seat is
    free: a LOW arrival is refused (a 200 ms batch request would hold back NORMAL's shedding),
    a NORMAL one takes the seat; once NORMAL's queue stayed empty an interval, LOW is
    admitted again."""
    scheduler, clock = make(limit=2)
    teach_service_time(scheduler, clock, 0.02)
    holders = [scheduler.try_acquire(NORMAL), scheduler.try_acquire(NORMAL)]
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await w.add("old")
        clock.advance(0.11)  # NORMAL's queue has stood an interval: overloaded
        leaving = start_leaver(tg, scheduler)  # its arrival sheds "old"
        await wait_all_tasks_blocked()
        assert isinstance(w.outcome["old"], QueueTimeout)
        leaving.cancel()  # the queue is empty, not by service: it still stands
        await wait_all_tasks_blocked()
        first = holders.pop()
        assert first is not None
        first.release()  # a seat is free, nobody waits
        assert scheduler.try_acquire(Priority.LOW) is None
        await w.add("low", Priority.LOW)
        assert type(w.outcome["low"]).__name__ == "QueueFull"
        normal = scheduler.try_acquire(NORMAL)
        assert normal is not None
        normal.release()
        clock.advance(0.11)  # empty for an interval: no longer standing
        late = scheduler.try_acquire(Priority.LOW)
        assert late is not None and scheduler.discipline.standing_from == len(Priority)
        late.release()
        tg.cancel_scope.cancel()
    for holder in holders:
        assert holder is not None
        holder.release()


# -- found in review (third session) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("overloaded_first", "gap", "stands_after"),
    [(True, 0.0, 0.05), (True, 0.09, 0.05), (True, 0.11, 0.1), (False, 0.0, 0.1)],
)
async def test_a_queue_served_empty_while_overloaded_relapses_after_one_target(
    overloaded_first: bool, gap: float, stands_after: float
) -> None:
    """CoDel's memory. NORMAL's queue is served empty and starts again ``gap`` later: if it was
    overloaded and the gap is under an interval (100 ms), it is overloaded again once it has
    stood one target (50 ms), not a whole interval. Under a sustained overload a lane's queue
    empties now and then; each time, the interval after was served oldest-first with waits up
    to the whole interval (at 2x, most of the normal lane's waits over its target). Otherwise
    (a gap of an interval or more, or a queue that never stood) it needs the whole interval."""
    scheduler, clock = make()
    teach_service_time(scheduler, clock, 0.02)  # target 50 ms, interval 100 ms
    holder = scheduler.try_acquire(NORMAL)
    assert holder is not None
    discipline = scheduler.discipline
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        if overloaded_first:
            await w.add("old")
            clock.advance(0.11)
            await w.add("a")  # the queue has stood an interval: "old" is shed
        else:
            await w.add("a")
            clock.advance(0.06)
        assert discipline.overloaded(NORMAL, clock.now()) is overloaded_first
        holder.release()  # serves "a": the queue is gone
        await wait_all_tasks_blocked()
        assert w.order == ["a"] and not discipline.overloaded(NORMAL, clock.now())
        clock.advance(gap)
        await w.add("b")
        clock.advance(stands_after - 0.001)
        assert not discipline.overloaded(NORMAL, clock.now())
        clock.advance(0.002)
        assert discipline.overloaded(NORMAL, clock.now())
        w.release("a")  # the seat comes free: "b", past the target in a standing queue, is shed
        await wait_all_tasks_blocked()
    assert isinstance(w.outcome["b"], QueueTimeout)
    assert (scheduler.stats().active, scheduler.stats().queued) == (0, 0)


async def test_a_queue_that_emptied_without_service_stops_standing_after_an_interval() -> None:
    """NORMAL's queue stood and then emptied by a timeout, not by service: for one interval
    it still counts as standing (shedding must not reset the overload it answers); after
    that, with no queue at all, it must not keep LOW arrivals refused."""
    scheduler, clock = make(limit=2)
    teach_service_time(scheduler, clock, 0.02)  # interval 100 ms
    holders = [scheduler.try_acquire(NORMAL), scheduler.try_acquire(NORMAL)]
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await w.add("normal")
        clock.advance(0.11)
        assert scheduler.discipline.overloaded(NORMAL, clock.now())
        clock.advance(10.0)  # "normal" times out (wait_timeout 10): no NORMAL queue now
        await wait_all_tasks_blocked()
        assert isinstance(w.outcome["normal"], QueueTimeout)
        assert scheduler.discipline.overloaded(NORMAL, clock.now())  # within the interval
        clock.advance(0.11)
        assert not scheduler.discipline.overloaded(NORMAL, clock.now())
        await w.add("low", Priority.LOW)
        assert "low" not in w.outcome  # queued, not refused
        tg.cancel_scope.cancel()
    for holder in holders:
        assert holder is not None
        holder.release()


async def test_a_higher_lane_stuck_at_its_max_does_not_block_the_lanes_below() -> None:
    """HIGH may hold at most 1 of 3 seats (borrow_limit 0) and its queue stands: the seats
    NORMAL holds can only go to NORMAL, so NORMAL arrivals wait instead of being refused."""
    from lockgate import LanesSettings

    lanes = LanesSettings.model_validate(
        {"critical": {"share": 0.0}, "high": {"share": 1, "borrow_limit": 0.0},
         "normal": {"share": 2}, "low": {"share": 0.0}}
    )
    clock = FakeClock()
    scheduler = PriorityScheduler(3, lanes, target_wait=0.05, wait_timeout=10, clock=clock)
    teach_service_time(scheduler, clock, 0.02)
    high = scheduler.try_acquire(Priority.HIGH)
    normals = [scheduler.try_acquire(NORMAL), scheduler.try_acquire(NORMAL)]
    assert high is not None and all(normals)
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await w.add("high", Priority.HIGH)
        clock.advance(0.11)
        assert scheduler.discipline.overloaded(Priority.HIGH, clock.now())
        await w.add("normal")
        assert "normal" not in w.outcome  # waiting for a NORMAL seat, not refused
        normals[0].release()  # type: ignore[union-attr]
        await wait_all_tasks_blocked()
        assert isinstance(w.outcome["normal"], Permit)
        tg.cancel_scope.cancel()
    high.release()


async def test_no_deadline_refusal_before_anything_has_finished() -> None:
    """At a cold start nothing predicts the wait: a request with a 1 s budget queues (and
    never waits past its budget) instead of being refused because wait_timeout is 10 s."""
    scheduler, clock = make(limit=1)
    holder = scheduler.try_acquire(NORMAL)
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await w.add("deadline", budget=1.0)
        assert "deadline" not in w.outcome
        clock.advance(1.0)
        await wait_all_tasks_blocked()
        assert isinstance(w.outcome["deadline"], QueueTimeout)
    assert holder is not None
    holder.release()


def test_a_seat_passed_on_after_a_cancel_is_not_a_service_time() -> None:
    """Waiters cancelled in the instant their seat was granted hand it on: held for no time,
    that is not a sample of how long requests take (it would shorten the target, the
    predicted waits and Retry-After, and push an adaptive limit up)."""

    async def main() -> tuple[float, float]:
        clock = FakeClock()
        scheduler = PriorityScheduler(1, wait_timeout=30, target_wait=None, clock=clock)
        holder = scheduler.try_acquire(NORMAL)
        assert holder is not None
        for _ in range(8):  # every granted waiter is timed: holds of 0.5 s
            waiter = asyncio.create_task(scheduler.acquire(NORMAL))
            await asyncio.sleep(0)
            clock.advance(0.5)
            holder.release()
            holder = await waiter
        for _ in range(10):  # three waiters granted in turn and cancelled together
            gone = [asyncio.create_task(scheduler.acquire(NORMAL)) for _ in range(3)]
            last = asyncio.create_task(scheduler.acquire(NORMAL))
            await asyncio.sleep(0)
            clock.advance(0.5)
            holder.release()
            for task in gone:
                task.cancel()
            await asyncio.gather(*gone, return_exceptions=True)
            holder = await last
        clock.advance(0.5)
        holder.release()
        return scheduler.discipline.service_time(NORMAL), scheduler.discipline.mean_service

    median, mean = asyncio.run(main())
    assert median == pytest.approx(0.5) and mean == pytest.approx(0.5)


async def test_no_time_to_wait_displaces_no_one() -> None:
    """A HIGH arrival with a zero timeout is refused at once: it must not first push a LOW
    waiter out of a full queue."""
    clock = FakeClock()
    scheduler = PriorityScheduler(1, queue_capacity=1, wait_timeout=10, clock=clock)
    holder = scheduler.try_acquire(NORMAL)
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await w.add("low", Priority.LOW)
        with pytest.raises(QueueTimeout):
            await scheduler.acquire(Priority.HIGH, timeout=0)
        await wait_all_tasks_blocked()
        assert "low" not in w.outcome
        tg.cancel_scope.cancel()
    assert holder is not None
    holder.release()


def test_retry_after_survives_an_infinite_wait_timeout() -> None:
    """Before any sample the drain is one wait_timeout: an infinite one still gives an
    integer Retry-After within 1..60."""
    discipline = QueueDiscipline(4, 0.05, math.inf)
    assert discipline.retry_after(3, 10, jitter=0.5) == 60


# -- phase-locked seats -------------------------------------------------------------------


async def locked_four(
    w: Waiters, scheduler: PriorityScheduler, clock: FakeClock, lane: Priority = NORMAL
) -> None:
    """Fill the 4 seats of ``scheduler`` from its queue in one instant: "a" to "d" are granted
    together at t0 (and, holding 50 ms each, would all come back together at t0 + 50 ms)."""
    holders = [scheduler.try_acquire(lane) for _ in range(4)]
    for name in "abcd":
        await w.add(name, lane)
    clock.advance(0.05)
    for holder in holders:
        assert holder is not None
        holder.release()
    await wait_all_tasks_blocked()
    assert sorted(w.order) == list("abcd")  # trio wakes tasks in no set order


async def free_two_in_lockstep(
    w: Waiters,
    scheduler: PriorityScheduler,
    clock: FakeClock,
    lane: Priority = NORMAL,
    sample: bool = True,
) -> float:
    """``locked_four``, then waiters "e" and "f"; 50 ms later "a" and "b" come back in the
    same instant (b's release with ``sample``). Returns that instant."""
    await locked_four(w, scheduler, clock, lane)
    await w.add("e", lane)
    await w.add("f", lane)
    clock.advance(0.05)
    freed_at = clock.now()
    w.release("a")
    permit = w.outcome["b"]
    assert isinstance(permit, Permit)
    permit.release(sample=sample)
    await wait_all_tasks_blocked()
    return freed_at


async def test_phase_locked_seats_are_handed_on_spread_out() -> None:
    """Two seats taken and freed in the same instant: the second is held back one
    ``mean service / limit``; nobody else may take it meanwhile; the next round is not locked."""
    scheduler, clock = make(limit=4)
    teach_service_time(scheduler, clock, 0.04)
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        freed_at = await free_two_in_lockstep(w, scheduler, clock)
        assert w.order[4:] == ["e"]  # "f" waits: b's seat is held back
        assert scheduler.try_acquire(Priority.HIGH) is None  # and no newcomer takes it
        delta = scheduler.discipline.mean_service / 4
        clock.advance(0.99 * delta)
        await wait_all_tasks_blocked()
        assert "f" not in w.outcome
        clock.advance(0.02 * delta)
        await wait_all_tasks_blocked()
        f = w.outcome["f"]
        assert isinstance(f, Permit) and f.since == clock.now()  # granted at the hand-on
        assert freed_at + 0.99 * delta < f.since <= freed_at + 1.01 * delta
        await w.add("g")
        await w.add("h")
        clock.advance(0.05 - 1.01 * delta)
        w.release("e")  # e and f come back delta apart: not locked, handed on at once
        await wait_all_tasks_blocked()
        clock.advance(1.01 * delta)
        w.release("f")
        await wait_all_tasks_blocked()
        assert w.order[6:] == ["g", "h"]
        tg.cancel_scope.cancel()


async def test_seats_freed_together_but_taken_apart_are_handed_on_at_once() -> None:
    """Freed in the same instant but taken at different times: not locked, no delay."""
    scheduler, clock = make(limit=4)
    teach_service_time(scheduler, clock, 0.04)
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await locked_four(w, scheduler, clock)
        await w.add("e")
        clock.advance(0.01)
        w.release("a")  # e takes a's seat 10 ms after b was taken
        await wait_all_tasks_blocked()
        await w.add("f")
        await w.add("g")
        clock.advance(0.05)
        w.release("b")
        w.release("e")
        await wait_all_tasks_blocked()
        assert w.order[4] == "e" and sorted(w.order[5:]) == ["f", "g"]
        tg.cancel_scope.cancel()


async def test_no_seat_is_held_back_with_queue_control_off() -> None:
    scheduler, clock = make(limit=4, target_wait=None)
    teach_service_time(scheduler, clock, 0.04)
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await free_two_in_lockstep(w, scheduler, clock)
        assert sorted(w.order[4:]) == ["e", "f"]
        tg.cancel_scope.cancel()


async def test_a_held_seat_goes_to_the_first_waiter_in_line_when_it_is_handed_on() -> None:
    """A login that arrives while the seat is held gets it before the older normal waiter;
    a waiter that left meanwhile takes nothing, and the seat ends up free, not lost."""
    scheduler, clock = make(limit=4)
    teach_service_time(scheduler, clock, 0.04)
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await free_two_in_lockstep(w, scheduler, clock)
        await w.add("login", Priority.HIGH)
        clock.advance(scheduler.discipline.mean_service)
        await wait_all_tasks_blocked()
        assert w.order[4:] == ["e", "login"]
        gone = start_leaver(tg, scheduler)
        await wait_all_tasks_blocked()
        w.release("c")  # c and d come back locked (the queue has stood < 100 ms: FIFO),
        w.release("d")  # f takes c's seat, d's is held
        await wait_all_tasks_blocked()
        assert w.order[6:] == ["f"]
        assert (scheduler.stats().active, scheduler.stats().queued) == (3, 1)
        gone.cancel()  # the one waiter left goes while the seat is held
        await wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    clock.advance(scheduler.discipline.mean_service)
    stats = scheduler.stats()
    assert (stats.active, stats.queued) == (3, 0)
    assert scheduler.try_acquire(NORMAL) is not None  # the held seat came back free
    assert scheduler.try_acquire(NORMAL) is None


async def test_a_lane_under_its_guarantee_is_never_held_back() -> None:
    """Guaranteed seats freed in lockstep go straight to their lane's waiters: holding one
    back would also block a shared seat that was never freed."""
    clock = FakeClock()
    only_critical = LanesSettings.model_validate({
        "critical": {"share": 1.0, "lendable": 0.0}, "high": {"share": 0.0},
        "normal": {"share": 0.0}, "low": {"share": 0.0},
    })  # fmt: skip
    scheduler = PriorityScheduler(
        4, only_critical, target_wait=0.05, wait_timeout=10, clock=clock
    )
    assert scheduler.seats[Priority.CRITICAL].guaranteed == 4
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        for _ in range(SAMPLE_EVERY):  # a service time for the critical lane
            permit = scheduler.try_acquire(Priority.CRITICAL)
            assert permit is not None
            clock.advance(0.04)
            permit.release()
        await free_two_in_lockstep(w, scheduler, clock, Priority.CRITICAL)
        assert sorted(w.order[4:]) == ["e", "f"]
        tg.cancel_scope.cancel()


async def test_a_limit_change_during_a_hold_keeps_the_held_seat_counted() -> None:
    """Raised from 4 to 5 while a seat is held: one newcomer fits, not two (the held seat
    is still taken), and after the hand-on exactly 5 seats are in use."""
    clock = FakeClock()
    no_critical = LanesSettings.model_validate({"critical": {"share": 0.0}})
    scheduler = PriorityScheduler(4, no_critical, target_wait=0.05, wait_timeout=10, clock=clock)
    teach_service_time(scheduler, clock, 0.04)
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await free_two_in_lockstep(w, scheduler, clock)
        scheduler.set_limit(5)
        assert [s.guaranteed for s in scheduler.seats] == [0, 0, 0, 0]
        await wait_all_tasks_blocked()
        assert w.order[4:] == ["e", "f"]  # the fifth seat went to f at once
        assert scheduler.try_acquire(Priority.HIGH) is None  # the held one is still held
        clock.advance(scheduler.discipline.mean_service)
        newcomer = scheduler.try_acquire(Priority.HIGH)
        assert newcomer is not None and scheduler.stats().active == 5
        assert scheduler.try_acquire(Priority.HIGH) is None
        tg.cancel_scope.cancel()


class TimerlessClock(FakeClock):
    """A clock with no timers on trio (a custom clock may have asyncio's only). Its deadline
    scopes, which waits then fall back to, still work."""

    def deadline_scope(self, deadline: float) -> anyio.CancelScope:
        scope = anyio.CancelScope()
        FakeClock.call_at(self, deadline, scope.cancel)
        return scope

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        raise RuntimeError("no running event loop")


@pytest.mark.parametrize("anyio_backend", ["trio"])  # waits on asyncio need its timers
async def test_without_timers_a_locked_seat_is_handed_on_at_once() -> None:
    clock = TimerlessClock()
    scheduler = PriorityScheduler(4, target_wait=0.05, wait_timeout=10, clock=clock)
    teach_service_time(scheduler, clock, 0.04)
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await free_two_in_lockstep(w, scheduler, clock)
        assert sorted(w.order[4:]) == ["e", "f"]
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_without_timers_a_wait_on_trio_still_times_out() -> None:
    clock = TimerlessClock()
    scheduler = PriorityScheduler(1, wait_timeout=2.0, target_wait=None, clock=clock)
    held = scheduler.try_acquire(Priority.NORMAL)
    outcome: list[str] = []

    async def wait() -> None:
        try:
            await scheduler.acquire(Priority.NORMAL)
        except QueueTimeout:
            outcome.append("timed out")

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await wait_all_tasks_blocked()
        clock.advance(1.9)
        await wait_all_tasks_blocked()
        assert outcome == [] and scheduler.stats().queued == 1
        clock.advance(0.1)
    assert outcome == ["timed out"] and scheduler.stats().queued == 0
    assert held is not None


def test_stagger_spaces_locked_seats_and_caps_the_delay() -> None:
    """The pure rule: locked = freed and taken within LOCKSTEP of the seat freed before;
    each locked seat goes mean/limit after the previous one, never more than mean/2 late."""
    d = QueueDiscipline(4, 0.05, 10.0)
    assert d.stagger(1.0, 0.9, 10) is None  # nothing has finished: no mean service yet
    d.record_service(NORMAL, 0.1)
    assert d.stagger(2.0, 1.9, 10) is None  # the first seat freed
    assert d.stagger(2.0, 1.9, 10) == pytest.approx(2.01)
    assert d.stagger(2.0005, 1.9005, 10) == pytest.approx(2.02)
    assert d.stagger(2.0, 1.95, 10) is None  # taken 50 ms apart: not locked
    assert d.stagger(2.01, 1.95, 10) is None  # freed 10 ms apart: not locked
    for k in range(3, 7):
        assert d.stagger(2.01, 1.95, 10) == pytest.approx(2.0 + 0.01 * k)
    assert d.stagger(2.01, 1.95, 10) is None  # 2.07 would be 60 ms late: more than mean/2
    off = QueueDiscipline(4, None, 10.0)
    off.record_service(NORMAL, 0.1)
    off.stagger(2.0, 1.9, 10)
    assert off.stagger(2.0, 1.9, 10) is None


ARRIVALS = st.lists(
    st.tuples(
        st.sampled_from(tuple(Priority)),
        st.sampled_from((0.05, 0.05, 0.2)),  # exact hold times: seats lock
        st.sampled_from((0.0, 0.0005, 0.0005, 0.005, 0.02)),  # gap before the arrival
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ARRIVALS, st.integers(2, 4))
def test_held_seats_never_overbook_leak_or_idle_for_long(
    arrivals: list[tuple[Priority, float, float]], limit: int
) -> None:
    """Random exact-time traffic with queue control on: after every event, seats in use plus
    seats held back stay within the limit (I1, I3); a lane waits with a seat free only while a
    seat is held back; every request is admitted or refused once; nothing is left at the end."""

    async def main() -> None:
        clock = FakeClock()
        scheduler = PriorityScheduler(limit, target_wait=0.05, wait_timeout=1.0, clock=clock)
        outcomes: list[str] = []

        async def request(lane: Priority, hold: float) -> None:
            try:
                permit = await scheduler.acquire(lane)
            except Rejected:
                outcomes.append("refused")
                return
            with clock.deadline_scope(clock.now() + hold):
                await anyio.sleep_forever()
            permit.release()
            outcomes.append("served")

        def check() -> None:
            stats, held = scheduler.stats(), scheduler._held_back
            seats = scheduler.seats
            occupied = sum(max(s.active, seat.guaranteed) for s, seat in zip(
                stats.lanes, seats, strict=True))  # fmt: skip
            assert stats.active + held <= limit and occupied + held <= limit, (stats, held)
            if held:
                event("a seat was held back")
                return
            for s, seat in zip(stats.lanes, seats, strict=True):
                if s.queued:
                    assert s.active >= seat.guaranteed, stats
                    assert s.active >= seat.max or occupied >= limit, stats

        async def step_to(moment: float) -> None:
            while (due := clock.next_deadline) is not None and due <= moment:
                clock.advance(due - clock.now())
                await wait_all_tasks_blocked()
                check()
            if moment != math.inf:
                clock.advance(max(0.0, moment - clock.now()))
                await wait_all_tasks_blocked()

        async with anyio.create_task_group() as tg:
            for lane, hold, gap in arrivals:
                await step_to(clock.now() + gap)
                tg.start_soon(request, lane, hold)
                await wait_all_tasks_blocked()
                check()
            await step_to(math.inf)
        stats = scheduler.stats()
        assert (stats.active, stats.queued, scheduler._held_back) == (0, 0, 0)
        assert len(outcomes) == len(arrivals)
        assert outcomes.count("refused") == stats.rejected

    anyio.run(main, backend="trio")


# -- found in review (fourth session) -----------------------------------------------------------


def test_evenly_spread_seats_at_a_high_rate_are_not_locked() -> None:
    """40 seats of 20 ms release every 0.5 ms when spread evenly: neighbours freed and taken
    0.5 ms apart are not in lockstep (a 1 ms window held every one of them, every round)."""
    d = QueueDiscipline(4, 0.05, 10.0)
    d.record_service(NORMAL, 0.02)
    assert d.stagger(1.0, 0.98, 40) is None
    assert d.stagger(1.0005, 0.9805, 40) is None
    assert d.stagger(1.0005, 0.9805, 40) == pytest.approx(1.001)  # truly in step: held


async def test_no_seat_is_held_back_for_a_waiter_that_could_not_take_it() -> None:
    """The only waiter is LOW, at its Max: a locked seat is not held (for nobody) but free,
    and a HIGH newcomer takes it at once."""
    clock = FakeClock()
    scheduler = PriorityScheduler(10, target_wait=0.05, wait_timeout=10, clock=clock)
    assert scheduler.seats[Priority.LOW].max == 3
    assert scheduler.seats[Priority.CRITICAL].guaranteed == 1  # 9 seats for the others
    teach_service_time(scheduler, clock, 0.04)
    lows = [scheduler.try_acquire(Priority.LOW) for _ in range(3)]
    others = [scheduler.try_acquire(NORMAL) for _ in range(3)]
    fill = [scheduler.try_acquire(Priority.HIGH) for _ in range(3)]
    assert all(lows) and all(others) and all(fill)
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await w.add("low", Priority.LOW)  # at its Max: can take no seat
        await w.add("a")
        await w.add("b")
        clock.advance(0.01)
        for holder in fill[:2]:
            assert holder is not None
            holder.release()
        await wait_all_tasks_blocked()
        assert sorted(w.order) == ["a", "b"]
        clock.advance(0.05)
        w.release("a")
        w.release("b")  # freed in lockstep with a's, but nobody could use it
        assert scheduler._held_back == 0
        first, second = scheduler.try_acquire(Priority.HIGH), scheduler.try_acquire(Priority.HIGH)
        assert first is not None and second is not None
        tg.cancel_scope.cancel()


class StoppedLoopClock(FakeClock):
    """A clock whose timers never fire: the event loop that held them has stopped."""

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        return _NoTimer()


class _NoTimer:
    def cancel(self) -> None:
        pass


def test_a_hold_whose_timer_never_fires_ends_at_the_next_arrival() -> None:
    """A loop that stops with a seat held (its timer gone with it) loses no seat: once the
    hold's time has passed, the next arrival finds it free."""

    async def main() -> None:
        clock = StoppedLoopClock()
        scheduler = PriorityScheduler(4, target_wait=0.05, wait_timeout=10, clock=clock)
        teach_service_time(scheduler, clock, 0.04)
        holders = [scheduler.try_acquire(NORMAL) for _ in range(4)]
        tasks = [asyncio.ensure_future(scheduler.acquire(NORMAL)) for _ in range(6)]
        await asyncio.sleep(0)
        clock.advance(0.05)
        for holder in holders:
            assert holder is not None
            holder.release()
        await asyncio.sleep(0)
        granted = [t.result() for t in tasks[:4]]
        clock.advance(0.04)  # the queue has stood < 100 ms: nobody is shed
        granted[0].release()
        granted[1].release()  # held back, on a timer that will never fire
        assert scheduler._held_back == 1
        for task in tasks[4:]:
            task.cancel()
        await asyncio.gather(*tasks[4:], return_exceptions=True)
        for permit in granted[2:]:
            permit.release()
        clock.advance(scheduler.discipline.mean_service)  # the hold's time has passed
        seats = [scheduler.try_acquire(Priority.CRITICAL) for _ in range(4)]
        assert all(seats) and scheduler._held_back == 0

    asyncio.run(main())


class TickingClock(FakeClock):
    """Moves ``tick`` on every read, as a real clock does between two statements."""

    tick = 0.0

    def now(self) -> float:
        t = self._now
        self._now += self.tick
        return t


async def test_a_standing_queue_that_ends_between_two_looks_leaves_no_free_seat_idle() -> None:
    """try_acquire refuses LOW a microsecond before NORMAL's standing ends; acquire's second
    look finds it over: LOW is not left queued beside a free seat (it takes it)."""
    clock = TickingClock()
    scheduler = PriorityScheduler(2, target_wait=0.05, wait_timeout=10, clock=clock)
    teach_service_time(scheduler, clock, 0.02)  # interval 0.1 s
    holders = [scheduler.try_acquire(NORMAL) for _ in range(2)]
    async with anyio.create_task_group() as tg:
        leaving = start_leaver(tg, scheduler)
        await wait_all_tasks_blocked()
        clock.advance(0.15)
        assert scheduler.discipline.overloaded(NORMAL, clock.now())
        leaving.cancel()  # emptied by cancellation: stands one more interval
        await wait_all_tasks_blocked()
        emptied = clock.now()
        free = holders.pop()
        assert free is not None
        free.release()
        clock.advance(emptied + 0.1 - 0.5e-6 - clock.now())
        clock.tick = 1e-6
        w = Waiters(scheduler, tg)
        await w.add("low", Priority.LOW)
        clock.tick = 0.0
        stats = scheduler.stats()
        assert not (stats.queued and stats.active < stats.limit), stats
        assert isinstance(w.outcome["low"], Permit)
        tg.cancel_scope.cancel()
    for holder in holders:
        assert holder is not None
        holder.release()


async def test_the_fast_path_sees_a_standing_queue_nobody_asked_about() -> None:
    """NORMAL's queue stood past its interval and its waiter timed out, with no event in
    between: LOW is refused all the same (it was admitted unless something had first asked
    whether NORMAL stood)."""
    clock = FakeClock()
    scheduler = PriorityScheduler(2, target_wait=0.05, wait_timeout=10, clock=clock)
    teach_service_time(scheduler, clock, 0.02)
    holders = [scheduler.try_acquire(NORMAL) for _ in range(2)]
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)

        async def time_out() -> None:
            with pytest.raises(QueueTimeout):
                await scheduler.acquire(NORMAL, 0.15)  # at +0.15 s, with no event between

        tg.start_soon(time_out)
        await wait_all_tasks_blocked()
        clock.advance(0.15)
        await wait_all_tasks_blocked()
        first = holders.pop()
        assert first is not None
        first.release()
        assert scheduler.try_acquire(Priority.LOW) is None
        await w.add("low", Priority.LOW)
        assert type(w.outcome["low"]).__name__ == "QueueFull"
        tg.cancel_scope.cancel()
    for holder in holders:
        assert holder is not None
        holder.release()


async def test_a_standing_lane_below_costs_the_fast_path_nothing() -> None:
    """Only LOW stands (a backlog at its Max): HIGH's admissions do not look for standing
    queues (a clock read and a pass over the lanes each)."""
    clock = FakeClock()
    scheduler = PriorityScheduler(40, target_wait=0.05, wait_timeout=10, clock=clock)
    teach_service_time(scheduler, clock, 0.02)
    lows = [scheduler.try_acquire(Priority.LOW) for _ in range(scheduler.seats[Priority.LOW].max)]
    assert all(lows)
    looks: list[Priority] = []
    below = scheduler._below_standing

    def counting(lane: Priority) -> bool:
        looks.append(lane)
        return below(lane)

    scheduler._below_standing = counting  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(scheduler.acquire, Priority.LOW)
        await wait_all_tasks_blocked()
        clock.advance(0.2)
        assert scheduler.discipline.overloaded(Priority.LOW, clock.now())
        for _ in range(3):
            permit = scheduler.try_acquire(Priority.HIGH)
            assert permit is not None
            permit.release()
        assert looks == []
        tg.cancel_scope.cancel()


async def test_a_seat_passed_on_is_not_held_back() -> None:
    """A release that is no service sample (a seat passed on by a cancelled waiter, a client
    gone) is handed on at once even in lockstep."""
    scheduler, clock = make(limit=4)
    teach_service_time(scheduler, clock, 0.04)
    async with anyio.create_task_group() as tg:
        w = Waiters(scheduler, tg)
        await free_two_in_lockstep(w, scheduler, clock, sample=False)
        assert sorted(w.order[4:]) == ["e", "f"]
        tg.cancel_scope.cancel()

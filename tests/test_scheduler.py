"""The scheduler's semantics -- admission, hand-off, lanes, cancellation, timeouts,
rejections, stats -- over both backends: the in-process ``PriorityScheduler`` and
``RedisBackend`` (one instance, against the Redis at ``LOCKGATE_REDIS_URL``).

Tests take the ``make_backend`` factory, parametrised ``memory`` / ``redis``: it builds either
backend from the same arguments (the scheduler's constructor's), starts the Redis one and
closes it at the end, checking that no key is left in Redis. In-process async tests run on
asyncio and trio (see conftest); the Redis backend only on asyncio (redis-py), so the
``redis`` x ``trio`` combinations are deselected.

Time only moves through ``FakeClock.advance`` (both backends take the clock for waiters'
deadlines and wait times). ``settle(backend)`` waits until nothing can happen without more
input: every task blocked and, over Redis, the backend's Redis task idle with every release,
return and request for seats through Redis (``RedisBackend.settled()``) -- a deterministic
condition, never a sleep. Grants are observed one release at a time, because trio wakes tasks
woken together in random order.

Over Redis an instance admits at once only from the seats it leased: ``try_acquire`` may
answer ``None`` where the in-process scheduler has a free seat (the protocol allows it), and
``acquire`` then gets the seat with one round trip. ``fill``/``admit`` take "seats that are
free" through ``acquire`` there, and through ``try_acquire`` in process, as before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import anyio
import pytest
from anyio.abc import TaskGroup

from lockgate import (
    GateSettings,
    LaneSettings,
    LanesSettings,
    Permit,
    Priority,
    PriorityScheduler,
    QueueFull,
    QueueTimeout,
    Rejected,
    RejectReason,
    SystemOverload,
)
from lockgate.backends import Backend
from lockgate.testing import FakeClock

pytestmark = pytest.mark.anyio

CRITICAL, HIGH, NORMAL, LOW = Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW


def make_lanes(**lanes: dict[str, Any]) -> LanesSettings:
    return LanesSettings.model_validate(lanes)


# Every lane fully lendable and unbounded: G = 0 and Max = C everywhere.
_OPEN = {"share": 1.0, "lendable": 1.0, "borrow_limit": None}
FLAT = make_lanes(critical=_OPEN, high=_OPEN, normal=_OPEN, low=_OPEN)
# Only critical has a nominal share (N = C), and lends all of it: the other lanes are pure
# borrowers, so hand-off among them is decided by priority alone.
_BORROWER = {"share": 0.0, "lendable": 1.0, "borrow_limit": None}
PRIORITY_ONLY = make_lanes(critical=_OPEN, high=_BORROWER, normal=_BORROWER, low=_BORROWER)


# -- both backends ----------------------------------------------------------------------------


class MakeBackend(Protocol):
    """Builds a started backend from ``PriorityScheduler``'s arguments."""

    kind: str

    async def __call__(
        self,
        limit: int = 100,
        lanes: LanesSettings | Sequence[LaneSettings] | None = None,
        *,
        queue_capacity: int = 1000,
        wait_timeout: float = 3.0,
        reject_threshold: int | None = None,
        target_wait: float | None = None,
        clock: FakeClock | None = None,
    ) -> Backend: ...

    async def from_settings(self, settings: GateSettings, clock: FakeClock) -> Backend: ...


class _InProcess:
    kind = "memory"

    async def __call__(self, *args: Any, **kwargs: Any) -> Backend:  # MakeBackend's signature
        return PriorityScheduler(*args, **kwargs)

    async def from_settings(self, settings: GateSettings, clock: FakeClock) -> Backend:
        return PriorityScheduler.from_settings(settings, clock=clock)


class _OverRedis:
    """RedisBackends under unique names, all closed (and their keys checked) at the end."""

    kind = "redis"

    def __init__(self) -> None:
        self.backends: list[Any] = []

    async def __call__(
        self,
        limit: int = 100,
        lanes: LanesSettings | Sequence[LaneSettings] | None = None,
        *,
        clock: FakeClock | None = None,
        **options: Any,  # MakeBackend's queue settings, which GateSettings names alike
    ) -> Backend:
        if lanes is not None and not isinstance(lanes, LanesSettings):
            names = ("critical", "high", "normal", "low")
            lanes = LanesSettings(**dict(zip(names, lanes, strict=True)))
        settings = GateSettings(
            max_concurrent=limit, lanes=lanes if lanes is not None else LanesSettings(),
            **{"target_wait": None, **options},
        )
        return await self.from_settings(settings, clock)

    async def from_settings(self, settings: GateSettings, clock: FakeClock | None) -> Backend:
        from lockgate.backends.redis import RedisBackend
        from tests._redis import KEY_PREFIX, REDIS_URL, unique_name

        backend = RedisBackend(
            REDIS_URL, unique_name("sched"), settings=settings, clock=clock,
            key_prefix=KEY_PREFIX,
            # A loaded test machine is not a Redis outage: these tests are about the global
            # mode (the fallback has tests of its own in test_redis_backend/_chaos).
            command_timeout=2.0, start_timeout=5.0,
            # No timer may rescue a hand-off the backend missed (a heartbeat renewing, idle
            # seats going back at the end of a linger window): a missed one fails the test.
            lease_ttl=60.0, linger=30.0,
        )  # fmt: skip
        await backend.start()
        assert backend.mode == "global"
        self.backends.append(backend)
        return backend

    async def close(self) -> None:
        from tests._redis import keys_of, sync_client

        modes = [backend.mode for backend in self.backends]
        for backend in self.backends:
            await backend.aclose()
        with sync_client() as client:
            left = [key for backend in self.backends for key in keys_of(client, backend.name)]
            if left:
                client.delete(*left)
        assert left == [], f"keys left behind: {left}"
        assert set(modes) <= {"global"}, f"a backend fell back during the test: {modes}"


@pytest.fixture(params=["memory", "redis"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    """Which backend ``make_backend`` builds (``redis`` x ``trio`` is deselected: conftest)."""
    return str(request.param)


@pytest.fixture
async def make_backend(backend_kind: str) -> AsyncIterator[MakeBackend]:
    if backend_kind == "memory":
        yield _InProcess()
        return
    from tests._redis import require_redis

    require_redis()
    factory = _OverRedis()
    try:
        yield factory
    finally:
        await factory.close()


def _all_tasks_blocked() -> bool:
    """Is every other task waiting on something (anyio's test, without its 0.1 s sleep)?"""
    me = asyncio.current_task()
    for task in asyncio.all_tasks():
        if task is not me:
            waiter = task._fut_waiter  # type: ignore[attr-defined]
            if waiter is None or waiter.done():
                return False
    return True


async def settle(backend: Backend) -> None:
    """Let everything that can happen without more input happen (see the module docstring)."""
    quiet = getattr(backend, "quiet", None)
    if quiet is None:
        await anyio.wait_all_tasks_blocked()
        return
    with anyio.fail_after(10):  # real time: a bound, never a wait that passes
        while True:
            await asyncio.sleep(0)
            if not _all_tasks_blocked():
                continue
            if backend.quiet:  # type: ignore[attr-defined]
                return
            await backend.settled()  # type: ignore[attr-defined]


class Client:
    """One request: waits in ``acquire`` inside its own cancel scope and records the outcome."""

    def __init__(self, scheduler: Backend, lane: Priority, wait: float | None) -> None:
        self.scheduler = scheduler
        self.lane = lane
        self.wait = wait
        self.scope = anyio.CancelScope()
        self.permit: Permit | None = None
        self.error: Rejected | None = None
        self.cancelled = False
        self.done = False

    async def run(self) -> None:
        with self.scope:
            try:
                self.permit = await self.scheduler.acquire(self.lane, self.wait)
            except Rejected as exc:
                self.error = exc
        self.cancelled = self.scope.cancelled_caught
        self.done = True

    @property
    def waiting(self) -> bool:
        return not self.done


async def arrive(
    tg: TaskGroup, scheduler: Backend, lane: Priority, wait: float | None = None
) -> Client:
    """Start a client and let it reach its resting point (admitted, queued or rejected).

    ``wait`` is the queue timeout passed to ``acquire`` (None: the scheduler's default)."""
    client = Client(scheduler, lane, wait)
    tg.start_soon(client.run)
    await settle(scheduler)
    return client


async def admit(scheduler: Backend, lane: Priority) -> Permit:
    """A seat that is free now: ``try_acquire`` in process; over Redis, where only leased
    seats are free locally, ``acquire``, which must not have to wait for one."""
    permit = scheduler.try_acquire(lane)
    if permit is None and not isinstance(scheduler, PriorityScheduler):
        queued = scheduler.stats().queued
        with anyio.fail_after(10):
            permit = await scheduler.acquire(lane)
        assert scheduler.stats().queued == queued
    assert permit is not None, f"no free seat in {lane.label}"
    return permit


async def fill(scheduler: Backend, lane: Priority, count: int) -> list[Permit]:
    """Take ``count`` free seats in ``lane`` (see ``admit``); each must succeed."""
    return [await admit(scheduler, lane) for _ in range(count)]


class _Resizable(Protocol):
    def set_limit(self, limit: int) -> None: ...


def set_limit(scheduler: Backend, limit: int) -> None:
    """``set_limit`` (not part of the ``Backend`` protocol, which adaptive limits do not need:
    both backends have it)."""
    resizable: _Resizable = scheduler  # type: ignore[assignment]
    resizable.set_limit(limit)


async def refused(tg: TaskGroup, scheduler: Backend, lane: Priority) -> bool:
    """No seat is free for a newcomer of ``lane``: ``try_acquire`` says so; over Redis,
    where that says only that no leased seat is free, an arrival must also have to wait
    (it is then cancelled, which leaves no trace but the registry entry it took out again)."""
    if scheduler.try_acquire(lane) is not None:
        return False
    if isinstance(scheduler, PriorityScheduler):
        return True
    probe = await arrive(tg, scheduler, lane)
    if probe.permit is not None:
        probe.permit.release()
        await settle(scheduler)
        return False
    assert probe.waiting, probe.error
    probe.scope.cancel()
    await settle(scheduler)
    return True


def lane_active(scheduler: Backend) -> list[int]:
    return [lane.active for lane in scheduler.stats().lanes]


def lane_queued(scheduler: Backend) -> list[int]:
    return [lane.queued for lane in scheduler.stats().lanes]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def tg() -> AsyncIterator[TaskGroup]:
    """A task group for the test's clients, cancelled at the end of the test."""
    async with anyio.create_task_group() as group:
        yield group
        group.cancel_scope.cancel()


# -- construction ---------------------------------------------------------------------------


def test_constructor_rejects_a_limit_below_one() -> None:
    """A scheduler needs at least one seat."""
    with pytest.raises(ValueError, match=r"^limit must be >= 1$"):
        PriorityScheduler(0)


def test_constructor_rejects_a_wrong_number_of_lanes() -> None:
    """Exactly one LaneSettings per Priority."""
    with pytest.raises(ValueError, match=r"^expected 4 lanes, got 3$"):
        PriorityScheduler(10, [LaneSettings(share=1.0)] * 3)


async def test_set_limit_rejects_a_limit_below_one(make_backend: MakeBackend) -> None:
    """set_limit validates like the constructor and leaves the limit unchanged."""
    scheduler = await make_backend(5)
    with pytest.raises(ValueError, match=r"^limit must be >= 1$"):
        set_limit(scheduler, 0)
    assert scheduler.limit == 5


async def test_from_settings_takes_sizes_from_gate_settings(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """from_settings: seats, wait timeout and the reject threshold come from GateSettings
    (``RedisBackend(settings=...)`` over Redis)."""
    settings = GateSettings(
        max_concurrent=3, queue_capacity=7, reject_threshold=5, wait_timeout=2.0, lanes=FLAT
    )
    scheduler = await make_backend.from_settings(settings, clock)
    assert scheduler.limit == 3
    await fill(scheduler, NORMAL, 3)
    assert scheduler.try_acquire(NORMAL) is None
    waiters = [await arrive(tg, scheduler, NORMAL) for _ in range(3)]
    assert waiters[0].waiting and waiters[1].waiting
    assert isinstance(waiters[2].error, SystemOverload)  # 3 active + 2 queued = 5
    clock.advance(2.0)
    await settle(scheduler)
    assert isinstance(waiters[0].error, QueueTimeout)


# -- try_acquire / acquire ------------------------------------------------------------------


async def test_try_acquire_admits_up_to_the_limit_then_returns_none(
    make_backend: MakeBackend, tg: TaskGroup
) -> None:
    """C seats are handed out, the C+1-th newcomer gets None; releasing frees a seat again."""
    limit = 3
    scheduler = await make_backend(limit, FLAT)
    permits = await fill(scheduler, NORMAL, limit)
    assert scheduler.try_acquire(NORMAL) is None
    assert await refused(tg, scheduler, HIGH)
    assert scheduler.stats().active == limit
    permits[0].release()
    assert scheduler.stats().active == limit - 1
    again = await admit(scheduler, HIGH)
    assert again is not None and again.lane is HIGH
    assert lane_active(scheduler) == [0, 1, limit - 1, 0]


async def test_acquire_is_immediate_when_a_seat_is_free(
    make_backend: MakeBackend, clock: FakeClock
) -> None:
    """acquire on a free seat returns without queueing: waited == 0, admitted counted."""
    scheduler = await make_backend(2, FLAT, clock=clock)
    permit = await scheduler.acquire(HIGH)
    assert permit.lane is HIGH and permit.waited == 0.0 and not permit.released
    stats = scheduler.stats()
    assert (stats.active, stats.queued, stats.admitted) == (1, 0, 1)
    permit.release()
    assert permit.released and scheduler.stats().active == 0


async def test_acquire_in_a_cancelled_scope_takes_no_seat(make_backend: MakeBackend) -> None:
    """An already-cancelled caller is cancelled before it can take a (free) seat."""
    scheduler = await make_backend(2, FLAT)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await scheduler.acquire(NORMAL)
        pytest.fail("acquire returned in a cancelled scope")  # pragma: no cover
    assert scope.cancelled_caught
    assert scheduler.stats().active == 0 and scheduler.stats().admitted == 0


async def test_permit_context_manager_releases_on_exception(make_backend: MakeBackend) -> None:
    """An exception inside ``async with permit`` (or ``with``) releases the seat, once."""

    class Boom(Exception):
        pass

    scheduler = await make_backend(1, FLAT)
    with pytest.raises(Boom):
        async with await scheduler.acquire(NORMAL) as permit:
            assert scheduler.stats().active == 1
            raise Boom
    assert permit.released and scheduler.stats().active == 0
    with pytest.raises(Boom), (await fill(scheduler, LOW, 1))[0]:
        raise Boom
    assert scheduler.stats().active == 0


# -- hand-off, FIFO, priorities -------------------------------------------------------------


async def test_release_hands_the_seat_to_the_waiter_not_to_a_newcomer(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """No barging: right after a release, with a waiter queued, try_acquire returns None."""
    scheduler = await make_backend(1, FLAT, clock=clock)
    (held,) = await fill(scheduler, NORMAL, 1)
    waiter = await arrive(tg, scheduler, NORMAL)
    assert waiter.waiting and scheduler.stats().queued == 1
    held.release()
    assert scheduler.try_acquire(NORMAL) is None  # same instant, before the waiter runs
    assert scheduler.try_acquire(HIGH) is None
    await settle(scheduler)
    assert waiter.permit is not None and waiter.permit.lane is NORMAL
    stats = scheduler.stats()
    assert (stats.active, stats.queued, stats.admitted) == (1, 0, 2)


async def test_fifo_within_a_lane(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """Waiters of one lane get seats in arrival order."""
    scheduler = await make_backend(1, FLAT, clock=clock)
    (held,) = await fill(scheduler, NORMAL, 1)
    waiters = [await arrive(tg, scheduler, NORMAL) for _ in range(5)]
    order = []
    permit = held
    for _ in waiters:
        permit.release()
        await settle(scheduler)
        (granted,) = [w for w in waiters if w.permit is not None and not w.permit.released]
        order.append(waiters.index(granted))
        assert granted.permit is not None
        permit = granted.permit
    assert order == list(range(len(waiters)))
    permit.release()
    assert scheduler.stats().active == 0


async def test_priority_across_lanes(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """Among borrowers a release goes to the highest-priority lane, whatever the arrival order."""
    scheduler = await make_backend(2, PRIORITY_ONLY, clock=clock)
    held = await fill(scheduler, CRITICAL, 2)
    low = await arrive(tg, scheduler, LOW)
    normal = await arrive(tg, scheduler, NORMAL)
    high = await arrive(tg, scheduler, HIGH)
    held[0].release()
    await settle(scheduler)
    assert high.permit is not None and normal.waiting and low.waiting
    held[1].release()
    await settle(scheduler)
    assert normal.permit is not None and low.waiting
    high.permit.release()
    await settle(scheduler)
    assert low.permit is not None
    assert lane_active(scheduler) == [0, 0, 1, 1]


async def test_above_guarantees_seats_go_by_priority_not_by_nominal_share(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """A seat above the guarantees goes to the highest waiting lane, even one beyond its
    nominal share while a lower lane is under its own (nominal shares are soft).

    Default lanes, C = 20: N = (2, 8, 8, 2). High holds 10 (2 over N), normal 6 (2 under N).
    The scheduler replaced DESIGN §3's repay-before-lend with this rule (commit "Priority
    above guarantees"): repaying normal first shed logins under a 2x overload.
    """
    scheduler = await make_backend(20, clock=clock)
    nominal = [s.nominal for s in scheduler.seats]
    assert nominal == [2, 8, 8, 2]
    high_held = await fill(scheduler, HIGH, nominal[HIGH] + 2)
    await fill(scheduler, NORMAL, nominal[NORMAL] - 2)
    await fill(scheduler, LOW, nominal[LOW])
    assert await refused(tg, scheduler, NORMAL)  # critical's 2 guaranteed seats stay idle
    normal = await arrive(tg, scheduler, NORMAL)  # arrives first, and is under its N
    high = await arrive(tg, scheduler, HIGH)
    high_held[0].release()
    await settle(scheduler)
    assert high.permit is not None and normal.waiting
    assert lane_active(scheduler) == [0, nominal[HIGH] + 2, nominal[NORMAL] - 2, nominal[LOW]]


async def test_guaranteed_seats_protect_a_lower_lane(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """A lane with lendable < 1 keeps G seats that no higher lane can take: its arrivals are
    admitted at once while a higher lane queues."""
    lanes = make_lanes(normal={"lendable": 0.5})
    scheduler = await make_backend(20, lanes, clock=clock)
    seats = scheduler.seats
    g_normal = seats[NORMAL].nominal - seats[NORMAL].nominal // 2
    assert seats[NORMAL].guaranteed == g_normal == 4
    free_for_high = 20 - seats[CRITICAL].guaranteed - g_normal
    await fill(scheduler, HIGH, free_for_high)
    high = await arrive(tg, scheduler, HIGH)
    assert high.waiting
    normals = [await arrive(tg, scheduler, NORMAL) for _ in range(g_normal)]
    assert all(n.permit is not None for n in normals)
    assert (await arrive(tg, scheduler, NORMAL)).waiting  # beyond G: behind high


async def test_guaranteed_seats_of_critical_are_always_available(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """Other lanes never sit in critical's G seats; a critical arrival is admitted at once
    even with other lanes queued, and only up to G once the rest is full."""
    limit = 20
    scheduler = await make_backend(limit, clock=clock)
    guaranteed = scheduler.seats[CRITICAL].guaranteed
    assert guaranteed == 2  # lendable 0: G = N = 10 % of 20
    await fill(scheduler, NORMAL, limit - guaranteed)
    assert await refused(tg, scheduler, HIGH)
    waiting = await arrive(tg, scheduler, HIGH)
    assert waiting.waiting
    critical = [await arrive(tg, scheduler, CRITICAL) for _ in range(guaranteed)]
    assert all(c.permit is not None for c in critical)
    assert await refused(tg, scheduler, CRITICAL)  # G used up, nothing free to borrow
    assert scheduler.stats().active == limit


async def test_guaranteed_seats_in_use_do_not_count_twice(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """Critical sitting in its own G seats leaves exactly C - G seats to the others."""
    limit = 20
    scheduler = await make_backend(limit, clock=clock)
    guaranteed = scheduler.seats[CRITICAL].guaranteed
    await fill(scheduler, CRITICAL, guaranteed)
    await fill(scheduler, NORMAL, limit - guaranteed)
    assert await refused(tg, scheduler, HIGH)
    assert scheduler.stats().active == limit


async def test_a_released_guaranteed_seat_goes_back_to_its_lane(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """All seats busy, critical waiting at its G: when a critical holder leaves, the seat is
    handed to the critical waiter even though no seat is free for borrowing."""
    limit = 20
    scheduler = await make_backend(limit, clock=clock)
    guaranteed = scheduler.seats[CRITICAL].guaranteed
    critical_held = await fill(scheduler, CRITICAL, guaranteed)
    await fill(scheduler, NORMAL, limit - guaranteed)
    normal = await arrive(tg, scheduler, NORMAL)
    critical = await arrive(tg, scheduler, CRITICAL)
    assert critical.waiting and normal.waiting
    critical_held[0].release()
    await settle(scheduler)
    assert critical.permit is not None and normal.waiting
    assert lane_active(scheduler) == [guaranteed, 0, limit - guaranteed, 0]


async def test_lane_at_its_max_waits_while_others_are_admitted(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """Low (borrow_limit 2.0) stops at Max = 3 x N; seats left free still go to other lanes,
    and a low waiter gets the seat a low holder releases."""
    scheduler = await make_backend(20, clock=clock)
    low_max = scheduler.seats[LOW].max
    assert low_max == 3 * scheduler.seats[LOW].nominal
    held = await fill(scheduler, LOW, low_max)
    assert scheduler.try_acquire(LOW) is None
    low = await arrive(tg, scheduler, LOW)
    assert low.waiting
    normal = await admit(scheduler, NORMAL)
    normal.release()  # a free seat, but low is at its Max: the waiter stays put
    await settle(scheduler)
    assert low.waiting and lane_active(scheduler)[LOW] == low_max
    held[0].release()
    await settle(scheduler)
    assert low.permit is not None
    assert lane_active(scheduler)[LOW] == low_max


async def test_low_lane_is_served_on_an_idle_small_scheduler(
    make_backend: MakeBackend, clock: FakeClock
) -> None:
    """Default lanes at C = 5: low has N = 0; it must still borrow an idle seat.

    Regression test: Max_low = min(C, 0 + round(0 * 2.0)) = 0 made every low request wait
    ``wait_timeout`` and fail with QUEUE_TIMEOUT on an empty scheduler.
    """
    scheduler = await make_backend(5, clock=clock)
    assert scheduler.seats[LOW].nominal == 0
    with anyio.fail_after(10):
        permit = await admit(scheduler, LOW)
    assert permit.lane is LOW, f"low cannot run at C=5: {scheduler.seats[LOW]}"


# -- cancellation ---------------------------------------------------------------------------


async def test_cancelled_while_queued_leaves_the_queue(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """A waiter cancelled in the queue raises Cancelled, drops out of stats and takes no seat."""
    scheduler = await make_backend(1, FLAT, clock=clock)
    (held,) = await fill(scheduler, NORMAL, 1)
    first = await arrive(tg, scheduler, NORMAL)
    second = await arrive(tg, scheduler, NORMAL)
    assert scheduler.stats().queued == 2 and lane_queued(scheduler)[NORMAL] == 2
    first.scope.cancel()
    await settle(scheduler)
    assert first.cancelled and first.permit is None and first.error is None
    assert scheduler.stats().queued == 1 and lane_queued(scheduler)[NORMAL] == 1
    held.release()
    await settle(scheduler)
    assert second.permit is not None
    stats = scheduler.stats()
    assert (stats.active, stats.queued, stats.rejected) == (1, 0, 0)


async def test_granted_then_cancelled_passes_the_seat_on(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """Seat granted and waiter cancelled in the same instant: the seat reaches the next waiter.

    (anyio's test_cancel_after_release.) The cancelled client either never sees the permit
    (asyncio) or gets it back and must release it on its way out (trio delivers the
    cancellation at the next checkpoint): either way no seat is lost.
    """
    scheduler = await make_backend(1, FLAT, clock=clock)
    (held,) = await fill(scheduler, NORMAL, 1)
    first = await arrive(tg, scheduler, NORMAL)
    second = await arrive(tg, scheduler, NORMAL)
    held.release()  # grants `first` ...
    first.scope.cancel()  # ... which is cancelled before it could run
    await settle(scheduler)
    if first.permit is not None:  # returned despite the cancel: the caller owns it
        assert second.waiting
        first.permit.release()
        await settle(scheduler)
    assert second.permit is not None, "the seat granted to a cancelled waiter was lost"
    assert scheduler.stats().active == 1 and scheduler.stats().queued == 0
    second.permit.release()
    assert scheduler.stats().active == 0


async def test_cancelled_then_granted_in_the_same_instant_passes_the_seat_on(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """Cancel delivered first, grant in the same instant: acquire itself hands the seat on.

    The waiter is still queued when ``release`` dispatches, so it is granted; it then wakes
    with the cancellation and must pass the seat to the next waiter -- nobody else will.
    """
    scheduler = await make_backend(1, FLAT, clock=clock)
    (held,) = await fill(scheduler, NORMAL, 1)
    first = await arrive(tg, scheduler, NORMAL)
    second = await arrive(tg, scheduler, NORMAL)
    first.scope.cancel()
    held.release()  # dispatches to `first`, whose cancellation is already on its way
    await settle(scheduler)
    assert first.cancelled and first.permit is None
    assert second.permit is not None, "the seat granted to a cancelled waiter was lost"
    stats = scheduler.stats()
    assert (stats.active, stats.queued) == (1, 0)
    assert stats.admitted == 2  # `held` and `second`: the seat passed on is no admission
    second.permit.release()
    assert scheduler.stats().active == 0


async def test_granted_then_cancelled_inside_async_with_releases(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """The usual ``async with await acquire(): ...`` leaks nothing when cancelled at grant."""
    scheduler = await make_backend(1, FLAT, clock=clock)
    (held,) = await fill(scheduler, NORMAL, 1)
    scope = anyio.CancelScope()

    async def request() -> None:
        with scope:
            async with await scheduler.acquire(NORMAL):
                await anyio.sleep_forever()

    tg.start_soon(request)
    await settle(scheduler)
    assert scheduler.stats().queued == 1
    held.release()
    scope.cancel()
    await settle(scheduler)
    assert scope.cancelled_caught
    assert scheduler.stats().active == 0 and scheduler.stats().queued == 0
    (await admit(scheduler, NORMAL)).release()


async def test_cancelling_many_waiters_keeps_fifo_for_the_rest(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """Cancelled waiters are skipped (and compacted away) without disturbing FIFO order."""
    scheduler = await make_backend(1, FLAT, clock=clock)
    (held,) = await fill(scheduler, NORMAL, 1)
    waiters = [await arrive(tg, scheduler, NORMAL) for _ in range(90)]
    keep = [w for i, w in enumerate(waiters) if i % 3 == 2]
    for w in waiters:
        if w not in keep:
            w.scope.cancel()
    await settle(scheduler)
    assert scheduler.stats().queued == len(keep)
    permit = held
    for expected in keep:
        permit.release()
        await settle(scheduler)
        assert expected.permit is not None
        assert all(w.waiting for w in keep[keep.index(expected) + 1 :])
        permit = expected.permit
    permit.release()
    stats = scheduler.stats()
    assert (stats.active, stats.queued) == (0, 0)


# -- timeouts -------------------------------------------------------------------------------


async def test_wait_timeout_raises_queue_timeout(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """A waiter gives up exactly at its timeout (FakeClock), counted as QUEUE_TIMEOUT."""
    scheduler = await make_backend(1, FLAT, clock=clock, wait_timeout=10.0)
    await fill(scheduler, NORMAL, 1)
    waiter = await arrive(tg, scheduler, NORMAL, wait=2.0)
    clock.advance(1.5)
    await settle(scheduler)
    assert waiter.waiting
    clock.advance(0.5)
    await settle(scheduler)
    assert isinstance(waiter.error, QueueTimeout) and waiter.permit is None
    assert waiter.error.reason is RejectReason.QUEUE_TIMEOUT
    stats = scheduler.stats()
    assert stats.queued == 0 and stats.rejected == 1
    assert stats.lanes[NORMAL].rejected == {"QUEUE_TIMEOUT": 1}


async def test_default_wait_timeout_applies_when_none_given(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """timeout=None means the scheduler's wait_timeout."""
    wait_timeout = 3.0
    scheduler = await make_backend(1, FLAT, clock=clock, wait_timeout=wait_timeout)
    await fill(scheduler, NORMAL, 1)
    waiter = await arrive(tg, scheduler, NORMAL)
    clock.advance(wait_timeout - 0.25)
    await settle(scheduler)
    assert waiter.waiting
    clock.advance(0.25)
    await settle(scheduler)
    assert isinstance(waiter.error, QueueTimeout)


async def test_timed_out_waiter_does_not_take_a_later_seat(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """After a timeout the next release goes to the next live waiter, not the stale one."""
    scheduler = await make_backend(1, FLAT, clock=clock)
    (held,) = await fill(scheduler, NORMAL, 1)
    short = await arrive(tg, scheduler, NORMAL, wait=1.0)
    long = await arrive(tg, scheduler, NORMAL, wait=5.0)
    clock.advance(1.0)
    await settle(scheduler)
    assert isinstance(short.error, QueueTimeout) and long.waiting
    held.release()
    await settle(scheduler)
    assert long.permit is not None and long.permit.waited == 1.0
    assert scheduler.stats().active == 1


async def test_release_and_timeout_in_the_same_instant_lose_no_seat(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """Grant and deadline together: the waiter keeps the seat or passes it on, never leaks it."""
    scheduler = await make_backend(1, FLAT, clock=clock)
    (held,) = await fill(scheduler, NORMAL, 1)
    first = await arrive(tg, scheduler, NORMAL, wait=1.0)
    second = await arrive(tg, scheduler, NORMAL, wait=10.0)
    held.release()
    clock.advance(1.0)
    await settle(scheduler)
    holders = [c for c in (first, second) if c.permit is not None]
    assert len(holders) == 1 and scheduler.stats().active == 1
    assert first.permit is not None, "granted before its deadline fired: it keeps the seat"


# -- rejections -----------------------------------------------------------------------------


async def test_queue_full_at_capacity(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """With queue_capacity waiters queued, the next arrival of the lowest lane gets QueueFull."""
    capacity = 3
    scheduler = await make_backend(1, FLAT, clock=clock, queue_capacity=capacity)
    await fill(scheduler, NORMAL, 1)
    queued = [await arrive(tg, scheduler, LOW) for _ in range(capacity)]
    assert all(c.waiting for c in queued)
    extra = await arrive(tg, scheduler, LOW)
    assert isinstance(extra.error, QueueFull) and extra.error.reason is RejectReason.QUEUE_FULL
    stats = scheduler.stats()
    assert stats.queued == capacity
    assert stats.lanes[LOW].rejected == {"QUEUE_FULL": 1} and stats.rejected == 1


async def test_zero_capacity_rejects_everyone_who_must_wait(
    make_backend: MakeBackend, clock: FakeClock
) -> None:
    """queue_capacity=0: no waiting at all, admissions still work."""
    scheduler = await make_backend(1, FLAT, clock=clock, queue_capacity=0)
    permit = await scheduler.acquire(HIGH)
    with pytest.raises(QueueFull):
        await scheduler.acquire(HIGH)
    permit.release()
    assert (await scheduler.acquire(HIGH)).lane is HIGH


async def test_high_arrival_displaces_the_youngest_waiter_of_the_lowest_lane(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """Full queue: a HIGH arrival takes the place of the youngest waiter of the lowest lane below
    it (that one gets QueueFull); with nobody below, the arrival itself gets QueueFull."""
    scheduler = await make_backend(1, FLAT, clock=clock, queue_capacity=3)
    await fill(scheduler, CRITICAL, 1)
    low_old = await arrive(tg, scheduler, LOW)
    low_young = await arrive(tg, scheduler, LOW)
    normal = await arrive(tg, scheduler, NORMAL)  # youngest of all, but not the lowest lane
    high1 = await arrive(tg, scheduler, HIGH)
    assert isinstance(low_young.error, QueueFull)
    assert low_old.waiting and normal.waiting and high1.waiting
    high2 = await arrive(tg, scheduler, HIGH)
    assert isinstance(low_old.error, QueueFull) and high2.waiting
    high3 = await arrive(tg, scheduler, HIGH)
    assert isinstance(normal.error, QueueFull) and high3.waiting
    high4 = await arrive(tg, scheduler, HIGH)
    assert isinstance(high4.error, QueueFull)  # no lane below HIGH waits any more
    assert all(h.waiting for h in (high1, high2, high3))
    stats = scheduler.stats()
    assert lane_queued(scheduler) == [0, 3, 0, 0]
    assert [dict(lane.rejected) for lane in stats.lanes] == [
        {},
        {"QUEUE_FULL": 1},
        {"QUEUE_FULL": 1},
        {"QUEUE_FULL": 2},
    ]


async def test_arrival_never_displaces_its_own_lane_or_above(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """A LOW arrival to a queue full of higher lanes is turned away itself."""
    scheduler = await make_backend(1, FLAT, clock=clock, queue_capacity=2)
    await fill(scheduler, CRITICAL, 1)
    first = [await arrive(tg, scheduler, lane) for lane in (HIGH, LOW)]
    late = await arrive(tg, scheduler, LOW)
    assert isinstance(late.error, QueueFull)
    assert all(c.waiting for c in first)


async def test_displacement_skips_cancelled_waiters_at_the_tail(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """The victim is the youngest *live* waiter: a cancelled one left at the tail is skipped."""
    scheduler = await make_backend(1, FLAT, clock=clock, queue_capacity=2)
    await fill(scheduler, CRITICAL, 1)
    old = await arrive(tg, scheduler, LOW)
    young = await arrive(tg, scheduler, LOW)
    young.scope.cancel()  # not at the head: stays in the deque, marked dead
    await settle(scheduler)
    normal = await arrive(tg, scheduler, NORMAL)
    assert scheduler.stats().queued == 2  # full again
    high = await arrive(tg, scheduler, HIGH)
    assert young.cancelled and young.error is None
    assert isinstance(old.error, QueueFull)
    assert normal.waiting and high.waiting
    assert lane_queued(scheduler) == [0, 1, 1, 0]
    assert scheduler.stats().lanes[LOW].rejected == {"QUEUE_FULL": 1}


async def test_lane_queue_limit(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """A lane's queue_limit turns away its own arrivals (QueueFull) without displacing others."""
    lanes = make_lanes(critical=_OPEN, high=_OPEN, normal={**_OPEN, "queue_limit": 1}, low=_OPEN)
    scheduler = await make_backend(1, lanes, clock=clock, queue_capacity=10)
    await fill(scheduler, CRITICAL, 1)
    low = await arrive(tg, scheduler, LOW)
    normal = await arrive(tg, scheduler, NORMAL)
    over = await arrive(tg, scheduler, NORMAL)
    assert isinstance(over.error, QueueFull)
    assert low.waiting and normal.waiting
    high = [await arrive(tg, scheduler, HIGH) for _ in range(3)]  # other lanes unaffected
    assert all(h.waiting for h in high)
    assert scheduler.stats().lanes[NORMAL].rejected == {"QUEUE_FULL": 1}


async def test_system_overload_at_the_reject_threshold(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """active + queued >= reject_threshold (< C + Q): arrivals that must wait get SystemOverload;
    a higher arrival displaces a lower waiter instead."""
    limit, capacity, threshold = 2, 10, 4
    scheduler = await make_backend(
        limit, FLAT, clock=clock, queue_capacity=capacity, reject_threshold=threshold
    )
    await fill(scheduler, CRITICAL, limit)
    queued = [await arrive(tg, scheduler, LOW) for _ in range(threshold - limit)]
    assert all(c.waiting for c in queued)
    refused = await arrive(tg, scheduler, LOW)
    assert isinstance(refused.error, SystemOverload)
    assert refused.error.reason is RejectReason.SYSTEM_OVERLOAD
    high = await arrive(tg, scheduler, HIGH)
    assert high.waiting and isinstance(queued[-1].error, QueueFull) and queued[0].waiting
    stats = scheduler.stats()
    assert stats.active + stats.queued == threshold
    assert stats.lanes[LOW].rejected == {"SYSTEM_OVERLOAD": 1, "QUEUE_FULL": 1}


async def test_reject_threshold_defaults_to_limit_plus_capacity(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """Without reject_threshold the queue fills completely before anything is refused."""
    scheduler = await make_backend(2, FLAT, clock=clock, queue_capacity=3)
    await fill(scheduler, NORMAL, 2)
    queued = [await arrive(tg, scheduler, NORMAL) for _ in range(3)]
    assert all(c.waiting for c in queued)
    extra = await arrive(tg, scheduler, NORMAL)
    assert type(extra.error) is QueueFull


# -- permits --------------------------------------------------------------------------------


async def test_releasing_twice_is_a_no_op(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """A second release neither frees a second seat nor admits a second waiter."""
    scheduler = await make_backend(1, FLAT, clock=clock)
    (held,) = await fill(scheduler, NORMAL, 1)
    first = await arrive(tg, scheduler, NORMAL)
    second = await arrive(tg, scheduler, NORMAL)
    held.release()
    held.release()
    await settle(scheduler)
    assert first.permit is not None and second.waiting
    assert scheduler.stats().active == 1 and scheduler.stats().queued == 1
    first.permit.release()
    await settle(scheduler)
    assert second.permit is not None
    second.permit.release()
    second.permit.release()
    assert scheduler.stats().active == 0
    assert "released" in repr(second.permit)


# -- set_limit ------------------------------------------------------------------------------


async def test_raising_the_limit_hands_new_seats_to_waiters(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """set_limit up: the new seats go straight to waiters, in FIFO order."""
    scheduler = await make_backend(1, FLAT, clock=clock)
    await fill(scheduler, NORMAL, 1)
    waiters = [await arrive(tg, scheduler, NORMAL) for _ in range(4)]
    set_limit(scheduler, 3)
    await settle(scheduler)
    assert [w.permit is not None for w in waiters] == [True, True, False, False]
    assert scheduler.limit == 3 and scheduler.stats().limit == 3
    assert scheduler.stats().active == 3 and scheduler.stats().queued == 2


async def test_lowering_the_limit_keeps_holders(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """set_limit down: holders keep their seats; nobody is admitted until active < new C."""
    scheduler = await make_backend(4, FLAT, clock=clock)
    held = await fill(scheduler, NORMAL, 4)
    set_limit(scheduler, 2)
    assert scheduler.stats().active == 4
    assert scheduler.try_acquire(NORMAL) is None
    waiter = await arrive(tg, scheduler, NORMAL)
    for permit in held[:2]:
        permit.release()
        await settle(scheduler)
        assert waiter.waiting
    held[2].release()
    await settle(scheduler)
    assert waiter.permit is not None
    assert scheduler.stats().active == 2  # back at the new limit


async def test_set_limit_reapportions_lane_seats(make_backend: MakeBackend) -> None:
    """seats follows the limit (critical's G with it)."""
    scheduler = await make_backend(20)
    assert scheduler.seats[CRITICAL].guaranteed == 2
    set_limit(scheduler, 100)
    assert [s.nominal for s in scheduler.seats] == [10, 40, 40, 10]
    assert scheduler.seats[CRITICAL].guaranteed == 10
    assert scheduler.stats().lanes[CRITICAL].guaranteed == 10


# -- stats and drain time -------------------------------------------------------------------


async def test_stats_counts_admissions_rejections_and_average_wait(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """admitted counts immediate and queued admissions; avg wait includes the zeros."""
    scheduler = await make_backend(1, FLAT, clock=clock, queue_capacity=1)
    (held,) = await fill(scheduler, HIGH, 1)  # waited 0
    waiter = await arrive(tg, scheduler, NORMAL)
    rejected = await arrive(tg, scheduler, NORMAL)
    assert isinstance(rejected.error, QueueFull)
    scheduler.record_rejection(LOW, RejectReason.READ_ONLY)
    clock.advance(0.5)
    held.release()
    await settle(scheduler)
    assert waiter.permit is not None and waiter.permit.waited == 0.5
    stats = scheduler.stats()
    waits = [0.0, 0.5]
    assert stats.admitted == len(waits)
    assert stats.avg_wait_time_ms == pytest.approx(1000 * sum(waits) / len(waits))
    assert stats.rejected == 2
    assert [lane.admitted for lane in stats.lanes] == [0, 1, 1, 0]
    assert stats.lanes[NORMAL].rejected == {"QUEUE_FULL": 1}
    assert stats.lanes[LOW].rejected == {"READ_ONLY": 1}
    assert [lane.lane for lane in stats.lanes] == list(Priority)
    assert stats.utilization == 1.0 and stats.status == "critical"


async def test_stats_snapshot_is_frozen(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """A snapshot cannot be assigned to, and later activity does not change it."""
    scheduler = await make_backend(1, FLAT, clock=clock, queue_capacity=0)
    snapshot = scheduler.stats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.active = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.lanes[0].queued = 1  # type: ignore[misc]
    await fill(scheduler, NORMAL, 1)
    await arrive(tg, scheduler, NORMAL)  # rejected: QUEUE_FULL
    assert (snapshot.active, snapshot.admitted, snapshot.rejected) == (0, 0, 0)
    assert snapshot.lanes[NORMAL].rejected == {}
    later = scheduler.stats()
    assert (later.active, later.rejected) == (1, 1)


async def test_retry_after_counts_the_waiters_ahead_of_the_lane(
    make_backend: MakeBackend, tg: TaskGroup, clock: FakeClock
) -> None:
    """retry_after(lane) is the Little's-law drain time of the waiters served before a newcomer
    of that lane (its own lane and every higher one), with at most +50 % jitter, in 1..60 s.
    Before any service sample it is one wait_timeout.

    (This replaces the completion-rate ``drain_time`` of the first skeleton.)
    """
    limit, wait_timeout, hold = 2, 3.0, 4.0
    scheduler = await make_backend(limit, FLAT, clock=clock, wait_timeout=wait_timeout)
    assert all(
        wait_timeout <= scheduler.retry_after(lane) <= math.ceil(1.5 * wait_timeout)
        for lane in Priority
    )
    for _ in range(4 * 4):  # several timed permits, each held `hold` seconds
        permit = await admit(scheduler, NORMAL)
        clock.advance(hold)
        permit.release()
    await fill(scheduler, NORMAL, limit)
    high = [await arrive(tg, scheduler, HIGH) for _ in range(2)]
    low = [await arrive(tg, scheduler, LOW) for _ in range(3)]
    assert all(c.waiting for c in high + low)
    ahead = {CRITICAL: 0, HIGH: len(high), NORMAL: len(high), LOW: len(high) + len(low)}
    for lane, n in ahead.items():
        drain = (n + 1) * hold / limit
        answers = {scheduler.retry_after(lane) for _ in range(50)}
        least, most = math.ceil(drain), math.ceil(1.5 * drain)
        assert all(least <= a <= most for a in answers), (lane, answers)

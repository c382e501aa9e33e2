"""Stateful property test of PriorityScheduler, driven through its real async API.

A hypothesis ``RuleBasedStateMachine`` keeps one event loop alive in a blocking portal
(asyncio or trio). Each rule does one thing *inside* the loop -- a request arrives, a holder
finishes (release / normal exit / exception / cancellation), a waiter is cancelled, a release
and a cancellation happen in the same instant, time passes on a ``FakeClock``, the limit
changes -- and then waits until every task is blocked again (``wait_all_tasks_blocked``).

The machine keeps its own model: which client holds a seat, which waits, which was refused
and why. After every step it checks, from that model and the lane sizes (``seats``):

* the scheduler's per-lane counts equal the model's (no permit lost, none released twice);
* I1 Σu ≤ C, I2 u_i ≤ Max_i, I3 Σ max(u_i, G_i) ≤ C -- relaxed only after ``set_limit``
  lowered C below the holders, and then never growing until back under it;
* work conservation: a lane with waiters is at its guarantee and at its Max or out of seats;
* FIFO in a lane: no waiter is ever passed by a later arrival of its own lane;
* hand-off order: lanes under their guarantee first, then strict priority -- no seat above
  a guarantee goes to a lane while a higher lane waits that could take it. (DESIGN §3's
  repay-before-lend was replaced by this rule in the scheduler: "priority above guarantees".)
* an arrival is admitted, queued, displaces the youngest waiter of the lowest lane below it,
  or is refused (QUEUE_FULL / SYSTEM_OVERLOAD) exactly as DESIGN.md §3 says;
* timeouts fire exactly at their deadlines; rejection counters match the refused clients.

Queue management (``target_wait``) is off: with it on, an overloaded lane is LIFO by design.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from lockgate import (
    LaneSettings,
    LanesSettings,
    Permit,
    Priority,
    PriorityScheduler,
    Rejected,
    RejectReason,
)
from lockgate.testing import FakeClock

LANES = tuple(Priority)
WAIT_TIMEOUT = 1.5

PENDING, HELD, RELEASED = "pending", "held", "released"
REJECTED, CANCELLED = "rejected", "cancelled"


class _Boom(Exception):
    """Raised by a holder inside its ``async with permit`` block."""


@dataclass(eq=False)
class Client:
    """One request. Tasks write its fields in the loop; the machine reads them at rest."""

    lane: Priority
    seq: int
    deadline: float
    state: str = PENDING
    permit: Permit | None = None
    reason: RejectReason | None = None
    granted: bool = False
    sync: bool = False  # a try_acquire permit held by the machine itself, no task
    fail: bool = False
    # Made in the loop by run(): cancel scopes and events belong to a running event loop.
    scope: anyio.CancelScope = field(init=False)
    hold_scope: anyio.CancelScope = field(init=False)
    finish: anyio.Event = field(init=False)

    async def run(self, scheduler: PriorityScheduler, wait: float | None) -> None:
        self.scope, self.hold_scope = anyio.CancelScope(), anyio.CancelScope()
        self.finish = anyio.Event()
        with self.scope:
            try:
                permit = await scheduler.acquire(self.lane, wait)
            except Rejected as exc:
                self.state, self.reason = REJECTED, exc.reason
                return
            self.permit, self.state, self.granted = permit, HELD, True
        if self.permit is None:
            self.state = CANCELLED
            return
        with self.hold_scope:
            try:
                async with self.permit:
                    await self.finish.wait()
                    if self.fail:
                        raise _Boom
            except _Boom:
                pass
        self.state = RELEASED

    def end(self, how: str) -> None:
        """Finish holding (called in the loop): release, exit, raise or get cancelled."""
        assert self.permit is not None
        if self.sync:
            self.permit.release()
            self.permit.release()  # a second release must be a no-op
            self.state = RELEASED
            return
        if how == "release":
            self.permit.release()  # then the context manager's exit releases again: no-op
            self.finish.set()
        elif how == "exit":
            self.finish.set()
        elif how == "raise":
            self.fail = True
            self.finish.set()
        else:
            self.hold_scope.cancel()


@dataclass(frozen=True)
class Model:
    """The machine's view at rest: seats held and waiters per lane."""

    used: tuple[int, ...]
    waiting: tuple[int, ...]


@dataclass(frozen=True)
class Config:
    limit: int
    lanes: tuple[LaneSettings, ...]
    queue_capacity: int
    reject_threshold: int | None


lane_settings = st.builds(
    LaneSettings,
    share=st.sampled_from([0.0, 0.1, 0.4, 1.0]),
    lendable=st.sampled_from([0.0, 0.5, 1.0]),
    borrow_limit=st.sampled_from([None, 0.0, 0.5, 2.0]),
    queue_limit=st.sampled_from([None, None, 1, 3]),
)
lane_sets = st.one_of(
    st.just(LanesSettings().ordered()),
    st.just(LanesSettings().ordered()),
    st.tuples(lane_settings, lane_settings, lane_settings, lane_settings).filter(
        lambda lanes: sum(lane.share for lane in lanes) > 0
    ),
)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    limit = draw(st.integers(1, 5))
    capacity = draw(st.integers(0, 10))
    threshold = draw(st.one_of(st.none(), st.integers(limit, limit + capacity + 1)))
    return Config(limit, draw(lane_sets), capacity, threshold)


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self, portal: BlockingPortal) -> None:
        super().__init__()
        self.portal = portal
        # The clients' task group lives in the loop for the whole example.
        self._tg_cm = portal.wrap_async_context_manager(portal.call(anyio.create_task_group))
        self.tg: TaskGroup = self._tg_cm.__enter__()
        self.clock = FakeClock()
        self.scheduler = PriorityScheduler(1)  # replaced in setup()
        self.stats = self.scheduler.stats()  # taken at rest after every step
        self.config: Config | None = None
        self.clients: list[Client] = []
        self.seq = 0
        self.occ_ceiling = 0
        self.used_ceiling = [0, 0, 0, 0]
        self.hidden_grants = 0  # granted to a waiter cancelled in the same instant

    # -- helpers ------------------------------------------------------------------------

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func`` in the loop, wait until every task there is blocked again, and take
        a stats snapshot at that point of rest."""

        async def step() -> Any:
            result = func(*args)
            # A few plain checkpoints let short chains of wake-ups run first: asyncio's
            # wait_all_tasks_blocked polls every 0.1 s while any task is runnable.
            for _ in range(4):
                await anyio.lowlevel.checkpoint()
            await anyio.wait_all_tasks_blocked()
            self.stats = self.scheduler.stats()
            return result

        return self.portal.call(step)

    def by_state(self, state: str) -> list[Client]:
        return [c for c in self.clients if c.state == state]

    def model(self) -> Model:
        used, waiting = [0, 0, 0, 0], [0, 0, 0, 0]
        for c in self.clients:
            if c.state == HELD:
                used[c.lane] += 1
            elif c.state == PENDING:
                waiting[c.lane] += 1
        return Model(tuple(used), tuple(waiting))

    def sizes(self) -> tuple[int, list[int], list[int], list[int]]:
        seats = self.scheduler.seats
        return (
            self.scheduler.limit,
            [s.nominal for s in seats],
            [s.guaranteed for s in seats],
            [s.max for s in seats],
        )

    def occupied(self, used: tuple[int, ...], guaranteed: list[int]) -> int:
        return sum(max(u, g) for u, g in zip(used, guaranteed, strict=True))

    def admits(self, lane: Priority, m: Model) -> bool:
        """The arrival rule: a lane under its guarantee at once; else a free seat under I3,
        below the lane's Max, and no waiter of an equal or higher lane that could take it
        (a waiter at its Max is not jumped: it could not use the seat)."""
        limit, _, guaranteed, most = self.sizes()
        u = m.used
        if u[lane] < guaranteed[lane]:
            return True
        free = self.occupied(u, guaranteed) < limit
        if not free or u[lane] >= most[lane]:
            return False

        def eligible(j: int) -> bool:
            return m.waiting[j] > 0 and u[j] < most[j]

        return not any(eligible(j) for j in range(lane + 1))

    def granted_ids(self) -> set[int]:
        return {id(c) for c in self.clients if c.granted}

    def check_grants(self, before: set[int], exclude: Client | None = None) -> None:
        """Order of the seats handed out in this step (all releases in a step come first):
        a seat above a lane's guarantee never goes to it while another lane waits under its
        guarantee, or while a higher lane waits that could take it."""
        _, _, guaranteed, most = self.sizes()
        m = self.model()
        new = [c for c in self.clients if c.granted and id(c) not in before and c is not exclude]
        if new:
            event("seats handed to waiters")
        for lane in LANES:
            k = sum(1 for c in new if c.lane == lane)
            if not k:
                continue
            held_now = sum(1 for c in self.clients if c.lane == lane and c.state == HELD)
            # The grants took this lane from held_now - k to held_now (releases of this lane
            # by these very clients in the same step are impossible: they just got seats).
            last = held_now - 1
            if last < guaranteed[lane]:
                continue  # every grant of this lane was within its guarantee
            for j in LANES:
                if j == lane or not m.waiting[j]:
                    continue
                if m.used[j] < guaranteed[j]:
                    raise AssertionError(f"{lane.label} served before {j.label} under its G")
                if j < lane and m.used[j] < most[j]:
                    raise AssertionError(
                        f"{lane.label} served before higher {j.label}: used={m.used} Max={most}"
                    )

    # -- rules --------------------------------------------------------------------------

    @initialize(config=configs())
    def setup(self, config: Config) -> None:
        self.config = config
        self.scheduler = PriorityScheduler(
            config.limit,
            config.lanes,
            queue_capacity=config.queue_capacity,
            wait_timeout=WAIT_TIMEOUT,
            reject_threshold=config.reject_threshold,
            clock=self.clock,
        )
        limit, _, _, most = self.sizes()
        self.occ_ceiling, self.used_ceiling = limit, list(most)
        self.stats = self.scheduler.stats()

    @rule(
        arrivals=st.lists(
            st.tuples(
                st.sampled_from(LANES), st.sampled_from([None, 0.5, 2.0, math.inf, math.inf])
            ),
            min_size=1,
            max_size=6,
        )
    )
    def arrive(self, arrivals: list[tuple[Priority, float | None]]) -> None:
        """A few requests arrive one after another (each one settles before the next)."""
        for lane, timeout in arrivals:
            self.arrive_one(lane, timeout)

    def arrive_one(self, lane: Priority, timeout: float | None) -> None:
        assert self.config is not None
        m = self.model()
        admit = self.admits(lane, m)
        pending = self.by_state(PENDING)
        before = self.granted_ids()
        self.seq += 1
        wait = WAIT_TIMEOUT if timeout is None else timeout
        client = Client(lane, self.seq, self.clock.now() + wait)
        self.clients.append(client)
        self.call(self.tg.start_soon, client.run, self.scheduler, timeout)

        if admit:
            assert client.state == HELD, f"{lane.label} should be admitted at once: {m}"
            assert client.permit is not None and client.permit.waited == 0.0
            assert all(c.state == PENDING for c in pending)
            return
        assert client.state != HELD, f"{lane.label} admitted, should wait: {m}"
        assert self.granted_ids() == before
        # Which rejection, if any, and who is displaced?
        limit = self.scheduler.limit
        lane_limit = self.config.lanes[lane].queue_limit
        threshold = self.config.reject_threshold
        if threshold is None:
            threshold = limit + self.config.queue_capacity
        full = len(pending) >= self.config.queue_capacity
        overload = sum(m.used) + len(pending) >= threshold
        victim: Client | None = None
        expected: RejectReason | None = None
        if lane_limit is not None and m.waiting[lane] >= lane_limit:
            expected = RejectReason.QUEUE_FULL
        elif full or overload:
            below = [c for c in pending if c.lane > lane]
            if below:
                lowest = max(c.lane for c in below)
                victim = max((c for c in below if c.lane == lowest), key=lambda c: c.seq)
            else:
                expected = RejectReason.QUEUE_FULL if full else RejectReason.SYSTEM_OVERLOAD
        if expected is None:
            assert client.state == PENDING, (client.state, client.reason)
        else:
            assert (client.state, client.reason) == (REJECTED, expected)
        event(f"arrival: {'displaced' if victim else expected or 'queued'}")
        for c in pending:
            if c is victim:
                assert (c.state, c.reason) == (REJECTED, RejectReason.QUEUE_FULL)
            else:
                assert c.state == PENDING, f"{c.lane.label} #{c.seq} was disturbed"

    @rule(lane=st.sampled_from(LANES))
    def try_acquire(self, lane: Priority) -> None:
        m = self.model()
        admit = self.admits(lane, m)
        permit = self.call(self.scheduler.try_acquire, lane)
        assert (permit is not None) == admit, f"try_acquire({lane.label}) on {m}"
        if permit is not None:
            self.seq += 1
            self.clients.append(
                Client(lane, self.seq, math.inf, HELD, permit, granted=True, sync=True)
            )

    @precondition(lambda self: any(c.state == HELD for c in self.clients))
    @rule(pick=st.integers(0, 999), how=st.sampled_from(["release", "exit", "raise", "cancel"]))
    def finish(self, pick: int, how: str) -> None:
        held = self.by_state(HELD)
        client = held[pick % len(held)]
        pending = self.by_state(PENDING)
        before = self.granted_ids()
        self.call(client.end, how)
        assert client.state == RELEASED
        event(f"finish: {len(self.granted_ids() - before)} grant(s), waiters={bool(pending)}")
        self.check_grants(before)

    @precondition(lambda self: any(c.state == PENDING for c in self.clients))
    @rule(pick=st.integers(0, 999))
    def cancel_waiter(self, pick: int) -> None:
        pending = self.by_state(PENDING)
        client = pending[pick % len(pending)]
        before = self.granted_ids()
        self.call(client.scope.cancel)
        assert client.state == CANCELLED and client.permit is None
        assert self.granted_ids() == before

    @precondition(
        lambda self: (
            any(c.state == HELD for c in self.clients)
            and any(c.state == PENDING for c in self.clients)
        )
    )
    @rule(
        held_pick=st.integers(0, 999), pending_pick=st.integers(0, 999), cancel_first=st.booleans()
    )
    def release_and_cancel(self, held_pick: int, pending_pick: int, cancel_first: bool) -> None:
        """A release and a waiter's cancellation in the same instant (the waiter may be the
        one granted the seat): the seat must reach a live waiter or stay free, never leak."""
        held, pending = self.by_state(HELD), self.by_state(PENDING)
        holder, waiter = held[held_pick % len(held)], pending[pending_pick % len(pending)]
        before = self.granted_ids()

        def both() -> None:
            if cancel_first:
                waiter.scope.cancel()
                holder.end("release")
            else:
                holder.end("release")
                waiter.scope.cancel()

        self.call(both)
        assert holder.state == RELEASED
        if cancel_first:
            assert waiter.state == CANCELLED
        else:
            assert waiter.state in (CANCELLED, HELD)
        event(f"release_and_cancel: waiter {waiter.state}, cancel_first={cancel_first}")
        self.check_grants(before, exclude=waiter)

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0]))
    def advance(self, seconds: float) -> None:
        pending = self.by_state(PENDING)
        before = self.granted_ids()
        self.call(self.clock.advance, seconds)
        now = self.clock.now()
        for c in pending:
            if c.deadline <= now:
                assert (c.state, c.reason) == (REJECTED, RejectReason.QUEUE_TIMEOUT), c
            else:
                assert c.state == PENDING, c
        assert self.granted_ids() == before

    @precondition(lambda self: bool(self.clients))
    @rule(limit=st.integers(1, 8))
    def set_limit(self, limit: int) -> None:
        used = self.model().used
        before = self.granted_ids()
        self.call(self.scheduler.set_limit, limit)
        new_limit, _, guaranteed, most = self.sizes()
        assert new_limit == limit
        # Holders above a lowered limit keep their seats: the bounds start from them.
        self.occ_ceiling = max(limit, self.occupied(used, guaranteed))
        event(f"set_limit: {'over' if self.occ_ceiling > limit else 'within'} the new limit")
        self.used_ceiling = [max(mx, u) for mx, u in zip(most, used, strict=True)]
        self.check_grants(before)

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def counts_match_the_model(self) -> None:
        """Every seat held is held by exactly one live permit; waiters match; rejections too."""
        stats = self.stats
        m = self.model()
        assert tuple(lane.active for lane in stats.lanes) == m.used
        assert tuple(lane.queued for lane in stats.lanes) == m.waiting
        assert (stats.active, stats.queued) == (sum(m.used), sum(m.waiting))
        permits = [c.permit for c in self.clients if c.state == HELD]
        assert len({id(p) for p in permits}) == len(permits)
        assert all(p is not None and not p.released for p in permits)
        for lane, lane_stats in zip(LANES, stats.lanes, strict=True):
            refused: dict[str, int] = {}
            for c in self.clients:
                if c.lane == lane and c.state == REJECTED:
                    assert c.reason is not None
                    refused[c.reason.value] = refused.get(c.reason.value, 0) + 1
            assert dict(lane_stats.rejected) == refused
        granted = sum(1 for c in self.clients if c.granted)
        hidden = stats.admitted - granted
        assert self.hidden_grants <= hidden <= self.hidden_grants + 1
        if hidden > self.hidden_grants:
            event("seat granted to a cancelled waiter was passed on")
        self.hidden_grants = hidden

    @invariant()
    def seat_bounds(self) -> None:
        """I1, I2, I3 -- against ceilings that only a lowered limit raises above C / Max."""
        if self.config is None:
            return
        limit, _, guaranteed, most = self.sizes()
        m = self.model()
        occupied = self.occupied(m.used, guaranteed)
        assert sum(m.used) <= self.occ_ceiling, f"I1: {m.used} > C={limit}"
        assert occupied <= self.occ_ceiling, f"I3: {m.used} G={guaranteed} C={limit}"
        for lane in LANES:
            assert m.used[lane] <= self.used_ceiling[lane], f"I2: {m.used} Max={most}"
        self.occ_ceiling = max(limit, occupied)
        self.used_ceiling = [max(mx, u) for mx, u in zip(most, m.used, strict=True)]

    @invariant()
    def work_conserving(self) -> None:
        """No waiter could take a seat: each waiting lane is at G, and at Max or out of seats."""
        if self.config is None:
            return
        limit, _, guaranteed, most = self.sizes()
        m = self.model()
        full = self.occupied(m.used, guaranteed) >= limit
        for lane in LANES:
            if m.waiting[lane]:
                assert m.used[lane] >= guaranteed[lane], f"{lane.label} waits under its G: {m}"
                assert m.used[lane] >= most[lane] or full, f"idle seat, {lane.label} waits: {m}"

    @invariant()
    def fifo_within_a_lane(self) -> None:
        """No client was ever granted a seat while an earlier one of its lane still waits."""
        for lane in LANES:
            waiting = [c.seq for c in self.clients if c.lane == lane and c.state == PENDING]
            granted = [c.seq for c in self.clients if c.lane == lane and c.granted]
            if waiting and granted:
                assert max(granted) < min(waiting), f"{lane.label}: FIFO broken"

    @invariant()
    def timeouts_not_overdue(self) -> None:
        now = self.clock.now()
        assert all(c.deadline > now for c in self.by_state(PENDING))

    def teardown(self) -> None:
        """Cancel every waiter and finish every holder: nothing may be left behind."""
        try:
            if self.config is not None:

                def end_all() -> None:
                    for c in self.by_state(PENDING):
                        c.scope.cancel()
                    for c in self.by_state(HELD):
                        c.end("exit")

                self.call(end_all)
                assert (self.stats.active, self.stats.queued) == (0, 0), self.stats
                assert all(c.state not in (PENDING, HELD) for c in self.clients)
        finally:

            def cancel_all() -> None:  # in case a check above failed half-way
                for c in self.clients:
                    if not c.sync:
                        c.scope.cancel()
                        c.hold_scope.cancel()

            self.portal.call(cancel_all)
            self._tg_cm.__exit__(None, None, None)  # re-raises any client task's crash


# Passing takes a few seconds per backend; the longer timeout leaves a failure time to shrink.
@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_scheduler_state_machine(backend: str) -> None:
    """I1-I3, work conservation, FIFO, hand-off order, exact rejections, no leaks."""
    with start_blocking_portal(backend) as portal:

        class Machine(SchedulerMachine):
            def __init__(self) -> None:
                super().__init__(portal)

        run_state_machine_as_test(
            Machine,
            settings=settings(
                max_examples=150,
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )

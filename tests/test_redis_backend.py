"""RedisBackend against a real Redis: the scheduler's semantics across instances.

Every test gets its own limit (a unique name under the ``lockgate-test`` key prefix) and ends
with zero keys left under it. Several backends in one test are several instances sharing
one limit; they run on the test's loop, which makes the interleavings reproducible. Waits
are bounded polls; the assertions on time are loose bounds (a wake-up by pub/sub takes
milliseconds, the timer backstop seconds), never measurements.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import httpx
import pytest
import redis
from redis.crc import key_slot

from lockgate import (
    DeadlineUnreachable,
    Gate,
    GateSettings,
    LanesSettings,
    Permit,
    Priority,
    QueueFull,
    QueueTimeout,
    Rejected,
    SystemOverload,
)
from lockgate._types import Receive, Scope, Send
from lockgate.backends import Backend
from lockgate.backends.redis import SYNC_SCRIPT, RedisBackend
from lockgate.testing import ok_app
from tests._redis import (
    KEY_PREFIX,
    OPEN_LANES,
    REDIS_URL,
    await_for,
    free_port,
    keys_of,
    live_leases,
    require_redis,
    seat_keys,
    sync_client,
    tag,
    unique_name,
)

pytestmark = [pytest.mark.redis, pytest.mark.anyio]

CRITICAL, HIGH, NORMAL, LOW = Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW
# Only critical has a nominal share and lends all of it: every other lane borrows, so who is
# served first is decided by priority (and age) alone.
PRIORITY_ONLY = {
    "critical": {"share": 1.0, "lendable": 1.0, "borrow_limit": None},
    **{lane: {"share": 0.0, "lendable": 1.0, "borrow_limit": None}
       for lane in ("high", "normal", "low")},
}  # fmt: skip


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client is asyncio only


def settings(limit: int, lanes: dict[str, Any] | None = None, **kw: Any) -> GateSettings:
    kw.setdefault("queue_capacity", 50)
    kw.setdefault("wait_timeout", 5.0)
    kw.setdefault("target_wait", None)
    return GateSettings(
        max_concurrent=limit,
        lanes=LanesSettings.model_validate(lanes if lanes is not None else OPEN_LANES),
        **kw,
    )


class Instances:
    """Backends sharing one limit (one name); all closed, and their keys checked, at the end."""

    def __init__(self, url: str = REDIS_URL) -> None:
        self.url = url
        self.name = unique_name()
        self.backends: list[RedisBackend] = []

    async def make(self, settings: GateSettings | None = None, **kw: Any) -> RedisBackend:
        kw.setdefault("lease_ttl", 3.0)
        kw.setdefault("key_prefix", KEY_PREFIX)
        kw.setdefault("command_timeout", 0.25)  # a busy test machine is not a Redis outage
        backend = RedisBackend(self.url, self.name, settings=settings, **kw)
        await backend.start()
        self.backends.append(backend)
        return backend

    def live(self, client: redis.Redis) -> list[int]:
        return live_leases(client, self.name)


@pytest.fixture
def rc() -> Any:
    require_redis()
    with sync_client() as client:
        yield client


@pytest.fixture
async def inst(rc: redis.Redis) -> AsyncIterator[Instances]:
    instances = Instances()
    yield instances
    for backend in instances.backends:
        await backend.aclose()
    left = keys_of(rc, instances.name)
    if left:
        rc.delete(*left)
    assert left == [], f"keys left behind: {left}"


class Waiter:
    """A request waiting in ``acquire`` in its own task and cancel scope."""

    def __init__(self, backend: RedisBackend, lane: Priority, timeout: float | None = None):
        self.backend, self.lane, self.timeout = backend, lane, timeout
        self.scope = anyio.CancelScope()
        self.permit: Permit | None = None
        self.error: Rejected | None = None
        self.done = anyio.Event()

    async def run(self) -> None:
        try:
            with self.scope:
                self.permit = await self.backend.acquire(self.lane, self.timeout)
        except Rejected as exc:
            self.error = exc
        finally:
            self.done.set()


async def arrive(
    tg: Any,
    backend: RedisBackend,
    lane: Priority,
    timeout: float | None = None,  # noqa: ASYNC109 - the request's queue budget
) -> Waiter:
    """Start a request and return once it is admitted, rejected or queued."""
    waiter = Waiter(backend, lane, timeout)
    queued = backend.stats().lanes[lane].queued
    tg.start_soon(waiter.run)
    await await_for(
        lambda: waiter.done.is_set() or backend.stats().lanes[lane].queued > queued,
        2.0, "the request to settle",
    )  # fmt: skip
    return waiter


async def hold(backend: RedisBackend, lane: Priority, count: int) -> list[Permit]:
    return [await backend.acquire(lane, 2.0) for _ in range(count)]


def release(permits: Sequence[Permit | None]) -> None:
    for permit in permits:
        if permit is not None:
            permit.release()


class Outage:
    """Redis stops answering one instance: its script calls raise ``ConnectionError`` until
    ``end()`` puts the real script back (or ``script``, a stand-in that calls it)."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.script = backend._script
        backend._script = self.refuse

    async def refuse(self, **kwargs: Any) -> Any:
        raise redis.ConnectionError("simulated outage")

    def end(self, script: Any = None) -> None:
        self.backend._script = self.script if script is None else script


# -- the shape of things --------------------------------------------------------------------


def test_every_key_hashes_to_one_cluster_slot() -> None:
    """Redis Cluster: all the script's keys (and the channel) share one slot, else CROSSSLOT."""
    backend = RedisBackend(name="orders", key_prefix="shop")
    assert backend.keys == (
        "{shop:orders}:seats:0", "{shop:orders}:seats:1", "{shop:orders}:seats:2",
        "{shop:orders}:seats:3", "{shop:orders}:wait", "{shop:orders}:instances",
    )  # fmt: skip
    slots = {key_slot(key.encode()) for key in (*backend.keys, backend.channel)}
    assert slots == {key_slot(b"shop:orders")}


def test_the_script_touches_only_its_declared_keys() -> None:
    """Every key the Lua script names is one of KEYS[1..6]: no key is built inside it."""
    import re

    calls = re.findall(r"redis\.call\('(\w+)', ([^,)]+)", SYNC_SCRIPT)
    assert calls
    for command, first in calls:
        if command in ("TIME", "PUBLISH"):
            continue
        assert re.match(r"KEYS\[|(WAIT|INSTANCES|key)$", first), (command, first)


def test_it_is_a_backend() -> None:
    assert isinstance(RedisBackend(), Backend)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"settings": GateSettings(limit="aimd")}, r"^RedisBackend supports only a fixed limit"),
        ({"lease_ttl": 0}, r"^lease_ttl must be > 0.01 seconds$"),
        ({"lease_ttl": 1, "heartbeat": 1}, r"^heartbeat must be > 0 and < lease_ttl$"),
        ({"command_timeout": 0}, r"^command_timeout and start_timeout must be > 0$"),
        ({"on_redis_error": "panic"}, r"^on_redis_error must be 'local', 'open' or 'closed'$"),
        ({"expected_instances": 0}, r"^expected_instances must be >= 1$"),
        ({"block": 0}, r"^block must be >= 1$"),
        ({"pool_size": 1}, r"^pool_size must be >= 2$"),
        ({"linger": -1}, r"^linger must be >= 0$"),
        ({"name": "a}b"}, r"^name and key_prefix must be non-empty and contain no braces$"),
    ],
)
def test_invalid_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisBackend(**kwargs)


# -- the fast path --------------------------------------------------------------------------


async def test_seats_are_leased_in_blocks_and_admitted_without_a_round_trip(
    inst: Instances, rc: redis.Redis
) -> None:
    backend = await inst.make(settings(20), block=4)
    first = await backend.acquire(NORMAL)
    assert backend.leased == (0, 0, 5, 0)  # the one needed and a block of 4
    assert inst.live(rc) == [0, 0, 5, 0]
    calls = backend.counters["calls"]
    more = [backend.try_acquire(NORMAL) for _ in range(4)]
    assert all(more)
    assert backend.counters["calls"] == calls  # all local, synchronous
    assert backend.try_acquire(NORMAL) is None  # the pool ran dry: the next block is coming
    await await_for(lambda: backend.leased[NORMAL] == 9, 2.0, "the next block")
    release([first, *(p for p in more if p)])
    for permit in [backend.try_acquire(NORMAL) for _ in range(9)]:
        assert permit is not None
        permit.release()


async def test_one_round_trip_per_request_variant(inst: Instances, rc: redis.Redis) -> None:
    """``fastpath=False``: no pool; one script call to lease, one to give back."""
    backend = await inst.make(settings(4), fastpath=False)
    calls = backend.counters["calls"]
    permit = await backend.acquire(NORMAL)
    assert backend.counters["calls"] == calls + 1
    assert inst.live(rc) == [0, 0, 1, 0]
    assert backend.try_acquire(NORMAL) is None  # no pool to admit from
    permit.release()
    await await_for(lambda: backend.counters["calls"] == calls + 2, 2.0, "the release call")
    await await_for(lambda: sum(inst.live(rc)) == 0, 2.0, "the seat back in Redis")


async def test_idle_seats_go_back_after_a_linger_window(inst: Instances, rc: redis.Redis) -> None:
    backend = await inst.make(settings(10), block=3, linger=0.1)
    release([await backend.acquire(NORMAL)])
    assert backend.leased == (0, 0, 4, 0)
    await await_for(lambda: backend.leased == (0, 0, 0, 0), 2.0, "idle seats to go back")
    await await_for(lambda: sum(inst.live(rc)) == 0, 2.0, "Redis to have them")


async def test_seats_in_use_stay_leased_through_the_window(inst: Instances) -> None:
    backend = await inst.make(settings(10), block=2, linger=0.05)
    permits = await hold(backend, NORMAL, 3)
    await anyio.sleep(0.3)  # several windows
    assert backend.leased[NORMAL] == 3
    release(permits)


# -- I1-I3 across instances -----------------------------------------------------------------


async def test_instances_never_lease_more_than_the_limit_together(
    inst: Instances, rc: redis.Redis
) -> None:
    backends = [await inst.make(settings(6), block=4) for _ in range(3)]
    held: list[Permit] = []
    admitted = 0
    most = 0

    async def want(backend: RedisBackend, n: int) -> None:
        nonlocal admitted
        for _ in range(n):
            held.append(await backend.acquire(NORMAL, 5.0))
            admitted += 1

    def sample() -> None:
        nonlocal most
        most = max(most, sum(sum(b.leased) for b in backends), sum(inst.live(rc)))

    async with anyio.create_task_group() as tg:
        for backend in backends:
            tg.start_soon(want, backend, 4)
        while admitted < 6:
            sample()
            await anyio.sleep(0.005)
        assert sum(sum(b.leased) for b in backends) == 6
        assert sum(inst.live(rc)) == 6
        await anyio.sleep(0.1)
        assert admitted == 6  # the other 6 wait
        while admitted < 12:  # each released seat goes to a waiter, somewhere
            if held:
                held.pop(0).release()
            await anyio.sleep(0.02)
            sample()
    assert most <= 6
    release(held)


async def test_critical_guaranteed_seats_are_never_leased_to_another_lane(
    inst: Instances, rc: redis.Redis
) -> None:
    """Default lanes, C = 10: critical's guaranteed seat stays free for critical, anywhere."""
    a = await inst.make(settings(10, lanes={}), block=8)
    b = await inst.make(settings(10, lanes={}))
    assert [s.guaranteed for s in a.seats] == [1, 0, 0, 0]
    permits = await hold(a, NORMAL, 9)
    async with anyio.create_task_group() as tg:
        tenth = await arrive(tg, a, NORMAL)
        assert tenth.permit is None and a.stats().queued == 1
        assert inst.live(rc) == [0, 0, 9, 0]
        with anyio.fail_after(1.0):
            critical = await b.acquire(CRITICAL)  # at once, though normal waits elsewhere
        assert inst.live(rc) == [1, 0, 9, 0]
        critical.release()
        release(permits)
        await tenth.done.wait()
        assert tenth.permit is not None
        tenth.permit.release()


async def test_a_lane_never_exceeds_its_max_across_instances(
    inst: Instances, rc: redis.Redis
) -> None:
    """Default lanes, C = 20: low has 2 nominal seats and may borrow up to 6 in all."""
    a = await inst.make(settings(20, lanes={}), block=4)
    b = await inst.make(settings(20, lanes={}), block=4)
    assert a.seats[LOW].max == 6
    async with anyio.create_task_group() as tg:
        waiters = [await arrive(tg, x, LOW, 0.3) for x in (a, b) for _ in range(5)]
        await anyio.sleep(0.1)
        assert inst.live(rc)[LOW] == 6
        assert a.leased[LOW] + b.leased[LOW] == 6
        normal = await b.acquire(NORMAL, 1.0)  # the other lanes are not held back by low
        normal.release()
    admitted = [w.permit for w in waiters if w.permit is not None]
    assert len(admitted) == 6
    assert {type(w.error) for w in waiters if w.permit is None} == {QueueTimeout}
    release(admitted)


# -- waiting across instances ---------------------------------------------------------------


async def test_a_waiter_elsewhere_is_woken_by_pubsub_not_by_polling(inst: Instances) -> None:
    """A heartbeat of 3.3 s and no polling: only the pub/sub message can wake B quickly."""
    a = await inst.make(settings(2), lease_ttl=10.0)
    b = await inst.make(settings(2), lease_ttl=10.0)
    permits = await hold(a, NORMAL, 2)
    async with anyio.create_task_group() as tg:
        waiter = await arrive(tg, b, NORMAL)
        calls = b.counters["calls"]
        await anyio.sleep(0.3)
        assert b.counters["calls"] - calls <= 1  # waiting costs no calls
        permits.pop().release()
        with anyio.fail_after(0.5):
            await waiter.done.wait()
    assert waiter.permit is not None and b.leased[NORMAL] >= 1
    release([waiter.permit, *permits])


async def test_an_unreadable_message_is_skipped_and_the_subscription_lives_on(
    inst: Instances, rc: redis.Redis
) -> None:
    """Review finding 5: one message the listener could not read (another version's, a
    stranger's) ended the process's only subscription, silently. Heartbeat 3.3 s: only a
    pub/sub message can wake b's waiter within the bound."""
    a = await inst.make(settings(2), lease_ttl=10.0)
    b = await inst.make(settings(2), lease_ttl=10.0)
    permits = await hold(a, NORMAL, 2)
    async with anyio.create_task_group() as tg:
        waiter = await arrive(tg, b, NORMAL)
        rc.publish(b.channel, "stranger#who|2|17")  # 3 fields, not 5
        rc.publish(b.channel, "stranger#who|9|0|1|0")  # no lane 9
        await await_for(lambda: b.counters["bad_messages"] == 2, 1.0, "the messages")
        permits.pop().release()
        with anyio.fail_after(0.5):
            await waiter.done.wait()
    assert b.mode == "global" and waiter.permit is not None
    release([waiter.permit, *permits])


async def test_a_message_without_a_sender_leaves_the_registry_alone(
    inst: Instances, rc: redis.Redis
) -> None:
    """Review 2, finding 5: a message without ``#`` (or with an empty sender) was read as an
    empty registry and wiped what the instance knew of other instances' waiters."""
    a = await inst.make(settings(4), block=1)
    b = await inst.make(settings(4), block=1)
    held = await hold(b, NORMAL, 4)
    async with anyio.create_task_group() as tg:
        waiter = await arrive(tg, b, NORMAL)  # registered in Redis, published to a
        await await_for(lambda: a._yield[NORMAL], 2.0, "a to hear of b's waiter")
        known = [(lane, want) for lane, _, want, _ in a._others]
        rc.publish(a.channel, "hello world")
        rc.publish(a.channel, "#")
        await await_for(lambda: a.counters["bad_messages"] == 2, 1.0, "the messages")
        assert [(lane, want) for lane, _, want, _ in a._others] == known == [(NORMAL, 1)]
        assert a._yield[NORMAL]
        held.pop().release()
        with anyio.fail_after(1.0):
            await waiter.done.wait()
    release([waiter.permit, *held])


async def test_one_subscription_per_instance(inst: Instances, rc: redis.Redis) -> None:
    a = await inst.make(settings(2))
    await inst.make(settings(2))

    def subscribers() -> int:
        return int(dict(rc.pubsub_numsub(a.channel)).get(a.channel.encode(), 0))

    await await_for(lambda: subscribers() == 2, 2.0, "both subscriptions")
    permits = await hold(a, NORMAL, 2)
    release(permits)
    assert subscribers() == 2  # requests never subscribe


async def test_returned_seats_go_to_the_highest_lane_waiting_anywhere(inst: Instances) -> None:
    a = await inst.make(settings(2, PRIORITY_ONLY))
    b = await inst.make(settings(2, PRIORITY_ONLY))
    c = await inst.make(settings(2, PRIORITY_ONLY))
    permits = await hold(a, NORMAL, 2)
    async with anyio.create_task_group() as tg:
        low = await arrive(tg, b, LOW)  # waited longer, but a lower lane
        await anyio.sleep(0.05)
        high = await arrive(tg, c, HIGH)
        await anyio.sleep(0.05)
        permits.pop().release()
        with anyio.fail_after(1.0):
            await high.done.wait()
        await anyio.sleep(0.1)
        assert not low.done.is_set()
        permits.pop().release()
        with anyio.fail_after(1.0):
            await low.done.wait()
    assert high.permit is not None and low.permit is not None
    release([high.permit, low.permit])


async def test_above_the_guarantees_seats_go_by_priority_across_instances(
    inst: Instances,
) -> None:
    """As in-process (decisions.md #1): a lane under its nominal share is not repaid first;
    the released seat goes to the higher lane's waiter elsewhere, the older lower one waits."""
    shares = {lane: {"share": 0.25, "lendable": 1.0, "borrow_limit": None}
              for lane in ("critical", "high", "normal", "low")}  # fmt: skip
    a = await inst.make(settings(8, shares))
    b = await inst.make(settings(8, shares))
    c = await inst.make(settings(8, shares))
    permits = await hold(a, HIGH, 6) + await hold(a, NORMAL, 2)  # high over its 2, normal at 2
    async with anyio.create_task_group() as tg:
        normal = await arrive(tg, b, NORMAL)
        await anyio.sleep(0.05)
        high = await arrive(tg, c, HIGH)
        await anyio.sleep(0.05)
        permits.pop().release()  # a normal seat: normal drops under its nominal share
        with anyio.fail_after(1.0):
            await high.done.wait()
        await anyio.sleep(0.1)
        assert not normal.done.is_set()
        permits.pop().release()
        with anyio.fail_after(1.0):
            await normal.done.wait()
    assert high.permit is not None and normal.permit is not None
    release([high.permit, normal.permit, *permits])


async def test_returned_seats_go_to_the_oldest_waiter_of_a_lane_anywhere(
    inst: Instances,
) -> None:
    a = await inst.make(settings(2))
    b = await inst.make(settings(2))
    c = await inst.make(settings(2))
    permits = await hold(a, NORMAL, 2)
    async with anyio.create_task_group() as tg:
        first = await arrive(tg, b, NORMAL)
        await anyio.sleep(0.05)
        second = await arrive(tg, c, NORMAL)
        await anyio.sleep(0.05)
        permits.pop().release()
        with anyio.fail_after(1.0):
            await first.done.wait()
        await anyio.sleep(0.1)
        assert not second.done.is_set()
        permits.pop().release()
        with anyio.fail_after(1.0):
            await second.done.wait()
    assert first.permit is not None and second.permit is not None
    release([first.permit, second.permit])


async def test_idle_seats_come_back_at_once_when_another_instance_waits_for_them(
    inst: Instances,
) -> None:
    a = await inst.make(settings(4), block=3, linger=30.0)
    b = await inst.make(settings(4))
    release([await a.acquire(NORMAL)])
    assert a.leased == (0, 0, 4, 0)  # all idle, and kept: the window is long
    with anyio.fail_after(0.5):
        permit = await b.acquire(NORMAL)
    assert a.leased == (0, 0, 3, 0)  # a gave back what b waited for, and kept the rest
    permit.release()


async def test_a_waiter_of_a_lane_at_its_max_costs_other_instances_no_pool(
    inst: Instances,
) -> None:
    """Low at its Max waits for a low seat: instances keep their idle normal seats (giving
    them back would not serve it), and the next low seat released anywhere goes to it."""
    a = await inst.make(settings(20, lanes={}), block=4, linger=30.0)
    b = await inst.make(settings(20, lanes={}))
    c = await inst.make(settings(20, lanes={}))
    release([await a.acquire(NORMAL)])
    assert a.leased == (0, 0, 5, 0)
    lows = await hold(c, LOW, 6)  # low's Max
    async with anyio.create_task_group() as tg:
        waiter = await arrive(tg, b, LOW, 2.0)
        await anyio.sleep(0.1)
        assert a.leased == (0, 0, 5, 0)
        permit = a.try_acquire(NORMAL)  # the fast path is not blocked for normal
        assert permit is not None
        permit.release()
        lows.pop().release()
        with anyio.fail_after(1.0):
            await waiter.done.wait()
    assert waiter.permit is not None
    release([waiter.permit, *lows])


async def test_a_waiter_that_timed_out_leaves_the_registry(
    inst: Instances, rc: redis.Redis
) -> None:
    a = await inst.make(settings(1))
    b = await inst.make(settings(1))
    permits = await hold(a, NORMAL, 1)
    with pytest.raises(QueueTimeout):
        await b.acquire(NORMAL, 0.1)
    await await_for(lambda: rc.hlen(f"{tag(inst.name)}:wait") == 0, 1.0, "the registry entry")
    release(permits)


# -- the scheduler's semantics over Redis ---------------------------------------------------


async def test_release_hands_the_seat_to_the_waiter_not_to_a_newcomer(inst: Instances) -> None:
    backend = await inst.make(settings(2), block=1)
    permits = await hold(backend, NORMAL, 2)
    async with anyio.create_task_group() as tg:
        waiter = await arrive(tg, backend, NORMAL)
        assert backend.try_acquire(NORMAL) is None
        permits.pop().release()
        assert backend.try_acquire(NORMAL) is None  # no barging
        await waiter.done.wait()
    assert waiter.permit is not None
    assert backend.leased == (0, 0, 2, 0)  # handed over locally, no new lease
    release([waiter.permit, *permits])


async def test_fifo_within_a_lane(inst: Instances) -> None:
    backend = await inst.make(settings(1))
    permits = await hold(backend, NORMAL, 1)
    order: list[int] = []
    async with anyio.create_task_group() as tg:
        waiters = [await arrive(tg, backend, NORMAL) for _ in range(3)]
        for _ in range(3):
            permits.pop().release()
            await await_for(lambda: sum(w.done.is_set() for w in waiters) > len(order), 1.0, "")
            done = next(i for i, w in enumerate(waiters) if w.done.is_set() and i not in order)
            order.append(done)
            permit = waiters[done].permit
            assert permit is not None
            permits.append(permit)
    assert order == [0, 1, 2]
    release(permits)


async def test_cancelled_while_queued_takes_no_seat(inst: Instances) -> None:
    backend = await inst.make(settings(1))
    permits = await hold(backend, NORMAL, 1)
    async with anyio.create_task_group() as tg:
        waiter = await arrive(tg, backend, NORMAL)
        waiter.scope.cancel()
        await waiter.done.wait()
        assert backend.stats().queued == 0
        permits.pop().release()
    assert waiter.permit is None
    assert backend.stats().active == 0
    permit = backend.try_acquire(NORMAL)
    assert permit is not None
    permit.release()


async def test_granted_then_cancelled_passes_the_seat_on(inst: Instances) -> None:
    """Granted and cancelled in the same instant: either the cancelled request never sees the
    permit and passes the seat on, or (asyncio may resume it with the result) it owns the
    permit and releases it on its way out. Either way the seat reaches the next waiter."""
    backend = await inst.make(settings(1))
    permits = await hold(backend, NORMAL, 1)
    async with anyio.create_task_group() as tg:
        first = await arrive(tg, backend, NORMAL)
        second = await arrive(tg, backend, NORMAL)
        permits.pop().release()  # granted to the first ...
        first.scope.cancel()  # ... which is cancelled in the same instant
        await first.done.wait()
        if first.permit is not None:
            first.permit.release()
        with anyio.fail_after(1.0):
            await second.done.wait()
    assert second.permit is not None
    assert backend.stats().active == 1
    second.permit.release()


async def test_queue_full_and_displacement_by_a_higher_lane(inst: Instances) -> None:
    backend = await inst.make(settings(1, queue_capacity=1))
    permits = await hold(backend, NORMAL, 1)
    async with anyio.create_task_group() as tg:
        low = await arrive(tg, backend, LOW)
        with pytest.raises(QueueFull):
            await backend.acquire(LOW)
        high = await arrive(tg, backend, HIGH)  # displaces the low waiter
        await low.done.wait()
        assert isinstance(low.error, QueueFull)
        permits.pop().release()
        await high.done.wait()
    assert high.permit is not None
    stats = backend.stats()
    assert stats.lanes[LOW].rejected == {"QUEUE_FULL": 2}
    high.permit.release()


async def test_a_burst_larger_than_the_queue_is_admitted_while_global_seats_are_free(
    inst: Instances,
) -> None:
    """An empty pool (start-up, after an idle linger) is not a full house: arrivals the local
    queue would refuse ask Redis first, in one call, as the in-process scheduler admits
    whatever finds a free seat. Once every seat is leased, refusals are immediate again."""
    backend = await inst.make(settings(10, queue_capacity=2), block=1, linger=30.0)
    permits: list[Permit] = []

    async def one() -> None:
        permits.append(await backend.acquire(NORMAL, 2.0))

    with anyio.fail_after(5.0):
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
    assert len(permits) == 10 and backend.stats().rejected == 0
    async with anyio.create_task_group() as tg:
        waiters = [await arrive(tg, backend, NORMAL) for _ in range(2)]
        calls = backend.counters["calls"]
        with anyio.fail_after(0.5), pytest.raises(QueueFull):
            await backend.acquire(NORMAL)
        assert backend.counters["calls"] == calls  # all 10 leased: no call to refuse
        release(permits)
    assert all(w.permit is not None for w in waiters)
    release([w.permit for w in waiters])


async def test_system_overload_at_the_reject_threshold(inst: Instances) -> None:
    backend = await inst.make(settings(1, reject_threshold=2))
    permits = await hold(backend, NORMAL, 1)
    async with anyio.create_task_group() as tg:
        waiter = await arrive(tg, backend, NORMAL)
        with pytest.raises(SystemOverload):
            await backend.acquire(NORMAL)
        permits.pop().release()
        await waiter.done.wait()
    assert waiter.permit is not None
    waiter.permit.release()


async def test_wait_timeout(inst: Instances) -> None:
    backend = await inst.make(settings(1))
    permits = await hold(backend, NORMAL, 1)
    with anyio.fail_after(1.0), pytest.raises(QueueTimeout):
        await backend.acquire(NORMAL, 0.1)
    assert backend.stats().lanes[NORMAL].rejected == {"QUEUE_TIMEOUT": 1}
    release(permits)


async def test_a_deadline_that_cannot_be_met_is_refused_at_once(inst: Instances) -> None:
    backend = await inst.make(settings(1))
    backend.discipline.record_service(NORMAL, 2.0)  # a 2 s endpoint
    permits = await hold(backend, NORMAL, 1)
    with anyio.fail_after(0.5), pytest.raises(DeadlineUnreachable):
        await backend.acquire(NORMAL, budget=0.1)  # 2 s predicted
    release(permits)


async def test_stats_count_this_instance_under_the_global_seats(inst: Instances) -> None:
    backend = await inst.make(settings(10, lanes={}))
    permits = await hold(backend, HIGH, 2)
    stats = backend.stats()
    assert stats.limit == 10 and stats.active == 2 and stats.admitted == 2
    assert [(lane.nominal, lane.guaranteed, lane.max) for lane in stats.lanes] == [
        (s.nominal, s.guaranteed, s.max) for s in backend.seats
    ]
    assert stats.lanes[HIGH].active == 2
    assert backend.retry_after(NORMAL) >= 1
    release(permits)
    assert backend.stats().active == 0


async def test_lowering_the_limit_admits_no_idle_seat_past_it(
    inst: Instances, rc: redis.Redis
) -> None:
    """Review finding 1: idle seats leased under the old limit were admitted past the new
    one. Lowered, the pool goes back to Redis; holders keep their seats, and nobody new is
    admitted until fewer than the new C are in use (the in-process rule)."""
    backend = await inst.make(settings(20), block=16, linger=30.0)
    held = await hold(backend, NORMAL, 8)
    assert backend.leased == (0, 0, 17, 0)  # 9 of them idle
    backend.set_limit(5)
    assert backend.try_acquire(NORMAL) is None
    await backend.settled()
    assert backend.leased == (0, 0, 8, 0) and inst.live(rc) == [0, 0, 8, 0]
    async with anyio.create_task_group() as tg:
        waiter = await arrive(tg, backend, NORMAL)
        for _ in range(3):  # 7, 6, 5 in use: none of them a free seat
            held.pop().release()
            await backend.settled()
            assert not waiter.done.is_set() and backend.try_acquire(NORMAL) is None
        held.pop().release()  # 4 in use
        with anyio.fail_after(1.0):
            await waiter.done.wait()
    assert waiter.permit is not None
    await backend.settled()
    assert backend.stats().active == 5 and sum(inst.live(rc)) == 5
    release([waiter.permit, *held])


async def lower_the_limit_during_a_call(backend: RedisBackend, limit: int) -> Waiter:
    """A NORMAL request arrives; while its script call (1 + a block) is in flight the limit is
    lowered to ``limit``; the call then completes. Returns the request, done."""
    real = backend._script
    entered, go_on = anyio.Event(), anyio.Event()

    async def held_back(**kwargs: Any) -> Any:
        entered.set()
        await go_on.wait()
        return await real(**kwargs)

    backend._script = held_back
    async with anyio.create_task_group() as tg:
        waiter = await arrive(tg, backend, NORMAL)
        with anyio.fail_after(1.0):
            await entered.wait()
        backend.set_limit(limit)
        backend._script = real
        go_on.set()
        with anyio.fail_after(2.0):
            await waiter.done.wait()
    return waiter


async def test_seats_of_a_call_planned_under_the_old_limit_admit_nobody(
    inst: Instances, rc: redis.Redis
) -> None:
    """Review finding 1: a call in flight when the limit is lowered was planned (and is
    granted) under the old one; its seats cover no newcomer and go back."""
    backend = await inst.make(settings(20), block=8, linger=30.0)
    waiter = await lower_the_limit_during_a_call(backend, 1)  # served by a call under C = 1
    assert waiter.permit is not None
    await backend.settled()
    assert backend.try_acquire(NORMAL) is None
    assert backend.leased == (0, 0, 1, 0) and inst.live(rc) == [0, 0, 1, 0]
    waiter.permit.release()


async def test_lowering_the_limit_gives_back_only_the_seats_over_it(
    inst: Instances, rc: redis.Redis
) -> None:
    """Review 2, finding 6: lowering C from 100 to 99 with 17 seats leased emptied the idle
    pool, and the next request missed the fast path. Only seats over the new limit go."""
    backend = await inst.make(settings(100), block=16, linger=30.0)
    release(await hold(backend, NORMAL, 4))
    await backend.settled()
    assert backend.leased == (0, 0, 17, 0)
    backend.set_limit(99)
    permit = backend.try_acquire(NORMAL)
    assert permit is not None and backend.leased == (0, 0, 17, 0)
    backend.set_limit(12)  # 17 leased: the 5 over it go back, the seat in use stays
    assert backend.leased == (0, 0, 12, 0)
    await backend.settled()
    assert inst.live(rc) == [0, 0, 12, 0]
    permit.release()


async def test_a_call_in_flight_when_the_limit_is_lowered_a_little_still_serves(
    inst: Instances, rc: redis.Redis
) -> None:
    """Review 2, finding 6: any lowered limit made a call in flight stale, its seats given
    back and asked for again. Its seats still fit under C = 19: they serve the waiter (the
    leases it holds are the first call's, seats 0 to 8)."""
    backend = await inst.make(settings(20), block=8, linger=30.0)
    waiter = await lower_the_limit_during_a_call(backend, 19)
    assert waiter.permit is not None
    await backend.settled()
    members = rc.zrange(seat_keys(inst.name)[NORMAL], 0, -1)
    assert isinstance(members, list)
    seqs = sorted(int(m.split(b":")[1]) for m in members if isinstance(m, bytes))
    assert seqs == list(range(9))
    assert backend.leased == (0, 0, 9, 0)
    waiter.permit.release()


# -- when Redis fails -------------------------------------------------------------------------


async def test_the_local_fallback_counts_requests_in_flight_until_they_finish(
    inst: Instances,
) -> None:
    """Review finding 2: each request started in global mode gave a fallback seat back when
    it finished, even the ones that had none, so the fallback admitted past its seats."""
    backend = await inst.make(settings(10), expected_instances=2, heartbeat=0.1, block=10)
    old = await hold(backend, NORMAL, 10)
    outage = Outage(backend)
    try:
        await await_for(lambda: backend.mode == "local", 2.0, "the fallback")
        assert backend.stats().active == 10  # against ceil(10 / 2) = 5 fallback seats
        new: list[Permit] = []
        while old:
            old.pop().release()
            permit = backend.try_acquire(NORMAL)
            if permit is not None:
                new.append(permit)
            assert len(old) + len(new) <= max(5, len(old)), (len(old), len(new))
            assert backend.stats().active == len(old) + len(new)
        assert len(new) == 5
        release(new)
    finally:
        outage.end()


async def test_the_status_endpoint_says_when_the_instance_runs_on_its_fallback(
    inst: Instances,
) -> None:
    """The status keeps the global limit (C) and says which mode admits: without the mode,
    an operator reading "healthy, limit 10" during an outage could not tell why requests
    are refused at half that."""
    backend = await inst.make(settings(10), expected_instances=2, heartbeat=0.1)
    gate = Gate(ok_app, backend=backend)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gate), base_url="http://t"
    ) as client:
        async def status() -> dict[str, Any]:
            data = (await client.get("/metrics/backpressure")).json()["data"]
            assert isinstance(data, dict)
            return data

        assert (await status())["backend_mode"] == "global"
        held = await hold(backend, NORMAL, 2)  # leases for the heartbeat to renew
        outage = Outage(backend)
        try:
            await await_for(lambda: backend.mode == "local", 2.0, "the fallback")
            seen = await status()
            assert (seen["backend_mode"], seen["limit"]) == ("local", 10)
        finally:
            outage.end()
            release(held)


async def test_recovery_renews_the_leases_of_requests_still_running(
    inst: Instances, rc: redis.Redis
) -> None:
    """Review finding 3: back from a short outage, the instance gave the leases of its
    requests still running back before leasing for them again, and another instance's
    waiters took them (13 running against C = 10). Now the call that finds Redis again
    renews them, atomically; the instance's next call is slow here, to let the other
    instance's pub/sub wake-up land first."""
    a = await inst.make(settings(10), heartbeat=0.1, block=1)
    b = await inst.make(settings(10), block=1)
    running = await hold(a, NORMAL, 6) + await hold(b, NORMAL, 4)
    async with anyio.create_task_group() as tg:
        waiters = [await arrive(tg, b, NORMAL) for _ in range(3)]
        outage = Outage(a)
        await await_for(lambda: a.mode == "local", 2.0, "the fallback")
        assert inst.live(rc) == [0, 0, 10, 0]  # a's leases stay meanwhile

        async def slow_once_global(**kwargs: Any) -> Any:
            if a.mode == "global":
                await anyio.sleep(0.03)
            return await outage.script(**kwargs)

        outage.end(slow_once_global)
        await await_for(lambda: a.mode == "global", 2.0, "global mode again")
        for _ in range(30):
            served = sum(w.permit is not None for w in waiters)
            assert len(running) + served <= 10 and sum(inst.live(rc)) <= 10
            await anyio.sleep(0.01)
        assert a.leased == (0, 0, 6, 0) and a.stats().active == 6
        release(running)
        with anyio.fail_after(2.0):
            for waiter in waiters:
                await waiter.done.wait()
    release([w.permit for w in waiters])


async def test_the_fallback_admits_nobody_while_the_recovery_call_is_in_flight(
    inst: Instances, rc: redis.Redis
) -> None:
    """Review 2, finding 1: the recovery call counts the fallback's requests before it goes
    out, but the fallback went on admitting while it was in flight: requests for which no
    seat was asked (12 running against C = 10)."""
    a = await inst.make(settings(10), expected_instances=2, heartbeat=0.3, block=1)
    b = await inst.make(settings(10), expected_instances=2, block=1)
    running = await hold(a, NORMAL, 5)
    others = await hold(b, NORMAL, 5)
    late: list[Permit | None] = []
    async with anyio.create_task_group() as tg:
        waiters = [await arrive(tg, b, NORMAL) for _ in range(3)]
        outage = Outage(a)
        await await_for(lambda: a.mode == "local", 2.0, "the fallback")
        release([running.pop(), running.pop()])  # 3 still running: 2 fallback seats free
        entered, go_on = anyio.Event(), anyio.Event()
        calls = 0

        async def recovery_held_back(**kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 2:  # the probe's first call answered; this is the recovery call
                entered.set()
                await go_on.wait()
            return await outage.script(**kwargs)

        outage.end(recovery_held_back)
        with anyio.fail_after(2.0):
            await entered.wait()
        late = [a.try_acquire(NORMAL) for _ in range(3)]
        go_on.set()
        await await_for(lambda: a.mode == "global", 2.0, "global mode again")
        for _ in range(20):
            served = sum(w.permit is not None for w in waiters)
            admitted = len(running) + len(others) + sum(p is not None for p in late) + served
            assert admitted <= 10 and sum(inst.live(rc)) <= 10
            await anyio.sleep(0.01)
        assert late == [None, None, None]
        release([*running, *others, *late])
        with anyio.fail_after(2.0):
            for waiter in waiters:
                await waiter.done.wait()
    release([w.permit for w in waiters])


async def test_recovery_hands_no_fallback_seat_to_the_fallback_waiters(
    inst: Instances, rc: redis.Redis
) -> None:
    """Review 2, finding 1: back to global mode, the shadows went back to the fallback
    scheduler, which handed them to its waiters: admitted after the atomic recovery call,
    with no seat asked for (13 running against C = 10). They now wait in global mode."""
    a = await inst.make(settings(10), expected_instances=2, heartbeat=0.1, block=1)
    b = await inst.make(settings(10), expected_instances=2, block=1)
    running = await hold(a, NORMAL, 5)
    others = await hold(b, NORMAL, 5)
    async with anyio.create_task_group() as tg:
        outage = Outage(a)
        await await_for(lambda: a.mode == "local", 2.0, "the fallback")
        release([running.pop(), running.pop()])  # 3 still running: 2 fallback seats free
        fallback = [a.try_acquire(NORMAL) for _ in range(2)]
        assert None not in fallback and a.try_acquire(NORMAL) is None
        waiters = [await arrive(tg, a, NORMAL) for _ in range(3)]  # in the fallback's queue
        waiters += [await arrive(tg, b, NORMAL) for _ in range(3)]
        outage.end()
        await await_for(lambda: a.mode == "global", 2.0, "global mode again")
        for _ in range(30):
            served = sum(w.permit is not None for w in waiters)
            assert len(running) + len(fallback) + len(others) + served <= 10
            assert sum(inst.live(rc)) <= 10
            await anyio.sleep(0.01)
        release([*running, *fallback, *others])
        with anyio.fail_after(2.0):
            for waiter in waiters:
                await waiter.done.wait()
    release([w.permit for w in waiters])
    await a.settled()
    await b.settled()
    assert a.stats().active == b.stats().active == 0
    assert sum(a.leased) + sum(b.leased) == sum(inst.live(rc))  # (idle pools, until linger)


async def test_raising_the_limit_in_the_fallback_counts_the_requests_still_running(
    inst: Instances,
) -> None:
    """Review 2, finding 2: raised during the fallback, the limit gave the fallback more
    seats but our requests still running from global mode took none of them: newcomers
    and waiters did (13 in flight against the fallback's 8)."""
    backend = await inst.make(settings(10), expected_instances=2, heartbeat=0.1, block=10)
    old = await hold(backend, NORMAL, 10)
    outage = Outage(backend)
    try:
        await await_for(lambda: backend.mode == "local", 2.0, "the fallback")
        async with anyio.create_task_group() as tg:
            waiter = await arrive(tg, backend, NORMAL)  # 10 running, 5 fallback seats
            backend.set_limit(16)  # on every instance: the fallback's share is ceil(16 / 2)
            await anyio.sleep(0.05)
            assert backend._local.limit == 8
            assert backend.try_acquire(NORMAL) is None and not waiter.done.is_set()
            release([old.pop(), old.pop()])  # 8 running: still no fallback seat free
            await anyio.sleep(0.05)
            assert backend.try_acquire(NORMAL) is None and not waiter.done.is_set()
            old.pop().release()  # 7 running
            with anyio.fail_after(1.0):
                await waiter.done.wait()
        assert waiter.permit is not None and backend.stats().active == 8
        release([waiter.permit, *old])
    finally:
        outage.end()


async def test_requests_past_a_lanes_fallback_max_still_count_against_the_fallback(
    inst: Instances,
) -> None:
    """Review 2, finding 3: the requests in flight took their fallback seats with
    ``try_acquire``, which stops at the lane's Max in the fallback (low: 3 of 10), so
    those past it were not counted (12 in flight against 10)."""
    default_lanes = GateSettings(
        max_concurrent=20, queue_capacity=50, wait_timeout=5.0, target_wait=None
    )
    backend = await inst.make(default_lanes, expected_instances=2, heartbeat=0.1)
    assert backend.seats[LOW].max == 6
    low = await hold(backend, LOW, 6)
    outage = Outage(backend)
    try:
        await await_for(lambda: backend.mode == "local", 2.0, "the fallback")
        assert backend._local.seats[LOW].max == 3
        new = [backend.try_acquire(NORMAL) for _ in range(20)]
        admitted = sum(p is not None for p in new)
        assert len(low) + admitted <= 10  # (critical's guaranteed seat stays free: 9)
        assert backend.stats().active == len(low) + admitted
        release([*low, *new])
    finally:
        outage.end()


async def test_an_instance_that_never_reached_redis_takes_a_conservative_share(
    rc: redis.Redis,
) -> None:
    """Review finding 6: without ``expected_instances``, an instance starting while Redis
    is down had the whole C as its fallback (N instances restarting: N x C). It now assumes
    it is one of 4, until it has seen the instances in Redis."""
    backend = RedisBackend(
        f"redis://127.0.0.1:{free_port()}/0", unique_name(), settings=settings(40),
        key_prefix=KEY_PREFIX, start_timeout=0.2,
    )  # fmt: skip
    try:
        with anyio.fail_after(1.0):
            await backend.start()
        assert backend.mode == "local"
        admitted = [backend.try_acquire(NORMAL) for _ in range(40)]
        assert sum(p is not None for p in admitted) == 10
        release(admitted)
    finally:
        with anyio.fail_after(3.0):
            await backend.aclose()


async def test_the_closed_policy_probes_and_comes_back_to_global(inst: Instances) -> None:
    """``on_redis_error="closed"`` refused everything and never probed: closed for good."""
    backend = await inst.make(settings(4), on_redis_error="closed", heartbeat=0.1)
    permit = await backend.acquire(NORMAL)
    outage = Outage(backend)
    await await_for(lambda: backend.mode == "closed", 2.0, "the closed fallback")
    with pytest.raises(SystemOverload):
        await backend.acquire(NORMAL)
    outage.end()
    await await_for(lambda: backend.mode == "global", 2.0, "global mode again")
    assert backend.leased == (0, 0, 1, 0)  # its lease renewed
    permit.release()
    (await backend.acquire(NORMAL, 1.0)).release()


async def test_seats_granted_to_a_call_that_outlived_its_mode_go_back(
    inst: Instances, rc: redis.Redis
) -> None:
    """Review finding 8: ``fastpath=False``, a one-off call fails while the Redis task's
    call is in flight; that call's seats were dropped and stayed leased for ``lease_ttl``.
    They now go back with the first call once Redis answers again."""
    a = await inst.make(settings(1), fastpath=False, on_redis_error="open", heartbeat=0.5)
    b = await inst.make(settings(1))
    held = await hold(b, NORMAL, 1)
    real = a._script
    entered, go_on = anyio.Event(), anyio.Event()
    refuse = False

    async def script(**kwargs: Any) -> Any:
        if refuse:
            raise redis.ConnectionError("simulated outage")
        entered.set()
        await go_on.wait()
        return await real(**kwargs)

    async with anyio.create_task_group() as tg:
        waiter = await arrive(tg, a, NORMAL)  # refused inline: queued, registered
        await a.settled()
        await b.settled()
        a._script = script
        held.pop().release()  # b gives it back for a's waiter; a's Redis task asks for it
        with anyio.fail_after(1.0):
            await entered.wait()
        refuse = True
        other = await arrive(tg, a, HIGH)  # its own call fails: "open" mode
        assert a.mode == "open"
        go_on.set()  # the call in flight is granted the seat, in the wrong mode
        await waiter.done.wait()
    release([waiter.permit, other.permit])
    refuse = False
    a._script = real
    await await_for(lambda: a.mode == "global", 2.0, "global mode again")
    await a.settled()
    await await_for(lambda: sum(inst.live(rc)) == 0, 1.0, "the seat back (lease_ttl: 3 s)")


# -- leases -----------------------------------------------------------------------------------


async def test_leases_are_renewed_in_one_call_per_heartbeat(
    inst: Instances, rc: redis.Redis
) -> None:
    backend = await inst.make(settings(10), lease_ttl=0.5, heartbeat=0.1, linger=0)
    permits = await hold(backend, NORMAL, 4)
    calls = backend.counters["calls"]
    await anyio.sleep(1.2)  # more than two lease lifetimes
    assert inst.live(rc)[NORMAL] == 4
    assert backend.counters["lost_leases"] == 0
    assert 6 <= backend.counters["calls"] - calls <= 16  # ~one per heartbeat, not per seat
    release(permits)


def raw_sync(
    client: redis.Redis, name: str, instance: str, *, want: int = 0,
    release: tuple[str, ...] = (), renew: tuple[str, ...] = (), limit: int = 4, seq: int = 0,
) -> list[Any]:  # fmt: skip
    """Run the backend's script by hand (argument layout: see ``lua/sync.lua``)."""
    keys = [*seat_keys(name), f"{tag(name)}:wait", f"{tag(name)}:instances"]
    args = [
        instance, "3000", str(limit), str(seq), f"{tag(name)}:wake", "0",
        "0", "0", "0", "0", str(limit), "0", "0", "0", *[str(limit)] * 4,
        "0", "0", str(want), "0", "0", "0", "0", "0", "0", "0", "0", "0",
        str(len(release)), *release, str(len(renew)), *renew,
    ]  # fmt: skip
    return list(client.eval(SYNC_SCRIPT, len(keys), *keys, *args))


async def test_renewal_after_release_does_not_resurrect_the_lease(
    inst: Instances, rc: redis.Redis
) -> None:
    """swarthy/redis-semaphore #205: a refresh racing a release must not bring it back."""
    granted = raw_sync(rc, inst.name, "x", want=2)
    assert granted[:4] == [0, 0, 2, 0]
    assert raw_sync(rc, inst.name, "x", release=("2|x:0",))[:4] == [0, 0, 0, 0]
    result = raw_sync(rc, inst.name, "x", renew=("2|x:0", "2|x:1"))
    assert result[4] == [b"2|x:0"]  # reported lost ...
    assert rc.zscore(seat_keys(inst.name)[NORMAL], "x:0") is None  # ... and still gone
    assert raw_sync(rc, inst.name, "x", release=("2|x:1", "2|x:1"))[8] == 0  # idempotent
    rc.delete(f"{tag(inst.name)}:instances")


async def test_a_lost_lease_is_leased_again_for_the_request_still_running(
    inst: Instances, rc: redis.Redis
) -> None:
    """A lease that expired under a running request (a stalled process) is noticed at the
    next renewal; the instance leases a seat for that request before admitting others."""
    backend = await inst.make(settings(4), lease_ttl=0.6, heartbeat=0.1, linger=0)
    permits = await hold(backend, NORMAL, 2)
    key = seat_keys(inst.name)[NORMAL]
    first = rc.zrange(key, 0, 0)
    assert isinstance(first, list)
    rc.zrem(key, *first)  # "expire" one lease
    await await_for(lambda: backend.counters["lost_leases"] == 1, 2.0, "the loss to be seen")
    await await_for(
        lambda: backend.leased[NORMAL] == 2 and inst.live(rc)[NORMAL] == 2,
        2.0, "a new lease for the request",
    )  # fmt: skip
    assert backend.stats().active == 2
    release(permits)


async def test_a_lost_renewal_of_a_seat_in_use_is_leased_again_in_the_same_call(
    inst: Instances, rc: redis.Redis
) -> None:
    """Review 2, finding 4 (the script): a renewal marked ``!`` (a request runs on the seat)
    that finds its lease gone asks for a seat in the same call; an idle one does not."""
    assert raw_sync(rc, inst.name, "x", want=2)[:4] == [0, 0, 2, 0]  # x:0, x:1
    rc.zrem(seat_keys(inst.name)[NORMAL], "x:0", "x:1")  # both expired
    result = raw_sync(rc, inst.name, "x", renew=("2!x:0", "2|x:1"), seq=2)
    assert result[4] == [b"2!x:0", b"2|x:1"] and result[:4] == [0, 0, 1, 0]
    assert rc.zscore(seat_keys(inst.name)[NORMAL], "x:2") is not None
    raw_sync(rc, inst.name, "x", release=("2|x:2",))
    rc.delete(f"{tag(inst.name)}:instances")


async def test_leases_lost_in_a_long_outage_are_leased_again_by_the_recovery_call(
    inst: Instances, rc: redis.Redis
) -> None:
    """Review 2, finding 4: after an outage longer than ``lease_ttl`` the recovery call
    found the kept leases gone but asked no seat for their requests, which ran unleased
    until a later call (another instance could take the seats meanwhile)."""
    a = await inst.make(
        settings(10), lease_ttl=0.5, heartbeat=0.15, block=1, expected_instances=2
    )  # fmt: skip
    running = await hold(a, NORMAL, 5)
    outage = Outage(a)
    await await_for(lambda: a.mode == "local", 2.0, "the fallback")
    await await_for(lambda: inst.live(rc) == [0, 0, 0, 0], 2.0, "the leases to expire")
    results: list[Any] = []

    async def recording(**kwargs: Any) -> Any:
        result = await outage.script(**kwargs)
        results.append(result)
        return result

    outage.end(recording)
    await await_for(lambda: a.mode == "global", 2.0, "global mode again")
    recovery = next(result for result in results if result[4])  # it found them lost
    assert len(recovery[4]) == 5 and recovery[:4] == [0, 0, 5, 0]
    await a.settled()
    assert a.leased == (0, 0, 5, 0) and inst.live(rc) == [0, 0, 5, 0]
    assert a.stats().active == 5
    release(running)


# -- lifecycle and the gate -----------------------------------------------------------------


async def test_the_first_request_that_must_wait_starts_the_backend(
    rc: redis.Redis,
) -> None:
    backend = RedisBackend(
        REDIS_URL, unique_name(), settings=settings(2), key_prefix=KEY_PREFIX,
        command_timeout=0.25,
    )  # fmt: skip
    assert backend.try_acquire(NORMAL) is None  # not started: no pool yet
    permit = await backend.acquire(NORMAL)
    assert backend.mode == "global"
    permit.release()
    await backend.aclose()
    assert keys_of(rc, backend.name) == []


async def test_a_request_cancelled_while_it_starts_the_backend_does_not_stop_the_start(
    rc: redis.Redis,
) -> None:
    """Review finding 4: the request that started the backend lazily was cancelled during
    start() (its client gone); the backend never started, and every later request that had
    to wait timed out."""
    backend = RedisBackend(
        REDIS_URL, unique_name(), settings=settings(2, wait_timeout=1.0),
        key_prefix=KEY_PREFIX, command_timeout=0.25,
    )  # fmt: skip
    try:
        first = asyncio.get_running_loop().create_task(backend.acquire(NORMAL))
        await asyncio.sleep(0)  # inside start(), waiting for Redis
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        with anyio.fail_after(3.0):
            permit = await backend.acquire(NORMAL)
        assert backend.mode == "global" and backend.leased[NORMAL] >= 1
        permit.release()
    finally:
        await backend.aclose()
    assert keys_of(rc, backend.name) == []


async def test_closing_during_start_leaves_no_task_running(rc: redis.Redis) -> None:
    """Review finding 7: aclose() while start() waited for Redis; start() then started the
    Redis and pub/sub tasks anyway, and nothing ever stopped them."""
    backend = RedisBackend(
        REDIS_URL, unique_name(), settings=settings(2), key_prefix=KEY_PREFIX,
        command_timeout=0.25,
    )  # fmt: skip
    starting = asyncio.get_running_loop().create_task(backend.start())
    await asyncio.sleep(0)  # inside start(), waiting for Redis
    with anyio.fail_after(3.0):
        await backend.aclose()
        await starting
    await asyncio.sleep(0.05)
    assert backend.mode == "closed"
    assert all(task.done() for task in backend._tasks)
    assert dict(rc.pubsub_numsub(backend.channel)).get(backend.channel.encode(), 0) == 0
    assert keys_of(rc, backend.name) == []


async def test_closing_answers_waiters_and_gives_every_seat_back(rc: redis.Redis) -> None:
    backend = RedisBackend(
        REDIS_URL, unique_name(), settings=settings(1), key_prefix=KEY_PREFIX,
        command_timeout=0.25,
    )  # fmt: skip
    await backend.start()
    permit = await backend.acquire(NORMAL)
    async with anyio.create_task_group() as tg:
        waiter = await arrive(tg, backend, NORMAL)
        await backend.aclose()
        await waiter.done.wait()
    assert isinstance(waiter.error, SystemOverload)
    assert keys_of(rc, backend.name) == []  # the seat still in use went back too
    permit.release()  # harmless after closing
    assert backend.mode == "closed" and backend.stats().active == 0
    with pytest.raises(SystemOverload):
        await backend.acquire(NORMAL)


async def test_gate_over_redis_keeps_the_limit(inst: Instances, rc: redis.Redis) -> None:
    gate_settings = settings(3, queue_capacity=100, wait_timeout=5.0)
    a = await inst.make(gate_settings, block=2)
    b = await inst.make(gate_settings, block=2)
    running = 0
    most = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running, sum(inst.live(rc)))
        await asyncio.sleep(0.01)
        running -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    gates = [Gate(app, gate_settings, backend=x) for x in (a, b)]
    clients = [
        httpx.AsyncClient(transport=httpx.ASGITransport(app=g), base_url="http://t") for g in gates
    ]
    statuses: list[int] = []

    async def get(client: httpx.AsyncClient) -> None:
        statuses.append((await client.get("/api/thing")).status_code)

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(get, clients[i % 2])
    for client in clients:
        await client.aclose()
    assert statuses == [200] * 30
    assert most <= 3
    assert a.stats().active == b.stats().active == 0


async def test_unreachable_redis_at_start_means_fallback_mode_at_once() -> None:
    """Nothing listens: start() does not fail, it starts in the fallback mode."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    policies: dict[str, RedisBackend] = {}
    for policy in ("local", "open", "closed"):
        backend = RedisBackend(
            url, unique_name(), settings=settings(4), on_redis_error=policy,
            expected_instances=2, heartbeat=0.5, lease_ttl=2.0,
        )  # fmt: skip
        with anyio.fail_after(1.0):
            await backend.start()
        assert backend.mode == policy
        policies[policy] = backend
    local, opened, closed = policies["local"], policies["open"], policies["closed"]
    try:
        held = [local.try_acquire(NORMAL), local.try_acquire(NORMAL)]  # ceil(4 / 2) seats
        assert all(held) and local.try_acquire(NORMAL) is None
        with anyio.fail_after(1.0), pytest.raises(QueueTimeout):
            await local.acquire(NORMAL, 0.05)
        release(held)
        many = [opened.try_acquire(NORMAL) for _ in range(10)]
        assert all(many) and opened.stats().active == 10
        release(many)
        assert opened.stats().active == 0
        assert closed.try_acquire(NORMAL) is None
        with anyio.fail_after(1.0), pytest.raises(SystemOverload):
            await closed.acquire(NORMAL)
    finally:
        for backend in policies.values():
            with anyio.fail_after(3.0):
                await backend.aclose()


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_is_refused_with_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"^RedisBackend runs on asyncio only"):
        await RedisBackend().start()


def test_lane_seats_use_the_global_limit() -> None:
    backend = RedisBackend(settings=GateSettings(max_concurrent=20))
    assert sum(s.nominal for s in backend.seats) == 20
    assert backend.limit == 20
    assert [s.nominal for s in backend.seats] == [2, 8, 8, 2]

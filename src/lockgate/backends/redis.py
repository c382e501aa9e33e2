"""``RedisBackend``: one limit shared by every instance of a service, through Redis.

The seats live in Redis as *leases*: one ZSET member per seat, per lane, scored by its expiry
in Redis's own time (``TIME`` inside Lua). An instance renews all of its leases in one script
call per heartbeat; a killed instance's seats expire within ``lease_ttl`` and are pruned by the
next script any instance runs. Counts are ZCARDs of pruned lease sets, never a counter, so
nothing can leak past one lease lifetime.

**The fast path is local.** An instance leases seats in blocks and admits requests from its
leased pool without a round trip: ``try_acquire`` is synchronous and does no I/O. Seats come
back to Redis when they idled through a whole ``linger`` window, at once when another
instance waits for seats, and on shutdown. The Lua script never leases past the global
limits, so however the blocks are spread:

* **I1** seats leased in all ``<= C`` (in-flight ``<=`` leased, hence ``<= C``);
* **I2** seats leased by lane ``i`` ``<= Max_i``, and **I3** ``sum(max(u_i, G_i)) <= C``: lanes
  are leased as lanes (one ZSET each), with the in-process scheduler's nominal / guaranteed /
  max seats of the *global* ``C``, so critical's guaranteed seats are never leased to another
  lane, anywhere.

**Waiting crosses instances.** An instance whose waiters find no leased seat asks Redis for
seats (one script call for all its lanes and all its waiters, batched with whatever it gives
back). Refused, it records its unserved waiters in Redis -- lane, age of the oldest, count --
and the script then hands seats out in the in-process scheduler's order across every
instance: guaranteed seats first, then by priority, then the oldest waiter.
The instances hear about waiters and freed seats through one pub/sub subscription per
process (the message carries the whole waiter registry) with a timer backstop at the nearest
lease expiry; nobody polls per waiter. An instance that learns that another one waits ahead
of a lane stops admitting that lane from its pool, gives back as many idle seats as the
others wait for, and gives released seats of that lane back instead of handing them on.

**Failure.** Every Redis call is bounded by ``command_timeout`` (25 ms). An error or a timeout
switches the instance to ``on_redis_error``: ``"local"`` (default: an in-process
``PriorityScheduler`` of ``ceil(C / instances)`` seats, ``instances`` being
``expected_instances`` or, when not given, the number of live instances last seen in
Redis, or 4 if Redis never answered), ``"open"`` (admit everything) or ``"closed"``
(``SYSTEM_OVERLOAD``). Waiters move to the fallback with the time they have left; requests
in flight keep their seats (and their leases, which stay in Redis) and are counted against
the fallback until they finish (past a lane's Max there if need be). Once a probe gets an
answer, the fallback stops admitting, and one atomic call renews the leases of requests
still running, leases seats for those running without one (the fallback's, and those whose
lease expired) and gives back what it could not while Redis was away (lease names are
chosen by the client, so even a lease granted by a call that timed out is known); only then
does the instance admit anything new, in ``"global"`` mode.

**What it is not.** It runs on asyncio only (redis-py), with a fixed limit (no adaptive
limit across instances), and its queue is per instance (``queue_capacity``,
``reject_threshold`` and the standing-queue control apply to each instance's own waiters).
A process stalled for longer than ``lease_ttl`` (a stop-the-world pause, a partition) loses
its leases while its requests still run; its next renewal finds them lost and leases seats
for those requests in the same call (if any are free), but in the meantime the global count
can exceed ``C`` -- the price of any lease that does not block on the holder.

Start it on the event loop that serves requests: ``async with RedisBackend(...)``, ``await
backend.start()`` / ``await backend.aclose()`` (e.g. in the ASGI lifespan), or let the first
request that has to wait start it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Sequence
from importlib.resources import files
from types import TracebackType
from typing import Any, Final, Literal, NamedTuple

import anyio

from .._clock import Clock, MonotonicClock
from .._discipline import QueueDiscipline
from .._exceptions import RejectReason
from .._lanes import LaneSeats, Priority, lane_seats
from .._permit import Permit
from .._queues import GONE, GRANTED, WAITING, LaneQueues
from .._scheduler import PriorityScheduler
from .._settings import GateSettings
from .._stats import GateStats, LaneStats

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "lockgate.backends.redis needs redis-py: pip install 'lockgate[redis]'"
    ) from exc

__all__ = ["Mode", "RedisBackend"]

logger = logging.getLogger("lockgate.redis")

Mode = Literal["global", "local", "open", "closed"]
ErrorPolicy = Literal["local", "open", "closed"]

_LANES: Final = tuple(Priority)
_WAITING, _GRANTED, _GONE, _MOVED = WAITING, GRANTED, GONE, 3
_SAMPLE_EVERY = 4
_DEBT_AGE_MS = 60_000
"""Age announced for requests running without a lease: they are served before any waiter."""
_REDIS_ERRORS = (RedisError, OSError, TimeoutError)
_FIRST_PROBE = 0.05
"""Seconds from a Redis failure to the first probe; the delay doubles up to a heartbeat."""
_UNKNOWN_INSTANCES = 4
"""Instances the local fallback assumes when ``expected_instances`` is not given and Redis
never answered (no count seen): a guess on the safe side, not a measurement. Assuming 1
would let N instances restarting during an outage admit N x C."""
SYNC_SCRIPT: Final = (
    files("lockgate.backends").joinpath("lua", "sync.lua").read_text(encoding="utf-8")
)
"""The Lua script behind every Redis call this backend makes (``lua/sync.lua``)."""


class _Waiter:
    __slots__ = ("enqueued", "event", "lane", "permit", "reason", "state")

    def __init__(self, lane: Priority, enqueued: float) -> None:
        self.lane = lane
        self.enqueued = enqueued
        self.event = anyio.Event()
        self.state = _WAITING
        self.permit: Permit | None = None
        self.reason: RejectReason | None = None

    def notify(self) -> None:
        """Wake the waiting task (idempotent)."""
        self.event.set()


class _Planned(NamedTuple):
    """One script call: its arguments, what it may lease and give back, the limit it was
    planned under, and the arrivals it asks seats for."""

    seq: int
    args: list[str]
    wanted: int
    release: list[str]
    limit: int
    arrivals: tuple[_Waiter, ...] = ()


class _Fallback(PriorityScheduler):
    """The in-process scheduler used while Redis is away; tells its owner of each release.

    It admits (newcomers and its waiters alike) only while ``admitting``: from the switch to
    ``"local"`` until a probe finds Redis again, so that the recovery call counts every
    request it runs. ``shadow`` gives a seat to a request already running from global mode.
    """

    owner: RedisBackend
    admitting = False

    def try_acquire(self, lane: Priority) -> Permit | None:
        return super().try_acquire(lane) if self.admitting else None

    def _dispatch(self) -> None:
        if self.admitting:
            super()._dispatch()

    def _release(self, permit: Permit, dropped: bool, sample: bool) -> None:
        super()._release(permit, dropped, sample)
        self.owner._fallback_released(permit.lane)

    def admit(self, admitting: bool) -> None:
        """Start or stop admitting; started, the waiters get the free seats."""
        self.admitting = admitting
        self._dispatch()

    def shadow(self, lane: Priority) -> Permit | None:
        """A seat for a request already running (not an admission): past the lane's Max if
        need be, never past the seats in all (I3); ``None`` when none is free."""
        if self._used[lane] >= self._guaranteed[lane] and self._occupied >= self._limit:
            return None
        self._take(lane)
        return Permit(self, lane)


class RedisBackend(LaneQueues[_Waiter]):
    """Seats shared by every instance through Redis; see the module docstring.

    ``RedisBackend(url, name, lease_ttl=10.0)``: instances that share ``url`` and ``name``
    (and the same ``settings``) share one limit, ``settings.max_concurrent``.

    * ``heartbeat`` -- seconds between lease renewals (default ``lease_ttl / 3``).
    * ``block`` -- seats leased beyond the waiters' need when a lane's pool runs dry
      (default ``max(1, C // (4 * instances))``, at most 16).
    * ``linger`` -- seats that stayed idle through a whole window of this many seconds go
      back to Redis (default ``min(1.0, lease_ttl / 4)``); 0 gives every seat back at once.
    * ``fastpath=False`` -- the one-round-trip-per-request variant, for comparison: no
      pool, every admission leases one seat and every release gives it back, each with its
      own script call.
    * ``on_redis_error``, ``expected_instances``, ``command_timeout`` -- see "Failure" above.
    * ``pool_size`` -- Redis connections at most (the pub/sub subscription holds one; the
      block-leasing design uses one more; ``fastpath=False`` one per call in flight).
    * ``key_prefix`` -- keys are ``{<key_prefix>:<name>}:...``, one Redis Cluster slot.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        name: str = "default",
        *,
        lease_ttl: float = 10.0,
        heartbeat: float | None = None,
        settings: GateSettings | None = None,
        block: int | None = None,
        linger: float | None = None,
        fastpath: bool = True,
        expected_instances: int | None = None,
        on_redis_error: ErrorPolicy = "local",
        command_timeout: float = 0.025,
        start_timeout: float = 1.0,
        pool_size: int = 32,
        clock: Clock | None = None,
        key_prefix: str = "lockgate",
    ) -> None:
        settings = settings if settings is not None else GateSettings()
        if settings.limit != "fixed":
            raise ValueError("RedisBackend supports only a fixed limit (settings.limit='fixed')")
        if not lease_ttl > 0.01:
            raise ValueError("lease_ttl must be > 0.01 seconds")
        heartbeat = lease_ttl / 3 if heartbeat is None else heartbeat
        if not 0 < heartbeat < lease_ttl:
            raise ValueError("heartbeat must be > 0 and < lease_ttl")
        if not command_timeout > 0 or not start_timeout > 0:
            raise ValueError("command_timeout and start_timeout must be > 0")
        if on_redis_error not in ("local", "open", "closed"):
            raise ValueError("on_redis_error must be 'local', 'open' or 'closed'")
        if expected_instances is not None and expected_instances < 1:
            raise ValueError("expected_instances must be >= 1")
        if pool_size < 2:
            raise ValueError("pool_size must be >= 2")
        if block is not None and block < 1:
            raise ValueError("block must be >= 1")
        if linger is not None and linger < 0:
            raise ValueError("linger must be >= 0")
        if not name or "}" in name or "}" in key_prefix or "{" in name + key_prefix:
            raise ValueError("name and key_prefix must be non-empty and contain no braces")

        self.url = url
        self.name = name
        self.settings = settings
        self.instance_id = uuid.uuid4().hex[:12]
        """This instance's name in Redis: its leases are ``<instance_id>:<n>``."""
        self.lease_ttl = lease_ttl
        self.heartbeat = heartbeat
        self.command_timeout = command_timeout
        self.on_redis_error: ErrorPolicy = on_redis_error
        self.expected_instances = expected_instances
        self._start_timeout = start_timeout
        self._pool_size = pool_size
        self._fastpath = fastpath
        self._clock: Clock = clock or MonotonicClock()

        limit = settings.max_concurrent
        self._limit = limit
        self._shrinking = False  # the limit was lowered and seats may be over it
        self._lanes = settings.lanes.ordered()
        self._seats: tuple[LaneSeats, ...] = lane_seats(limit, self._lanes)
        instances = expected_instances or 1
        self._block = 1 if not fastpath else block or max(1, min(16, limit // (4 * instances)))
        self._linger = (
            0.0 if not fastpath else (min(1.0, lease_ttl / 4) if linger is None else linger)
        )
        self._hold_none = not fastpath or self._linger == 0.0

        tag = f"{{{key_prefix}:{name}}}"
        self.keys: tuple[str, ...] = (
            *(f"{tag}:seats:{lane}" for lane in range(len(_LANES))),
            f"{tag}:wait",
            f"{tag}:instances",
        )
        """Every key the backend uses (one hash tag: one Redis Cluster slot)."""
        self.channel = f"{tag}:wake"
        """The pub/sub channel the instances wake each other on."""
        self._static_args = [
            self.instance_id, str(round(lease_ttl * 1000)), str(limit),
        ]  # fmt: skip
        self._lane_args = [
            *(str(s.guaranteed) for s in self._seats),
            *(str(s.nominal) for s in self._seats),
            *(str(s.max) for s in self._seats),
        ]

        # The leased pool, per lane: idle seats, seats in use, and requests running without
        # a lease ("debt": seats lost, or requests admitted while Redis was away).
        self._idle: list[list[str]] = [[] for _ in _LANES]
        self._busy: list[list[str]] = [[] for _ in _LANES]
        self._debt = [0, 0, 0, 0]
        self._low_water = [0, 0, 0, 0]  # fewest idle seats during the current linger window
        self._prefetch = [False, False, False, False]
        self._returns: list[str] = []  # "<lane>|<seat>" to give back at the next call
        # Newcomers the local queue would refuse while Redis may still have a seat for them:
        # they wait for the answer to one call (not counted as waiters, see ``_arrive``).
        self._arrivals: list[_Waiter] = []
        self._limbo: list[str] = []  # seats Redis may hold for us, to give back when it answers
        # Away from Redis: the leases of requests still running, renewed when it answers.
        self._kept: list[list[str]] = [[] for _ in _LANES]
        self._seq = 0

        # Waiters of other instances (lane, since on our clock, want), and what they mean here.
        self._others: list[tuple[int, float, int, bool]] = []  # lane, since, want, eligible
        self._yield = [False, False, False, False]  # another instance waits ahead of the lane
        self._registered = [False, False, False, False]  # our waiters are recorded in Redis
        self._blocked = [False, False, False, False]  # the pool may not admit newcomers

        # The local queue.
        self._queue_capacity = settings.queue_capacity
        self._wait_timeout = settings.wait_timeout
        self._reject_threshold = settings.effective_reject_threshold
        self._queue_limits = [lane.queue_limit for lane in self._lanes]
        LaneQueues.__init__(self)
        self._queued_total = 0
        self._countdown = _SAMPLE_EVERY
        self.discipline = QueueDiscipline(len(_LANES), settings.target_wait, self._wait_timeout)

        # Degraded modes.
        self._mode: Mode = "global"
        self.instances_seen = 0
        """Live instances in Redis at the last call (0 before the first)."""
        self._local = _Fallback(
            self._fallback_limit(),
            self._lanes,
            queue_capacity=settings.queue_capacity,
            wait_timeout=settings.wait_timeout,
            reject_threshold=settings.reject_threshold,
            target_wait=settings.target_wait,
            clock=self._clock,
        )
        self._local.owner = self
        self._shadows: list[list[Permit]] = [[] for _ in _LANES]
        self._carried = [0, 0, 0, 0]  # fallback requests still running, counted in our debt
        self._moving: set[anyio.CancelScope] = set()
        self.leased_globally = 0
        """Seats leased by all instances at the last call."""
        self.counters: dict[str, int] = {
            "calls": 0, "redis_errors": 0, "mode_switches": 0, "lost_leases": 0,
            "messages": 0, "bad_messages": 0,
        }  # fmt: skip
        """Script calls, Redis errors and timeouts, switches to a fallback mode, leases found
        expired at renewal, pub/sub messages received, and those skipped as unreadable."""

        # Lifecycle.
        self._client: aioredis.Redis | None = None
        self._script: Any = None
        self._wake = asyncio.Event()
        self._parked = asyncio.Event()  # the Redis task waits for news (set while it does)
        self._tasks: list[asyncio.Task[None]] = []
        self._inline: set[asyncio.Task[None]] = set()
        self._starting: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self._backstop = math.inf
        self._next_probe = math.inf
        self._probe_delay = _FIRST_PROBE

    # -- the Backend protocol ---------------------------------------------------------------

    @property
    def limit(self) -> int:
        """Seats in all, across every instance (``C``)."""
        return self._limit

    @property
    def adaptive(self) -> bool:
        return False

    @property
    def seats(self) -> tuple[LaneSeats, ...]:
        """Nominal / guaranteed / max seats per lane under the global limit."""
        return self._seats

    def set_limit(self, limit: int) -> None:
        """Change ``C``, as ``PriorityScheduler.set_limit`` does: lane seats are
        re-apportioned, waiters get the seats that appeared (with the next call), and holders
        above a lowered limit keep their seats while nobody new is admitted above a lane's
        guarantee until the seats in use are back under it.

        Lowered, the instance gives back at once the idle seats leased past the new limit
        (see ``_trim``) and keeps the rest; a call in flight, planned under the old limit,
        gives its seats back if they would take the leases past the new one. In the local
        fallback, raised, the fallback's new seats count our requests still running from
        global mode first.

        The script enforces the ``C`` the calling instance sends: give every instance the
        same limit (as with every other setting), or they enforce their own.
        """
        if limit < 1:
            raise ValueError("limit must be >= 1")
        lowered = limit < self._limit
        self._shrinking = self._shrinking or lowered
        self._limit = limit
        self._seats = lane_seats(limit, self._lanes)
        self._static_args[2] = str(limit)
        self._lane_args = [
            *(str(s.guaranteed) for s in self._seats),
            *(str(s.nominal) for s in self._seats),
            *(str(s.max) for s in self._seats),
        ]
        self._reject_threshold = (
            self.settings.reject_threshold
            if self.settings.reject_threshold is not None
            else limit + self._queue_capacity
        )
        self._size_fallback(self._local.admitting)
        if lowered:
            self._trim()
        self._wake.set()  # waiters may get the new seats; a lowered limit is learnt

    @property
    def mode(self) -> Mode:
        """``"global"`` while Redis answers; else the fallback (``"closed"`` once closed)."""
        return self._mode

    @property
    def leased(self) -> tuple[int, ...]:
        """Seats this instance leases now, per lane."""
        return tuple(len(i) + len(b) for i, b in zip(self._idle, self._busy, strict=True))

    def try_acquire(self, lane: Priority) -> Permit | None:
        """A permit from the leased pool at once, without I/O, or ``None``."""
        idle = self._idle[lane]
        if idle and not self._blocked[lane]:
            self._busy[lane].append(idle.pop())
            left = len(idle)
            if left < self._low_water[lane]:
                self._low_water[lane] = left
            if not left and self.leased_globally < self._limit:
                self._prefetch[lane] = True  # the pool ran dry: lease a block in the background
                self._wake.set()
            self._admitted[lane] += 1
            self._countdown -= 1
            if self._countdown:
                return Permit(self, lane)
            self._countdown = _SAMPLE_EVERY
            return Permit(self, lane, 0.0, self._clock.now(), self._in_flight())
        mode = self._mode
        if mode == "local":
            return self._local.try_acquire(lane)
        if mode == "open":
            return self._unleased(lane)
        return None

    async def acquire(
        self,
        lane: Priority,
        timeout: float | None = None,  # noqa: ASYNC109 - a queue budget, answered QueueTimeout
        *,
        budget: float | None = None,
    ) -> Permit:
        """Wait for a seat of ``lane``: from the pool, from Redis, or from the fallback.

        Same contract as ``PriorityScheduler.acquire``: ``QueueTimeout`` after ``timeout``
        (default ``wait_timeout``), ``QueueFull`` / ``SystemOverload`` / ``DeadlineUnreachable``
        as there; cancellation-safe.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        if not self._started:
            await self.start()
        clock = self._clock
        started = clock.now()
        deadline = started + (self._wait_timeout if timeout is None else timeout)
        if budget is not None:
            deadline = min(deadline, started + budget - self.discipline.service_time(lane))
        first = True
        while True:
            if self._mode != "global":
                left = None if budget is None else budget - (clock.now() - started)
                permit = await self._acquire_degraded(lane, deadline, left)
                if permit is not None:
                    return permit
                continue
            permit = self.try_acquire(lane)
            if permit is not None:
                return permit
            if not self._fastpath:
                permit = await self._lease_inline(lane)
                if permit is not None:
                    return permit
                if self._mode != "global":
                    continue
            if budget is not None and first:
                self._slack(lane, budget, self._share())
            first = False
            if self._fastpath and self._may_find_a_seat(lane):
                permit = await self._arrive(lane)
                if permit is not None:
                    return permit
                if self._mode != "global":
                    continue
            waiter = self._enqueue(lane)
            self._wake.set()
            try:
                with clock.deadline_scope(deadline):
                    await waiter.event.wait()
            except BaseException:
                self._abandon(waiter)
                raise
            if waiter.state == _MOVED:  # the mode changed: wait there with the time left
                continue
            return self._outcome(waiter)

    def retry_after(self, lane: Priority) -> int:
        """``Retry-After`` for ``lane``: this instance's queue ahead, drained at its share."""
        if self._mode == "local":
            return self._local.retry_after(lane)
        return self.discipline.retry_after(self._ahead(lane), self._share())

    def stats(self) -> GateStats:
        """This instance's requests (its own and its fallback's), under the global seats."""
        local = self._local.stats()
        lanes = []
        wait_sum = self._wait_sum + local.avg_wait_time_ms / 1000.0 * local.admitted
        for lane, seats, fallback in zip(_LANES, self._seats, local.lanes, strict=True):
            shadows = len(self._shadows[lane])
            rejected = dict(self._rejected[lane])
            for reason, count in fallback.rejected.items():
                rejected[reason] = rejected.get(reason, 0) + count
            lanes.append(
                LaneStats(
                    lane=lane,
                    active=len(self._busy[lane])
                    + self._debt[lane]
                    - self._carried[lane]
                    + fallback.active
                    - shadows,
                    queued=self._queued[lane] + fallback.queued,
                    nominal=seats.nominal,
                    guaranteed=seats.guaranteed,
                    max=seats.max,
                    admitted=self._admitted[lane] + fallback.admitted,
                    rejected=rejected,
                )
            )
        admitted = sum(lane.admitted for lane in lanes)
        return GateStats(
            limit=self._limit,
            active=sum(lane.active for lane in lanes),
            queued=sum(lane.queued for lane in lanes),
            rejected=sum(sum(lane.rejected.values()) for lane in lanes),
            admitted=admitted,
            avg_wait_time_ms=1000.0 * wait_sum / admitted if admitted else 0.0,
            lanes=tuple(lanes),
        )

    def _release(self, permit: Permit, dropped: bool, sample: bool) -> None:
        if permit.since is not None and sample:
            self.discipline.record_service(permit.lane, self._clock.now() - permit.since)
        self._free_seat(permit.lane)

    @property
    def quiet(self) -> bool:
        """Is the Redis task waiting for news, with nothing to send and no call in flight?
        (Waiters that Redis refused may still be queued: they wait for seats to come back.)"""
        return self._parked.is_set() and not self._wake.is_set() and not self._inline

    async def settled(self) -> None:
        """Return once the backend is ``quiet``: every release, return and request for seats
        made so far has been through Redis and its answer applied. For tests, which need a
        deterministic point to look at the state; returns at once when not started."""
        while self._tasks and not self._closed and not self.quiet:
            if self._parked.is_set():  # woken, but the task has not run yet
                await asyncio.sleep(0)
            else:
                await self._parked.wait()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, load the script and start the heartbeat and pub/sub tasks.

        Never fails for Redis's sake: if Redis does not answer within ``start_timeout``, the
        backend starts in its fallback mode and keeps probing. The start-up runs in a task of
        its own, which a cancelled caller (the request that started the backend lazily, its
        client gone) leaves running; concurrent callers wait for the same one.
        """
        if self._started or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "RedisBackend runs on asyncio only (redis-py's asyncio client)"
            ) from None
        if self._starting is None:
            self._starting = loop.create_task(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self._pool_size,
                timeout=None,  # waiting for a connection is bounded like the call itself
                decode_responses=True,
                retry=Retry(NoBackoff(), 0),
                socket_timeout=None,
                socket_connect_timeout=None,
            )
            self._client = aioredis.Redis.from_pool(pool)
            self._script = self._client.register_script(SYNC_SCRIPT)
            try:
                async with asyncio.timeout(self._start_timeout):
                    self._script.sha = await self._client.script_load(SYNC_SCRIPT)
            except _REDIS_ERRORS as exc:
                self._degrade(exc)
        except BaseException:
            self._starting = None  # the next call starts afresh
            raise
        if self._closed:  # closed meanwhile: aclose() waits for this and cleans up
            return
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._pump()), loop.create_task(self._listen())]
        self._started = True

    async def aclose(self) -> None:
        """Stop the tasks, give every seat back and leave; waiters are answered
        ``SYSTEM_OVERLOAD``. Call it once the server has drained: requests still running
        lose their leases (the process is about to end, and their seats must not wait a
        lease lifetime to come back). Closing during ``start()`` waits for the start-up
        (at most ``start_timeout``), which then starts no task."""
        if self._closed:
            return
        self._closed = True
        starting = self._starting
        if starting is not None and not starting.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(starting)
        if self._mode == "global":
            self._give_up_leases()
        self._mode = "closed"
        self._move_waiters()
        tasks = [*self._tasks, *self._inline]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        client = self._client
        if client is None:
            return
        self._give_up_leases()
        for lane in _LANES:
            self._limbo.extend(f"{lane}|{seat}" for seat in self._kept[lane])
            self._kept[lane].clear()
        release, self._limbo = self._limbo, []
        planned = self._sync_args([0] * 4, [0] * 4, release, [], leaving=True)
        with contextlib.suppress(*_REDIS_ERRORS):
            async with asyncio.timeout(self._start_timeout):
                await self._script(keys=self.keys, args=planned.args)
        with contextlib.suppress(*_REDIS_ERRORS):
            await client.aclose()

    async def __aenter__(self) -> RedisBackend:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- the local queue (the in-process scheduler's rules, per instance) ------------------

    def _enqueue(self, lane: Priority) -> _Waiter:
        now = self._clock.now()
        if self.discipline.overloaded(lane, now):
            self._shed_stale(lane, now)
        if self._below_a_standing_queue(lane, now):
            self._reject_arrival(lane, RejectReason.QUEUE_FULL)
        limit = self._queue_limits[lane]
        if limit is not None and self._queued[lane] >= limit:
            self._reject_arrival(lane, RejectReason.QUEUE_FULL)
        overload = self._in_flight() + self._queued_total >= self._reject_threshold
        full = self._queued_total >= self._queue_capacity
        if (full or overload) and not self._displace_below(lane):
            self._reject_arrival(
                lane, RejectReason.QUEUE_FULL if full else RejectReason.SYSTEM_OVERLOAD
            )
        waiter = _Waiter(lane, now)
        self._queues[lane].append(waiter)
        if not self._queued[lane]:
            self.discipline.queue_started(lane, now)
        self._queued[lane] += 1
        self._queued_total += 1
        if self._queued[lane] == 1:
            self._refresh_blocked()
        return waiter

    def _may_find_a_seat(self, lane: Priority) -> bool:
        """Would the local queue refuse a newcomer of ``lane`` (queue or lane queue full,
        reject threshold) while Redis may still have a free seat for it?

        The in-process scheduler applies those limits only to requests that must wait, and a
        request here must wait only once Redis has no seat for it: an instance whose pool is
        empty (at start-up, after an idle ``linger``) must not refuse a burst larger than its
        queue while the global seats are free."""
        limit = self._queue_limits[lane]
        queued = self._queued_total
        refuse = (
            queued >= self._queue_capacity
            or (limit is not None and self._queued[lane] >= limit)
            or self._in_flight() + queued >= self._reject_threshold
        )
        return refuse and (self.leased_globally < self._limit or any(self._idle))

    async def _arrive(self, lane: Priority) -> Permit | None:
        """Ask Redis for a seat for a newcomer with the next call (batched with everything
        else); ``None`` when it has none (the caller then applies the queue's rules), the mode
        changed, or no answer came within two command timeouts."""
        waiter = _Waiter(lane, self._clock.now())
        self._arrivals.append(waiter)
        self._wake.set()
        try:
            with anyio.move_on_after(2 * self.command_timeout + 0.01):
                await waiter.event.wait()
        except BaseException:
            self._pass_on(waiter)
            self._forget_arrival(waiter)
            raise
        if waiter.state == _GRANTED:
            assert waiter.permit is not None
            return waiter.permit
        self._forget_arrival(waiter)
        return None

    def _forget_arrival(self, waiter: _Waiter) -> None:
        waiter.state = _GONE
        with contextlib.suppress(ValueError):
            self._arrivals.remove(waiter)

    def _seat_arrivals(self, arrivals: tuple[_Waiter, ...], granted: list[int]) -> None:
        """Seat the arrivals a call asked for from their lanes' idle seats (those it granted,
        or any a lane that no waiter is ahead of has); answer the others: no seat."""
        now = self._clock.now()
        for waiter in arrivals:
            if waiter.state != _WAITING:
                continue
            lane = waiter.lane
            idle = self._idle[lane]
            if idle and (granted[lane] or not self._blocked[lane]) and not self._queued[lane]:
                self._busy[lane].append(idle.pop())
                self._admitted[lane] += 1
                waited = now - waiter.enqueued
                self._wait_sum += waited
                waiter.permit = Permit(self, lane, waited, now, self._in_flight())
                waiter.state = _GRANTED
            else:
                waiter.state = _GONE
            waiter.event.set()

    def _dequeued(self, lane: Priority, served: bool = False) -> None:
        self._queued_total -= 1
        self._queued[lane] -= 1
        if not self._queued[lane]:
            self.discipline.queue_emptied(lane, self._clock.now(), served)
            self._refresh_blocked()
            if self._registered[lane] or any(
                q and i for q, i in zip(self._queued, self._idle, strict=True)
            ):
                self._wake.set()  # take our waiters out of the registry; serve the lanes below

    def _held(self, lane: Priority) -> int:
        return len(self._busy[lane])

    def _guarantee(self, lane: Priority) -> int:
        return self._seats[lane].guaranteed

    def _capped(self, lane: Priority) -> bool:
        most = self._seats[lane].max
        return most < self._limit and self._held(lane) >= most

    def _oldest(self, lane: int) -> float | None:
        """When the oldest live waiter of ``lane`` arrived, or None."""
        if not self._queued[lane]:
            return None
        for waiter in self._queues[lane]:
            if waiter.state == _WAITING:
                return waiter.enqueued
        return None  # pragma: no cover - queued > 0 means a live waiter exists

    def _move_waiters(self) -> None:
        """Send every waiter (and arrival) back to ``acquire`` to wait in the new mode."""
        arrivals, self._arrivals = self._arrivals, []
        for waiter in arrivals:
            waiter.state = _MOVED
            waiter.event.set()
        for lane in _LANES:
            while self._queued[lane]:
                waiter = self._pop(lane, newest=False)
                self._dequeued(lane)
                waiter.state = _MOVED
                waiter.event.set()
        for scope in list(self._moving):
            scope.cancel()

    # -- the leased pool --------------------------------------------------------------------

    def _in_flight(self) -> int:
        return sum(len(b) for b in self._busy) + sum(self._debt)

    def _fallback_limit(self) -> int:
        """The local fallback's seats: ``ceil(C / instances)``, ``instances`` being
        ``expected_instances``, else the live instances last seen in Redis, else (Redis never
        answered) ``_UNKNOWN_INSTANCES``."""
        instances = self.expected_instances or self.instances_seen or _UNKNOWN_INSTANCES
        return math.ceil(self._limit / instances)

    def _share(self) -> int:
        """Seats this instance's queue drains at, for predictions."""
        instances = self.expected_instances or max(1, self.instances_seen)
        return max(1, sum(self.leased), math.ceil(self._limit / instances))

    def _unleased(self, lane: Priority) -> Permit:
        """A permit without a lease (mode ``"open"``)."""
        self._debt[lane] += 1
        self._admitted[lane] += 1
        return Permit(self, lane)

    def _free_seat(self, lane: Priority) -> None:
        """A request of ``lane`` finished: its seat goes to a waiter, the pool or Redis."""
        debt = self._debt
        if debt[lane]:
            debt[lane] -= 1
            kept = self._kept[lane]  # (empty in global mode)
            if len(kept) > debt[lane]:  # its lease, kept while Redis is away, goes back
                self._limbo.append(f"{lane}|{kept.pop()}")
            shadows = self._shadows
            if any(shadows) and sum(map(len, shadows)) > sum(debt):
                # A fallback seat stands for a request in flight that had no fallback seat
                # of its own, until fewer such requests run than fallback seats are held.
                # Drop one of a lane that holds more than it has requests running.
                excess = next(s for s, d in zip(shadows, debt, strict=True) if len(s) > d)
                excess.pop().release()
            return
        busy = self._busy[lane]
        if not busy:  # pragma: no cover - every permit is counted in busy or debt
            return
        idle = self._idle[lane]
        idle.append(busy.pop())
        if self._shrinking:  # since the limit was lowered; the fast path skips the sums
            self._trim(lane)  # over the lowered limit: the seat is gone, not handed on
        if self._queued[lane] and not self._yield[lane]:
            self._serve(lane)
        # A seat our own waiters of another lane could use goes back at once, and they ask
        # for it in the same call: the in-process hand-off, one round trip late. (Kept idle,
        # it would wait for the end of the linger window while they wait for a seat.)
        if idle and (self._yield[lane] or self._hold_none or self._queued_total):
            self._give_back(lane)

    def _serve(self, lane: Priority) -> None:
        """Hand idle seats of ``lane`` to its waiters (newest first in an overloaded lane)."""
        idle, busy = self._idle[lane], self._busy[lane]
        now = self._clock.now()
        while idle and self._queued[lane]:
            overloaded = self.discipline.overloaded(lane, now)
            if overloaded:
                self._shed_stale(lane, now)
                if not self._queued[lane]:
                    break
            waiter = self._pop(lane, newest=overloaded)
            self._dequeued(lane, served=True)
            busy.append(idle.pop())
            self._admitted[lane] += 1
            waited = now - waiter.enqueued
            self._wait_sum += waited
            waiter.permit = Permit(self, lane, waited, now, self._in_flight())
            waiter.state = _GRANTED
            waiter.event.set()

    def _give_back(self, lane: int, count: int | None = None) -> None:
        """The idle seats of ``lane`` (``count`` of them, default all) go back to Redis."""
        idle = self._idle[lane]
        if count is None or count >= len(idle):
            items = [f"{lane}|{seat}" for seat in idle]
            idle.clear()
            self._low_water[lane] = 0
        else:
            items = [f"{lane}|{idle.pop()}" for _ in range(count)]
            self._low_water[lane] = min(self._low_water[lane], len(idle))
        if self._fastpath:
            self._returns.extend(items)
            self._wake.set()
        else:
            for item in items:
                self._spawn(self._return_inline(item))

    def _excess(self, leased_globally: int, granted: Sequence[int]) -> tuple[int, list[int]]:
        """Seats leased past the limit, with ``granted`` more: in all (I1, I3: the larger of
        the global and the own count, a lane under its guarantee counted as holding it), and
        per lane past its Max (I2, own seats)."""
        pools = zip(self._idle, self._busy, granted, strict=True)
        own = [len(idle) + len(busy) + more for idle, busy, more in pools]
        spare = sum(max(0, s.guaranteed - n) for s, n in zip(self._seats, own, strict=True))
        over = max(leased_globally, sum(own)) + spare - self._limit
        return over, [n - s.max for s, n in zip(self._seats, own, strict=True)]

    def _trim(self, first: int | None = None) -> None:
        """Since the limit was lowered: idle seats leased past it go back (``first``'s lane
        first, then from the lowest lane up), as many as are over it; seats in use stay. Once
        nothing is over, the instance stops checking."""
        over, lanes = self._excess(self.leased_globally, (0, 0, 0, 0))
        if over <= 0 and max(lanes) <= 0:
            self._shrinking = False
            return
        order = _LANES[::-1] if first is None else (first, *_LANES[::-1])
        for lane in order:
            idle = self._idle[lane]
            # Only seats above the lane's guarantee lower the count of I3.
            above = len(idle) + len(self._busy[lane]) - self._seats[lane].guaranteed
            give = min(len(idle), max(lanes[lane], min(over, above)))
            if give > 0:
                self._give_back(lane, give)
                lanes[lane] -= give
                over -= min(give, above)
                self.leased_globally -= give  # (as Redis will count it)

    def _stale(self, planned: _Planned, result: list[Any]) -> bool:
        """Was a call planned under a limit since lowered, and would its seats take the
        leases past the new one? (Then they admit nobody.)"""
        if planned.limit <= self._limit:
            return False
        over, lanes = self._excess(int(result[8]), [int(n) for n in result[:4]])
        return over > 0 or max(lanes) > 0

    def _cover(self, lane: int) -> None:
        """Idle seats first cover requests running without a lease."""
        idle, debt = self._idle[lane], self._debt
        while debt[lane] and idle:
            self._busy[lane].append(idle.pop())
            debt[lane] -= 1

    def _refresh_blocked(self) -> None:
        """Recompute which lanes yield to other instances and which may use the pool."""
        others = self._others
        waiting_above = False
        for lane in _LANES:
            ahead = False
            if others:
                oldest = self._oldest(lane)
                for other_lane, since, _, eligible in others:
                    if (eligible and other_lane < lane) or (
                        other_lane == lane and (oldest is None or since < oldest)
                    ):
                        ahead = True
                        break
            if self._queued[lane]:
                waiting_above = True
            self._yield[lane] = ahead
            self._blocked[lane] = ahead or waiting_above

    def _give_up_leases(self, keep: bool = False) -> None:
        """Forget every lease (to be given back when Redis answers); holders become debt.
        With ``keep``, the leases of requests in flight are kept aside instead: renewed when
        Redis answers again if they still run, given back as they finish."""
        for lane in _LANES:
            idle, busy = self._idle[lane], self._busy[lane]
            self._limbo.extend(f"{lane}|{seat}" for seat in idle)
            if keep:
                self._kept[lane].extend(busy)
            else:
                self._limbo.extend(f"{lane}|{seat}" for seat in busy)
            self._debt[lane] += len(busy)
            idle.clear()
            busy.clear()
        self._limbo.extend(self._returns)
        self._returns.clear()

    # -- talking to Redis -------------------------------------------------------------------

    def _sync_args(
        self,
        want: list[int],
        need: list[int],
        release: list[str],
        renew: list[str],
        leaving: bool = False,
        ages: list[int] | None = None,
        arrivals: tuple[_Waiter, ...] = (),
    ) -> _Planned:
        seq = self._seq
        # A lease of a running request ("<lane>!<seat>") lost at renewal is leased again.
        wanted = sum(want) + sum(item[1] == "!" for item in renew)
        self._seq += wanted
        args = [
            *self._static_args, str(seq), self.channel, "1" if leaving else "0",
            *self._lane_args,
            *map(str, want), *map(str, need), *map(str, ages or [0, 0, 0, 0]),
            str(len(release)), *release, str(len(renew)), *renew,
        ]  # fmt: skip
        return _Planned(seq, args, wanted, release, self._limit, arrivals)

    async def _call(self, planned: _Planned) -> list[Any]:
        """Run the script, at most ``command_timeout``. On failure (or cancellation) the
        seats it may have leased and those it was to give back go to limbo, to be given back
        by a later call, and the exception propagates."""
        self.counters["calls"] += 1
        try:
            async with asyncio.timeout(self.command_timeout):
                result: list[Any] = await self._script(keys=self.keys, args=planned.args)
        except BaseException:
            seq, prefix = planned.seq, self.instance_id
            self._limbo.extend(f"*|{prefix}:{n}" for n in range(seq, seq + planned.wanted))
            self._limbo.extend(planned.release)
            raise
        return result

    def _plan(self, renew: bool) -> _Planned | None:
        """What the next call sends: seats to give back, to renew, and wanted per lane."""
        release = self._limbo + self._returns
        self._limbo, self._returns = [], []
        # Seats other instances wait for: any free seat serves an eligible waiter; a lane at
        # its Max is served only by a seat of its own lane.
        owed_any = 0
        owed_lane = [0, 0, 0, 0]
        for other_lane, _, other_want, eligible in self._others:
            if eligible:
                owed_any += other_want
            else:
                owed_lane[other_lane] += other_want
        eligible_waiting = any(eligible for *_, eligible in self._others)
        for lane in _LANES:  # idle seats no longer held back from their lane's waiters
            if self._queued[lane] and self._idle[lane] and not self._blocked[lane]:
                self._serve(lane)
        arrivals = tuple(w for w in self._arrivals if w.state == _WAITING)
        self._arrivals = []
        arriving = [0, 0, 0, 0]
        for waiter in arrivals:
            arriving[waiter.lane] += 1
        waiting = [
            bool(self._queued[lane] or self._debt[lane] or arriving[lane]) for lane in _LANES
        ]
        want, need, ages = [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]
        now = self._clock.now()
        for lane in reversed(_LANES):  # idle seats go back from the lowest lane up
            idle = self._idle[lane]
            if any(waiting) and not waiting[lane]:
                give = len(idle)  # our own waiters of another lane need the room
            elif self._queued[lane] and not self._yield[lane]:
                # Our waiters of a higher lane keep this lane's waiters off its idle seats
                # (no queue-jumping), but those seats may be this lane's guaranteed ones,
                # which the higher lane cannot have: Redis decides, as the in-process
                # scheduler would, whom they serve.
                give = len(idle)
            else:
                give = min(owed_lane[lane] + owed_any, len(idle))
                owed_any -= max(0, give - owed_lane[lane])
            if give:
                release.extend(f"{lane}|{idle.pop()}" for _ in range(give))
                self._low_water[lane] = min(self._low_water[lane], len(idle))
            need[lane] = self._queued[lane] + self._debt[lane]
            contended = eligible_waiting or owed_lane[lane] > 0  # no prefetch ahead of them
            prefetch = (self._prefetch[lane] or need[lane] or arriving[lane]) and not contended
            # Arrivals are asked for like a prefetch (behind every waiter anywhere): they
            # are newcomers, not waiters.
            want[lane] = (
                need[lane] + arriving[lane]
                + (self._block if prefetch and not self._hold_none else 0)
            )  # fmt: skip
            self._prefetch[lane] = False
            if self._debt[lane] or (renew and not need[lane] and self._busy[lane]):
                ages[lane] = _DEBT_AGE_MS  # (a running request's lease lost is debt)
            elif need[lane]:
                oldest = self._oldest(lane)
                ages[lane] = 0 if oldest is None else max(0, round((now - oldest) * 1000))
        renewals: list[str] = []
        if renew:
            for lane in _LANES:
                renewals.extend(f"{lane}|{seat}" for seat in self._idle[lane])
                renewals.extend(f"{lane}!{seat}" for seat in self._busy[lane])
        if not (release or renewals or any(want) or any(self._registered)):
            return None
        return self._sync_args(want, need, release, renewals, ages=ages, arrivals=arrivals)

    def _apply(
        self, seq: int, result: list[Any], arrivals: tuple[_Waiter, ...] = (), stale: bool = False
    ) -> None:
        """Take in a script's answer: granted seats, lost leases, the waiter registry; seat
        the arrivals it asked for (after the lanes' waiters). ``stale``: the call was planned
        under a limit since lowered and its seats would take the leases past it (``_stale``):
        they admit nobody (they cover requests running without a lease, the rest go back)."""
        granted = [int(n) for n in result[:4]]
        for item in result[4]:
            self._lose(int(item[0]), item[2:])
        self._read_registry(str(result[5]))
        self.instances_seen = int(result[7])
        self.leased_globally = int(result[8])
        for lane in _LANES:
            seats = [f"{self.instance_id}:{n}" for n in range(seq, seq + granted[lane])]
            seq += granted[lane]
            if not seats:
                continue
            self._idle[lane].extend(seats)
            self._cover(lane)
            if stale:
                self._give_back(lane)
            else:
                self._serve(lane)
        self._seat_arrivals(arrivals, [0, 0, 0, 0] if stale else granted)
        for lane in _LANES:
            if granted[lane] and self._idle[lane] and (self._yield[lane] or self._hold_none):
                self._give_back(lane)
        unmet = any(self._queued) or any(self._debt)
        nearest = int(result[6])
        loop = asyncio.get_running_loop()
        if unmet and nearest >= 0:
            self._backstop = loop.time() + nearest / 1000.0 + 0.002
        else:
            self._backstop = math.inf

    def _lose(self, lane: int, seat: str) -> None:
        """A lease expired before we renewed it: its request (if any) now runs unleased."""
        self.counters["lost_leases"] += 1
        with contextlib.suppress(ValueError):
            self._idle[lane].remove(seat)
            return
        with contextlib.suppress(ValueError):
            self._busy[lane].remove(seat)
            self._debt[lane] += 1

    def _read_registry(self, registry: str) -> None:
        """Take in the waiters of every instance (``who|lane|age_ms|want|eligible;...``).

        A waiter of a lane at its Max (not ``eligible``) is served only by a seat of its own
        lane: giving other seats back for it would only cost us our pool. ``ValueError`` if
        the registry cannot be read; nothing is changed then.
        """
        now = self._clock.now()
        others: list[tuple[int, float, int, bool]] = []
        registered = [False, False, False, False]
        for entry in registry.split(";") if registry else ():
            who, lane_text, age, want, eligible = entry.split("|")
            lane = int(lane_text)
            if not 0 <= lane < len(_LANES):
                raise ValueError(f"no lane {lane}")
            if who == self.instance_id:
                registered[lane] = True
            else:
                others.append((lane, now - int(age) / 1000.0, int(want), eligible == "1"))
        self._registered = registered
        self._others = others
        self._refresh_blocked()

    def _on_message(self, data: str) -> None:
        """A wake-up from another instance. One that cannot be read (another version's, a
        stranger's on the channel) is skipped, and the first one logged."""
        self.counters["messages"] += 1
        sender, hashed, registry = data.partition("#")
        if sender == self.instance_id or self._mode != "global":
            return
        try:
            if not (hashed and sender):  # not one of ours: no registry to read
                raise ValueError("no sender")
            self._read_registry(registry)
        except ValueError:
            self.counters["bad_messages"] += 1
            if self.counters["bad_messages"] == 1:
                logger.warning(
                    "lockgate %r: skipped an unreadable message on %s: %.200r (logged once)",
                    self.name, self.channel, data,
                )  # fmt: skip
            return
        if any(self._queued) or any(self._debt) or (self._others and any(self._idle)):
            self._wake.set()

    def _disown(self, seq: int, result: list[Any]) -> None:
        """The seats a call granted while the mode changed under it go back to Redis."""
        for lane in _LANES:
            count = int(result[lane])
            self._limbo.extend(f"{lane}|{self.instance_id}:{n}" for n in range(seq, seq + count))
            seq += count

    async def _lease_inline(self, lane: Priority) -> Permit | None:
        """``fastpath=False``: lease one seat for this request with its own script call."""
        want = [0, 0, 0, 0]
        want[lane] = 1
        planned = self._sync_args(want, [0, 0, 0, 0], [], [])
        try:
            result = await self._call(planned)
        except _REDIS_ERRORS as exc:
            self._degrade(exc)
            return None
        except BaseException:
            self._wake.set()  # give the seat back soon (it is in limbo)
            raise
        seat = f"{self.instance_id}:{planned.seq}"
        if not int(result[lane]):
            self._read_registry(str(result[5]))
            return None
        if self._mode != "global" or self._stale(planned, result):
            self._limbo.append(f"{lane}|{seat}")  # (a lowered limit: back at the next call)
            self._wake.set()
            return None
        self._busy[lane].append(seat)
        self._admitted[lane] += 1
        return Permit(self, lane, 0.0, self._clock.now(), self._in_flight())

    async def _return_inline(self, item: str) -> None:
        """``fastpath=False``: give one seat back with its own script call."""
        try:
            await self._call(self._sync_args([0, 0, 0, 0], [0, 0, 0, 0], [item], []))
        except _REDIS_ERRORS as exc:
            self._degrade(exc)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._inline.add(task)
        task.add_done_callback(self._inline.discard)

    # -- background tasks -------------------------------------------------------------------

    async def _pump(self) -> None:
        """The instance's one conversation with Redis: leases, returns, renewals, probes."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.heartbeat
        next_window = loop.time() + (self._linger or math.inf)
        while True:
            wake_at = min(next_beat, next_window, self._backstop)
            if self._mode != "global":
                wake_at = min(wake_at, self._next_probe)
            if not self._wake.is_set():
                self._parked.set()
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(wake_at):
                            await self._wake.wait()
                finally:
                    self._parked.clear()
            self._wake.clear()
            now = loop.time()
            beat = now >= next_beat
            if beat:
                next_beat = now + self.heartbeat
            if now >= next_window:
                next_window = now + self._linger
                self._close_window()
            if now >= self._backstop:
                self._backstop = math.inf
            try:
                if self._mode == "global":
                    await self._exchange(renew=beat)
                elif now >= self._next_probe and not self._closed:
                    await self._probe()
            except Exception as exc:  # a bug must not stop the heartbeat: degrade, go on
                logger.exception("lockgate %r: error in the Redis task", self.name)
                self._degrade(exc)

    async def _exchange(self, renew: bool) -> None:
        planned = self._plan(renew)
        if planned is None:
            return
        try:
            try:
                result = await self._call(planned)
            except _REDIS_ERRORS as exc:
                self._degrade(exc)
                return
            if self._mode == "global":
                stale = self._stale(planned, result)
                self._apply(planned.seq, result, planned.arrivals, stale)
            else:  # another call (fastpath=False) failed meanwhile: its seats are not ours
                self._disown(planned.seq, result)
        finally:  # arrivals not seated (a failure, a mode change): no seat from this call
            for waiter in planned.arrivals:
                if waiter.state == _WAITING:
                    waiter.state = _GONE
                    waiter.event.set()

    def _close_window(self) -> None:
        """Seats idle through the whole window go back to Redis."""
        for lane in _LANES:
            idle = self._idle[lane]
            surplus = min(self._low_water[lane], len(idle))
            if surplus > 0:
                self._returns.extend(f"{lane}|{idle.pop()}" for _ in range(surplus))
            self._low_water[lane] = len(idle)

    async def _probe(self) -> None:
        """In a fallback mode: does Redis answer again? A call that asks for nothing says
        so; then one call (atomic: nobody else is served in between) gives back what we
        could not, renews the leases kept for requests still running and leases seats for
        those running without one, and the instance is global again."""
        if self._script is None:  # pragma: no cover - start() sets it
            return
        nothing = [0, 0, 0, 0]
        try:
            # (Asking for seats only once Redis answers keeps the names of seats a failed
            # call may have leased, which go to limbo, to one call per recovery.)
            await self._call(self._sync_args(nothing, nothing, [], []))
            self._local.admit(False)  # from now on the fallback admits nobody: see below
            try:
                planned = self._recovery_call()
                result = await self._call(planned)
            except BaseException:
                self._local.admit(self._mode == "local")
                raise
        except _REDIS_ERRORS:
            self.counters["redis_errors"] += 1
            self._probe_delay = min(2 * self._probe_delay, self.heartbeat)
            self._next_probe = asyncio.get_running_loop().time() + self._probe_delay
            return
        if self._closed:  # pragma: no cover - aclose() cancels the call first
            self._disown(planned.seq, result)
            return
        self._recover()
        self._apply(planned.seq, result, stale=self._stale(planned, result))

    def _recovery_call(self) -> _Planned:
        """The call back to global mode: limbo given back, kept leases renewed (those lost
        leased again), and a seat asked for each request running without one (as debt: ahead
        of every waiter). The fallback admits nobody meanwhile: the count stays true."""
        fallback = self._local.stats().lanes
        unleased = [  # ours without a kept lease, and the fallback's own
            self._debt[lane] - len(self._kept[lane]) + fallback[lane].active - len(shadows)
            for lane, shadows in zip(_LANES, self._shadows, strict=True)
        ]
        ages = [
            _DEBT_AGE_MS if n or kept else 0 for n, kept in zip(unleased, self._kept, strict=True)
        ]
        renew = [f"{lane}!{seat}" for lane in _LANES for seat in self._kept[lane]]
        release, self._limbo = self._limbo, []
        return self._sync_args(unleased, unleased, release, renew, ages=ages)

    def _degrade(self, exc: BaseException) -> None:
        """Redis failed: switch to the fallback mode now."""
        self.counters["redis_errors"] += 1
        if self._mode != "global" or self._closed:
            return
        self.counters["mode_switches"] += 1
        # Probe soon, then less and less often (up to once a heartbeat): a timeout caused by
        # a moment of event-loop lag costs ~50 ms of fallback, an outage a probe a heartbeat.
        self._probe_delay = min(_FIRST_PROBE, self.heartbeat)
        self._next_probe = asyncio.get_running_loop().time() + self._probe_delay
        self._wake.set()
        logger.warning(
            "Redis %s failed (%r): lockgate %r switches to %r mode",
            self.url, exc, self.name, self.on_redis_error,
        )  # fmt: skip
        self._give_up_leases(keep=True)
        self._others = []
        self._registered = [False, False, False, False]
        self._backstop = math.inf
        mode = self._mode = self.on_redis_error
        for lane in _LANES:  # fallback requests still running are the fallback's own
            self._debt[lane] -= self._carried[lane]
            self._carried[lane] = 0
            kept = self._kept[lane]
            while len(kept) > self._debt[lane]:  # a lease no request of ours needs now
                self._limbo.append(f"{lane}|{kept.pop()}")
        if mode == "local":
            if not (self.expected_instances or self.instances_seen):
                logger.warning(
                    "lockgate %r: Redis never answered and expected_instances is not set: "
                    "the local fallback admits ceil(C / %d) = %d (set expected_instances)",
                    self.name, _UNKNOWN_INSTANCES, self._fallback_limit(),
                )  # fmt: skip
            self._size_fallback(admit=True)
        self._refresh_blocked()
        self._move_waiters()

    def _size_fallback(self, admit: bool) -> None:
        """Size the fallback for the current ``C``. In ``"local"`` mode our requests still
        running from global mode count against it: each takes a seat in it (a shadow, up to
        its seats in all) before its waiters are served; then it admits if ``admit``."""
        local = self._local
        local.admitting = False
        local.set_limit(self._fallback_limit())
        if self._mode == "local":
            for lane in _LANES:
                shadows = self._shadows[lane]
                while len(shadows) < self._debt[lane]:
                    shadow = local.shadow(lane)
                    if shadow is None:
                        break
                    shadows.append(shadow)
        local.admit(admit)

    def _recover(self) -> None:
        """Redis answers again (the call that said so renewed the kept leases and asked for
        seats for the requests running without one): back to global seats. The fallback no
        longer admits (``_probe``): its shadows go back without serving its waiters, which
        move to global mode."""
        if self._mode == "global" or self._closed:
            return
        self.counters["mode_switches"] += 1
        logger.warning("Redis %s answers again: lockgate %r is global again", self.url, self.name)
        for lane in _LANES:
            for shadow in self._shadows[lane]:
                shadow.release()
            self._shadows[lane].clear()
        for lane, fallback in zip(_LANES, self._local.stats().lanes, strict=True):
            self._carried[lane] = fallback.active
            self._debt[lane] += fallback.active
            kept = self._kept[lane]  # renewed by the call that found Redis (if not, lost)
            self._busy[lane].extend(kept)
            self._debt[lane] -= len(kept)
            kept.clear()
        self._mode = "global"
        self._refresh_blocked()
        self._move_waiters()
        self._wake.set()

    def _fallback_released(self, lane: Priority) -> None:
        """A fallback request finished; in global mode it ran on (or owed) a global seat."""
        if self._mode == "global" and self._carried[lane]:
            self._carried[lane] -= 1
            self._free_seat(lane)

    async def _acquire_degraded(
        self, lane: Priority, deadline: float, budget: float | None
    ) -> Permit | None:
        """Wait in the fallback mode; ``None`` when the mode changed meanwhile."""
        mode = self._mode
        if mode == "open":
            return self._unleased(lane)
        if mode == "closed":
            self._reject_arrival(lane, RejectReason.SYSTEM_OVERLOAD)
        scope = anyio.CancelScope()
        self._moving.add(scope)
        try:
            with scope:
                left = max(0.0, deadline - self._clock.now())
                return await self._local.acquire(lane, left, budget=budget)
        finally:
            self._moving.discard(scope)
        return None

    async def _listen(self) -> None:
        """The process's one subscription: wake-ups and the waiter registry of others."""
        assert self._client is not None
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self._start_timeout):
                    await pubsub.subscribe(self.channel)
                self._wake.set()  # we may have missed messages while not subscribed
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._on_message(str(message["data"]))
            except _REDIS_ERRORS:
                pass
            except Exception:  # a bug must not end the subscription: log, subscribe again
                logger.exception("lockgate %r: error in the pub/sub task", self.name)
            finally:
                with contextlib.suppress(*_REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(self.heartbeat)

    def __repr__(self) -> str:
        return (
            f"<RedisBackend {self.name!r} mode={self._mode} limit={self._limit} "
            f"leased={sum(self.leased)} queued={self._queued_total}>"
        )

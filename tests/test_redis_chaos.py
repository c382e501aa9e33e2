"""RedisBackend under chaos: worker processes under load, one SIGKILLed; Redis hung or killed.

* Three worker processes share one limit and hammer it from random lanes; two oracles watch
  global in-flight: the lease entries in Redis (sampled) and the workers' own reports (each
  admission increments a counter in Redis, atomically, and checks it). Neither may ever
  exceed C. One worker is SIGKILLed mid-load: its seats must come back within ``lease_ttl``
  plus a heartbeat, and the survivors must get them.
* A throwaway ``redis-server`` that hangs (SIGSTOP) or dies mid-test: the backend falls back
  within ``command_timeout``, requests never wait on Redis, and it is global again once
  Redis answers, leasing seats for the requests that ran meanwhile. No seat leaks.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import anyio
import pytest

from lockgate import GateSettings, LanesSettings, Permit, Priority, QueueTimeout
from lockgate.backends.redis import RedisBackend
from tests._redis import (
    KEY_PREFIX,
    OPEN_LANES,
    REDIS_URL,
    RedisServer,
    await_for,
    chaos_worker,
    forget_worker,
    keys_of,
    live_leases,
    members_of,
    oracle_keys,
    require_redis,
    sync_client,
    unique_name,
    wait_for,
)

pytestmark = pytest.mark.redis

NORMAL = Priority.NORMAL


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def settings(limit: int, **kw: Any) -> GateSettings:
    kw.setdefault("queue_capacity", 50)
    kw.setdefault("wait_timeout", 2.0)
    kw.setdefault("target_wait", None)
    return GateSettings(max_concurrent=limit, lanes=LanesSettings.model_validate(OPEN_LANES), **kw)


# -- worker processes -----------------------------------------------------------------------


def test_processes_never_exceed_the_limit_and_a_killed_one_gives_its_seats_back() -> None:
    require_redis()
    name = unique_name("chaos")
    limit, lease_ttl, clients, duration = 8, 1.0, 6, 4.0
    heartbeat = lease_ttl / 3
    ctx = multiprocessing.get_context("spawn")
    workers = []
    with sync_client() as rc:
        try:
            for worker in range(3):
                ours, theirs = ctx.Pipe()
                proc = ctx.Process(
                    target=chaos_worker,
                    args=(worker, REDIS_URL, name, limit, lease_ttl, clients, duration, theirs),
                    daemon=True,
                )
                proc.start()
                workers.append((proc, ours))
            ids = []
            for _proc, conn in workers:
                assert conn.poll(30.0), "a worker did not start"
                ids.append(conn.recv())

            most_leased = most_reported = 0

            def sample() -> None:
                nonlocal most_leased, most_reported
                most_leased = max(most_leased, sum(live_leases(rc, name)))
                most_reported = max(most_reported, int(rc.get(oracle_keys(name)[0]) or 0))

            started = time.monotonic()
            while time.monotonic() - started < 1.0:  # all three under load
                sample()
                time.sleep(0.005)
            assert most_leased == limit, "the workers should saturate the limit"

            victim, _ = workers[0]
            victim.kill()  # SIGKILL: no clean-up of any kind
            victim.join(5.0)
            forget_worker(rc, name, 0)  # its admissions will never be reported finished
            assert members_of(rc, name, ids[0]) > 0  # it died holding seats

            def dead_seats_back() -> bool:
                sample()
                return members_of(rc, name, ids[0]) == 0

            returned = wait_for(dead_seats_back, lease_ttl + 3 * heartbeat + 1.0, "dead seats")
            assert returned <= lease_ttl + heartbeat + 0.3, returned  # 0.3 s: a loaded machine

            def survivors_use_them() -> bool:
                sample()
                return sum(live_leases(rc, name)) == limit

            wait_for(survivors_use_them, 1.0, "the survivors to lease every seat")
            while any(proc.is_alive() for proc, _ in workers[1:]):
                sample()
                time.sleep(0.005)
            reports = []
            for proc, conn in workers[1:]:
                proc.join(10.0)
                assert conn.poll(1.0), "a survivor did not report"
                reports.append(conn.recv())
        finally:
            for proc, _ in workers:
                if proc.is_alive():
                    proc.kill()
                    proc.join(5.0)
            oracle = oracle_keys(name)
            most_after = int(rc.get(oracle[2]) or 0)
            rc.delete(*oracle)
        assert most_leased <= limit, f"Redis saw {most_leased} seats leased, limit {limit}"
        assert most_reported <= limit and most_after <= limit, (most_reported, most_after)
        for report in reports:
            assert report["over_limit"] == 0 and report["most"] <= limit, report
            assert report["mode_switches"] == 0, report
            assert report["admitted"] > 50, report
        print(
            f"\nkilled worker's seats back after {returned:.3f} s "
            f"(lease_ttl {lease_ttl} s, heartbeat {heartbeat:.3f} s); survivors: {reports}"
        )
        wait_for(lambda: keys_of(rc, name) == [], 3 * lease_ttl, "no keys left")


# -- Redis hung or dead -----------------------------------------------------------------------


async def hold(backend: RedisBackend, count: int) -> list[Permit]:
    with anyio.fail_after(1.0):
        return [await backend.acquire(NORMAL) for _ in range(count)]


def mode(backend: RedisBackend) -> str:
    return backend.mode  # (a call: mypy would narrow the property across awaits)


def release(permits: list[Permit]) -> None:
    for permit in permits:
        permit.release()


@pytest.mark.anyio
async def test_a_hung_redis_means_fallback_within_the_timeout_then_back_to_global() -> None:
    with RedisServer() as server:
        name = unique_name()
        backend = RedisBackend(
            server.url, name, settings=settings(8), lease_ttl=1.0, heartbeat=0.1,
            linger=0, expected_instances=2, command_timeout=0.025, key_prefix=KEY_PREFIX,
        )  # fmt: skip
        async with backend:
            held = await hold(backend, 2)
            assert mode(backend) == "global" and backend.leased[NORMAL] == 2

            server.pause()  # accepts connections, never answers
            loop_time = anyio.current_time
            started = loop_time()
            with anyio.fail_after(1.0):
                local = [await backend.acquire(NORMAL)]  # must ask Redis; 25 ms, then local
            waited = loop_time() - started
            assert mode(backend) == "local"
            assert waited < 0.025 + 0.1, waited
            # The fallback: ceil(8 / 2) = 4 seats, 2 of them taken by the requests in flight.
            another = backend.try_acquire(NORMAL)
            assert another is not None
            local.append(another)
            assert backend.try_acquire(NORMAL) is None
            with anyio.fail_after(1.0), pytest.raises(QueueTimeout):
                await backend.acquire(NORMAL, 0.05)
            release(held)  # their fallback seats are freed with them
            for _ in range(20):  # nobody waits on the hung Redis
                with anyio.fail_after(0.1):
                    (await backend.acquire(NORMAL)).release()
            assert backend.stats().active == 2

            server.resume()
            await await_for(lambda: mode(backend) == "global", 2.0, "global mode again")
            # The two fallback requests still running get leases before anyone else.
            await await_for(lambda: backend.leased[NORMAL] == 2, 1.0, "leases for them")
            release(local)
            await await_for(lambda: backend.leased[NORMAL] == 0, 1.0, "their seats back")
            permit = await backend.acquire(NORMAL)
            assert mode(backend) == "global" and backend.leased[NORMAL] == 1
            permit.release()
            assert backend.counters["mode_switches"] == 2
        client = server.client()
        try:  # a call the hung server ran late may have leased a seat: it expires
            await await_for(lambda: keys_of(client, name) == [], 4.0, "no keys left")
        finally:
            client.close()


@pytest.mark.anyio
async def test_a_dead_redis_means_fallback_at_once_then_global_when_it_is_back() -> None:
    server = RedisServer().start()
    name = unique_name()
    try:
        a = RedisBackend(
            server.url, name, settings=settings(4), lease_ttl=1.0, heartbeat=0.1,
            expected_instances=2, key_prefix=KEY_PREFIX, command_timeout=0.05,
        )  # fmt: skip
        b = RedisBackend(
            server.url, name, settings=settings(4), lease_ttl=1.0, heartbeat=0.1,
            expected_instances=2, key_prefix=KEY_PREFIX, command_timeout=0.05,
        )  # fmt: skip
        async with a, b:
            held = await hold(a, 2)
            server.kill()
            with anyio.fail_after(0.5):
                during = await b.acquire(NORMAL)  # b's pool is empty: Redis is asked
            assert mode(b) == "local"
            await await_for(lambda: mode(a) == "local", 1.0, "a to notice at its heartbeat")
            for _ in range(20):
                with anyio.fail_after(0.1):
                    (await b.acquire(NORMAL)).release()

            server = RedisServer(server.port).start()  # empty: no keys, no script loaded
            await await_for(lambda: mode(a) == mode(b) == "global", 2.0, "both global again")
            release(held)
            during.release()
            # One limit again, with the script loaded anew (EVALSHA -> NOSCRIPT -> load).
            permits = await hold(a, 4)
            assert a.leased[NORMAL] == 4 and b.leased[NORMAL] == 0
            async with anyio.create_task_group() as tg:

                async def wait_in_b() -> None:
                    with anyio.fail_after(2.0):
                        (await b.acquire(NORMAL)).release()

                tg.start_soon(wait_in_b)
                await anyio.sleep(0.05)
                permits.pop().release()
            release(permits)
        client = server.client()
        try:
            await await_for(lambda: keys_of(client, name) == [], 4.0, "no keys left")
        finally:
            client.close()
    finally:
        server.kill()


def test_the_oracle_keys_live_elsewhere() -> None:
    """The oracle's counters are not under the backend's hash tag (never mistaken for its
    keys, never counted in its 'no keys left' checks)."""
    assert all(not key.startswith(f"{{{KEY_PREFIX}:") for key in oracle_keys("x"))

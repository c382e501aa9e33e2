"""Helpers for the Redis backend tests: reachability, names, oracles, throwaway servers, workers.

* ``require_redis()`` skips a test when Redis is unreachable, with the reason, unless
  ``LOCKGATE_REQUIRE_SERVICES=1`` (CI), where it fails instead. ``LOCKGATE_REDIS_URL``
  overrides the default ``redis://127.0.0.1:6379/0``.
* ``unique_name()`` gives each test its own limit (its own hash tag); ``keys_of(name)`` lists
  what is left of it in Redis; every test ends with none.
* ``live_leases()`` is the Redis-side oracle: lease entries whose expiry (in Redis time) is
  still ahead, per lane.
* ``RedisServer`` is a throwaway ``redis-server`` on a free loopback port that a test can
  kill, pause (SIGSTOP: it accepts connections and never answers) and start again.
* ``chaos_worker`` is the body of the worker processes of ``test_redis_chaos.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest
import redis

REDIS_URL = os.environ.get("LOCKGATE_REDIS_URL", "redis://127.0.0.1:6379/0")
KEY_PREFIX = "lockgate-test"

OPEN_LANES: dict[str, dict[str, Any]] = {
    lane: {"share": 1.0, "lendable": 1.0, "borrow_limit": None}
    for lane in ("critical", "high", "normal", "low")
}
"""Every lane fully lendable and unbounded: all C seats are usable by any lane."""

_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #KEYS do out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf') end
return out
"""

_ORACLE = """
local total = redis.call('INCRBY', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[1], ARGV[2])
local most = tonumber(redis.call('GET', KEYS[3]) or '0')
if total > most then redis.call('SET', KEYS[3], total) end
return total
"""
"""Workers' own report of global in-flight: +1 after admission, -1 before release, atomic."""

_FORGET = """
local n = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('DECRBY', KEYS[1], n)
"""


def _reason_unavailable(url: str) -> str | None:
    try:
        client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            info = client.info("server")
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        return f"Redis at {url} is unreachable ({exc!r})"
    if int(str(info.get("redis_version", "0")).split(".")[0]) < 7:
        return f"Redis at {url} is {info.get('redis_version')}; lockgate needs Redis >= 7"
    return None


def require_redis(url: str = REDIS_URL) -> None:
    """Skip (or, with ``LOCKGATE_REQUIRE_SERVICES=1``, fail) unless Redis >= 7 answers."""
    reason = _reason_unavailable(url)
    if reason is None:
        return
    if os.environ.get("LOCKGATE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} and LOCKGATE_REQUIRE_SERVICES=1")
    pytest.skip(reason)


def require_redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("LOCKGATE_REQUIRE_SERVICES") == "1":
            pytest.fail("redis-server is not on PATH and LOCKGATE_REQUIRE_SERVICES=1")
        pytest.skip("redis-server is not on PATH (needed for throwaway servers)")
    return path


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def tag(name: str) -> str:
    return f"{{{KEY_PREFIX}:{name}}}"


def keys_of(client: redis.Redis, name: str) -> list[str]:
    """Every key left under ``name``'s hash tag."""
    pattern = tag(name).replace("{", "\\{").replace("}", "\\}") + "*"
    return sorted(k.decode() if isinstance(k, bytes) else k for k in client.scan_iter(pattern))


def seat_keys(name: str) -> list[str]:
    return [f"{tag(name)}:seats:{lane}" for lane in range(4)]


def live_leases(client: redis.Redis, name: str) -> list[int]:
    """Unexpired lease entries per lane, by Redis's clock."""
    return [int(n) for n in client.eval(_LIVE, 4, *seat_keys(name))]


def members_of(client: redis.Redis, name: str, instance: str) -> int:
    """Lease entries (expired or not, until pruned) held by ``instance``."""
    count = 0
    for key in seat_keys(name):
        for member in client.zrange(key, 0, -1):
            text = member.decode() if isinstance(member, bytes) else str(member)
            count += text.startswith(f"{instance}:")
    return count


def wait_for(predicate: Any, within: float, message: str, poll: float = 0.01) -> float:
    """Poll ``predicate`` until true; seconds it took. ``AssertionError`` after ``within``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            raise AssertionError(f"timed out after {within} s waiting for {message}")
        time.sleep(poll)
    return time.monotonic() - started


async def await_for(predicate: Any, within: float, message: str, poll: float = 0.005) -> float:
    """``wait_for`` on the event loop."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not predicate():
        if loop.time() - started > within:
            raise AssertionError(f"timed out after {within} s waiting for {message}")
        await asyncio.sleep(poll)
    return loop.time() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A throwaway ``redis-server`` on ``127.0.0.1:<port>`` (no persistence)."""

    def __init__(self, port: int | None = None) -> None:
        self.binary = require_redis_server_binary()
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2.0, socket_connect_timeout=2.0)

    def start(self) -> RedisServer:
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10.0
        while True:
            with contextlib.suppress(redis.RedisError, OSError):
                client = self.client()
                try:
                    if client.ping():
                        return self
                finally:
                    client.close()
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited at start-up")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer in 10 s")
            time.sleep(0.01)

    def pause(self) -> None:
        """SIGSTOP: connections hang without an answer (a stuck or partitioned Redis)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                self.resume()
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


@contextlib.contextmanager
def sync_client(url: str = REDIS_URL) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
    try:
        yield client
    finally:
        client.close()


# -- chaos workers ---------------------------------------------------------------------------


def oracle_keys(name: str) -> list[str]:
    base = f"{{{KEY_PREFIX}-oracle:{name}}}"
    return [f"{base}:total", f"{base}:per-worker", f"{base}:max"]


def forget_worker(client: redis.Redis, name: str, worker: int) -> int:
    """Take a killed worker's admissions out of the oracle's total; the new total."""
    return int(client.eval(_FORGET, 2, *oracle_keys(name)[:2], str(worker)))


def chaos_worker(
    worker: int, url: str, name: str, limit: int, lease_ttl: float, clients: int,
    duration: float, conn: Connection,
) -> None:  # fmt: skip
    """A process using the backend under load: ``clients`` concurrent request loops in
    random lanes, holding seats 0-10 ms, for ``duration`` seconds. Reports its instance id
    first, then a dict of counts. Every admission is reported to the oracle in Redis."""
    asyncio.run(_chaos(worker, url, name, limit, lease_ttl, clients, duration, conn))


async def _chaos(
    worker: int, url: str, name: str, limit: int, lease_ttl: float, clients: int,
    duration: float, conn: Connection,
) -> None:  # fmt: skip
    import redis.asyncio as aioredis

    from lockgate import GateSettings, LanesSettings, Priority, Rejected
    from lockgate.backends.redis import RedisBackend

    settings = GateSettings(
        max_concurrent=limit,
        queue_capacity=4 * clients,
        wait_timeout=1.0,
        target_wait=None,
        lanes=LanesSettings.model_validate(OPEN_LANES),
    )
    client = aioredis.Redis.from_url(url)
    oracle = client.register_script(_ORACLE)
    keys = oracle_keys(name)
    counts = {"admitted": 0, "rejected": 0, "over_limit": 0, "most": 0}
    # A loaded test machine is not a slow Redis: the generous timeout keeps the backend
    # global, which is what this test is about (the fallback has tests of its own).
    backend = RedisBackend(
        url, name, lease_ttl=lease_ttl, settings=settings, command_timeout=0.5,
        key_prefix=KEY_PREFIX, linger=0.1,
    )  # fmt: skip
    async with backend:
        conn.send(backend.instance_id)
        loop = asyncio.get_running_loop()
        stop = loop.time() + duration

        async def one_client(i: int) -> None:
            rng = random.Random(worker * 1000 + i)
            while loop.time() < stop:
                lane = rng.choice(list(Priority))
                try:
                    permit = backend.try_acquire(lane) or await backend.acquire(lane, 0.5)
                except Rejected:
                    counts["rejected"] += 1
                    continue
                try:
                    total = int(await oracle(keys=keys, args=[worker, 1]))
                    counts["most"] = max(counts["most"], total)
                    counts["over_limit"] += total > limit
                    await asyncio.sleep(rng.uniform(0.0, 0.01))
                    await oracle(keys=keys, args=[worker, -1])
                finally:
                    permit.release()
                counts["admitted"] += 1

        await asyncio.gather(*(one_client(i) for i in range(clients)))
        counts["mode_switches"] = backend.counters["mode_switches"]
        counts["lost_leases"] = backend.counters["lost_leases"]
    await client.aclose()
    conn.send(counts)

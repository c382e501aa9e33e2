"""An open-loop HTTP/1.1 load generator: Poisson arrivals sent on schedule, whatever is pending.

A closed-loop tool (wrk, a fixed pool of users) slows down with the server and so hides
overload; here request ``i`` is sent at its scheduled time ``t_i`` whether or not earlier
ones have been answered, and its latency is measured *from ``t_i``*, so a late send or a slow
connect counts against the server (no coordinated omission).

* Arrivals: a Poisson process whose rate follows a piecewise-linear schedule
  ``[(t, rate), ...]`` (thinning), each request drawn from the route mix; seeded, so every
  variant of a scenario sees the identical sequence.
* Connections: keep-alive HTTP/1.1 over loopback, one request at a time per connection. A free
  idle connection is reused, else a new one is opened, up to ``max_connections``; a request
  that finds neither is not sent and counted as client overflow. A response with
  ``Connection: close`` retires its connection.
* Each request records its route, scheduled time, send lag (how late the generator sent it),
  latency, status (or timeout / overflow / error) and, for a ``503``, the ``error.code`` of
  its JSON body (``"plain"`` when there is none, e.g. uvicorn's ``--limit-concurrency``).
* Hand-written client on ``asyncio.Protocol`` with httptools' C response parser, on uvloop.

Speed on one core of the reference machine (2-core AMD EPYC VM; ``overload.py --scenario
calibrate --nice 10``: generator on core 1, uvicorn's bare ``/health`` on core 0): 8000 req/s
offered, 7952 req/s sent, send lag p50 0.1 ms / p99 11 ms, using about 21 % of its core
during sending; 4000 req/s at lag p99 3 ms and 14 %. The scenarios offer at most 923 req/s
(3x capacity). Each run reports its own send lag and CPU, so a run where the generator fell
behind is visible.

It is a measuring instrument for open-loop overload runs, not a general HTTP client: no TLS,
no redirects, one fixed request per route.

Usage: ``python -m lockgate.demo._loadgen < spec.json > results.json`` (``Spec`` describes the
JSON; ``benchmarks/loadgen.py`` is the same), ``run(spec)`` from Python, or ``await
generate(spec, progress)`` on a running loop.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httptools

__all__ = [
    "ERROR", "OVERFLOW", "PENDING", "TIMEOUT", "Progress", "Results", "Spec", "arrivals",
    "generate", "main", "rate_at", "run", "spec_from_json",
]

PENDING, TIMEOUT, OVERFLOW, ERROR = 0, -1, -2, -3
"""Status values that are not HTTP status codes."""


@dataclass(frozen=True, slots=True)
class Spec:
    """One run: where to send, what, when."""

    port: int
    routes: list[tuple[str, str, str]]
    """``(method, path, body)`` per route."""
    weights: list[float]
    """Share of the arrivals per route."""
    schedule: list[tuple[float, float]]
    """Breakpoints ``(seconds, requests/s)``; the rate is linear between them, the run ends
    at the last one."""
    seed: int = 1
    timeout: float = 10.0
    max_connections: int = 4000
    host: str = "127.0.0.1"


@dataclass(slots=True)
class Results:
    """Per request (same index everywhere) plus a few totals in ``meta``."""

    route: list[int]
    sched: list[float]
    lag: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    """Seconds from the scheduled time to the full response; ``-1`` if none came."""
    status: list[int] = field(default_factory=list)
    code: list[str] = field(default_factory=list)
    meta: dict[str, float] = field(default_factory=dict)


Progress = Callable[[Results, float], None]
"""Called about every ``PROGRESS_EVERY`` seconds while sending: the results so far (statuses
still ``PENDING`` where no answer came yet) and the seconds since the first send."""
PROGRESS_EVERY = 0.25


def arrivals(
    schedule: list[tuple[float, float]], weights: list[float], seed: int
) -> tuple[list[float], list[int]]:
    """Poisson arrival times under a piecewise-linear rate, and a route for each."""
    rng = random.Random(seed)
    peak = max(rate for _, rate in schedule)
    end = schedule[-1][0]
    times: list[float] = []
    t = 0.0
    while peak > 0:
        t += rng.expovariate(peak)
        if t >= end:
            break
        if rng.random() * peak < rate_at(schedule, t):
            times.append(t)
    routes = rng.choices(range(len(weights)), weights, k=len(times))
    return times, routes


def rate_at(schedule: list[tuple[float, float]], t: float) -> float:
    """The scheduled rate at ``t`` (linear between breakpoints)."""
    for (t0, r0), (t1, r1) in itertools.pairwise(schedule):
        if t0 <= t < t1:
            return r0 + (r1 - r0) * (t - t0) / (t1 - t0) if t1 > t0 else r1
    return schedule[-1][1]


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying at most one request at a time."""

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.current = -1
        self.body: bytearray | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.gen.failed(self)

    def on_headers_complete(self) -> None:
        self.body = bytearray() if self.parser.get_status_code() == 503 else None

    def on_body(self, body: bytes) -> None:
        if self.body is not None:
            self.body += body

    def on_message_complete(self) -> None:
        code = _error_code(bytes(self.body)) if self.body is not None else ""
        self.gen.completed(self, self.parser.get_status_code(), code,
                           self.parser.should_keep_alive())

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)


class _Generator:
    """Sends the arrivals of one run and records what happens to each."""

    def __init__(self, spec: Spec, progress: Progress | None = None) -> None:
        self.spec = spec
        self.progress = progress
        self.loop = asyncio.get_running_loop()
        sched, route = arrivals(spec.schedule, spec.weights, spec.seed)
        n = len(sched)
        self.res = Results(route, sched, [0.0] * n, [-1.0] * n, [PENDING] * n, [""] * n)
        self.requests = [_request(spec.host, method, path, body.encode())
                         for method, path, body in spec.routes]
        self.idle: list[_Connection] = []
        self.open = 0
        self.peak_open = 0
        self.outstanding = 0
        self.timers: dict[int, asyncio.TimerHandle] = {}
        self.on_wire: dict[int, _Connection] = {}
        self.connecting: set[asyncio.Task[None]] = set()
        self.dispatched = False
        self.done = asyncio.Event()
        self.t0 = 0.0

    async def run(self) -> Results:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        self.t0 = self.loop.time() + 0.05
        t0_wall = time.time() + 0.05
        reporter = self.loop.create_task(self._report()) if self.progress else None
        await self._dispatch()
        self.dispatched = True
        send_cpu, send_wall = time.process_time() - cpu0, time.perf_counter() - wall0
        if self.outstanding:
            await asyncio.wait_for(self.done.wait(), self.spec.timeout + 5.0)
        if reporter is not None:
            reporter.cancel()
        for conn in self.idle:
            assert conn.transport is not None
            conn.transport.abort()
        sched = self.res.sched
        self.res.meta = {
            "wall": time.perf_counter() - wall0,
            "cpu": time.process_time() - cpu0,
            "send_wall": send_wall,
            "send_cpu": send_cpu,
            "span": sched[-1] - sched[0] if sched else 0.0,
            "peak_connections": self.peak_open,
            "t0_wall": t0_wall,
        }
        return self.res

    async def _report(self) -> None:
        assert self.progress is not None
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            self.progress(self.res, self.loop.time() - self.t0)

    async def _dispatch(self) -> None:
        loop, lag = self.loop, self.res.lag
        for i, t in enumerate(self.res.sched):
            due = self.t0 + t
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
                now = loop.time()
            lag[i] = now - due
            self._send(i, due)

    def _send(self, i: int, due: float) -> None:
        if self.idle:
            self._write(self.idle.pop(), i)
        elif self.open >= self.spec.max_connections:
            self.res.status[i] = OVERFLOW
            return
        else:
            self.open += 1
            self.peak_open = max(self.peak_open, self.open)
            task = self.loop.create_task(self._connect(i))
            self.connecting.add(task)
            task.add_done_callback(self.connecting.discard)
        self.outstanding += 1
        self.timers[i] = self.loop.call_at(due + self.spec.timeout, self._timed_out, i)

    async def _connect(self, i: int) -> None:
        try:
            _, conn = await self.loop.create_connection(
                lambda: _Connection(self), self.spec.host, self.spec.port)
        except OSError:
            self.open -= 1
            if self.res.status[i] == PENDING:
                self._finish(i, ERROR)
            return
        if self.res.status[i] == PENDING:
            self._write(conn, i)
        else:  # timed out while connecting
            assert conn.transport is not None
            conn.transport.close()

    def _write(self, conn: _Connection, i: int) -> None:
        assert conn.transport is not None
        conn.current = i
        self.on_wire[i] = conn
        conn.transport.write(self.requests[self.res.route[i]])

    def _finish(self, i: int, status: int, code: str = "") -> None:
        self.res.status[i] = status
        if status > 0:
            self.res.latency[i] = self.loop.time() - self.t0 - self.res.sched[i]
        self.res.code[i] = code
        timer = self.timers.pop(i, None)
        if timer is not None:
            timer.cancel()
        self.on_wire.pop(i, None)
        self.outstanding -= 1
        if self.dispatched and not self.outstanding:
            self.done.set()

    def _timed_out(self, i: int) -> None:
        self.timers.pop(i, None)
        conn = self.on_wire.get(i)
        self._finish(i, TIMEOUT)
        if conn is not None:
            conn.current = -1
            assert conn.transport is not None
            conn.transport.abort()

    def completed(self, conn: _Connection, status: int, code: str, keep_alive: bool) -> None:
        i, conn.current = conn.current, -1
        if i < 0:
            return
        self._finish(i, status, code)
        if keep_alive:
            self.idle.append(conn)
        else:
            assert conn.transport is not None
            conn.transport.close()

    def failed(self, conn: _Connection) -> None:
        i, conn.current = conn.current, -1
        if i >= 0:
            self._finish(i, ERROR)
        assert conn.transport is not None
        conn.transport.abort()

    def lost(self, conn: _Connection) -> None:
        self.open -= 1
        if conn.current >= 0:
            self._finish(conn.current, ERROR)
            conn.current = -1
        elif conn in self.idle:
            self.idle.remove(conn)


def run(spec: Spec, progress: Progress | None = None) -> Results:
    """Run ``spec`` on a fresh event loop (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(generate(spec, progress))
    return uvloop.run(generate(spec, progress))


async def generate(spec: Spec, progress: Progress | None = None) -> Results:
    """Run ``spec`` on the running loop; ``progress`` is called while it runs."""
    _raise_fd_limit(spec.max_connections + 100)
    return await _Generator(spec, progress).run()


def _request(host: str, method: str, path: str, body: bytes) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lockgate-loadgen\r\n"
    if body or method in ("POST", "PUT", "PATCH"):
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _error_code(body: bytes) -> str:
    """``error.code`` of a structured 503 body, ``"plain"`` when the body has none."""
    start = body.find(b'"code":"')
    if start < 0:
        return "plain"
    start += 8
    return body[start : body.find(b'"', start)].decode(errors="replace")


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def spec_from_json(data: dict[str, Any]) -> Spec:
    """A ``Spec`` from its JSON form (lists for tuples)."""
    return Spec(
        port=data["port"],
        routes=[(m, p, b) for m, p, b in data["routes"]],
        weights=data["weights"],
        schedule=[(t, r) for t, r in data["schedule"]],
        seed=data.get("seed", 1),
        timeout=data.get("timeout", 10.0),
        max_connections=data.get("max_connections", 4000),
        host=data.get("host", "127.0.0.1"),
    )


def main() -> None:
    """Read a ``Spec`` as JSON on stdin, run it, write the ``Results`` as JSON on stdout."""
    res = run(spec_from_json(json.load(sys.stdin)))
    json.dump({
        "route": res.route,
        "sched": [round(t, 6) for t in res.sched],
        "lag": [round(t, 6) for t in res.lag],
        "latency": [round(t, 6) for t in res.latency],
        "status": res.status,
        "code": res.code,
        "meta": res.meta,
    }, sys.stdout)


if __name__ == "__main__":
    main()

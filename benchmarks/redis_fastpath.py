"""T4: what the Redis backend costs on a trivial endpoint, and 2x overload across processes.

    .venv/bin/python benchmarks/redis_fastpath.py [--duration S] [--rounds R] [--connections N]
                                                 [--variants a,b] [--overload] [--only-overload]
                                                 [--redis-url URL]

**Fast path** (DESIGN §11 T4, closed loop, trivial endpoint): uvicorn (httptools, uvloop, one
worker, no access log) pinned to CPU 0 serves ``benchmarks/_apps.py``'s ``bare`` app four ways,
and ``wrk -t1 -c<N>`` pinned to CPU 1 drives it; variants rotate inside each round:

* ``bare`` -- the raw app;
* ``gated`` -- ``Gate(app)``, default settings (100 seats, in-process);
* ``redis`` -- ``Gate(app, backend=RedisBackend(...))``, the same settings, seats leased in
  blocks and admitted locally (the default);
* ``redis-rt`` -- ``RedisBackend(fastpath=False)``: one script call to lease each request's
  seat and one to give it back (the "one round trip per request" design).

A dedicated ``redis-server`` (no persistence) runs pinned to CPU 1 beside wrk, so the server
core is shared with nothing; ``--redis-url`` uses another one instead. Per run: requests/s,
server CPU us per request, Redis commands per 1000 requests and Redis CPU us per request, and
the keys left in Redis after the server stopped (must be 0: no leaked seat).

**2x overload** (``--overload``): the T2 mix of ``sample_service.py`` (20 % login / 70 % read
/ 10 % batch, 50/50/200 ms) offered open-loop by ``loadgen.py`` at 2x the capacity of 20
seats (615 req/s), split evenly over the server processes, all pinned to CPU 0:

* ``1 proc, in-process`` -- one process, ``Gate`` with 20 seats (the reference);
* ``2 procs, 10 + 10`` -- two processes with 10 in-process seats each (a static split);
* ``2 procs, redis`` -- two processes sharing 20 seats through Redis (block leasing);
* ``2 procs, redis-rt`` -- the same, one round trip per request;
* ``90/10, ...`` -- two processes again, with 90 % of the load sent to one of them: where a
  static split of the seats leaves most of the quiet process's seats idle.

Goodput (DESIGN §11) = seat-time of the responses completed within 5x their service time,
over the seat-time of the 20 seats; "open" divides by the 18 seats open to these lanes
(critical holds 2 idle). Benchmarks print; they never assert.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _apps import BENCH_PATH, bare
from _machine import (
    HOST,
    busy_seconds,
    children_cpu_seconds,
    cpu_seconds,
    machine,
    pin,
    stop,
    wait_port,
    wait_until_quiet,
    wrk,
    wrk_version,
)
from lockgate import Gate, GateSettings
from lockgate._types import ASGIApp, Receive, Scope, Send
from lockgate.backends.redis import RedisBackend
from lockgate.demo import Results, goodput, percentile, tally
from lockgate.demo._measure import ALL
from lockgate.demo._server import free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVER_CPU, SIDE_CPU = "0", "1"
KEY_PREFIX = "lockgate-bench"
URL_ENV, NAME_ENV, OVERLOAD_ENV = (
    "LOCKGATE_BENCH_REDIS_URL", "LOCKGATE_BENCH_REDIS_NAME", "LOCKGATE_BENCH_OVERLOAD",
)  # fmt: skip
VARIANTS = {
    "bare": "the raw ASGI app",
    "gated": "Gate(app), in-process seats",
    "redis": "Gate(app, backend=RedisBackend()): block leasing",
    "redis-rt": "RedisBackend(fastpath=False): a round trip per acquire and per release",
}
DISTURBED = 0.15
"""Cores used by other processes above which a run is repeated (other sessions, builds)."""


# -- the apps uvicorn serves (``--app-dir benchmarks redis_fastpath:<name>``) --------------


def with_backend(app: ASGIApp, backend: RedisBackend) -> ASGIApp:
    """``app`` with the backend started and closed by the ASGI lifespan (the hook a gate
    with a Redis backend needs)."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await backend.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await backend.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    return serve


def redis_gate(app: ASGIApp, settings: GateSettings, fastpath: bool) -> ASGIApp:
    # The round-trip-per-request variant gets a 0.5 s command timeout and a pool of 128
    # connections: with 25 ms, the event-loop lag of a saturated server alone makes some
    # of its calls "time out" and it spends the run in its fallback mode, measuring nothing.
    tuning: dict[str, Any] = {} if fastpath else {"command_timeout": 0.5, "pool_size": 128}
    backend = RedisBackend(
        os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"),
        os.environ.get(NAME_ENV, "bench"),
        settings=settings, fastpath=fastpath, key_prefix=KEY_PREFIX, **tuning,
    )  # fmt: skip
    return with_backend(Gate(app, settings, backend=backend), backend)


gated = Gate(bare)
redis = redis_gate(bare, GateSettings(), fastpath=True)
redis_rt = redis_gate(bare, GateSettings(), fastpath=False)


def overload_app() -> ASGIApp:
    """uvicorn ``--factory``: the sample service behind the gate ``LOCKGATE_BENCH_OVERLOAD``
    describes (JSON: ``kind`` gate | redis | redis-rt, ``seats``)."""
    from sample_service import SampleService, classifier

    config = json.loads(os.environ[OVERLOAD_ENV])
    settings = GateSettings(max_concurrent=config["seats"], queue_capacity=200, wait_timeout=3.0)
    service = SampleService(pool=20)
    if config["kind"] == "gate":
        return Gate(service, settings, classifier=classifier())
    fastpath = config["kind"] == "redis"
    tuning: dict[str, Any] = {} if fastpath else {"command_timeout": 0.5, "pool_size": 128}
    backend = RedisBackend(
        os.environ[URL_ENV], os.environ[NAME_ENV], settings=settings,
        fastpath=fastpath, key_prefix=KEY_PREFIX, **tuning,
    )  # fmt: skip
    return with_backend(Gate(service, settings, classifier=classifier(), backend=backend), backend)


# -- machine and processes --------------------------------------------------------------------


class Redis:
    """The Redis the backends use: a dedicated, pinned server, or one given by URL."""

    def __init__(self, url: str | None) -> None:
        import redis as redis_py

        self.proc: subprocess.Popen[bytes] | None = None
        if url is None:
            port = free_port()
            command = [
                "redis-server", "--port", str(port), "--bind", HOST, "--save", "",
                "--appendonly", "no", "--loglevel", "warning",
            ]  # fmt: skip
            self.proc = subprocess.Popen(pin(SIDE_CPU, command), stdout=subprocess.DEVNULL)
            wait_port(port, self.proc, "redis-server")
            url = f"redis://{HOST}:{port}/0"
        self.url = url
        self.client = redis_py.Redis.from_url(url, socket_timeout=5.0)
        self.pid = int(self.client.info("server")["process_id"])

    def scripts(self) -> int:
        """Script calls so far (EVALSHA and EVAL; commands run inside them not counted)."""
        stats = self.client.info("commandstats")
        return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))

    def keys(self, name: str) -> list[str]:
        pattern = f"\\{{{KEY_PREFIX}:{name}\\}}*"
        return [k.decode() for k in self.client.scan_iter(pattern)]

    def close(self) -> None:
        self.client.close()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def start_server(
    target: str, port: int, env: dict[str, str], log: Any, factory: bool = False
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "uvicorn", target, "--app-dir", str(HERE), "--host", HOST,
        "--port", str(port), "--http", "httptools", "--loop", "uvloop", "--workers", "1",
        "--no-access-log", "--log-level", "warning", "--lifespan", "on",
        *(["--factory"] if factory else []),
    ]  # fmt: skip
    proc = subprocess.Popen(
        pin(SERVER_CPU, command), cwd=ROOT, env={**os.environ, **env}, stderr=log
    )
    wait_port(port, proc, target)
    return proc


def fallbacks(log: Any) -> int:
    """Switches to a fallback mode the server logged (lockgate warns on each)."""
    log.seek(0)
    return sum(b"switches to" in line for line in log)


# -- the fast path ----------------------------------------------------------------------------


@dataclass
class Run:
    rps: float
    requests: int
    non_2xx: int
    errors: int
    p99_ms: float
    server_us: float = 0.0
    redis_calls: float = 0.0
    """Script calls (EVALSHA) per 1000 requests."""
    redis_us: float = 0.0
    other: float = 0.0
    leaked: int = 0
    fallbacks: int = 0


def run_wrk(port: int, duration: float, connections: int) -> Run:
    got = wrk(f"http://{HOST}:{port}{BENCH_PATH}", duration, connections, SIDE_CPU)
    return Run(
        rps=got.rps, requests=got.requests, non_2xx=got.non_2xx, errors=got.errors,
        p99_ms=got.p99_ms or 0.0,
    )  # fmt: skip


def measure(variant: str, args: argparse.Namespace, redis: Redis) -> Run:
    if args.wait_quiet > 0:
        busy = wait_until_quiet(args.wait_quiet, DISTURBED)
        if busy >= DISTURBED:
            print(f"  (others keep {busy:.0%} of a core busy; measuring anyway)")
    port = free_port()
    name = f"fast-{uuid.uuid4().hex[:8]}"
    target = "redis_fastpath:" + variant.replace("-", "_")
    log = tempfile.TemporaryFile()
    proc = start_server(target, port, {URL_ENV: redis.url, NAME_ENV: name}, log)
    try:
        run_wrk(port, args.warmup, args.connections)
        server, rcpu, calls = cpu_seconds(proc.pid), cpu_seconds(redis.pid), redis.scripts()
        loadgen, busy, started = children_cpu_seconds(), busy_seconds(), time.monotonic()
        run = run_wrk(port, args.duration, args.connections)
        wall = time.monotonic() - started
        server = cpu_seconds(proc.pid) - server
        rcpu = cpu_seconds(redis.pid) - rcpu
        calls = redis.scripts() - calls
        loadgen = children_cpu_seconds() - loadgen
        busy = busy_seconds() - busy
        requests = max(1, run.requests)
        run.server_us = 1e6 * server / requests
        run.redis_us = 1e6 * rcpu / requests
        run.redis_calls = 1000.0 * calls / requests
        run.other = max(0.0, busy - server - rcpu - loadgen) / wall
    finally:
        stop(proc)
    run.leaked = len(redis.keys(name))
    run.fallbacks = fallbacks(log)
    log.close()
    return run


def fastpath(args: argparse.Namespace, redis: Redis) -> None:
    variants = [v for v in args.variants.split(",") if v]
    if "bare" not in variants or set(variants) - set(VARIANTS):
        raise SystemExit(f"--variants: bare plus any of {', '.join(VARIANTS)}")
    print(
        f"setup     uvicorn --http httptools --loop uvloop --workers 1 on CPU {SERVER_CPU}; "
        f"wrk -t1 -c{args.connections} and redis-server on CPU {SIDE_CPU}; GET {BENCH_PATH}; "
        f"{args.rounds} rounds x {args.duration:g} s (+{args.warmup:g} s warm-up)\n"
    )
    runs: dict[str, list[Run]] = {v: [] for v in variants}
    for round_no in range(args.rounds):
        order = variants[round_no % len(variants) :] + variants[: round_no % len(variants)]
        for variant in order:
            run = measure(variant, args, redis)
            for _ in range(args.retries):
                if run.other <= DISTURBED:
                    break
                print(f"  ({variant}: others used {run.other:.0%} of a core; repeating)")
                run = measure(variant, args, redis)
            runs[variant].append(run)
            print(
                f"  round {round_no + 1} {variant:<9} {run.rps:>9,.0f} req/s  "
                f"{run.server_us:5.1f} us CPU/req  p99 {run.p99_ms:6.2f} ms  redis "
                f"{run.redis_calls:7.2f} calls/1k req {run.redis_us:5.1f} us/req  "
                f"others {run.other:4.0%}  keys left {run.leaked}  fallbacks {run.fallbacks}"
                + (f"  NON-2XX {run.non_2xx}" if run.non_2xx else "")
                + (f"  SOCKET ERRORS {run.errors}" if run.errors else ""),
                flush=True,
            )  # fmt: skip
    print()
    bare_rps = statistics.median(r.rps for r in runs["bare"])
    rounds = "".join(f"{f'round {i + 1}':>10}" for i in range(args.rounds))
    print(
        f"{'variant':<10}{rounds}{'median':>10}{'ratio':>7}{'us/req':>8}"
        f"{'calls/1k':>9}{'redis us':>9}{'leaked':>7}{'fallbk':>7}  what"
    )
    for variant, rs in runs.items():
        median = statistics.median(r.rps for r in rs)
        cells = "".join(f"{r.rps:>10,.0f}" for r in rs)
        print(
            f"{variant:<10}{cells}{median:>10,.0f}{median / bare_rps:>7.3f}"
            f"{statistics.median(r.server_us for r in rs):>8.1f}"
            f"{statistics.median(r.redis_calls for r in rs):>9.2f}"
            f"{statistics.median(r.redis_us for r in rs):>9.1f}"
            f"{sum(r.leaked for r in rs):>7}{sum(r.fallbacks for r in rs):>7}  "
            f"{VARIANTS[variant]}"
        )
    print(
        "\nratio = median req/s / bare's (T4 target for redis: >= 0.5); us/req = server CPU "
        "per request; calls/1k = script calls (EVALSHA) per 1000 requests;\nredis us = Redis "
        "CPU per request; leaked = keys left under the run's name after the server stopped, "
        "and fallbk = switches\nto the fallback mode (a Redis call over its timeout), both "
        "over all rounds."
    )


# -- 2x overload over two processes ---------------------------------------------------------

OVERLOAD_VARIANTS: dict[str, tuple[int, str, int, float]] = {
    # name: (processes, kind, seats per process, share of the load sent to the first)
    "1 proc, in-process": (1, "gate", 20, 1.0),
    "2 procs, 10 + 10": (2, "gate", 10, 0.5),
    "2 procs, redis": (2, "redis", 20, 0.5),
    "2 procs, redis-rt": (2, "redis-rt", 20, 0.5),
    "90/10, 10 + 10": (2, "gate", 10, 0.9),
    "90/10, redis": (2, "redis", 20, 0.9),
}


def overload(args: argparse.Namespace, redis: Redis) -> None:
    from sample_service import ROUTES, mean_service_time

    capacity = 20 / mean_service_time()
    rate, duration, lo = 2.0 * capacity, args.overload_duration, 2.0
    print(
        f"\n2x overload: T2 mix at {rate:.0f} req/s open-loop for {duration:g} s (window "
        f"[{lo:g}, {duration:g}) s), capacity 20 seats = {capacity:.0f} req/s; servers on CPU "
        f"{SERVER_CPU}, loadgen.py and redis on CPU {SIDE_CPU}\n"
    )
    header = (
        f"{'variant':<20}{'goodput':>8}{'open':>7}{'ok/s':>7}{'503/s':>7}{'t/o':>5}"
        f"{'high p50/p99':>15}{'normal p50/p99':>16}{'low p50/p99':>15}{'503 p99':>9}"
        f"{'leaked':>7}{'fallbk':>7}"
    )
    rows = []
    for variant, (procs, kind, seats, first) in OVERLOAD_VARIANTS.items():
        name = f"over-{uuid.uuid4().hex[:8]}"
        ports = [free_port() for _ in range(procs)]
        env = {URL_ENV: redis.url, NAME_ENV: name,
               OVERLOAD_ENV: json.dumps({"kind": kind, "seats": seats})}  # fmt: skip
        log = tempfile.TemporaryFile()
        servers = [start_server("redis_fastpath:overload_app", p, env, log, True) for p in ports]
        try:
            rates = [rate * first, rate * (1.0 - first)][:procs]
            results = _loadgens(ports, rates, duration)
        finally:
            for proc in servers:
                stop(proc)
        leaked = len(redis.keys(name))
        rows.append(_overload_row(variant, results, ROUTES, lo, duration, leaked, fallbacks(log)))
        log.close()
        print(f"  {variant}: done", flush=True)
    print()
    print(header)
    for row in rows:
        print(row)
    print(
        "\ngoodput = seat-time of 200s completed within 5x their service time in the window / "
        "20 seats x window; open = the same / the 18 seats open to these lanes;\nok/s, "
        "503/s = responses per second of the window; t/o = client timeouts (10 s); "
        "latencies in ms from the scheduled send time;\nleaked, fallbk: as above."
    )


def _loadgens(ports: list[int], rates: list[float], duration: float) -> list[dict[str, Any]]:
    from sample_service import ROUTES

    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (port, rate) in enumerate(zip(ports, rates, strict=True)):
            spec = {
                "port": port,
                "routes": [(r.method, r.path, r.body.decode()) for r in ROUTES],
                "weights": [r.weight for r in ROUTES],
                "schedule": [(0.0, rate), (duration, rate)],
                "seed": 11 + i,
            }
            out = Path(tmp, f"{i}.json")
            command = [sys.executable, str(HERE / "loadgen.py")]
            with out.open("w") as sink:
                proc = subprocess.Popen(
                    pin(SIDE_CPU, command), stdin=subprocess.PIPE, stdout=sink, cwd=HERE
                )
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(spec).encode())
                proc.stdin.close()
            procs.append((proc, out))
        results = []
        for proc, out in procs:
            proc.wait(duration + 60)
            results.append(json.loads(out.read_text()))
    return results


def _overload_row(
    variant: str, results: list[dict[str, Any]], routes: Any, lo: float, hi: float,
    leaked: int, fallbacks: int,
) -> str:  # fmt: skip
    """One row: the processes' results merged, goodput over the one shared pool of 20."""
    merged = Results(route=[], sched=[], latency=[], status=[])
    for raw in results:
        for key in ("route", "sched", "latency", "status"):
            getattr(merged, key).extend(raw[key])
    good = goodput(merged, routes, 20, lo, hi)[ALL]
    lanes, window = tally(merged, routes, lo, hi), hi - lo
    every = lanes[ALL]

    def ms(values: list[float], q: float) -> str:
        return f"{1000 * percentile(values, q):.0f}" if values else "-"

    def pair(route: int) -> str:
        ok = lanes[routes[route].lane.label].ok_latency
        return f"{ms(ok, 0.5)}/{ms(ok, 0.99)}"

    return (
        f"{variant:<20}{good:>8.3f}{good * 20 / 18:>7.3f}{every.ok / window:>7.0f}"
        f"{every.shed / window:>7.0f}{every.timeouts:>5}{pair(0):>15}{pair(1):>16}"
        f"{pair(2):>15}{ms(every.shed_latency, 0.99):>9}{leaked:>7}{fallbacks:>7}"
    )


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="s per run (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured s per run (2)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant (3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--overload", action="store_true", help="also run 2x overload")
    parser.add_argument("--only-overload", action="store_true", help="only 2x overload")
    parser.add_argument("--overload-duration", type=float, default=12.0, help="s (12)")
    parser.add_argument("--redis-url", help="use this Redis instead of a dedicated one")
    parser.add_argument(
        "--wait-quiet", type=float, default=60.0, metavar="S",
        help="before each run, wait up to S s for other processes to go idle (60; 0: never)",
    )  # fmt: skip
    parser.add_argument(
        "--retries", type=int, default=2, help="repeat a disturbed run up to this often (2)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None and not args.only_overload:
        raise SystemExit("wrk not found: apt-get install -y wrk (Debian/Ubuntu)")
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        print("warning: fewer than 2 CPUs or no taskset: nothing is pinned, numbers are noisy\n")
    for key, value in machine(("lockgate", "uvicorn", "httptools", "uvloop", "redis")):
        print(f"{key:<9} {value}")
    redis = Redis(args.redis_url)
    try:
        server_info = redis.client.info("server")
        print(f"{'redis':<9} {server_info['redis_version']} at {redis.url}"
              f"{' (dedicated, CPU ' + SIDE_CPU + ')' if redis.proc else ''}")  # fmt: skip
        print(f"{'wrk':<9} {wrk_version()}\n")
        if not args.only_overload:
            fastpath(args, redis)
        if args.overload or args.only_overload:
            overload(args, redis)
    finally:
        redis.close()


if __name__ == "__main__":
    main()

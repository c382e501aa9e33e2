"""T1: the gate's overhead on a trivial endpoint (DESIGN.md §11), bare vs gated, one command.

    .venv/bin/python benchmarks/overhead.py [--duration S] [--connections N] [--rounds R]

Serves ``benchmarks/_apps.py`` with uvicorn (httptools, uvloop, 1 worker, no access log)
pinned to CPU 0, and drives it closed-loop from CPU 1 with ``wrk`` (or, without ``wrk``, a
bundled asyncio load generator, which is then likely the bottleneck and is reported as such).
Variants alternate inside each round (the order rotates per round) so that drift of the
machine hits all of them alike; the table shows requests/s per round, the median and the
ratio to the bare app's median. Target (T1): gated / bare >= 0.90.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

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
from lockgate.demo._server import free_port

ROOT = Path(__file__).resolve().parent.parent
PATH = "/api/v1/users/me"  # benchmarks._apps.BENCH_PATH (not imported: keep this light)
VARIANTS = {
    "bare": "the raw ASGI app",
    "gated": "Gate(app), default settings",
    "classified": "Gate(app) + RuleClassifier (5 prefix rules)",
    "metered": "Gate(app) + OpenTelemetry SDK meter (Prometheus reader)",
}
FACTORIES = {"metered"}
"""Variants that ``benchmarks._apps`` builds in a factory (``uvicorn --factory``)."""
TARGET = 0.90
DISTURBED = 0.15
"""Cores used by other processes (and unattributed softirq) above which a run is disturbed."""
SATURATED = 0.90
"""Share of its core the server must use for a run to measure the server, not the client."""
SERVER_CPU, LOADGEN_CPU = "0", "1"


@dataclass
class Run:
    rps: float
    requests: int
    non_2xx: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    server_cpu: float = 0.0
    """Share of one core the server used while measured (1.0 = saturated)."""
    server_us: float = 0.0
    """Server CPU microseconds per request: the cost that survives noisy neighbours."""
    loadgen_cpu: float = 0.0
    other_cpu: float = 0.0
    """Cores used by everything else on the machine during the run (should be ~0)."""

    @property
    def clean(self) -> bool:
        """Undisturbed: nothing else ran, and the server saturated its core."""
        return self.other_cpu <= DISTURBED and self.server_cpu >= SATURATED


@dataclass
class Results:
    runs: dict[str, list[Run]] = field(default_factory=dict)

    def counted(self, variant: str) -> list[Run]:
        """The runs the medians use: the clean ones if there are any, else all."""
        clean = [r for r in self.runs[variant] if r.clean]
        return clean or self.runs[variant]

    def median(self, variant: str) -> float:
        return statistics.median(r.rps for r in self.counted(variant))

    def median_us(self, variant: str) -> float:
        return statistics.median(r.server_us for r in self.counted(variant))

    def conclusive(self) -> bool:
        return all(any(r.clean for r in runs) for runs in self.runs.values())


# -- machine ---------------------------------------------------------------------------------


# -- the server ------------------------------------------------------------------------------


def start_server(variant: str, port: int, pinned: bool) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "uvicorn", f"benchmarks._apps:{variant}",
        "--host", HOST, "--port", str(port), "--http", "httptools", "--loop", "uvloop",
        "--workers", "1", "--no-access-log", "--log-level", "warning", "--lifespan", "on",
    ]  # fmt: skip
    if variant in FACTORIES:
        command.append("--factory")
    proc = subprocess.Popen(pin(SERVER_CPU, command, pinned), cwd=ROOT)
    wait_port(port, proc, f"the {variant} server")
    return proc


# -- load generators -------------------------------------------------------------------------

def run_wrk(port: int, duration: float, connections: int, pinned: bool) -> Run:
    got = wrk(f"http://{HOST}:{port}{PATH}", duration, connections, LOADGEN_CPU, pinned)
    return Run(
        rps=got.rps, requests=got.requests, non_2xx=got.non_2xx, errors=got.errors,
        p50_ms=got.p50_ms, p99_ms=got.p99_ms,
    )  # fmt: skip


def run_python_loadgen(port: int, duration: float, connections: int, pinned: bool) -> Run:
    command = [
        sys.executable, __file__, "--loadgen", str(port), str(duration), str(connections),
    ]  # fmt: skip
    proc = subprocess.Popen(pin(LOADGEN_CPU, command, pinned), stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=duration + 30)
    if proc.returncode:
        raise SystemExit(f"the Python load generator failed ({proc.returncode})")
    data = json.loads(out)
    return Run(
        rps=data["rps"], requests=data["requests"], non_2xx=data["non_2xx"],
        errors=data["errors"],
    )  # fmt: skip


async def _loadgen(port: int, duration: float, connections: int) -> dict[str, float]:
    """Closed loop: ``connections`` keep-alive connections, one request in flight on each."""
    request = f"GET {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    counts = {"ok": 0, "non_2xx": 0, "errors": 0}
    stop_at = time.monotonic() + duration

    async def connection() -> None:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            counts["errors"] += 1
            return
        try:
            while time.monotonic() < stop_at:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                counts["ok" if head.startswith(b"HTTP/1.1 2") else "non_2xx"] += 1
        except (OSError, asyncio.IncompleteReadError):
            counts["errors"] += 1
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = time.monotonic() - started
    done = counts["ok"] + counts["non_2xx"]
    return {
        "rps": done / elapsed,
        "requests": done,
        "non_2xx": counts["non_2xx"],
        "errors": counts["errors"],
    }


def _loadgen_main(port: int, duration: float, connections: int) -> None:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        print(json.dumps(runner.run(_loadgen(port, duration, connections))))


# -- the benchmark ---------------------------------------------------------------------------


def measure(variant: str, args: argparse.Namespace, use_wrk: bool, pinned: bool) -> Run:
    if args.wait_quiet > 0:
        busy = wait_until_quiet(args.wait_quiet, DISTURBED)
        if busy >= DISTURBED:
            print(f"  (others keep {busy:.0%} of a core busy; measuring anyway)")
    port = free_port()
    proc = start_server(variant, port, pinned)
    load = run_wrk if use_wrk else run_python_loadgen
    try:
        load(port, args.warmup, args.connections, pinned)
        server, loadgen = cpu_seconds(proc.pid), children_cpu_seconds()
        busy, started = busy_seconds(), time.monotonic()
        run = load(port, args.duration, args.connections, pinned)
        wall = time.monotonic() - started
        server = cpu_seconds(proc.pid) - server
        loadgen = children_cpu_seconds() - loadgen
        busy = busy_seconds() - busy
        run.server_cpu = server / wall
        run.server_us = 1e6 * server / max(1, run.requests)
        run.loadgen_cpu = loadgen / wall
        run.other_cpu = max(0.0, busy - server - loadgen) / wall
    finally:
        stop(proc)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument("--connections", type=int, default=64, help="open connections (64)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each variant (5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured s per run (2)")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of: "
        + ", ".join(VARIANTS),
    )  # fmt: skip
    parser.add_argument(
        "--wait-quiet", type=float, default=60.0, metavar="S",
        help="before each run, wait up to S s for other processes to go idle (60; 0: never)",
    )  # fmt: skip
    parser.add_argument(
        "--retries", type=int, default=2,
        help="repeat a run disturbed by other processes up to this many times (2)",
    )  # fmt: skip
    parser.add_argument("--python-loadgen", action="store_true", help="never use wrk")
    parser.add_argument("--loadgen", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        port, duration, connections = args.loadgen
        _loadgen_main(int(port), float(duration), int(connections))
        return

    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown or "bare" not in variants:
        parser.error(f"variants must include bare and be among {', '.join(VARIANTS)}")
    use_wrk = shutil.which("wrk") is not None and not args.python_loadgen
    if not use_wrk and not args.python_loadgen:
        print(
            "wrk not found: install it for trustworthy numbers (Debian/Ubuntu: "
            "`apt-get install -y wrk`). Falling back to the bundled Python load generator.\n"
        )
    pinned = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    if not pinned:
        print("warning: not pinning (needs taskset and 2 CPUs); numbers will be noisy\n")

    for key, value in machine(("lockgate", "uvicorn", "httptools", "uvloop")):
        print(f"{key:<9} {value}")
    loadgen = f"wrk ({wrk_version()})" if use_wrk else "bundled Python (asyncio) generator"
    print(
        f"setup     uvicorn --http httptools --loop uvloop --workers 1 --no-access-log, "
        f"server on CPU {SERVER_CPU if pinned else '-'}, {loadgen} on CPU "
        f"{LOADGEN_CPU if pinned else '-'}, {args.connections} connections, GET {PATH}, "
        f"{args.rounds} rounds x {args.duration:g} s (+{args.warmup:g} s warm-up)\n"
    )

    results = Results({v: [] for v in variants})
    for round_no in range(args.rounds):
        order = variants[round_no % len(variants) :] + variants[: round_no % len(variants)]
        for variant in order:
            run = measure(variant, args, use_wrk, pinned)
            for _ in range(args.retries):
                if run.clean:
                    break
                print(
                    f"  ({variant}: disturbed, others {run.other_cpu:.0%} of a core, server "
                    f"{run.server_cpu:.0%}, {run.rps:,.0f} req/s; repeating)"
                )
                run = measure(variant, args, use_wrk, pinned)
            results.runs[variant].append(run)
            print(
                f"  round {round_no + 1} {variant:<11} {run.rps:>9,.0f} req/s"
                f"  {run.server_us:6.1f} us CPU/req  server {run.server_cpu:4.0%}"
                f"  load gen {run.loadgen_cpu:4.0%}  others {run.other_cpu:4.0%}"
                + (f"  p50 {run.p50_ms:.2f} ms  p99 {run.p99_ms:.2f} ms"
                   if run.p50_ms is not None and run.p99_ms is not None else "")
                + (f"  NON-2XX {run.non_2xx}" if run.non_2xx else "")
                + (f"  SOCKET ERRORS {run.errors}" if run.errors else ""),
                flush=True,
            )  # fmt: skip
    print()
    report(results, args.rounds, use_wrk)


def report(results: Results, rounds: int, use_wrk: bool) -> None:
    bare, bare_us = results.median("bare"), results.median_us("bare")
    rounds_header = "".join(f"{f'round {i + 1}':>10}" for i in range(rounds))
    print(f"{'variant':<11}{rounds_header}{'median':>10}{'ratio':>8}  what")
    for variant, runs in results.runs.items():
        median = results.median(variant)
        cells = "".join(f"{r.rps:>9,.0f}{' ' if r.clean else '*'}" for r in runs)
        print(f"{variant:<11}{cells}{median:>10,.0f}{median / bare:>8.3f}  {VARIANTS[variant]}")
    print("(requests/s; ratio = median / bare median)\n")
    print(f"{'variant':<11}{rounds_header}{'median':>10}{'ratio':>8}{'overhead':>10}")
    for variant, runs in results.runs.items():
        median = results.median_us(variant)
        cells = "".join(f"{r.server_us:>9.2f}{' ' if r.clean else '*'}" for r in runs)
        print(
            f"{variant:<11}{cells}{median:>10.2f}{bare_us / median:>8.3f}"
            f"{median - bare_us:>+8.2f}us"
        )
    print(
        "(server CPU microseconds per request; ratio = bare / variant, the throughput ratio a\n"
        " saturated core would show; overhead = the variant's extra CPU per request)\n"
    )
    disturbed = sum(not r.clean for runs in results.runs.values() for r in runs)
    if disturbed:
        print(
            f"* disturbed run ({disturbed} of them): other processes used > {DISTURBED:.0%} of a "
            f"core, or the server < {SATURATED:.0%} of its own. Medians use only the clean "
            "runs of a variant when it has any."
        )
        if not use_wrk:
            print(
                "  With the bundled Python load generator an unsaturated server usually means "
                "the generator is the bottleneck: install wrk (apt-get install -y wrk)."
            )
    for variant, runs in results.runs.items():
        for i, r in enumerate(runs):
            if r.non_2xx or r.errors:
                print(
                    f"warning: {variant} round {i + 1}: {r.non_2xx} non-2xx, "
                    f"{r.errors} socket errors"
                )
    for variant in results.runs:
        if variant == "bare":
            continue
        ratio = results.median(variant) / bare
        cpu_ratio = bare_us / results.median_us(variant)
        verdict = "meets" if ratio >= TARGET else "MISSES"
        if not results.conclusive():
            would = "meet" if ratio >= TARGET else "miss"
            verdict = f"INCONCLUSIVE (a variant has no clean run; would {would})"
        print(
            f"T1 {variant}: {ratio:.3f} x bare throughput ({cpu_ratio:.3f} by CPU per "
            f"request): {verdict} the target >= {TARGET:.2f}"
        )

if __name__ == "__main__":
    main()

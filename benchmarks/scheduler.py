"""Micro-benchmark of the scheduler alone (DESIGN.md §11, T5).

    .venv/bin/python benchmarks/scheduler.py [--quick]

Prints the machine it ran on and a table:

* uncontended acquire + release per second: ``try_acquire(lane)`` + ``permit.release()`` in a
  tight loop, and ``await scheduler.acquire(lane)`` + ``release()`` on asyncio (and trio,
  and uvloop when installed). Target: >= 200k/s on the ``try_acquire`` path.
* hand-off under contention: tasks looping acquire/release on fewer seats, each release
  handing its seat to a queued waiter (informational).
* memory per queued waiter: 10,000 tasks parked in ``acquire`` on a full scheduler, measured
  with ``tracemalloc``. "scheduler-side" counts the allocations made while a frame of
  ``lockgate/_scheduler.py`` was on the stack -- the ``_Waiter``, its event, the deadline
  cancel scope and its timer, the event's future, the queue's share of the deque; "including
  the waiting task" is everything the 10,000 parked requests added (task, coroutine frames,
  task-group bookkeeping too). Target: <= 1 KiB scheduler-side.

Nothing is asserted: numbers depend on the machine; read them next to its description.
Pinning to one core (``taskset -c 0``) is done when ``taskset`` exists and ``--no-pin`` is
not given, like the reference setup of §11.
"""

from __future__ import annotations

import argparse
import gc
import linecache
import os
import platform
import shutil
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from importlib import metadata

import anyio

from lockgate import Priority, PriorityScheduler

LANE = Priority.NORMAL
WAITERS = 10_000


# -- machine --------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def machine() -> list[tuple[str, str]]:
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return [
        ("platform", platform.platform()),
        ("cpu", f"{cpu_model()} ({os.cpu_count()} logical; running on cores {affinity})"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        (
            "packages",
            ", ".join(
                f"{d} {version(d)}" for d in ("lockgate", "anyio", "trio", "uvloop", "sniffio")
            ),
        ),
    ]


# -- throughput -----------------------------------------------------------------------------


def best_rate(run: Callable[[int], float], n: int, repeats: int) -> float:
    """Operations per second of the fastest of ``repeats`` runs of ``n`` operations."""
    return max(n / run(n) for _ in range(repeats))


def try_acquire_loop(n: int) -> float:
    scheduler = PriorityScheduler(100)
    try_acquire = scheduler.try_acquire
    start = time.perf_counter()
    for _ in range(n):
        permit = try_acquire(LANE)
        permit.release()  # type: ignore[union-attr]
    return time.perf_counter() - start


def with_statement_loop(n: int) -> float:
    scheduler = PriorityScheduler(100)
    start = time.perf_counter()
    for _ in range(n):
        with scheduler.try_acquire(LANE):  # type: ignore[union-attr]
            pass
    return time.perf_counter() - start


async def acquire_loop(n: int) -> float:
    scheduler = PriorityScheduler(100)
    acquire = scheduler.acquire
    start = time.perf_counter()
    for _ in range(n):
        permit = await acquire(LANE)
        permit.release()
    return time.perf_counter() - start


async def contended_loop(n: int, tasks: int = 100, seats: int = 10) -> float:
    """``tasks`` tasks share ``seats`` seats; each holds its seat across one checkpoint."""
    scheduler = PriorityScheduler(seats, queue_capacity=tasks, wait_timeout=3600)
    per_task = n // tasks

    async def worker() -> None:
        for _ in range(per_task):
            permit = await scheduler.acquire(LANE)
            await anyio.lowlevel.checkpoint()
            permit.release()

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(worker)
    return time.perf_counter() - start


def run_async(
    func: Callable[[int], Awaitable[float]], n: int, backend: str, options: dict[str, object]
) -> float:
    async def main() -> float:
        return await func(n)

    return anyio.run(main, backend=backend, backend_options=options)


def backends() -> list[tuple[str, str, dict[str, object]]]:
    out: list[tuple[str, str, dict[str, object]]] = [("asyncio", "asyncio", {})]
    if version("uvloop") != "-":
        out.append(("asyncio+uvloop", "asyncio", {"use_uvloop": True}))
    if version("trio") != "-":
        out.append(("trio", "trio", {}))
    return out


# -- memory ---------------------------------------------------------------------------------


def _is_scheduler_frame(filename: str) -> bool:
    return filename.replace(os.sep, "/").endswith("lockgate/_scheduler.py")


async def park_waiters(count: int) -> tuple[int, int, list[tuple[str, int]]]:
    """Bytes added by ``count`` parked waiters: (scheduler-side, total, top sites).

    Only allocations made after tracing starts and still alive at the second snapshot are
    seen, so the difference between the snapshots is what the parked waiters hold.
    """
    scheduler = PriorityScheduler(1, queue_capacity=count + 10, wait_timeout=3600)
    holder = scheduler.try_acquire(LANE)

    async def waiter() -> None:
        permit = await scheduler.acquire(LANE)
        permit.release()

    async with anyio.create_task_group() as tg:
        # Warm up once so one-off allocations (code caches, first deque block) are not counted.
        for _ in range(10):
            tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        gc.collect()
        tracemalloc.start(32)
        before = tracemalloc.take_snapshot()
        for _ in range(count):
            tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        queued = scheduler.stats().queued
        tg.cancel_scope.cancel()
    if holder is not None:
        holder.release()
    if queued != count + 10:
        print(f"warning: {queued} waiters queued, expected {count + 10}", file=sys.stderr)

    def scheduler_side(snapshot: tracemalloc.Snapshot) -> list[tracemalloc.Trace]:
        return [
            t for t in snapshot.traces if any(_is_scheduler_frame(f.filename) for f in t.traceback)
        ]

    side_before, side_after = scheduler_side(before), scheduler_side(after)
    side = sum(t.size for t in side_after) - sum(t.size for t in side_before)
    total = sum(t.size for t in after.traces) - sum(t.size for t in before.traces)
    sites: dict[str, int] = {}
    for sign, traces in ((1, side_after), (-1, side_before)):
        for t in traces:
            frame = t.traceback[-1]  # the innermost frame: where the object was made
            parts = frame.filename.replace(os.sep, "/").split("/")
            code = linecache.getline(frame.filename, frame.lineno).strip()
            key = f"{'/'.join(parts[-2:])}:{frame.lineno}  {code}"[:100]
            sites[key] = sites.get(key, 0) + sign * t.size
    top = sorted(sites.items(), key=lambda kv: -kv[1])[:8]
    return side, total, top


def measure_memory(
    backend: str, options: dict[str, object], count: int
) -> tuple[int, int, list[tuple[str, int]]]:
    async def main() -> tuple[int, int, list[tuple[str, int]]]:
        return await park_waiters(count)

    return anyio.run(main, backend=backend, backend_options=options)


def coroutine_size() -> int:
    """Bytes of one unstarted ``acquire()`` coroutine (its frame; counted with the task)."""
    scheduler = PriorityScheduler(1)
    coro = scheduler.acquire(LANE)
    try:
        return sys.getsizeof(coro)
    finally:
        coro.close()


# -- report ---------------------------------------------------------------------------------


def pin_to_one_core() -> None:
    if os.environ.get("LOCKGATE_BENCH_PINNED") or not shutil.which("taskset"):
        return
    os.environ["LOCKGATE_BENCH_PINNED"] = "1"
    os.execvp("taskset", ["taskset", "-c", "0", sys.executable, *sys.argv])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to core 0")
    args = parser.parse_args()
    if not args.no_pin:
        pin_to_one_core()
    n_sync, n_async, repeats = (50_000, 20_000, 1) if args.quick else (1_000_000, 200_000, 5)
    waiters = 1_000 if args.quick else WAITERS

    print("lockgate scheduler micro-benchmark (DESIGN.md §11 T5)")
    for key, value in machine():
        print(f"  {key:9s} {value}")
    print()

    rows: list[tuple[str, str, str]] = []
    rate = best_rate(try_acquire_loop, n_sync, repeats)
    rows.append(("try_acquire + release (sync)", f"{rate / 1000:,.0f}k /s", ">= 200k /s"))
    rate = best_rate(with_statement_loop, n_sync, repeats)
    rows.append(("with try_acquire(): (sync)", f"{rate / 1000:,.0f}k /s", "-"))
    for label, backend, options in backends():

        def run_acquire(n: int, b: str = backend, o: dict[str, object] = options) -> float:
            return run_async(acquire_loop, n, b, o)

        def run_contended(n: int, b: str = backend, o: dict[str, object] = options) -> float:
            return run_async(contended_loop, n, b, o)

        rate = best_rate(run_acquire, n_async, repeats)
        rows.append((f"await acquire + release ({label})", f"{rate / 1000:,.0f}k /s", "-"))
        rate = best_rate(run_contended, n_async // 2, max(1, repeats // 2))
        rows.append((f"hand-off, 100 tasks / 10 seats ({label})", f"{rate / 1000:,.0f}k /s", "-"))
    details = []
    for label, backend, options in backends():
        side, total, top = measure_memory(backend, options, waiters)
        rows.append(
            (
                f"queued waiter, scheduler-side ({label})",
                f"{side / waiters:,.0f} B",
                "<= 1024 B",
            )
        )
        rows.append(
            (f"queued waiter, incl. waiting task ({label})", f"{total / waiters:,.0f} B", "-")
        )
        details.append((label, top))

    width = max(len(r[0]) for r in rows)
    print(f"  {'measurement':{width}s}  {'result':>12s}  target")
    print(f"  {'-' * width}  {'-' * 12}  {'-' * 10}")
    for name, result, target in rows:
        print(f"  {name:{width}s}  {result:>12s}  {target}")
    print()
    print(f"scheduler-side bytes per waiter by allocation site ({waiters:,} waiters):")
    for label, top in details:
        print(f"  {label}:")
        for site, size in top:
            print(f"    {size / waiters:7,.0f} B  {site}")
    print(
        f"  (the acquire() coroutine itself, {coroutine_size()} B unstarted, is counted with"
        " the waiting task: its caller allocates it)"
    )


if __name__ == "__main__":
    main()

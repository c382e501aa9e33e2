"""The scheduler's policy alone, in simulated time: T2's mix against the real
``PriorityScheduler`` on a ``FakeClock``, with no server, network or event-loop cost.

One command (``.venv/bin/python benchmarks/simulate.py [load] [--seconds S] [--seed N]
[--limit NAME --seats N] [--jitter F | --lognormal SIGMA]``) prints
per lane: admitted, shed by reason, latency p50/p95/p99 and p99 as a multiple of the service
time, plus the 503 p99 and the busy fraction of the 18 open seats. It separates what the
scheduling policy costs from what the server adds (compare with ``overload.py``); it measures
nothing about speed. Every run with the same seed gives the same numbers.
"""

from __future__ import annotations

import argparse
import math
import random

import anyio
import trio

from lockgate import GateSettings, Priority, PriorityScheduler, Rejected
from lockgate.testing import FakeClock

MIX = ((Priority.HIGH, 0.2, 0.05), (Priority.NORMAL, 0.7, 0.05), (Priority.LOW, 0.1, 0.2))
SEATS = 20
OPEN_SEATS = 18  # critical's 2 guaranteed seats stay idle


def pick_route(u: float) -> tuple[Priority, float]:
    """The lane and service time of the route a uniform draw ``u`` falls on."""
    total = 0.0
    for lane, share, service in MIX:
        total += share
        if u <= total:
            return lane, service
    return MIX[-1][0], MIX[-1][2]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def simulate(
    load: float, seconds: float, seed: int, limit: str, seats: int, jitter: float,
    sigma: float = 0.0,
) -> None:
    clock = FakeClock()
    settings = GateSettings(max_concurrent=seats, queue_capacity=200, wait_timeout=3, limit=limit)
    scheduler = PriorityScheduler.from_settings(settings, clock)
    pool = anyio.Semaphore(SEATS)  # the app's own DB pool: a gate with more seats queues in it
    trace: dict[int, list[tuple[Priority, float]]] = {}
    limits: dict[int, int] = {}
    rate = load * SEATS / sum(share * service for _, share, service in MIX)
    rng = random.Random(seed)
    latencies: dict[Priority, list[float]] = {lane: [] for lane, _, _ in MIX}
    shed: dict[Priority, dict[str, int]] = {lane: {} for lane, _, _ in MIX}
    shed_after: list[float] = []
    busy = last_done = 0.0

    async def request(lane: Priority, service: float, sent: float) -> None:
        nonlocal busy, last_done
        try:
            permit = await scheduler.acquire(lane)
        except Rejected as exc:
            shed[lane][exc.reason.value] = shed[lane].get(exc.reason.value, 0) + 1
            shed_after.append(clock.now() - sent)
            return
        async with pool:
            with clock.deadline_scope(clock.now() + service):
                await anyio.sleep_forever()
        permit.release()
        busy += service
        last_done = clock.now()
        latencies[lane].append(last_done - sent)
        trace.setdefault(int(sent), []).append((lane, last_done - sent))
        limits[int(last_done)] = scheduler.limit

    async def step_to(moment: float) -> None:
        """Fire every timer up to ``moment`` in order, letting tasks react to each."""
        while (due := clock.next_deadline) is not None and due <= moment:
            clock.advance(due - clock.now())
            await anyio.wait_all_tasks_blocked()
        if moment != float("inf"):
            clock.advance(max(0.0, moment - clock.now()))

    async with anyio.create_task_group() as tg:
        t = 0.0
        while t < seconds:
            t += rng.expovariate(rate)
            await step_to(t)
            lane, service = pick_route(rng.random())
            if jitter:  # no draw without it: exact runs keep their numbers
                service *= 1.0 + jitter * (2.0 * rng.random() - 1.0)
            if sigma:  # lognormal of the same mean: a real service's long tail
                service *= math.exp(sigma * rng.gauss(0.0, 1.0) - sigma * sigma / 2)
            tg.start_soon(request, lane, service, clock.now())
            await anyio.wait_all_tasks_blocked()
        await step_to(float("inf"))

    print(f"load {load}x of {SEATS} seats, {seconds:.0f} s simulated, seed {seed}")
    for lane, _, service in MIX:
        xs = latencies[lane]
        print(
            f"  {lane.label:7s} ok {len(xs):6d}  shed {shed[lane]}  p50 "
            f"{percentile(xs, 0.5) * 1e3:6.1f}  p95 {percentile(xs, 0.95) * 1e3:6.1f}  p99 "
            f"{percentile(xs, 0.99) * 1e3:6.1f} ms ({percentile(xs, 0.99) / service:.2f}x)"
        )
    print(f"  503 p99 {percentile(shed_after, 0.99) * 1e3:.1f} ms; "
          f"seats busy {busy / (OPEN_SEATS * last_done):.3f} of the open seats")
    if limit != "fixed":
        print("  per second: limit, p99 per lane as a multiple of the service time")
        for second in sorted(trace):
            cells = []
            for lane, _, service in MIX:
                xs = [rtt for who, rtt in trace[second] if who == lane]
                cells.append(f"{lane.label} {percentile(xs, 0.99) / service:5.2f}x")
            print(f"  {second:3d} s  limit {limits.get(second, 0):3d}  {'  '.join(cells)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("load", type=float, nargs="?", default=2.0, help="x capacity (2.0)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--limit", default="fixed", help="settings.limit (fixed)")
    parser.add_argument("--seats", type=int, default=SEATS,
                        help=f"max_concurrent ({SEATS}; T3 sets 10x the pool)")
    parser.add_argument("--jitter", type=float, default=0.0,
                        help="service times vary uniformly by +-this fraction (0: exact)")
    parser.add_argument("--lognormal", type=float, default=0.0, metavar="SIGMA",
                        help="service times lognormal, same mean (0.5: a database query's spread)")
    args = parser.parse_args()
    # Trio runs a batch of ready tasks in a random order (reversed or not) so that no program
    # relies on one; with times that vary the simulated timeline then varies from run to run.
    # Seeding that generator (a private one; Hypothesis seeds it the same way) keeps "the same
    # seed, the same numbers" true.
    trio_random = getattr(getattr(getattr(trio, "_core", None), "_run", None), "_r", None)
    if isinstance(trio_random, random.Random):
        trio_random.seed(args.seed)
    anyio.run(simulate, args.load, args.seconds, args.seed, args.limit, args.seats, args.jitter,
              args.lognormal, backend="trio")


if __name__ == "__main__":
    main()

"""Runs the demo's scenarios: a fresh server per scenario and variant, load from this process.

The server is a uvicorn subprocess on one core, the load generator runs here on another (when
there are two), so neither steals the other's CPU. A progress line on stderr (a terminal only)
shows each run as it goes; a summary line per run goes to ``out``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from ._loadgen import PENDING, TIMEOUT, Results, Spec, run
from ._measure import ALL, Stats, goodput, tally
from ._scenarios import VARIANTS, Options, Scenario, scenarios
from ._server import Server, split_cores
from ._service import DEMO_ROUTES

__all__ = ["Run", "run_all"]

MAX_CONNECTIONS = 4000


@dataclass(frozen=True, slots=True)
class Run:
    """One variant under one scenario: what the load generator saw."""

    scenario: Scenario
    variant: str
    results: Results
    pool: int
    capacity: float

    def lanes(self) -> dict[str, Stats]:
        """Per lane and ``"all"`` over the measured window."""
        return tally(self.results, DEMO_ROUTES, *self.scenario.window)

    def goodput(self) -> dict[str, float]:
        """Per lane and ``"all"``, as a share of the pool over the measured window."""
        return goodput(self.results, DEMO_ROUTES, self.pool, *self.scenario.window)


def run_all(options: Options, out: TextIO, err: TextIO) -> list[Run]:
    """Every scenario of ``options``, unprotected then gated; the runs in that order."""
    chosen = scenarios(options)
    cores = split_cores()
    todo = [(scenario, variant) for scenario in chosen for variant in VARIANTS]
    runs: list[Run] = []
    servers: list[Server] = []
    try:  # every server starts up front, on any core: start-ups overlap, idle ones cost nothing
        servers += [Server(options.app(variant)) for _, variant in todo]
        with _pinned(cores[1] if cores else None):
            for (scenario, variant), server in zip(todo, servers, strict=True):
                label = f"[{len(runs) + 1}/{len(todo)}] {scenario.name:<9} {variant:<11}"
                try:
                    port = server.ready(cores[0] if cores else None)
                    runs.append(_one(options, scenario, variant, port, label, out, err))
                finally:
                    server.stop()
    finally:
        for server in servers:
            server.stop()
    return runs


def _one(options: Options, scenario: Scenario, variant: str, port: int, label: str,
         out: TextIO, err: TextIO) -> Run:  # fmt: skip
    started = time.monotonic()
    show = _Progress(label, scenario.end, err) if err.isatty() else None
    spec = Spec(
        port=port, routes=[(r.method, r.path, r.body.decode()) for r in DEMO_ROUTES],
        weights=[r.weight for r in DEMO_ROUTES], schedule=scenario.rates(options.capacity),
        seed=options.seed, timeout=options.timeout, max_connections=MAX_CONNECTIONS,
    )  # fmt: skip
    results = run(spec, show)
    if show is not None:
        show.clear()
    result = Run(scenario, variant, results, options.seats, options.capacity)
    every = result.lanes()[ALL]
    print(f"{label} {every.sent:>6} sent {every.ok:>6} ok {every.shed:>6} shed (503) "
          f"{every.timeouts + every.errors + every.overflow:>6} timeouts/errors  "
          f"goodput {100 * result.goodput()[ALL]:>3.0f} %  "
          f"({time.monotonic() - started:.1f} s)", file=out, flush=True)  # fmt: skip
    return result


class _Progress:
    """A single self-overwriting status line: elapsed time and answers so far."""

    def __init__(self, label: str, end: float, err: TextIO) -> None:
        self.label, self.end, self.err = label, end, err

    def __call__(self, res: Results, elapsed: float) -> None:
        counts = Counter(res.status)
        answered = len(res.status) - counts[PENDING]
        waiting = sum(1 for t in res.sched if t <= elapsed) - answered
        failed = answered - counts[200] - counts[503] - counts[TIMEOUT]
        filled = round(20 * min(1.0, max(0.0, elapsed / self.end)))
        self.err.write(
            f"\r{self.label} [{'#' * filled}{'.' * (20 - filled)}] "
            f"{min(elapsed, self.end):4.1f}/{self.end:g} s  ok {counts[200]:>5}  "
            f"503 {counts[503]:>5}  timeouts {counts[TIMEOUT]:>5}  errors {failed:>4}  "
            f"waiting {max(0, waiting):>5}\x1b[K"
        )
        self.err.flush()

    def clear(self) -> None:
        self.err.write("\r\x1b[K")
        self.err.flush()


@contextlib.contextmanager
def _pinned(cores: set[int] | None) -> Iterator[None]:
    """Run this process (the load generator) on ``cores`` for the duration."""
    if cores is None:
        yield
        return
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cores)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)

"""``lockgate demo`` from start to end: header, the runs, the tables, the report.

The command-line parsing lives in ``lockgate.cli``; this is what it calls.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TextIO

from .._lanes import Priority
from .._scheduler import PriorityScheduler
from ._measure import ALL
from ._report import render, rows
from ._runner import Run, run_all
from ._scenarios import Options
from ._server import split_cores
from ._service import DEMO_ROUTES, mean_service_time
from ._table import scenario_table, summary_table, trade, verdict

__all__ = ["machine", "run_demo"]


def machine() -> str:
    """One line: cores, load, Python and package versions."""
    versions = []
    for pkg in ("lockgate", "uvicorn", "uvloop", "httptools"):
        try:
            versions.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            versions.append(f"{pkg} -")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} cores (load average {load}), {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, " + ", ".join(versions))


def run_demo(
    options: Options, report: Path | None = None, out: TextIO | None = None,
    err: TextIO | None = None,
) -> list[tuple[Run, Run]]:
    """Run the scenarios, print the tables, write the report; ``(unprotected, gated)`` pairs.
    ``out`` and ``err`` default to ``sys.stdout`` and ``sys.stderr`` (progress, terminals
    only)."""
    out, err = out or sys.stdout, err or sys.stderr
    started = time.monotonic()
    cores = split_cores()
    where = (f"server on core {min(cores[0])}, load generator on core {min(cores[1])}"
             if cores else "server and load generator share one core (results are rougher)")
    print(f"lockgate demo: {machine()}", file=out)
    print(f"sample service: pool of {options.seats} DB connections, mix "
          + ", ".join(f"{r.lane.label} {r.method} {r.path} {r.weight:.0%} "
                      f"{1000 * r.service_time:g} ms" for r in DEMO_ROUTES), file=out)
    print(f"capacity = {options.seats} / {1000 * mean_service_time(DEMO_ROUTES):.1f} ms = "
          f"{options.capacity:.0f} req/s; {where}; open-loop Poisson load, client timeout "
          f"{options.timeout:g} s", file=out)  # fmt: skip
    print(f"gated = lockgate.Gate({_settings(options)}); seats per lane "
          f"(nominal/guaranteed/max): {_lane_seats(options)}\n", file=out, flush=True)
    runs = run_all(options, out, err)
    pairs = list(zip(runs[::2], runs[1::2], strict=True))
    summary = []
    for before, after in pairs:
        b, a = rows(before), rows(after)
        print(f"\n{scenario_table(before.scenario.title, b, a)}", file=out)
        print(f"  => {verdict(b[ALL], a[ALL])}", file=out)
        traded = trade(b, a)
        if traded:
            print(f"     ({traded})", file=out)
        summary.append((before.scenario.name, _load(before), b[ALL], a[ALL]))
    print("\nAll lanes, unprotected vs gated (goodput = share of the pool's seat-time spent on "
          "responses within 5x their service time):", file=out)  # fmt: skip
    print(summary_table(summary), file=out)
    if report is not None:
        report.write_text(render(pairs, options, machine()), encoding="utf-8")
        print(f"\nreport: {report.resolve()}", file=out)
    print(f"total {time.monotonic() - started:.0f} s", file=out, flush=True)
    return pairs


def _settings(options: Options) -> str:
    app = options.app("gated")
    shares = ", ".join(f"{lane}={v['share']:g}" for lane, v in (app.lanes or {}).items())
    return (f"max_concurrent={app.seats}, queue_capacity={app.queue_capacity}, "
            f"wait_timeout={app.wait_timeout:g}, lane shares {shares or 'default'}")


def _lane_seats(options: Options) -> str:
    seats = PriorityScheduler.from_settings(options.app("gated").gate_settings()).seats
    return ", ".join(f"{lane.label} {s.nominal}/{s.guaranteed}/{s.max}"
                     for lane, s in zip(Priority, seats, strict=True))  # fmt: skip


def _load(run: Run) -> str:
    shape = run.scenario.shape
    low, high = shape[0][1], run.scenario.peak
    return f"{low:g}x" if low == high else f"{low:g}x-{high:g}x"

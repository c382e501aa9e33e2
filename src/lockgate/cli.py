"""The ``lockgate`` command: ``plan`` (capacity calculator) and ``demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

from ._plan import make_plan, parse_duration, render

__all__ = ["main"]

DEMO_NAMES = ("normal", "threshold", "overload", "spike")
"""The demo's scenarios (``lockgate.demo`` needs the extra, so they are named here too)."""
DEMO_DESCRIPTION = (
    "Start the bundled sample service (a simulated DB pool, a route per lane) in a uvicorn "
    "subprocess on loopback, offer it four open-loop load scenarios (normal 0.7x capacity, "
    "threshold 1x, overload 2x, spike 0.7x -> 3x), first unprotected, then behind "
    "lockgate.Gate, and print per lane goodput, shed %, p50/p95/p99 and timeouts. Every run "
    "gets a fresh server. Needs the demo extra: pip install 'lockgate[demo]'. About 75 s "
    "(--quick: about 25 s)."
)
DEMO_EXTRAS = ("uvicorn", "httptools", "uvloop")
"""What ``lockgate[demo]`` installs and the demo cannot run without."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lockgate",
        description="lockgate: admission control for ASGI services. Commands: plan (the "
        "settings for a service, from its pool, latency, target rate and SLA) and demo (a "
        "sample service flooded unprotected, then gated).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = _add_demo_parser(commands)
    plan = _add_plan_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(demo, args)
    if args.command == "plan":
        try:
            result = make_plan(
                pool=args.pool, avg_latency=args.avg_latency, p95_latency=args.p95_latency,
                target_rps=args.target_rps, sla=args.sla,
            )  # fmt: skip
        except ValueError as exc:
            plan.error(str(exc))
        print(render(result, args.format))
    return 0


def _add_demo_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    demo = commands.add_parser("demo", help="flood a sample service with and without the gate",
                               description=DEMO_DESCRIPTION)  # fmt: skip
    demo.add_argument("--quick", action="store_true",
                      help="short runs: 1.5 s scenarios, 2 s client timeout (under 30 s)")
    demo.add_argument("--duration", type=_positive, metavar="S",
                      help="seconds of each steady scenario, the spike scaled to match "
                      "(default 6; quick 1.5)")
    demo.add_argument("--rate", type=_positive, default=1.0, metavar="X",
                      help="multiply every scenario's load by X (default 1)")
    demo.add_argument("--seats", type=int, default=20, metavar="N",
                      help="the service's DB pool and the gate's max_concurrent (default 20)")
    demo.add_argument("--timeout", type=_positive, metavar="S",
                      help="client timeout in seconds (default 5; quick 2): a request "
                      "unanswered by then counts as a timeout")
    demo.add_argument("--scenarios", default=",".join(DEMO_NAMES), metavar="A,B",
                      help=f"a subset of {','.join(DEMO_NAMES)}")
    demo.add_argument("--seed", type=int, default=1, help="seed of the Poisson arrivals")
    demo.add_argument("--report", type=Path, metavar="FILE.html",
                      help="also write a self-contained HTML report with plots")
    return demo  # fmt: skip


def _demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    names = tuple(filter(None, args.scenarios.split(",")))
    unknown = sorted(set(names) - set(DEMO_NAMES))
    if unknown or not names:
        parser.error(f"unknown scenarios: {', '.join(unknown)} (choose from "
                     f"{', '.join(DEMO_NAMES)})")  # fmt: skip
    if args.seats < 1:
        parser.error("--seats must be at least 1")
    missing = [name for name in DEMO_EXTRAS if find_spec(name) is None]
    if missing:
        print(f"lockgate demo needs {', '.join(missing)}: pip install 'lockgate[demo]'",
              file=sys.stderr)  # fmt: skip
        return 2
    from .demo import Options, run_demo

    options = Options(
        duration=args.duration or (1.5 if args.quick else 6.0),
        rate=args.rate,
        seats=args.seats,
        timeout=args.timeout or (2.0 if args.quick else 5.0),
        names=names,
        seed=args.seed,
    )
    run_demo(options, args.report)
    return 0


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def _add_plan_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    plan = commands.add_parser(
        "plan",
        help="recommend max_concurrent, queue_capacity, wait_timeout and reject_threshold",
        description="Size the gate from the DB pool, the service's latency, the target rate "
        "and the latency SLA (Little's law, pool x 0.8), showing the working. Durations: "
        "50ms, 0.05s or 0.05 (seconds).",
    )  # fmt: skip
    plan.add_argument("--pool", type=int, required=True, help="DB connection pool size")
    plan.add_argument(
        "--avg-latency",
        type=_duration,
        required=True,
        metavar="DURATION",
        help="average request latency, e.g. 50ms",
    )
    plan.add_argument(
        "--p95-latency",
        type=_duration,
        required=True,
        metavar="DURATION",
        help="p95 request latency without queueing, e.g. 80ms",
    )
    plan.add_argument(
        "--target-rps",
        type=float,
        required=True,
        metavar="RPS",
        help="requests per second one instance must serve",
    )
    plan.add_argument(
        "--sla",
        type=_duration,
        required=True,
        metavar="DURATION",
        help="p95 latency target, queueing included, e.g. 100ms",
    )
    plan.add_argument(
        "--format",
        choices=("table", "env", "json"),
        default="table",
        help="table (default), env (a .env file) or json",
    )
    return plan


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


if __name__ == "__main__":
    raise SystemExit(main())

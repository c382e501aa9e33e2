"""The ``lockgate`` command: ``plan`` (capacity calculator) and ``demo``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ._plan import make_plan, parse_duration, render

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lockgate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="flood a sample service with and without the gate")
    plan = _add_plan_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "demo":
        print("lockgate demo: coming soon (the demo lands with the demo issue).")
    elif args.command == "plan":
        try:
            result = make_plan(
                pool=args.pool, avg_latency=args.avg_latency, p95_latency=args.p95_latency,
                target_rps=args.target_rps, sla=args.sla,
            )  # fmt: skip
        except ValueError as exc:
            plan.error(str(exc))
        print(render(result, args.format))
    return 0


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

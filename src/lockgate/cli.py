"""The ``lockgate`` command: ``demo`` (and, later, ``plan``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lockgate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="flood a sample service with and without the gate")
    args = parser.parse_args(argv)
    if args.command == "demo":
        print("lockgate demo: coming soon (the demo lands with the demo issue).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

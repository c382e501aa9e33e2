"""The overload benchmarks' open-loop load generator: ``lockgate.demo._loadgen``, as a script.

``python benchmarks/loadgen.py < spec.json > results.json``; the generator (its design, speed
limits and JSON format) is documented in ``lockgate/demo/_loadgen.py``.
"""

from __future__ import annotations

from lockgate.demo._loadgen import (
    ERROR,
    OVERFLOW,
    PENDING,
    TIMEOUT,
    Results,
    Spec,
    arrivals,
    main,
    rate_at,
    run,
    spec_from_json,
)

__all__ = ["ERROR", "OVERFLOW", "PENDING", "TIMEOUT", "Results", "Spec", "arrivals", "main",
           "rate_at", "run", "spec_from_json"]  # fmt: skip

if __name__ == "__main__":
    main()

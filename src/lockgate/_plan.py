"""Capacity planning (``lockgate plan``): the original capacity analysis as a function.

From the scarcest resource (a DB pool), the service's latency, the target rate and the
latency SLA, ``make_plan`` derives the four settings of the original plan, showing its work:

* ``max_concurrent`` = min(pool x 0.8, ceil(lambda x W x 1.2)): the pool's safe share, or
  what Little's law (L = lambda W) says the target rate keeps in flight plus a 20 % buffer,
  whichever is smaller -- that one *binds*.
* ``queue_capacity``: the longest queue that drains within the SLA's queue-wait budget
  (SLA - p95 latency) at the throughput the seats give (``max_concurrent / W``).
* ``wait_timeout``: that budget; a request that waited longer would miss the SLA anyway.
* ``reject_threshold``: ``max_concurrent + queue_capacity`` (the settings' default).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from ._lanes import Priority, lane_seats
from ._settings import LanesSettings

__all__ = ["POOL_SAFETY", "UTILIZATION_ALERT", "Plan", "make_plan", "parse_duration", "render"]

POOL_SAFETY = 0.8
"""Share of the DB pool the gate may fill (the original plan's "pool x 0.8")."""
LITTLE_BUFFER = 1.2
"""Head room over Little's-law concurrency at the target rate."""
UTILIZATION_ALERT = 0.85
"""The HighUtilization alert's threshold (``docs/operations/alerts.yml``)."""

Binding = Literal["pool", "littles_law"]
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?\s*")


def parse_duration(text: str) -> float:
    """Seconds from ``"50ms"``, ``"0.05s"`` or ``"0.05"`` (a bare number is seconds)."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"expected a duration such as 50ms or 0.05s, got {text!r}")
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value


@dataclass(frozen=True, slots=True)
class Plan:
    """Recommended settings and how they were reached. Times in seconds."""

    pool: int
    avg_latency: float
    p95_latency: float
    target_rps: float
    sla: float
    pool_bound: int
    in_flight: float
    """Little's law: requests in flight at the target rate (lambda x W)."""
    little_bound: int
    max_concurrent: int
    binding: Binding
    capacity_rps: float
    """Throughput the seats sustain at the average latency."""
    utilization: float
    """Share of the seats busy at the target rate."""
    wait_budget: float
    queue_capacity: int
    wait_timeout: float
    reject_threshold: int
    working: tuple[str, ...]
    warnings: tuple[str, ...]

    def settings(self) -> dict[str, int | float]:
        """The recommended ``GateSettings`` fields."""
        return {
            "max_concurrent": self.max_concurrent,
            "queue_capacity": self.queue_capacity,
            "wait_timeout": self.wait_timeout,
            "reject_threshold": self.reject_threshold,
        }

    def env(self) -> dict[str, str]:
        """The settings as ``BACKPRESSURE_*`` environment variables."""
        return {
            f"BACKPRESSURE_{name.upper()}": str(value) if isinstance(value, int) else repr(value)
            for name, value in self.settings().items()
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "inputs": {
                "pool": self.pool,
                "avg_latency_s": self.avg_latency,
                "p95_latency_s": self.p95_latency,
                "target_rps": self.target_rps,
                "sla_s": self.sla,
            },
            "settings": self.settings(),
            "env": self.env(),
            "binding": self.binding,
            "derived": {
                "pool_bound": self.pool_bound,
                "in_flight": round(self.in_flight, 6),
                "little_bound": self.little_bound,
                "capacity_rps": round(self.capacity_rps, 6),
                "utilization": round(self.utilization, 6),
                "wait_budget_s": round(self.wait_budget, 6),
            },
            "working": list(self.working),
            "warnings": list(self.warnings),
        }


def make_plan(
    *, pool: int, avg_latency: float, p95_latency: float, target_rps: float, sla: float
) -> Plan:
    """The recommended settings; ``ValueError`` with a message for impossible inputs."""
    if pool < 1:
        raise ValueError(f"the pool size must be at least 1, got {pool}")
    for name, value in (
        ("average latency", avg_latency), ("p95 latency", p95_latency),
        ("target rate", target_rps), ("SLA", sla),
    ):  # fmt: skip
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"the {name} must be positive, got {value:g}")
    if sla <= p95_latency:
        raise ValueError(
            f"the SLA ({_ms(sla)}) must be above the p95 latency ({_ms(p95_latency)}): "
            "a request that queued at all would miss it; make the service faster first"
        )
    pool_bound = max(1, pool * 4 // 5)  # floor(pool x 0.8), exactly
    in_flight = target_rps * avg_latency
    little_bound = max(1, _ceil(in_flight * LITTLE_BUFFER))
    binding: Binding = "pool" if pool_bound < little_bound else "littles_law"
    seats = min(pool_bound, little_bound)
    capacity = seats / avg_latency
    utilization = in_flight / seats
    budget = sla - p95_latency
    queue = max(1, _ceil(capacity * budget))
    wait_timeout = max(0.001, round(budget, 3))
    reject = seats + queue

    working = [
        f"pool bound: {pool} x {POOL_SAFETY} = {pool * POOL_SAFETY:g} -> {pool_bound} seats",
        f"Little's law: L = lambda x W = {target_rps:,g} rps x {avg_latency:g} s = "
        f"{in_flight:,.4g} requests in flight",
        f"with a {LITTLE_BUFFER - 1:.0%} buffer: {in_flight:,.4g} x {LITTLE_BUFFER} = "
        f"{in_flight * LITTLE_BUFFER:,.4g} -> {little_bound} seats",
        f"max_concurrent = min({pool_bound}, {little_bound}) = {seats}: "
        + ("the DB pool binds" if binding == "pool" else "Little's law binds (the pool has room)"),
        f"capacity at {seats} seats: {seats} / {avg_latency:g} s = {capacity:,.4g} rps; "
        f"at {target_rps:,g} rps {utilization:.0%} of the seats are busy",
        f"queue-wait budget: SLA {_ms(sla)} - p95 latency {_ms(p95_latency)} = {_ms(budget)}",
        f"queue_capacity = {capacity:,.4g} rps x {budget:g} s = {capacity * budget:,.4g} -> "
        f"{queue} (the longest queue that drains within the budget)",
        f"wait_timeout = {wait_timeout:g} s (the budget: a longer wait misses the SLA anyway)",
        f"reject_threshold = {seats} + {queue} = {reject} (max_concurrent + queue_capacity)",
    ]
    held = lane_seats(seats, LanesSettings().ordered())[Priority.CRITICAL].guaranteed
    other = (seats - held) / avg_latency
    if held:
        working.append(
            f"the default lanes hold {held} of the {seats} seats for the critical lane; "
            f"the other lanes share {seats - held}: {seats - held} / {avg_latency:g} s = "
            f"{other:,.4g} rps"
        )
    warnings = []
    if utilization > 1:
        instances = _ceil(target_rps / capacity)
        warnings.append(
            f"{seats} seats serve only {capacity:,.4g} rps, below the {target_rps:,g} rps "
            f"target: run at least {instances} instances (or make requests faster)"
        )
    elif utilization > UTILIZATION_ALERT:
        pool_needed = _ceil(little_bound / POOL_SAFETY)
        warnings.append(
            f"at {target_rps:,g} rps {utilization:.0%} of the seats are busy, above the "
            f"{UTILIZATION_ALERT:.0%} HighUtilization alert: scale out, or grow the pool "
            f"to {pool_needed} for the {little_bound} seats Little's law asks for"
        )
    if held and other < target_rps <= capacity:
        warnings.append(
            f"with no critical traffic {seats - held} seats serve only {other:,.4g} rps, "
            f"below the {target_rps:,g} rps target: route must-not-fail calls to the critical "
            "lane, or lend its seats (BACKPRESSURE_LANES__CRITICAL__LENDABLE=1)"
        )
    if p95_latency < avg_latency:
        warnings.append("the p95 latency is below the average: check the two figures")
    return Plan(
        pool=pool, avg_latency=avg_latency, p95_latency=p95_latency, target_rps=target_rps,
        sla=sla, pool_bound=pool_bound, in_flight=in_flight, little_bound=little_bound,
        max_concurrent=seats, binding=binding, capacity_rps=capacity, utilization=utilization,
        wait_budget=budget, queue_capacity=queue, wait_timeout=wait_timeout,
        reject_threshold=reject, working=tuple(working), warnings=tuple(warnings),
    )  # fmt: skip


def render(plan: Plan, fmt: Literal["table", "env", "json"] = "table") -> str:
    """The plan as ``lockgate plan`` prints it."""
    if fmt == "json":
        return json.dumps(plan.as_json(), indent=2)
    env = [f"{name}={value}" for name, value in plan.env().items()]
    if fmt == "env":
        return "\n".join([f"# lockgate plan: {_summary(plan)}", *env])
    width = max(len(name) for name in plan.settings())
    lines = [f"lockgate plan: {_summary(plan)}", "", "Recommended settings"]
    notes = {
        "max_concurrent": "the DB pool binds" if plan.binding == "pool" else "Little's law binds",
        "queue_capacity": f"drains within the {_ms(plan.wait_budget)} queue-wait budget",
        "wait_timeout": "seconds",
        "reject_threshold": "max_concurrent + queue_capacity",
    }
    for name, value in plan.settings().items():
        lines.append(f"  {name:<{width}}  {value:>8g}  {notes[name]}")
    lines += ["", "Working"]
    lines += [f"  {i}. {step}" for i, step in enumerate(plan.working, 1)]
    if plan.warnings:
        lines += ["", "Warnings"] + [f"  ! {warning}" for warning in plan.warnings]
    lines += ["", "Environment (.env)"] + [f"  {line}" for line in env]
    return "\n".join(lines)


def _summary(plan: Plan) -> str:
    return (
        f"pool {plan.pool}, average latency {_ms(plan.avg_latency)}, p95 latency "
        f"{_ms(plan.p95_latency)}, target {plan.target_rps:,g} rps, SLA p95 <= {_ms(plan.sla)}"
    )


def _ceil(value: float) -> int:
    """``ceil`` that ignores float noise (``1500 * 0.05 * 1.2`` is 90, not 91); a
    ``ValueError`` (a clear message, exit 2) for inputs too large to compute with."""
    if not math.isfinite(value):
        raise ValueError("the inputs are too large: the result is not a finite number")
    return math.ceil(round(value, 9))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.4g} ms"

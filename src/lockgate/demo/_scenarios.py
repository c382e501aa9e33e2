"""The demo's four load scenarios and the two variants each one runs against.

A scenario is a load shape in multiples of the sample service's capacity (its pool divided by
the mean service time of the mix), so ``--seats`` and ``--rate`` rescale every scenario at
once. It says what to offer, not how: ``_runner`` offers it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._service import DEMO_ROUTES, AppConfig, mean_service_time

__all__ = ["NAMES", "VARIANTS", "Options", "Scenario", "scenarios"]

NAMES = ("normal", "threshold", "overload", "spike")
VARIANTS = ("unprotected", "gated")
"""Each scenario runs against the bare service first, then behind ``lockgate.Gate``."""


@dataclass(frozen=True, slots=True)
class Options:
    """What ``lockgate demo`` was asked for."""

    duration: float = 6.0
    """Seconds of each steady scenario; the spike scales with it."""
    rate: float = 1.0
    """Multiplies every scenario's offered load."""
    seats: int = 20
    """The service's DB pool and the gate's ``max_concurrent``."""
    timeout: float = 5.0
    """Client timeout: a request unanswered after this long counts as a timeout."""
    names: tuple[str, ...] = NAMES
    seed: int = 1

    @property
    def capacity(self) -> float:
        """Requests/s the pool can serve with the demo's mix."""
        return self.seats / mean_service_time(DEMO_ROUTES)

    def app(self, variant: str) -> AppConfig:
        """The server of ``variant``: gated with the benchmarks' settings scaled to the pool
        (queue 10 x seats, 3 s wait timeout) and lane shares sized to the service's traffic
        (``DEMO_LANES``), as its operator would set them."""
        if variant == "unprotected":
            return AppConfig("bare", pool=self.seats, seats=self.seats)
        return AppConfig("lockgate", pool=self.seats, seats=self.seats,
                         queue_capacity=10 * self.seats, wait_timeout=3.0,
                         lanes=DEMO_LANES)  # fmt: skip


DEMO_LANES = {
    "critical": {"share": 0.05},
    "high": {"share": 0.25},
    "normal": {"share": 0.40},
    "low": {"share": 0.30},
}
"""Shares sized to the sample service's seat-time (batch is 10 % of the requests but about
30 % of the DB time; internal calls keep one seat of 20 reserved). The defaults (10/40/40/10)
would cap batch at 6 of 20 seats and shed some of it at 0.7x load."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """A load shape and the part of it that is measured."""

    name: str
    title: str
    shape: tuple[tuple[float, float], ...]
    """Breakpoints ``(seconds, x capacity)``, linear in between; the run ends at the last."""
    window: tuple[float, float]
    """The measured part (seconds): the start is warm-up."""

    @property
    def end(self) -> float:
        return self.shape[-1][0]

    @property
    def peak(self) -> float:
        return max(x for _, x in self.shape)

    def rates(self, capacity: float) -> list[tuple[float, float]]:
        """The shape in requests/s, as ``Spec.schedule`` wants it."""
        return [(t, x * capacity) for t, x in self.shape]


def scenarios(options: Options) -> tuple[Scenario, ...]:
    """The scenarios ``options.names`` asks for, in the order of ``NAMES``."""
    d, r = options.duration, options.rate
    warm = min(1.0, 0.2 * d)

    def steady(name: str, x: float, what: str) -> Scenario:
        return Scenario(name, f"{what}: {x * r:g}x capacity for {d:g} s",
                        ((0.0, x * r), (d, x * r)), (warm, d))  # fmt: skip

    pre, ramp, hold, post = 0.4 * d, min(1.0, 0.4 * d), 0.5 * d, 0.8 * d
    top, down = pre + ramp, pre + ramp + hold
    low, high = 0.7 * r, 3.0 * r
    spike = Scenario(
        "spike",
        f"spike: {low:g}x for {pre:g} s, to {high:g}x in {ramp:g} s, held {hold:g} s, "
        f"back to {low:g}x for {post:g} s",
        ((0.0, low), (pre, low), (top, high), (down, high), (down, low), (down + post, low)),
        (warm, down + post),
    )
    every = {
        "normal": steady("normal", 0.7, "normal"),
        "threshold": steady("threshold", 1.0, "threshold"),
        "overload": steady("overload", 2.0, "overload"),
        "spike": spike,
    }
    return tuple(every[name] for name in NAMES if name in options.names)

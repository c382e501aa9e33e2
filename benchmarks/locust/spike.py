"""spike: 0 -> 500 users in 10 s, hold, then back to a light load so recovery shows.

Every user reads ``GET /api/v1/users/me`` (the normal lane) and thinks 0.1-0.5 s. The
``SpikeShape`` below drives the user count, so ``-u``, ``-r`` and ``-t`` are ignored::

    locust -f benchmarks/locust/spike.py --headless --host http://127.0.0.1:8000 --csv out/spike

Read ``out/spike_stats_history.csv``: the ``SHED`` rate rises during the spike and falls back
to 0 once the users drop to ``BASELINE``, while the admitted requests' latency recovers.
"""

from __future__ import annotations

from typing import NamedTuple

from locust import LoadTestShape, between, task

from lockgate_locust import GateAwareUser

PEAK = 500
BASELINE = 50


class Stage(NamedTuple):
    """Until ``end`` seconds into the run, move towards ``users`` at ``spawn_rate`` users/s."""

    end: float
    users: int
    spawn_rate: float


class SpikeUser(GateAwareUser):
    """Reads its profile again and again, 0.1-0.5 s apart."""

    think_time = between(0.1, 0.5)

    @task
    def me(self) -> None:
        self.call("GET", "/api/v1/users/me")


class SpikeShape(LoadTestShape):
    """Ramp 0 -> 500 in 10 s, hold 30 s, drop to 50 in 5 s, hold 30 s (recovery), stop."""

    stages: tuple[Stage, ...] = (
        Stage(10.0, PEAK, PEAK / 10.0),  # the spike: 50 users/s
        Stage(40.0, PEAK, PEAK / 10.0),  # hold: the gate sheds what it cannot serve
        Stage(45.0, BASELINE, (PEAK - BASELINE) / 5.0),  # ramp down
        Stage(75.0, BASELINE, (PEAK - BASELINE) / 5.0),  # recovery: the queue drains
    )

    def tick(self) -> tuple[int, float] | None:
        return self.tick_at(self.get_run_time())  # type: ignore[no-untyped-call]

    def tick_at(self, run_time: float) -> tuple[int, float] | None:
        """``(users, spawn_rate)`` at ``run_time`` seconds into the run; ``None``: stop."""
        for stage in self.stages:
            if run_time < stage.end:
                return stage.users, stage.spawn_rate
        return None

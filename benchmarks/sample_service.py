"""The sample service of the overload benchmarks: ``lockgate.demo``'s, plus the naive gate.

The service itself (routes, lanes, simulated DB pool) lives in ``lockgate.demo._service`` so that
``lockgate demo`` runs from an installed package; this module adds the benchmark-only
``"naive"`` variant (``naive_gate.NaiveGate``) and reads its config from ``LOCKGATE_BENCH_APP``.

``create_app()`` is a uvicorn ``--factory``: it reads the variant to build from the
``LOCKGATE_BENCH_APP`` environment variable (JSON, see ``AppConfig``; ``kind`` is ``"bare"``,
``"naive"`` or ``"lockgate"``).
"""

from __future__ import annotations

from lockgate._types import ASGIApp
from lockgate.demo._service import (
    HEALTH_PATH,
    ROUTES,
    AppConfig,
    Route,
    SampleService,
    classifier,
    mean_service_time,
)
from lockgate.demo._service import build_app as _build_demo_app
from naive_gate import NaiveGate

__all__ = ["ENV_VAR", "HEALTH_PATH", "ROUTES", "AppConfig", "Route", "SampleService",
           "build_app", "classifier", "create_app", "mean_service_time"]  # fmt: skip

ENV_VAR = "LOCKGATE_BENCH_APP"


def build_app(config: AppConfig) -> ASGIApp:
    """The sample service, bare or behind the gate ``config.kind`` names."""
    if config.kind != "naive":
        return _build_demo_app(config)
    return NaiveGate(
        SampleService(config.pool, jitter=config.jitter), config.seats,
        queue_capacity=config.queue_capacity, wait_timeout=config.wait_timeout,
        bypass_paths=(HEALTH_PATH,),
    )  # fmt: skip


def create_app() -> ASGIApp:
    """uvicorn ``--factory`` entry point: the app ``LOCKGATE_BENCH_APP`` describes."""
    return build_app(AppConfig.from_env(ENV_VAR))

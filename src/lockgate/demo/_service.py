"""The bundled sample service: an auth-style ASGI app whose work is waiting for a DB pool.

Every API request holds one of ``pool`` "connections" (an ``asyncio.Semaphore``) for its
route's service time (``await asyncio.sleep``): that sleep *is* the work. Without a gate the
excess waits for the pool without bound, as a real service waiting on its DB pool does. It is
a stand-in for the user's service, not an example of how to write one.

Routes, one per lane (``ROUTES`` is the T2 mix of DESIGN §11, what the benchmarks offer;
``DEMO_ROUTES`` adds the critical lane for ``lockgate demo``):

* ``POST /internal/v1/token/introspect`` -- critical, 20 ms: sibling services checking a token;
* ``POST /api/v1/auth/login`` -- high, 50 ms, 20 % of the T2 traffic;
* ``GET /api/v1/users/me`` -- normal, 50 ms, 70 %;
* ``POST /api/v1/batch`` -- low, 200 ms, 10 %;
* ``/health`` -- no pool, answers at once (bypassed by the gates).

``create_app()`` is a uvicorn ``--factory``: it builds the app ``LOCKGATE_DEMO_APP`` describes
(JSON, see ``AppConfig``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from dataclasses import asdict, dataclass

from .._classifier import Rule, RuleClassifier
from .._gate import Gate
from .._lanes import Priority
from .._settings import GateSettings, LanesSettings
from .._types import ASGIApp, Receive, Scope, Send

__all__ = [
    "DEMO_ROUTES", "ENV_VAR", "HEALTH_PATH", "ROUTES", "AppConfig", "Route", "SampleService",
    "build_app", "classifier", "create_app", "mean_service_time",
]

ENV_VAR = "LOCKGATE_DEMO_APP"
HEALTH_PATH = "/health"


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint of the sample service and its share of the offered traffic."""

    method: str
    path: str
    lane: Priority
    service_time: float
    weight: float
    body: bytes = b""


ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/v1/auth/login", Priority.HIGH, 0.050, 0.20,
          b'{"username":"alice@example.com","password":"correct horse"}'),
    Route("GET", "/api/v1/users/me", Priority.NORMAL, 0.050, 0.70),
    Route("POST", "/api/v1/batch", Priority.LOW, 0.200, 0.10,
          b'{"items":[' + b",".join(b'{"id":%d}' % i for i in range(16)) + b"]}"),
)  # fmt: skip
"""The T2 mix: 20 % login (high), 70 % users/me (normal), 10 % batch (low)."""

INTROSPECT = Route("POST", "/internal/v1/token/introspect", Priority.CRITICAL, 0.020, 0.02,
                   b'{"token":"eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl"}')  # fmt: skip
DEMO_ROUTES: tuple[Route, ...] = (INTROSPECT, *ROUTES)
"""Every lane: the T2 mix plus 2 % critical token introspection."""


def mean_service_time(routes: tuple[Route, ...] = ROUTES) -> float:
    """Service time of the mix, weighted by traffic share (seconds)."""
    return sum(r.weight * r.service_time for r in routes) / sum(r.weight for r in routes)


def classifier() -> RuleClassifier:
    """The lanes of the auth service: internal calls critical, login high, batch low, every
    other API call normal."""
    return RuleClassifier([
        Rule(Priority.CRITICAL, prefix="/internal/"),
        Rule(Priority.HIGH, prefix="/api/v1/auth/login"),
        Rule(Priority.LOW, prefix="/api/v1/batch"),
    ])


@dataclass(frozen=True, slots=True)
class AppConfig:
    """What a server process builds: the app, its pool and the gate in front of it.

    ``kind`` is ``"bare"`` or ``"lockgate"`` here; the benchmarks add kinds of their own.
    """

    kind: str = "bare"
    pool: int = 20
    seats: int = 20
    queue_capacity: int = 200
    wait_timeout: float = 3.0
    limit: str = "fixed"
    lanes: dict[str, dict[str, float]] | None = None
    """Lane settings over the defaults (``{"low": {"share": 0.3}}``); ``None``: the defaults."""
    jitter: float = 0.0
    """Each service time varies uniformly by up to +- this fraction (0: exact sleeps)."""

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, name: str = ENV_VAR) -> AppConfig:
        return cls(**json.loads(os.environ.get(name, "{}")))

    def gate_settings(self) -> GateSettings:
        """The lockgate settings of this config (defaults apart from size, limit, lanes)."""
        return GateSettings(
            max_concurrent=self.seats,
            queue_capacity=self.queue_capacity,
            wait_timeout=self.wait_timeout,
            limit=self.limit,
            lanes=LanesSettings.model_validate(self.lanes or {}),
        )


class SampleService:
    """The bare service: every route of ``DEMO_ROUTES`` served through a pool of ``pool``."""

    def __init__(
        self, pool: int = 20, routes: tuple[Route, ...] = DEMO_ROUTES, jitter: float = 0.0
    ) -> None:
        """``jitter``: vary each service time uniformly by up to +- this fraction. Exact
        sleeps put seats in lockstep (seats released in one loop tick restart together for
        ever; lockgate's scheduler pulls them apart, see ``_discipline``); real queries
        vary."""
        self.pool = asyncio.Semaphore(pool)
        self.service_times = {(r.method, r.path): r.service_time for r in routes}
        self.jitter = jitter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == HEALTH_PATH:
            await _respond(send, 200, b'{"status":"ok"}')
            return
        service_time = self.service_times.get((scope["method"], path))
        if service_time is None:
            await _respond(send, 404, b'{"error":"not found"}')
            return
        while (await receive()).get("more_body", False):
            pass
        if self.jitter:
            service_time *= 1.0 + self.jitter * (2.0 * random.random() - 1.0)
        async with self.pool:
            await asyncio.sleep(service_time)
        await _respond(send, 200, b'{"success":true,"data":{"id":42}}')


def build_app(config: AppConfig) -> ASGIApp:
    """The sample service, bare or behind ``lockgate.Gate``."""
    app = SampleService(config.pool, jitter=config.jitter)
    if config.kind == "bare":
        return app
    if config.kind == "lockgate":
        return Gate(app, config.gate_settings(), classifier=classifier())
    raise ValueError(f"unknown app kind {config.kind!r} (bare or lockgate)")


def create_app() -> ASGIApp:
    """uvicorn ``--factory`` entry point: the app ``LOCKGATE_DEMO_APP`` describes."""
    return build_app(AppConfig.from_env())


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Complete start-up; return once shutdown is complete."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})

"""A sample auth-style ASGI service with a simulated DB pool, for the overload benchmarks.

Every API request holds one of ``pool`` "connections" (an ``asyncio.Semaphore``) for its
route's service time (``await asyncio.sleep``): that sleep *is* the work. Without a gate the
excess waits for the pool without bound, as a real service waiting on its DB pool does.

Routes (the T2 mix of DESIGN §11):

* ``POST /api/v1/auth/login`` -- high lane, 50 ms, 20 % of the traffic;
* ``GET /api/v1/users/me`` -- normal lane, 50 ms, 70 %;
* ``POST /api/v1/batch`` -- low lane, 200 ms, 10 %;
* ``/health`` -- no pool, answers at once (bypassed by the gates).

``create_app()`` is a uvicorn ``--factory``: it reads the variant to build from the
``LOCKGATE_BENCH_APP`` environment variable (JSON, see ``AppConfig``).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict, dataclass
from typing import Literal

from lockgate import Gate, GateSettings, Priority, Rule, RuleClassifier
from lockgate._types import ASGIApp, Receive, Scope, Send
from naive_gate import NaiveGate

ENV_VAR = "LOCKGATE_BENCH_APP"
AppKind = Literal["bare", "naive", "lockgate"]


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint of the sample service and its share of the benchmark traffic."""

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
)
HEALTH_PATH = "/health"


def mean_service_time(routes: tuple[Route, ...] = ROUTES) -> float:
    """Service time of the mix, weighted by traffic share (seconds)."""
    return sum(r.weight * r.service_time for r in routes) / sum(r.weight for r in routes)


def classifier() -> RuleClassifier:
    """The lanes of the auth service: login high, batch low, every other API call normal."""
    return RuleClassifier([
        Rule(Priority.HIGH, prefix="/api/v1/auth/login"),
        Rule(Priority.LOW, prefix="/api/v1/batch"),
    ])


@dataclass(frozen=True, slots=True)
class AppConfig:
    """What the server process builds: the app, its pool and the gate in front of it."""

    kind: AppKind = "bare"
    pool: int = 20
    seats: int = 20
    queue_capacity: int = 200
    wait_timeout: float = 3.0
    limit: str = "fixed"

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> AppConfig:
        return cls(**json.loads(os.environ.get(ENV_VAR, "{}")))

    def gate_settings(self) -> GateSettings:
        """The lockgate settings of this config (defaults apart from size and limit)."""
        return GateSettings(
            max_concurrent=self.seats,
            queue_capacity=self.queue_capacity,
            wait_timeout=self.wait_timeout,
            limit=self.limit,
        )


class SampleService:
    """The bare service: routes of ``ROUTES`` served through a pool of ``pool`` connections."""

    def __init__(self, pool: int = 20, routes: tuple[Route, ...] = ROUTES) -> None:
        self.pool = asyncio.Semaphore(pool)
        self.service_times = {(r.method, r.path): r.service_time for r in routes}

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
        async with self.pool:
            await asyncio.sleep(service_time)
        await _respond(send, 200, b'{"success":true,"data":{"id":42}}')


def build_app(config: AppConfig) -> ASGIApp:
    """The sample service, bare or behind the gate ``config.kind`` names."""
    app = SampleService(config.pool)
    if config.kind == "bare":
        return app
    if config.kind == "naive":
        return NaiveGate(
            app, config.seats, queue_capacity=config.queue_capacity,
            wait_timeout=config.wait_timeout, bypass_paths=(HEALTH_PATH,),
        )
    return Gate(app, config.gate_settings(), classifier=classifier())


def create_app() -> ASGIApp:
    """uvicorn ``--factory`` entry point: the app ``LOCKGATE_BENCH_APP`` describes."""
    return build_app(AppConfig.from_env())


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return

"""The ASGI apps ``overhead.py`` serves: one trivial endpoint, bare and behind the gate.

* ``bare``: a raw ASGI app answering ``200 ok`` (2 bytes) to every request.
* ``gated``: ``Gate(bare)`` with default settings (``GateSettings()``, 100 seats).
* ``classified``: ``gated`` plus a ``RuleClassifier`` of five prefix rules, none of which
  matches the benchmark path, so every request walks all five (the classifier's worst case).
* ``metered()``: ``gated`` with metrics on (T1's wording): an OpenTelemetry SDK
  ``MeterProvider`` with a Prometheus reader. A factory (``uvicorn --factory``), so that the
  other variants never import the SDK.

Served with ``python -m uvicorn benchmarks._apps:<name>`` from the repository root.
"""

from __future__ import annotations

from lockgate import Gate, Priority, Rule, RuleClassifier
from lockgate._types import Receive, Scope, Send

__all__ = ["BENCH_PATH", "bare", "classified", "gated", "metered"]

BENCH_PATH = "/api/v1/users/me"
"""The path the load generator requests (normal lane under every classifier here)."""
_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"2")]


async def bare(scope: Scope, receive: Receive, send: Send) -> None:
    """``200 ok`` for HTTP; completes lifespan start-up and shutdown."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": b"ok"})


gated = Gate(bare)

classified = Gate(
    bare,
    classifier=RuleClassifier(
        [
            Rule(prefix="/api/v1/auth/login", priority=Priority.HIGH),
            Rule(prefix="/api/v1/auth/refresh", priority=Priority.HIGH),
            Rule(prefix="/api/v1/admin/", priority=Priority.HIGH),
            Rule(prefix="/batch", priority=Priority.LOW),
            Rule(prefix="/bulk", priority=Priority.LOW),
        ]
    ),
)


def metered() -> Gate:
    """``Gate(bare)`` reporting to an OpenTelemetry SDK meter with a Prometheus reader."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider

    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    return Gate(bare, meter=provider.get_meter("lockgate"))

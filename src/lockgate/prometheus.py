"""``setup_prometheus()``: the OpenTelemetry SDK with a Prometheus exporter, in one call.

Needs the ``prometheus`` extra (``pip install 'lockgate[prometheus]'``: ``opentelemetry-sdk``,
``opentelemetry-exporter-prometheus``, ``prometheus-client``)::

    from lockgate import Gate
    from lockgate.prometheus import setup_prometheus

    app = setup_prometheus(Gate(inner_app))      # GET /metrics, in front of the gate

It builds a ``MeterProvider`` whose only reader is a ``PrometheusMetricReader``, makes it the
global provider (so gates built with ``meter=None`` report through it, whether they were
built before or after), and serves the exposition either on the app itself at ``path`` or,
with ``port=``, from a small HTTP server thread of its own.

Several worker processes (``uvicorn --workers N``, gunicorn) each have their own gate and
their own numbers; the exporter cannot merge them. Serve each worker on its own port
(``port=range(9101, 9101 + N)``: each takes the first free one) and let Prometheus scrape
them all, or export OTLP to a collector instead. A ``/metrics`` on the shared app port would
be answered by whichever worker the connection lands on. ``docs/operations/metrics.md``
has the details.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

try:
    from opentelemetry import metrics
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
    from prometheus_client import (
        GC_COLLECTOR,
        PLATFORM_COLLECTOR,
        PROCESS_COLLECTOR,
        CollectorRegistry,
        make_asgi_app,
        start_http_server,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "lockgate.prometheus needs the 'prometheus' extra: pip install 'lockgate[prometheus]'"
    ) from exc

from ._responses import send_json
from ._types import ASGIApp, Message, Receive, Scope, Send
from .otel import METER_NAME, WAIT_BUCKETS

if TYPE_CHECKING:
    from threading import Thread
    from wsgiref.simple_server import WSGIServer

    from opentelemetry.metrics import Meter

__all__ = ["PrometheusMetrics", "setup_prometheus"]

_NOT_FOUND = b'{"success":false,"error":{"code":"NOT_FOUND","message":"Not found."}}'


def setup_prometheus(
    app: ASGIApp | None = None,
    *,
    path: str = "/metrics",
    port: int | range | None = None,
    addr: str = "127.0.0.1",
    set_global: bool = True,
    registry: CollectorRegistry | None = None,
) -> PrometheusMetrics:
    """Configure the OpenTelemetry SDK with the Prometheus exporter and serve its metrics.

    ``app``: the ASGI app to put behind the metrics endpoint (usually the ``Gate``). The
    result is itself an ASGI app: ``GET path`` answers the exposition, anything else goes
    to ``app``. Without ``app`` it answers the exposition on every path (mount it under your
    router at ``/metrics``, which the gate bypasses by default).

    ``port``: serve the exposition from a thread on ``addr:port`` instead of on the app
    (``0``: any free port; a ``range``: the first free port in it, one per worker process).

    ``set_global``: make the provider the global one, so that ``Gate(..., meter=None)``
    reports through it. Raises ``RuntimeError`` if another global provider is set already;
    then pass ``set_global=False`` and ``Gate(..., meter=result.meter)``.

    ``registry``: the ``prometheus_client`` registry to export into; default a new one
    with the process, platform and GC collectors (``prometheus_client.REGISTRY`` to share
    the global one).
    """
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/': {path!r}")
    if registry is None:
        registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
    server = _serve(port, addr, registry) if port is not None else None
    reader = PrometheusMetricReader(registry=registry, scope_info_enabled=False)
    provider = MeterProvider(
        metric_readers=[reader],
        views=[  # the instrument advises these buckets already; this covers older SDKs
            View(
                instrument_name="backpressure.wait_time",
                aggregation=ExplicitBucketHistogramAggregation(WAIT_BUCKETS),
            )
        ],
        shutdown_on_exit=False,  # a pull exporter has nothing to flush at exit
    )
    if set_global:
        metrics.set_meter_provider(provider)
        if metrics.get_meter_provider() is not provider:
            provider.shutdown()
            _stop(server)
            raise RuntimeError(
                "a global OpenTelemetry MeterProvider is already set; add a "
                "PrometheusMetricReader to it, or call setup_prometheus(set_global=False) "
                "and pass meter=<result>.meter to Gate"
            )
    return PrometheusMetrics(app, provider, registry, None if server else path, server)


class PrometheusMetrics:
    """What ``setup_prometheus`` built; an ASGI app serving the exposition (see there).

    ``app`` may be assigned after the fact (``metrics.app = Gate(inner, meter=metrics.meter)``).
    """

    def __init__(
        self,
        app: ASGIApp | None,
        meter_provider: MeterProvider,
        registry: CollectorRegistry,
        path: str | None,
        server: tuple[WSGIServer, Thread] | None = None,
    ) -> None:
        self.app = app
        self.meter_provider = meter_provider
        self.registry = registry
        self.path = path
        """Where the app answers the exposition; ``None`` when it has a port of its own."""
        self._server = server
        self._exposition = cast(ASGIApp, make_asgi_app(registry))

    @property
    def meter(self) -> Meter:
        """The meter lockgate's instruments use (for ``Gate(..., meter=...)``). While the
        provider is the global one, that is the meter of ``Gate(..., meter=None)`` too, so
        gates built either way share one set of instruments (two sets of the same names on
        one provider would lose one gate's observations)."""
        from . import __version__
        from .otel import _get_default_meter

        if metrics.get_meter_provider() is self.meter_provider:
            return _get_default_meter()
        return self.meter_provider.get_meter(METER_NAME, __version__)

    @property
    def port(self) -> int | None:
        """The port the exposition is served on by its own server, if any."""
        return self._server[0].server_port if self._server else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and self.path is not None
            and (self.app is None or scope["path"] == self.path)
        ):
            await self._exposition(scope, receive, _lowercase_headers(send))
        elif self.app is not None:
            await self.app(scope, receive, send)
        elif scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "http":
            await send_json(send, 404, _NOT_FOUND)

    def shutdown(self) -> None:
        """Stop the exposition server (if any) and the meter provider."""
        _stop(self._server)
        self._server = None
        self.meter_provider.shutdown()

    def __repr__(self) -> str:
        where = f"port {self.port}" if self._server else f"path {self.path}"
        return f"<PrometheusMetrics {where} app={self.app!r}>"


def _serve(port: int | range, addr: str, registry: CollectorRegistry) -> tuple[WSGIServer, Thread]:
    ports = port if isinstance(port, range) else (port,)
    error: OSError | None = None
    for candidate in ports:
        try:
            return start_http_server(candidate, addr, registry)
        except OSError as exc:
            error = exc
    raise OSError(f"no free port for the metrics server on {addr} in {port!r}") from error


def _lowercase_headers(send: Send) -> Send:
    """ASGI wants lower-case header names; ``prometheus_client`` sends ``Content-Type``."""

    async def lowercase(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(bytes(name).lower(), value) for name, value in message["headers"]]
            message = {**message, "headers": headers}
        await send(message)

    return lowercase


def _stop(server: tuple[WSGIServer, Thread] | None) -> None:
    if server is not None:
        httpd, thread = server
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)

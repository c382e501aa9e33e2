"""OpenTelemetry instruments (``lockgate.otel``) read through the SDK's ``InMemoryMetricReader``:
names, units, labels and values after scripted admissions and rejections on a fake clock."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from opentelemetry.metrics import Meter, NoOpMeter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
    Sum,
)

from lockgate import Gate, GateSettings, Priority, PriorityScheduler, RejectReason
from lockgate._types import Receive, Scope, Send
from lockgate.otel import WAIT_BUCKETS, GateMetrics
from lockgate.testing import FakeClock, make_scope, ok_app

from ._asgi import Exchange

Labels = tuple[tuple[str, str], ...]
LANES = ("critical", "high", "normal", "low")
REASONS = (
    "system_overload", "queue_full", "queue_timeout", "deadline_unreachable", "read_only",
    "circuit_open",
)  # fmt: skip


@dataclass
class Sdk:
    """An SDK ``MeterProvider`` whose only reader is in memory."""

    reader: InMemoryMetricReader
    meter: Meter

    def collect(self) -> dict[str, Metric]:
        data = self.reader.get_metrics_data()
        if data is None:  # nothing to report at all
            return {}
        return {
            metric.name: metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }


@pytest.fixture
def sdk() -> Iterator[Sdk]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    yield Sdk(reader, provider.get_meter("lockgate"))
    provider.shutdown()


def values(metric: Metric) -> dict[Labels, float]:
    """``{sorted label pairs: value}`` of a gauge or counter."""
    out: dict[Labels, float] = {}
    for point in metric.data.data_points:
        assert isinstance(point, NumberDataPoint)
        out[tuple(sorted((k, str(v)) for k, v in (point.attributes or {}).items()))] = point.value
    return out


def histogram(metric: Metric) -> dict[Labels, HistogramDataPoint]:
    out: dict[Labels, HistogramDataPoint] = {}
    for point in metric.data.data_points:
        assert isinstance(point, HistogramDataPoint)
        out[tuple(sorted((k, str(v)) for k, v in (point.attributes or {}).items()))] = point
    return out


def lane(name: str) -> Labels:
    return (("lane", name),)


def rejected(lane: str, reason: str) -> Labels:
    return (("lane", lane), ("reason", reason))


class HoldApp:
    """``/hold...`` requests wait until the test opens them (by path); others answer at once."""

    def __init__(self) -> None:
        self.opened: dict[str, anyio.Event] = {}

    def open(self, path: str) -> None:
        self.opened.setdefault(path, anyio.Event()).set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        if scope["path"].startswith("/hold"):
            await self.opened.setdefault(scope["path"], anyio.Event()).wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def start(tg: anyio.abc.TaskGroup, gate: Gate, path: str) -> Exchange:
    ex = Exchange(gate, path=path)
    ex.push_body()
    tg.start_soon(ex.run)
    await wait_all_tasks_blocked()
    return ex


# -- names, kinds, units ---------------------------------------------------------------------


def test_instruments_names_units_and_kinds(sdk: Sdk) -> None:
    """Every instrument, with the unit that makes the Prometheus exporter write the original
    plan's names (``s`` -> ``_seconds``; ``{request}`` adds nothing; counters get ``_total``)."""
    gate = Gate(ok_app, GateSettings(max_concurrent=10), meter=sdk.meter)
    found = sdk.collect()
    kinds = {name: (type(m.data).__name__, m.unit) for name, m in found.items()}
    assert kinds == {
        "backpressure.active_requests": ("Gauge", "{request}"),
        "backpressure.queued_requests": ("Gauge", "{request}"),
        "backpressure.concurrency_limit": ("Gauge", "{request}"),
        "backpressure.rejected": ("Sum", "{request}"),
        "backpressure.admitted": ("Sum", "{request}"),
        # the histogram has no point until a request queues; the degradation gauge none
        # until a policy reports
    }
    for name in ("backpressure.rejected", "backpressure.admitted"):
        data = found[name].data
        assert isinstance(data, Sum) and data.is_monotonic
    assert isinstance(found["backpressure.active_requests"].data, Gauge)
    assert values(found["backpressure.concurrency_limit"]) == {(): 10}
    for name in ("backpressure.active_requests", "backpressure.queued_requests"):
        assert values(found[name]) == {lane(n): 0 for n in LANES}
    assert values(found["backpressure.rejected"]) == {
        rejected(n, r): 0 for n in LANES for r in REASONS
    }
    assert gate.stats().admitted == 0


def test_wait_histogram_has_the_original_buckets(sdk: Sdk) -> None:
    """The bucket bounds come from the instrument's advice, no View needed."""
    metrics = GateMetrics(PriorityScheduler(10).stats, sdk.meter)
    for seconds in (0.005, 0.05, 0.3, 0.7, 2.0, 4.0, 9.0):
        metrics.record_wait(Priority.HIGH, seconds)
    found = sdk.collect()["backpressure.wait_time"]
    assert found.unit == "s" and isinstance(found.data, Histogram)
    point = histogram(found)[lane("high")]
    assert tuple(point.explicit_bounds) == WAIT_BUCKETS == (0.01, 0.05, 0.1, 0.5, 1, 3, 5)
    assert list(point.bucket_counts) == [1, 1, 0, 1, 1, 1, 1, 1]
    assert point.count == 7


# -- values after a scripted sequence --------------------------------------------------------


@pytest.mark.anyio
async def test_scripted_admissions_and_rejections(sdk: Sdk) -> None:
    """Two seats, one queue place, FIFO: 2 admitted at once, 1 queued then admitted after
    0.3 s, 1 QUEUE_FULL, 1 QUEUE_TIMEOUT after 1 s. The histogram holds only the one wait."""
    app, clock = HoldApp(), FakeClock()
    settings = GateSettings(max_concurrent=2, queue_capacity=1, wait_timeout=1.0, target_wait=None)
    gate = Gate(app, settings, clock=clock, meter=sdk.meter)
    async with anyio.create_task_group() as tg:
        await start(tg, gate, "/hold1")
        await start(tg, gate, "/hold2")
        queued = await start(tg, gate, "/hold3")
        full = await start(tg, gate, "/x")
        assert full.status == 503 and full.json()["error"]["code"] == "QUEUE_FULL"

        now = sdk.collect()
        assert values(now["backpressure.active_requests"])[lane("normal")] == 2
        assert values(now["backpressure.queued_requests"]) == {
            lane("critical"): 0,
            lane("high"): 0,
            lane("normal"): 1,
            lane("low"): 0,
        }
        assert values(now["backpressure.rejected"])[rejected("normal", "queue_full")] == 1
        assert values(now["backpressure.admitted"])[lane("normal")] == 2
        assert "backpressure.wait_time" not in now  # immediate admissions are not recorded

        clock.advance(0.3)
        app.open("/hold1")
        await wait_all_tasks_blocked()
        assert queued.status is None  # admitted, held by the app
        timed_out = await start(tg, gate, "/y")
        clock.advance(1.0)
        await wait_all_tasks_blocked()
        assert timed_out.json()["error"]["code"] == "QUEUE_TIMEOUT"
        app.open("/hold2")
        app.open("/hold3")

    end = sdk.collect()
    assert values(end["backpressure.active_requests"]) == {lane(n): 0 for n in LANES}
    assert values(end["backpressure.queued_requests"]) == {lane(n): 0 for n in LANES}
    assert values(end["backpressure.admitted"]) == {
        lane("critical"): 0,
        lane("high"): 0,
        lane("normal"): 3,
        lane("low"): 0,
    }
    counts = values(end["backpressure.rejected"])
    assert {k: v for k, v in counts.items() if v} == {
        rejected("normal", "queue_full"): 1,
        rejected("normal", "queue_timeout"): 1,
    }
    waits = histogram(end["backpressure.wait_time"])
    assert list(waits) == [lane("normal")]
    point = waits[lane("normal")]
    assert point.count == 1
    assert point.sum == pytest.approx(0.3)
    assert list(point.bucket_counts) == [0, 0, 0, 1, 0, 0, 0, 0]  # (0.1, 0.5]
    assert values(end["backpressure.concurrency_limit"]) == {(): 2}


@pytest.mark.anyio
async def test_fast_path_never_calls_the_histogram() -> None:
    """Regression guard for the T1 budget: an immediate admission costs no SDK call (one
    ``record`` is ~4-5 us, a fifth of a trivial request under uvicorn)."""
    calls: list[str] = []

    class SpyHistogram:
        def record(self, *args: Any, **kwargs: Any) -> None:
            calls.append("record")

    class SpyMeter(NoOpMeter):
        def create_histogram(self, *args: Any, **kwargs: Any) -> Any:
            return SpyHistogram()

    gate = Gate(ok_app, GateSettings(max_concurrent=5), meter=SpyMeter("spy"))
    for _ in range(100):
        ex = Exchange(gate, path="/")
        ex.push_body()
        await ex.run()
        assert ex.status == 200
    assert calls == []
    assert gate.stats().admitted == 100


def test_rejections_decided_outside_the_scheduler_are_counted(
    sdk: Sdk,
) -> None:
    """A degradation policy's rejection (``record_rejection``) shows up like the gate's own."""
    gate = Gate(ok_app, meter=sdk.meter)
    gate.scheduler.record_rejection(Priority.LOW, RejectReason.READ_ONLY)
    gate.scheduler.record_rejection(Priority.LOW, RejectReason.READ_ONLY)
    counts = values(sdk.collect()["backpressure.rejected"])
    assert counts[rejected("low", "read_only")] == 2


def test_degradation_mode_hook(sdk: Sdk) -> None:
    """``gate.metrics.degradation`` reports which modes are on, read at collection time."""
    gate = Gate(ok_app, meter=sdk.meter)
    modes = {"read_only": True, "circuit_breaker": False}
    gate.metrics.degradation = lambda: modes
    assert values(sdk.collect()["backpressure.degradation_mode"]) == {
        (("policy", "read_only"),): 1,
        (("policy", "circuit_breaker"),): 0,
    }
    modes["read_only"] = False
    assert values(sdk.collect()["backpressure.degradation_mode"])[(("policy", "read_only"),)] == 0


# -- several gates, gone gates, no SDK -------------------------------------------------------


def test_gates_sharing_a_meter_are_summed(sdk: Sdk) -> None:
    """The SDK keeps only the first instrument of a name: gates on one meter share it."""
    one = Gate(ok_app, GateSettings(max_concurrent=3), meter=sdk.meter)
    two = Gate(ok_app, GateSettings(max_concurrent=4), meter=sdk.meter)
    one.metrics.degradation = lambda: {"read_only": False}
    two.metrics.degradation = lambda: {"read_only": True}
    one.scheduler.record_rejection(Priority.HIGH, RejectReason.QUEUE_FULL)
    two.scheduler.record_rejection(Priority.HIGH, RejectReason.QUEUE_FULL)
    found = sdk.collect()
    assert values(found["backpressure.concurrency_limit"]) == {(): 7}
    assert values(found["backpressure.rejected"])[rejected("high", "queue_full")] == 2
    assert values(found["backpressure.degradation_mode"]) == {(("policy", "read_only"),): 1}


def test_a_collected_or_closed_gate_is_no_longer_observed(sdk: Sdk) -> None:
    keep = Gate(ok_app, GateSettings(max_concurrent=3), meter=sdk.meter)
    gone = Gate(ok_app, GateSettings(max_concurrent=4), meter=sdk.meter)
    assert values(sdk.collect()["backpressure.concurrency_limit"]) == {(): 7}
    del gone
    gc.collect()
    assert values(sdk.collect()["backpressure.concurrency_limit"]) == {(): 3}
    keep.metrics.close()
    after = sdk.collect()
    for name in ("concurrency_limit", "active_requests", "queued_requests"):
        assert f"backpressure.{name}" not in after
    # counters keep the gone gates' totals (zero here): a counter never goes backwards
    assert set(values(after["backpressure.admitted"]).values()) == {0}


def test_counters_never_go_backwards_when_a_gate_goes_away(sdk: Sdk) -> None:
    """Two gates on one meter; one is closed, the other collected: the admitted and rejected
    totals keep their counts (Prometheus would read a drop as a counter reset and count the
    survivors' whole totals again, e.g. firing HighRejectionRate with no rejection at all)."""
    keep = Gate(ok_app, GateSettings(max_concurrent=3), meter=sdk.meter)
    closed = Gate(ok_app, GateSettings(max_concurrent=3), meter=sdk.meter)
    gone = Gate(ok_app, GateSettings(max_concurrent=3), meter=sdk.meter)
    for gate, n in ((keep, 1), (closed, 2), (gone, 4)):
        for _ in range(n):
            permit = gate.scheduler.try_acquire(Priority.NORMAL)
            assert permit is not None
            permit.release()
            gate.scheduler.record_rejection(Priority.HIGH, RejectReason.QUEUE_FULL)

    def totals() -> tuple[float, float]:
        found = sdk.collect()
        return (values(found["backpressure.admitted"])[lane("normal")],
                values(found["backpressure.rejected"])[rejected("high", "queue_full")])

    assert totals() == (7, 7)
    closed.metrics.close()
    assert totals() == (7, 7)
    del gone
    gc.collect()
    assert totals() == (7, 7)
    permit = keep.scheduler.try_acquire(Priority.NORMAL)
    assert permit is not None
    permit.release()
    assert totals() == (8, 7)


@pytest.mark.anyio
async def test_without_an_sdk_metrics_are_no_ops() -> None:
    """``meter=None`` and no SDK configured: the global API meter is a no-op; the gate and
    its slow path (which records waits) work as before."""
    app = HoldApp()
    gate = Gate(app, GateSettings(max_concurrent=1), clock=FakeClock())
    explicit = Gate(ok_app, meter=NoOpMeter("lockgate"))
    async with anyio.create_task_group() as tg:
        await start(tg, gate, "/hold1")
        queued = await start(tg, gate, "/hold2")
        app.open("/hold1")
        app.open("/hold2")
    assert queued.status == 200
    ex = Exchange(explicit, scope=make_scope("/"))
    ex.push_body()
    await ex.run()
    assert ex.status == 200


def test_degradation_mode_gauge_follows_the_built_in_policies() -> None:
    """backpressure_degradation_mode{policy} reads 1 while read-only is on / the circuit is
    open, 0 otherwise (the gate wires its policies to the gauge)."""
    import anyio
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

    from lockgate import Gate, GateSettings
    from lockgate.degrade import CircuitBreakerPolicy, ReadOnlyPolicy
    from lockgate.testing import FakeClock, make_scope

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("t")
    clock = FakeClock()

    async def failing(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    breaker = CircuitBreakerPolicy(failure_threshold=2, recovery_timeout=10)
    gate = Gate(failing, GateSettings(max_concurrent=4), policies=[ReadOnlyPolicy(0.9), breaker],
                meter=meter, clock=clock)

    def modes() -> dict[str, float]:
        data = reader.get_metrics_data()
        assert data is not None
        return {
            str(point.attributes["policy"]): point.value
            for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            if m.name == "backpressure.degradation_mode" for point in m.data.data_points
            if isinstance(point, NumberDataPoint) and point.attributes
        }

    async def call() -> None:
        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: object) -> None:
            pass

        await gate(make_scope("/x"), receive, send)

    assert modes() == {"read_only": 0.0, "circuit_breaker": 0.0}
    for _ in range(2):
        anyio.run(call)
    assert modes() == {"read_only": 0.0, "circuit_breaker": 1.0}


# -- the Redis backend's mode ----------------------------------------------------------------


def backend_modes(sdk: Sdk) -> dict[str, float]:
    metric = sdk.collect().get("backpressure.backend_mode")
    if metric is None:
        return {}
    return {dict(labels)["mode"]: value for labels, value in values(metric).items()}


def test_an_in_process_gate_reports_no_backend_mode(sdk: Sdk) -> None:
    """The in-process scheduler has no mode: no ``backpressure_backend_mode`` series."""
    gate = Gate(ok_app, GateSettings(max_concurrent=2), meter=sdk.meter)
    assert backend_modes(sdk) == {}
    assert "backpressure.concurrency_limit" in sdk.collect()
    assert gate.stats().limit == 2


@pytest.mark.redis
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis-py: asyncio only
async def test_backend_mode_follows_a_redis_backend_into_fallback_and_back(sdk: Sdk) -> None:
    """``backpressure_backend_mode{mode}``: 1 for the mode a gate's RedisBackend is in, 0 for
    the others. A throwaway redis-server dies (fallback ``local``), comes back on its port
    (``global`` again); a closed backend reads ``closed``."""
    from lockgate.backends.redis import RedisBackend
    from tests._redis import KEY_PREFIX, RedisServer, await_for, unique_name

    server = RedisServer().start()
    try:
        backend = RedisBackend(
            server.url, unique_name("metrics"), settings=GateSettings(max_concurrent=4),
            lease_ttl=1.0, heartbeat=0.1, command_timeout=0.25, expected_instances=2,
            key_prefix=KEY_PREFIX,
        )  # fmt: skip
        gate = Gate(ok_app, backend.settings, backend=backend, meter=sdk.meter)
        assert gate.scheduler is backend
        await backend.start()
        assert backend_modes(sdk) == {"global": 1, "local": 0, "open": 0, "closed": 0}
        permit = await backend.acquire(Priority.NORMAL)  # a lease to renew each heartbeat

        server.kill()
        await await_for(lambda: backend.mode == "local", 2.0, "the fallback (a heartbeat)")
        assert backend_modes(sdk) == {"global": 0, "local": 1, "open": 0, "closed": 0}

        server = RedisServer(server.port).start()
        await await_for(lambda: backend.mode == "global", 3.0, "global mode again (a probe)")
        assert backend_modes(sdk) == {"global": 1, "local": 0, "open": 0, "closed": 0}

        permit.release()
        await backend.aclose()
        assert backend_modes(sdk) == {"global": 0, "local": 0, "open": 0, "closed": 1}
    finally:
        server.kill()


def test_backend_mode_can_be_given_explicitly(sdk: Sdk) -> None:
    """``GateMetrics(..., backend_mode=...)`` for a backend of one's own; gates sharing a
    meter are counted per mode."""
    mode = "open"
    kept = [  # observed while referenced
        GateMetrics(PriorityScheduler(3).stats, sdk.meter, backend_mode=lambda: mode),
        GateMetrics(PriorityScheduler(3).stats, sdk.meter, backend_mode=lambda: "global"),
    ]
    assert backend_modes(sdk) == {"global": 1, "local": 0, "open": 1, "closed": 0}
    mode = "closed"
    assert backend_modes(sdk) == {"global": 1, "local": 0, "open": 0, "closed": 1}
    assert len(kept) == 2


@pytest.mark.anyio
async def test_degradation_mode_reports_cache_only_while_it_serves(sdk: Sdk) -> None:
    """backpressure_degradation_mode{policy="cache_only"} is 1 while the load is at or above
    the cache's threshold (the runbook's triage looks for it), 0 below."""
    from lockgate.degrade import CacheOnlyPolicy

    gate = Gate(ok_app, GateSettings(max_concurrent=4), policies=[CacheOnlyPolicy(threshold=0.0)],
                meter=sdk.meter)
    assert values(sdk.collect()["backpressure.degradation_mode"]) == {
        (("policy", "cache_only"),): 0}
    ex = Exchange(gate, scope=make_scope("/x"))
    ex.push_body()
    await ex.run()
    assert values(sdk.collect()["backpressure.degradation_mode"]) == {
        (("policy", "cache_only"),): 1}

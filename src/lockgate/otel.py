"""OpenTelemetry instruments over the gate's statistics: the OpenTelemetry *API* only.

Without an SDK the instruments are no-ops; with one (``lockgate[prometheus]``, or your own
``MeterProvider``) they report under these names, shown as Prometheus' exporter writes them:

=================================  ==================  ===========  ======================
Prometheus name                    OTel instrument      unit         labels
=================================  ==================  ===========  ======================
backpressure_active_requests       observable gauge     {request}    lane
backpressure_queued_requests       observable gauge     {request}    lane
backpressure_concurrency_limit     observable gauge     {request}    -
backpressure_degradation_mode      observable gauge     (none)       policy (1 on, 0 off)
backpressure_backend_mode          observable gauge     (none)       mode (1 current, 0 other)
backpressure_rejected_total        observable counter   {request}    lane, reason
backpressure_admitted_total        observable counter   {request}    lane
backpressure_wait_time_seconds     histogram            s            lane
=================================  ==================  ===========  ======================

The OTel names are dotted (``backpressure.wait_time``); the exporter turns dots into
underscores, appends the unit (``s`` -> ``_seconds``; ``{...}`` annotations add nothing) and
``_total`` to counters.

What the request path pays: nothing on the fast path. Gauges and counters are observed at
collection time from ``GateStats`` (the scheduler counts admissions and rejections anyway).
The wait histogram is recorded only for requests that queued, on the slow path: one SDK
``record`` costs ~4-5 us, a fifth of a trivial request's whole cost under uvicorn, so
immediate admissions are *not* recorded in it. They are the difference between
``backpressure_admitted_total`` and the histogram's ``_count``, and the shipped dashboard and
alerts add that difference to every bucket to get the exact quantiles of all admitted
requests (``docs/operations/metrics.md``).

Instruments are created once per ``Meter``; several gates sharing a meter are summed (an SDK
keeps the callbacks of the first instrument of a name and drops those of later ones, so each
gate cannot register its own). A gate that is garbage-collected stops being observed.
Collection may run on another thread (the exporter's own HTTP server): the callbacks only
read the scheduler's counters, which the GIL keeps whole; lanes may be a request apart.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics

from ._exceptions import RejectReason
from ._lanes import Priority
from ._stats import GateStats

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation

__all__ = [
    "BACKEND_MODES", "METER_NAME", "WAIT_BUCKETS", "BackendModeSource", "DegradationSource",
    "GateMetrics",
]  # fmt: skip

METER_NAME = "lockgate"
WAIT_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.5, 1.0, 3.0, 5.0)
"""Bucket bounds of ``backpressure_wait_time_seconds`` (the original plan's), in seconds."""

DegradationSource = Callable[[], Mapping[str, bool | float]]
"""Returns ``{policy name: on?}`` when asked (at collection time)."""
BackendModeSource = Callable[[], str]
"""Returns the backend's mode (``RedisBackend.mode``) when asked (at collection time)."""
BACKEND_MODES: tuple[str, ...] = ("global", "local", "open", "closed")
"""The modes of ``backpressure_backend_mode``, each exported (0 or 1) once a backend has one:
``global`` (Redis answers), the fallbacks ``local`` / ``open`` / ``closed`` while it does
not, and ``closed`` once the backend is closed."""

_LANES = tuple(Priority)
_LANE_ATTRS = tuple({"lane": lane.label} for lane in _LANES)
_REASON_LABELS = {reason.value: reason.label for reason in RejectReason}
_REJECT_ATTRS = {
    (lane, reason): {"lane": lane.label, "reason": _REASON_LABELS[reason]}
    for lane in _LANES
    for reason in _REASON_LABELS
}
_lock = threading.Lock()
_instruments: weakref.WeakKeyDictionary[Meter, _Instruments] = weakref.WeakKeyDictionary()
"""Instruments by meter; an entry goes with its meter (and so with its provider)."""
_default_meter: Meter | None = None


class GateMetrics:
    """One gate's metrics: observes its ``stats()`` and records the waits of queued requests.

    ``GateMetrics(gate.stats, meter)``; ``meter=None`` takes ``metrics.get_meter("lockgate")``
    from the global provider (a no-op until an SDK is configured, and it follows a provider
    set later). ``degradation`` reports which degradation modes are on, read at collection
    time; it can also be set afterwards (``gate.metrics.degradation = ...``).

    ``backend_mode`` reports the backend's mode for ``backpressure_backend_mode``. Left
    unset, it is the ``mode`` of the backend whose ``stats`` method is observed, when it has
    one (``RedisBackend``: ``global``, ``local``, ``open``, ``closed``); the in-process
    scheduler has no mode and the gauge then reports nothing.
    """

    __slots__ = ("__weakref__", "_histogram", "backend_mode", "degradation", "stats")

    def __init__(
        self,
        stats: Callable[[], GateStats],
        meter: Meter | None = None,
        *,
        degradation: DegradationSource | None = None,
        backend_mode: BackendModeSource | None = None,
    ) -> None:
        self.stats = stats
        self.degradation = degradation
        if backend_mode is None:
            backend = getattr(stats, "__self__", None)  # gate.scheduler.stats, bound
            if isinstance(getattr(type(backend), "mode", None), property):
                backend_mode = _mode_of(backend)
        self.backend_mode = backend_mode
        shared = _shared_instruments(meter if meter is not None else _get_default_meter())
        self._histogram = shared.wait_time
        shared.add(self)

    def record_wait(self, lane: Priority, seconds: float) -> None:
        """Record the queue wait of a request admitted after waiting (not of immediate ones)."""
        self._histogram.record(seconds, _LANE_ATTRS[lane])

    def close(self) -> None:
        """Stop observing this gate (it also stops once the gate is garbage-collected)."""
        with _lock:
            for shared in _instruments.values():
                shared.discard(self)


def _mode_of(backend: Any) -> BackendModeSource:
    def mode() -> str:
        return str(backend.mode)

    return mode


def _get_default_meter() -> Meter:
    global _default_meter
    with _lock:
        if _default_meter is None:
            from . import __version__

            _default_meter = metrics.get_meter(METER_NAME, __version__)
        return _default_meter


def _shared_instruments(meter: Meter) -> _Instruments:
    with _lock:
        shared = _instruments.get(meter)
        if shared is None:
            shared = _instruments[meter] = _Instruments(meter)
        return shared


class _Instruments:
    """The instruments of one meter and the gates they observe."""

    def __init__(self, meter: Meter) -> None:
        self._sources: list[weakref.ref[GateMetrics]] = []
        # Counters never go backwards: a gate closed or collected leaves its last counts.
        self._seen: dict[weakref.ref[GateMetrics], _Counts] = {}
        self._retired: _Counts = ([0] * len(_LANES), dict.fromkeys(_REJECT_ATTRS, 0))
        self.wait_time: Histogram = meter.create_histogram(
            "backpressure.wait_time",
            unit="s",
            description="Queue wait of requests admitted after waiting for a seat.",
            explicit_bucket_boundaries_advisory=WAIT_BUCKETS,
        )
        gauge, counter = meter.create_observable_gauge, meter.create_observable_counter
        gauge(
            "backpressure.active_requests", [self._active], "{request}",
            "Requests holding a seat, by lane.",
        )  # fmt: skip
        gauge(
            "backpressure.queued_requests", [self._queued], "{request}",
            "Requests waiting for a seat, by lane.",
        )  # fmt: skip
        gauge(
            "backpressure.concurrency_limit", [self._limit], "{request}",
            "Seats in all (the current limit).",
        )  # fmt: skip
        gauge(
            "backpressure.degradation_mode", [self._degradation], "",
            "1 while a degradation policy is on, else 0.",
        )  # fmt: skip
        gauge(
            "backpressure.backend_mode", [self._backend_mode], "",
            "1 for the mode the gate's backend is in (global; fallbacks local, open, "
            "closed), 0 for the others. Only for backends with modes (Redis).",
        )  # fmt: skip
        counter(
            "backpressure.rejected", [self._rejected], "{request}",
            "Requests answered 503 by the gate, by lane and reason.",
        )  # fmt: skip
        counter(
            "backpressure.admitted", [self._admitted], "{request}",
            "Requests admitted (at once or after waiting), by lane.",
        )  # fmt: skip

    def add(self, source: GateMetrics) -> None:
        self._prune()
        self._sources.append(weakref.ref(source))

    def discard(self, source: GateMetrics) -> None:
        for ref in self._sources:
            if ref() is source:
                self._seen[ref] = _counts(source.stats())
                self._retire(ref)
        self._sources = [ref for ref in self._sources if ref() is not source]
        self._prune()

    def _prune(self) -> None:
        for ref in self._sources:
            if ref() is None:
                self._retire(ref)
        self._sources = [ref for ref in self._sources if ref() is not None]

    def _retire(self, ref: weakref.ref[GateMetrics]) -> None:
        """Fold a gone gate's last counts into the totals every later export includes."""
        seen = self._seen.pop(ref, None)
        if seen is not None:
            admitted, rejected = self._retired
            for i, n in enumerate(seen[0]):
                admitted[i] += n
            for key, n in seen[1].items():
                rejected[key] += n

    def _totals(self) -> _Counts:
        """Admitted and rejected counts of every gate, the gone ones included."""
        admitted, rejected = list(self._retired[0]), dict(self._retired[1])
        for ref in self._sources:
            source = ref()
            if source is None:
                continue
            counts = self._seen[ref] = _counts(source.stats())
            for i, n in enumerate(counts[0]):
                admitted[i] += n
            for key, n in counts[1].items():
                rejected[key] += n
        return admitted, rejected

    def _live(self) -> list[GateMetrics]:
        return [m for m in (ref() for ref in self._sources) if m is not None]

    def _per_lane(self, read: Callable[[GateStats, int], int]) -> Iterable[Observation]:
        sources = self._live()
        if not sources:
            return []
        totals = [0] * len(_LANES)
        for source in sources:
            stats = source.stats()
            for i in range(len(_LANES)):
                totals[i] += read(stats, i)
        return [metrics.Observation(total, _LANE_ATTRS[i]) for i, total in enumerate(totals)]

    def _active(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._per_lane(lambda stats, i: stats.lanes[i].active)

    def _queued(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._per_lane(lambda stats, i: stats.lanes[i].queued)

    def _admitted(self, options: CallbackOptions) -> Iterable[Observation]:
        with _lock:
            self._prune()
            admitted, _ = self._totals()
        return [metrics.Observation(n, _LANE_ATTRS[i]) for i, n in enumerate(admitted)]

    def _limit(self, options: CallbackOptions) -> Iterable[Observation]:
        sources = self._live()
        if not sources:
            return []
        return [metrics.Observation(sum(source.stats().limit for source in sources))]

    def _rejected(self, options: CallbackOptions) -> Iterable[Observation]:
        with _lock:
            self._prune()
            _, rejected = self._totals()
        return [metrics.Observation(n, _REJECT_ATTRS[key]) for key, n in rejected.items()]

    def _degradation(self, options: CallbackOptions) -> Iterable[Observation]:
        modes: dict[str, float] = {}
        for source in self._live():
            if source.degradation is not None:
                for policy, on in source.degradation().items():
                    modes[policy] = max(modes.get(policy, 0.0), float(on))
        return [metrics.Observation(on, {"policy": policy}) for policy, on in modes.items()]

    def _backend_mode(self, options: CallbackOptions) -> Iterable[Observation]:
        """Per mode, the number of observed gates whose backend is in it (1 or 0 with one
        gate a process); nothing while no gate's backend has a mode."""
        counts: dict[str, int] | None = None
        for source in self._live():
            if source.backend_mode is not None:
                if counts is None:
                    counts = dict.fromkeys(BACKEND_MODES, 0)
                mode = source.backend_mode()
                counts[mode] = counts.get(mode, 0) + 1
        if counts is None:
            return []
        return [metrics.Observation(n, {"mode": mode}) for mode, n in counts.items()]


_Counts = tuple[list[int], dict[tuple[Priority, str], int]]


def _counts(stats: GateStats) -> _Counts:
    """A gate's admitted (per lane) and rejected (per lane and reason) counts."""
    rejected = dict.fromkeys(_REJECT_ATTRS, 0)
    for lane, lane_stats in zip(_LANES, stats.lanes, strict=True):
        for reason, count in lane_stats.rejected.items():
            if (lane, reason) in rejected:
                rejected[lane, reason] += count
    return [lane.admitted for lane in stats.lanes], rejected

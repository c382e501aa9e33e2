"""Limit algorithms: how many seats exist right now, apart from how they are handed out.

A ``Limit`` is told about finished requests and answers the current limit; the gate moves the
scheduler's limit when the answer changes (Netflix concurrency-limits' ``limit/`` vs
``limiter/``). This module is arithmetic only: no clock, no I/O, no asyncio. Every sample brings
its own timestamp, so a test drives hours of simulated traffic in milliseconds.

The adaptive limits answer one question: *is latency rising because requests queue inside the
app?* They are not rate limiters, not failure detectors (a 500 is not overload), and not a
substitute for ``max_concurrent``: that stays the ceiling; they take seats away while the
service shows queueing and give them back when it stops. Under a sustained overload they park at
the *knee* (``_knee``): they hold the limit one step lower at a time while that shortens the
queue inside the app, so behind a steady service they sit about a step above its capacity
rather than at ``rtt_tolerance`` x it. Neither probes destructively: the limit is never pinned
low to re-measure an unloaded latency (Envoy's minRTT probe does; its users see 503s), and a
step that does not pay is given back. Instances are not thread-safe: one belongs to one gate
on one event loop.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Collection
from importlib.metadata import entry_points
from typing import Protocol, cast, runtime_checkable

from ._window import WindowedLimit

__all__ = [
    "BUILTIN_LIMITS",
    "ENTRY_POINT_GROUP",
    "AIMDLimit",
    "FixedLimit",
    "Gradient2Limit",
    "Limit",
    "Sampler",
    "make_limit",
    "sampler",
]

ENTRY_POINT_GROUP = "lockgate.limits"
BUILTIN_LIMITS = ("fixed", "aimd", "gradient2")


@runtime_checkable
class Limit(Protocol):
    """The current number of seats, possibly moved by latency samples."""

    @property
    def limit(self) -> int: ...

    def on_sample(self, now: float, rtt: float, inflight: int, dropped: bool) -> int:
        """Record one finished request; return the (possibly new) limit.

        ``now``: when it finished (seconds, any monotonic scale); ``rtt``: seconds it held its
        seat, queue wait excluded; ``inflight``: seats in use when it was admitted, itself
        included; ``dropped``: the app itself signalled overload (its own 503/429/504, a timeout).
        Feed every finished request, not one in N: the first finishers seed the baseline.
        A limit whose ``on_sample`` also takes a keyword ``kind`` is told the request's lane
        (an ``int``), and one that takes ``waited`` whether the request queued for its seat
        (a ``bool``), as the built-in adaptive limits are.
        """
        ...


Sampler = Callable[[float, float, int, bool, int, bool], int]
"""``(now, rtt, inflight, dropped, kind, waited) -> limit``: how the gate feeds a limit."""


def sampler(limit: Limit) -> Sampler:
    """``limit.on_sample`` taking a ``kind`` and ``waited``, whether or not the limit uses
    them (each is passed by keyword when the limit declares a parameter of that name)."""
    on_sample = limit.on_sample
    try:
        declared: Collection[str] = inspect.signature(on_sample).parameters
    except (TypeError, ValueError):  # no signature to read: feed it the protocol's four
        declared = ()
    keyed = cast(Callable[..., int], on_sample)
    wants_kind, wants_waited = "kind" in declared, "waited" in declared

    def fed(now: float, rtt: float, inflight: int, dropped: bool, kind: int,
            waited: bool) -> int:
        if wants_kind and wants_waited:
            return keyed(now, rtt, inflight, dropped, kind=kind, waited=waited)
        if wants_kind:
            return keyed(now, rtt, inflight, dropped, kind=kind)
        if wants_waited:
            return keyed(now, rtt, inflight, dropped, waited=waited)
        return on_sample(now, rtt, inflight, dropped)

    return fed


class FixedLimit:
    """A limit that never moves: ``settings.max_concurrent``."""

    __slots__ = ("_limit",)

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, now: float, rtt: float, inflight: int, dropped: bool) -> int:
        return self._limit

    def __repr__(self) -> str:
        return f"FixedLimit({self._limit})"


class AIMDLimit(WindowedLimit):
    """Additive increase, multiplicative decrease, once per window.

    ``x backoff`` (at least -1) when the window saw a drop, its mean rtt exceeded ``timeout``
    seconds, or both it and the average of the last few windows exceeded ``rtt_tolerance`` x the
    baseline (one noisy window does not cut); else +1 if it was busy (``peak inflight * 2 >=
    limit``). Netflix's AIMD moves per sample (+1 per request is +400/s at 400 rps; a burst of
    ten drops cuts it to 0.35x) and sees only drops and a fixed 5 s timeout, so it never notices
    requests queueing inside the app; this one does. Seats come back slowly (+1 per window,
    about 10/s at a 50 ms service): prefer ``Gradient2Limit`` unless loss is your signal. Once
    the knee is found the tolerance gives way to a target that puts the saw-tooth's low point
    at the knee, so it swings about 10 % either side of a step above it.
    """

    __slots__ = ("_backoff", "_timeout")

    def __init__(
        self, initial: int = 20, min_limit: int = 20, max_limit: int = 200, *,
        backoff: float = 0.9, timeout: float = math.inf, rtt_tolerance: float = 1.25,
        window: tuple[float, float] = (0.1, 1.0), min_samples: int = 10,
        long_window: float = 600.0, min_rtt: float = 1e-4,
    ) -> None:
        if not 0.5 <= backoff < 1.0:
            raise ValueError("backoff must be in [0.5, 1)")
        if not timeout > 0:
            raise ValueError("timeout must be > 0")
        super().__init__(initial, min_limit, max_limit, rtt_tolerance, window, min_samples,
                         long_window, min_rtt)
        self._backoff, self._timeout = backoff, timeout

    def _decide(
        self, limit: float, ratio: float | None, short: float | None, dropped: bool
    ) -> float:
        if dropped or ratio is None or short is None or short > self._timeout:
            return min(limit - 1, limit * self._backoff)
        if min(ratio, self._recent) > self.target:
            return min(limit - 1, limit * self._backoff)
        return limit + 1

    def _park(self, above: float, at: float) -> float:
        """Where to park above the knee: the saw-tooth's low point (``backoff`` below its top)
        at the knee."""
        return max(above, at / self._backoff)


def _sqrt_headroom(limit: int) -> float:
    return max(4.0, math.sqrt(limit))


class Gradient2Limit(WindowedLimit):
    """Netflix's Gradient2: follow the ratio of unloaded to current latency, once per window.

    ``gradient = clamp(rtt_tolerance / ratio, 0.5, 1)`` (*ratio*: the window's latency over
    its unloaded one, per kind), ``new = limit * gradient + headroom``, ``limit += smoothing *
    (new - limit)``, within ``[min_limit, max_limit]``; a drop counts as gradient 0.5. Under
    overload it settles where latency is ``rtt_tolerance`` x the unloaded one: behind a pool of
    P connections, about ``rtt_tolerance * P`` seats; then, told that requests wait for their
    seats (as the gate tells it), it looks for the knee and parks one step (5 %) above it,
    ``target`` replacing ``rtt_tolerance`` in the gradient. Unlike Netflix, the headroom
    (``queue_size``, by default ``max(4, sqrt(limit))`` so seats come back quickly at large
    limits) is added only while latency is within tolerance: added under mild overload it
    drifts the limit up (PR #134). The default ``rtt_tolerance`` is 1.25 (Envoy's buffer;
    Netflix uses 1.5): with a baseline per lane a change of mix no longer reads as latency, so
    the band can be that tight. Raise it for a service whose latency is noisy at any load.
    """

    __slots__ = ("_queue_size", "_smoothing")

    def __init__(
        self, initial: int = 20, min_limit: int = 20, max_limit: int = 200, *,
        smoothing: float = 0.2, queue_size: float | Callable[[int], float] = _sqrt_headroom,
        rtt_tolerance: float = 1.25, window: tuple[float, float] = (0.1, 1.0),
        min_samples: int = 10, long_window: float = 600.0, min_rtt: float = 1e-4,
    ) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError("smoothing must be in (0, 1]")
        super().__init__(initial, min_limit, max_limit, rtt_tolerance, window, min_samples,
                         long_window, min_rtt)
        self._smoothing = smoothing
        self._queue_size: Callable[[int], float]
        if callable(queue_size):
            self._queue_size = queue_size
        else:
            fixed = float(queue_size)
            self._queue_size = lambda _: fixed

    def _decide(
        self, limit: float, ratio: float | None, short: float | None, dropped: bool
    ) -> float:
        gradient = 0.0 if dropped or not ratio else self.target / ratio
        new = limit * min(max(gradient, 0.5), 1.0)
        if gradient >= 1.0:
            new += max(0.0, self._queue_size(int(limit)))
        return limit + self._smoothing * (new - limit)


def make_limit(name: str, max_concurrent: int) -> Limit:
    """The limit ``settings.limit`` names, for ``settings.max_concurrent`` seats.

    ``"fixed"``: ``FixedLimit(max_concurrent)``. ``"aimd"`` and ``"gradient2"`` start at
    ``max_concurrent`` and never exceed it (no shedding after a deploy while a low initial limit
    ramps up, the trouble with Vegas' 20); their floor is ``min(4, max_concurrent)``: low enough
    to find a pool of 5 behind a limit of 200. Any other name is looked up in the
    ``lockgate.limits`` entry-point group; the entry point names a callable taking
    ``max_concurrent`` and returning a ``Limit`` (a class like ``FixedLimit`` will do).
    """
    if max_concurrent < 1:
        raise ValueError("max_concurrent must be >= 1")
    floor = min(4, max_concurrent)
    if name == "fixed":
        return FixedLimit(max_concurrent)
    if name == "aimd":
        return AIMDLimit(max_concurrent, floor, max_concurrent)
    if name == "gradient2":
        return Gradient2Limit(max_concurrent, floor, max_concurrent)
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        plugins = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
        available = ", ".join(sorted({*BUILTIN_LIMITS, *plugins}))
        raise LookupError(f"no limit named {name!r} (available: {available})")
    limit = next(iter(found)).load()(max_concurrent)
    if not isinstance(limit, Limit):
        raise TypeError(f"{name!r} did not produce a Limit: {limit!r}")
    return limit

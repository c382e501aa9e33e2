"""Limit algorithms: how many seats exist right now, apart from how they are handed out.

A ``Limit`` is told about finished requests and answers the current limit; the gate moves the
scheduler's limit when the answer changes (Netflix concurrency-limits' ``limit/`` vs
``limiter/``). This module is arithmetic only: no clock, no I/O, no asyncio. Every sample brings
its own timestamp, so a test drives hours of simulated traffic in milliseconds.

The adaptive limits answer one question: *is latency rising because requests queue inside the
app?* They are not rate limiters, not failure detectors (a 500 is not overload), and not a
substitute for ``max_concurrent``: that stays the ceiling; they take seats away while the
service shows queueing and give them back when it stops. Neither probes destructively: the limit
is never pinned low to re-measure an unloaded latency (Envoy's minRTT probe does; its users see
503s). Instances are not thread-safe: one belongs to one gate on one event loop.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Protocol, cast, runtime_checkable

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
_WARMUP = 10  # windows averaged into the baseline before it turns into a slow EMA
_MAX_RTT = 86_400.0  # a seat held for a day is not a latency sample
_NEAR, _FELL, _FOLLOWED, _EVIDENCE = 0.9, 0.75, 0.9, 100
"""Relearning (``_WindowedLimit._watch``): windows at this share of an overload's peak load
or more pool as the peak; when the load fell to ``_FELL`` of it and the ratio stayed above
``_FOLLOWED`` of the peak's, over at least ``_EVIDENCE`` samples, the latency is the
service's own. Queueing for a pool cuts the ratio about as much as the load, or to 1."""


def _totals(acc: dict[int, list[float]], bases: dict[int, float]) -> tuple[float, float, float]:
    """``(rtt spent, what it would have taken unloaded, samples)`` over the kinds of ``acc``
    (kind -> ``[sum of rtt, count]``) that have a baseline."""
    spent = unloaded = samples = 0.0
    for kind, (total, n) in acc.items():
        base = bases.get(kind)
        if base is not None:
            spent += total
            unloaded += n * base
            samples += n
    return spent, unloaded, samples


class _Evidence:
    """Windows pooled at one level of load: per kind ``[sum of rtt, count]`` (kinds with a
    baseline only) and the samples' summed load; for a peak, the windows a quarter or more
    below it in ``low``."""

    __slots__ = ("kinds", "load", "load_sum", "low")

    def __init__(self, load: float) -> None:
        self.load = load
        self.low: _Evidence | None = None
        self.kinds: dict[int, list[float]] = {}
        self.load_sum = 0.0

    def add(self, acc: dict[int, list[float]], bases: dict[int, float], load: float) -> None:
        for kind, (total, n) in acc.items():
            if kind in bases:
                pooled = self.kinds.setdefault(kind, [0.0, 0.0])
                pooled[0] += total
                pooled[1] += n
                self.load_sum += n * load


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
        (an ``int``), as the built-in adaptive limits are.
        """
        ...


Sampler = Callable[[float, float, int, bool, int], int]
"""``(now, rtt, inflight, dropped, kind) -> limit``: how the gate feeds a limit."""


def sampler(limit: Limit) -> Sampler:
    """``limit.on_sample`` taking a ``kind``, whether or not the limit uses one (it is passed
    by keyword when the limit declares a parameter of that name)."""
    on_sample = limit.on_sample
    try:
        keyed = "kind" in inspect.signature(on_sample).parameters
    except (TypeError, ValueError):  # no signature to read: feed it the protocol's four
        keyed = False
    if keyed:
        with_kind = cast(Callable[..., int], on_sample)

        def kinded(now: float, rtt: float, inflight: int, dropped: bool, kind: int) -> int:
            return with_kind(now, rtt, inflight, dropped, kind=kind)

        return kinded

    def kindless(now: float, rtt: float, inflight: int, dropped: bool, kind: int) -> int:
        return on_sample(now, rtt, inflight, dropped)

    return kindless


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


class _WindowedLimit:
    """Samples summed into windows; the subclass decides once per window.

    A window closes at the first sample that finds it ``min_samples`` strong and as long as the
    last window's mean rtt (within ``[min_window, max_window]``), so each decision mostly sees
    requests admitted under the previous one. Per window: *ratio* = the rtt of its undropped
    samples over what they took unloaded (a shed request answers fast and would drag it down,
    Netflix #176); *load* = their mean inflight; *peak* = the largest inflight. A window with
    ``peak < limit / 2`` is app-limited: demand, not the limit, set the concurrency, so only a
    drop moves the limit.

    Each *kind* of sample (the gate passes the lane) has its own *baseline* (unloaded rtt), and
    the ratio is ``sum(rtt) / sum(baseline of each sample's kind)``. One baseline for a mixed
    service reads a change of mix as a change of latency: shedding the slow batch lane looks like
    headroom, a window with a few more 200 ms requests like queueing. Per kind, the ratio moves
    only when requests of the same kind got slower, so the tolerance can be tight.

    The baseline is where Netflix goes wrong: its EMA of every sample learns the overloaded
    latency, and the limit climbs back (#137). Here it is seeded by the half of the first
    ``min_samples`` finishers admitted at the lowest inflight, per kind (they did not queue,
    even if the service starts overloaded); the next windows at no more than twice their load
    are averaged in (the first finishers of a burst are its fastest requests); then it is an EMA
    over ``long_window`` seconds fed only by windows in which a seat stayed free and the ratio
    stayed within tolerance; for busy windows, within the inner half of the band: under
    overload the limit parks at the band's edge, and learning there would creep the baseline,
    then the limit, upwards. A kind first seen later is seeded in a window within tolerance,
    by its mean less the time the known kinds queued there (queueing for a pool adds the same
    wait to every kind); a window of unseen kinds only, at no more than twice the first
    seed's load. Two corrections: x0.95 per window while a baseline exceeds twice its kind's
    mean (latency fell after a long overload), and relearning (``_watch``) when, during an
    overload, the load has fallen by a quarter and the ratio by less than a tenth, over 100
    samples: that latency is the service's own, not queueing that fewer seats can cure. The
    service got slower, or its seed was low: on a cold start into overload the first
    finishers are the fastest, and behind a service whose times vary (lognormal, sigma 0.5)
    that seed can be 25 % low. A relearnt baseline at most doubles, so a verdict that noise
    got wrong costs little.
    Samples with a non-finite time, or an rtt below ``min_rtt`` (gate overhead, not service
    time; NaN and inf too) are ignored unless dropped. Kinds are meant to be few (lanes,
    route classes): each keeps a baseline for the life of the limit.
    """

    __slots__ = (
        "_acc", "_base", "_count", "_dropped", "_estimate", "_excess", "_limit", "_load_sum",
        "_long_window", "_max", "_min", "_min_rtt", "_min_samples", "_peak", "_recent", "_ref",
        "_rtt_sum", "_seed", "_seed_load", "_seen", "_span", "_start", "_taught", "_timed",
        "_tolerance", "_window",
    )

    def __init__(
        self, initial: int, min_limit: int, max_limit: int, rtt_tolerance: float,
        window: tuple[float, float], min_samples: int, long_window: float, min_rtt: float,
    ) -> None:
        if not 1 <= min_limit <= initial <= max_limit:
            raise ValueError("need 1 <= min_limit <= initial <= max_limit")
        if not 1.0 <= rtt_tolerance < math.inf:
            raise ValueError("rtt_tolerance must be >= 1")
        if not 0 < window[0] <= window[1] < math.inf:
            raise ValueError("window must be (min, max) seconds with 0 < min <= max")
        if min_samples < 1 or not 0 < long_window < math.inf or not 0 < min_rtt < _MAX_RTT:
            raise ValueError("need min_samples >= 1, long_window > 0 and min_rtt > 0")
        self._min, self._max, self._limit = min_limit, max_limit, initial
        self._estimate = float(initial)
        self._tolerance, self._long_window, self._min_rtt = rtt_tolerance, long_window, min_rtt
        self._span, self._window, self._min_samples = window, window[0], min_samples
        self._base: dict[int, float] = {}  # kind -> unloaded rtt
        self._seen: dict[int, int] = {}  # kind -> timed samples in closed windows
        self._acc: dict[int, list[float]] = {}  # kind -> [rtt sum, samples] in this window
        self._recent = 1.0  # EMA of the ratio over a few windows
        self._excess = 0.0  # the last window's mean rtt above its baselines, seconds
        self._seed: list[tuple[float, int, int]] = []  # (rtt, inflight, kind) until seeded
        self._seed_load, self._taught = 0.0, 0
        self._ref: _Evidence | None = None  # an overload's peak, while one lasts
        self._start: float | None = None
        self._count = self._timed = self._peak = self._load_sum = 0
        self._rtt_sum, self._dropped = 0.0, False

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def baseline_rtt(self) -> float | None:
        """The learned unloaded rtt of the kind sampled most, seconds; ``None`` before the
        first window."""
        base, seen = self._base, self._seen
        if not base:
            return None
        return base[max(base, key=lambda kind: seen.get(kind, 0))]

    @property
    def baselines(self) -> dict[int, float]:
        """The learned unloaded rtt per kind, seconds (a copy)."""
        return dict(self._base)

    def on_sample(
        self, now: float, rtt: float, inflight: int, dropped: bool, kind: int = 0
    ) -> int:
        """As ``Limit.on_sample``; ``kind`` names what was served (the gate passes the lane):
        each kind's latency is compared with that kind's own baseline."""
        if not -math.inf < now < math.inf:
            return self._limit
        if dropped:
            self._dropped = True
        elif self._min_rtt <= rtt < _MAX_RTT:  # false for NaN too
            self._timed += 1
            self._rtt_sum += rtt
            self._load_sum += inflight
            acc = self._acc.get(kind)
            if acc is None:
                self._acc[kind] = [rtt, 1.0]
            else:
                acc[0] += rtt
                acc[1] += 1.0
            if not self._base:
                self._seed.append((rtt, inflight, kind))
        else:
            return self._limit
        start = self._start
        if start is None:
            self._start = start = now
        self._count += 1
        if inflight > self._peak:
            self._peak = inflight
        if self._count >= self._min_samples and (now - start >= self._window or not self._base):
            self._close(now - start)
        return self._limit

    def _close(self, elapsed: float) -> None:
        timed, peak, dropped, acc = self._timed, self._peak, self._dropped, self._acc
        short = self._rtt_sum / timed if timed else 0.0
        load = self._load_sum / timed if timed else 0.0
        self._start, self._count, self._timed, self._peak, self._load_sum = None, 0, 0, 0, 0
        self._rtt_sum, self._dropped, self._acc = 0.0, False, {}
        if timed:
            self._window = min(max(short, self._span[0]), self._span[1])
        if not self._base:
            if timed:
                self._seed_baselines()
            return
        ratio = self._ratio(acc)
        before, saturated = self._estimate, peak >= self._limit
        busy = peak * 2 >= before
        if ratio is not None:
            self._recent = 0.8 * self._recent + 0.2 * ratio
        if dropped or (busy and ratio is not None):
            new = self._decide(before, ratio, short if timed else None, dropped)
            self._estimate = min(max(new, float(self._min)), float(self._max))
            self._limit = int(self._estimate)
        if timed:
            self._learn(acc, ratio, load, busy, saturated, elapsed)

    def _seed_baselines(self) -> None:
        """Per kind, the half admitted at the lowest inflight: the least likely to queue."""
        by_load = sorted(self._seed, key=lambda sample: sample[1])
        calm = by_load[: (len(by_load) + 1) // 2]
        self._seed_load = sum(n for _, n, _ in calm) / len(calm)
        kinds: dict[int, list[float]] = {}
        for rtt, _, kind in by_load:
            kinds.setdefault(kind, []).append(rtt)
        for kind, rtts in kinds.items():
            half = rtts[: (len(rtts) + 1) // 2]
            self._base[kind] = sum(half) / len(half)
        self._seed.clear()

    def _ratio(self, acc: dict[int, list[float]]) -> float | None:
        """The window's rtt over its samples' baselines; ``None`` without a known kind."""
        spent, unloaded, samples = _totals(acc, self._base)
        if not unloaded:
            return None
        self._excess = (spent - unloaded) / samples  # the mean time queued, if it queued
        return spent / unloaded

    def _learn(
        self, acc: dict[int, list[float]], ratio: float | None, load: float, busy: bool,
        saturated: bool, elapsed: float,
    ) -> None:
        bases = self._base
        for kind, (_, n) in acc.items():
            self._seen[kind] = self._seen.get(kind, 0) + int(n)
        if ratio is None:  # only kinds never seen: nothing to compare them with, so they
            if load <= 2 * self._seed_load:  # are seeded only at the first seed's load
                bases.update((kind, total / n) for kind, (total, n) in acc.items())
            return
        weight = 0.0
        band = (1.0 + self._tolerance) / 2 if busy else self._tolerance
        if self._taught < _WARMUP and load <= 2 * self._seed_load:
            self._taught += 1
            weight = 1.0 / (self._taught + 1)
        elif not saturated and ratio <= band:
            weight = min(1.0, 2.0 * elapsed / self._long_window)
        within = ratio <= self._tolerance
        for kind, (total, n) in acc.items():
            mean = total / n
            base = bases.get(kind)
            if base is None:  # first seen now: as queued as the kinds it ran beside
                if within:
                    bases[kind] = max(mean - max(self._excess, 0.0), mean / max(ratio, 1.0))
                continue
            base += weight * (mean - base)
            bases[kind] = base * 0.95 if base > 2 * mean else base
        if self._recent <= self._tolerance:  # not one window: noise would end the watch
            self._ref = None
        elif busy:
            self._watch(acc, load)

    def _watch(self, acc: dict[int, list[float]], load: float) -> None:
        """While an overload lasts: did latency follow the load down? Evidence is pooled over
        windows (one window of a heavy-tailed service is too noisy to judge): the peak, the
        windows within 10 % of the overload's highest load; ``low``, those at a quarter or
        more below it. Once ``low`` holds ``_EVIDENCE`` samples, a ratio within a tenth of
        the peak's is the service's own latency (it got slower, or was seeded low) and its
        kinds are relearned from ``low``, each baseline at most doubling; otherwise ``low``
        becomes the peak to compare with."""
        bases, peak = self._base, self._ref
        if peak is None or load * _NEAR > peak.load:
            self._ref = peak = _Evidence(load)
        if load >= _NEAR * peak.load:
            peak.load = max(peak.load, load)
            peak.add(acc, bases, load)
            return
        if load > _FELL * peak.load:
            return
        low = peak.low
        if low is None:
            peak.low = low = _Evidence(load)
        low.add(acc, bases, load)
        spent, unloaded, samples = _totals(low.kinds, bases)
        if samples < _EVIDENCE:
            return
        top_spent, top_unloaded, _ = _totals(peak.kinds, bases)
        if top_unloaded and spent * top_unloaded >= _FOLLOWED * top_spent * unloaded:
            for kind, (total, n) in low.kinds.items():
                bases[kind] = min(total / n, 2.0 * bases[kind])
            self._recent = 1.0
            self._ref = None
        else:
            low.load = low.load_sum / samples
            self._ref = low

    def _decide(
        self, limit: float, ratio: float | None, short: float | None, dropped: bool
    ) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(limit={self._limit}, baselines={self._base})"


class AIMDLimit(_WindowedLimit):
    """Additive increase, multiplicative decrease, once per window.

    ``x backoff`` (at least -1) when the window saw a drop, its mean rtt exceeded ``timeout``
    seconds, or both it and the average of the last few windows exceeded ``rtt_tolerance`` x the
    baseline (one noisy window does not cut); else +1 if it was busy (``peak inflight * 2 >=
    limit``). Netflix's AIMD moves per sample (+1 per request is +400/s at 400 rps; a burst of
    ten drops cuts it to 0.35x) and sees only drops and a fixed 5 s timeout, so it never notices
    requests queueing inside the app; this one does. Seats come back slowly (+1 per window,
    about 10/s at a 50 ms service): prefer ``Gradient2Limit`` unless loss is your signal.
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
        if min(ratio, self._recent) > self._tolerance:
            return min(limit - 1, limit * self._backoff)
        return limit + 1


def _sqrt_headroom(limit: int) -> float:
    return max(4.0, math.sqrt(limit))


class Gradient2Limit(_WindowedLimit):
    """Netflix's Gradient2: follow the ratio of unloaded to current latency, once per window.

    ``gradient = clamp(rtt_tolerance / ratio, 0.5, 1)`` (*ratio*: the window's latency over
    its unloaded one, per kind), ``new = limit * gradient + headroom``, ``limit += smoothing *
    (new - limit)``, within ``[min_limit, max_limit]``; a drop counts as gradient 0.5. Under
    overload it settles where latency is ``rtt_tolerance`` x the unloaded one: behind a pool of
    P connections, about ``rtt_tolerance * P`` seats. Unlike Netflix, the headroom
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
        gradient = 0.0 if dropped or not ratio else self._tolerance / ratio
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

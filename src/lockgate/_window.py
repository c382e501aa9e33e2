"""The machinery the adaptive limits share: samples summed into windows, an unloaded latency
(*baseline*) per kind of request, and the watch that relearns a baseline seeded low.

``WindowedLimit`` decides nothing itself: once per window its subclass (``AIMDLimit``,
``Gradient2Limit`` in ``limits``) moves the limit. Arithmetic only: no clock, no I/O.
"""

from __future__ import annotations

import math

from ._knee import STEP, Knee, Pooled, totals

__all__ = ["WindowedLimit"]

_WARMUP = 10  # windows averaged into the baseline before it turns into a slow EMA
_MAX_RTT = 86_400.0  # a seat held for a day is not a latency sample
_NEAR, _FELL, _FOLLOWED, _EVIDENCE = 0.9, 0.75, 0.9, 100
"""Relearning (``WindowedLimit._watch``): windows at this share of an overload's peak load
or more pool as the peak; when the load fell to ``_FELL`` of it and the ratio stayed above
``_FOLLOWED`` of the peak's, over at least ``_EVIDENCE`` samples, the latency is the
service's own. Queueing for a pool cuts the ratio about as much as the load, or to 1."""


class _Evidence(Pooled):
    """Windows pooled at one level of load, ``load`` (see ``Pooled``); for a peak, the windows
    a quarter or more below it in ``low``."""

    __slots__ = ("load", "low")

    def __init__(self, load: float) -> None:
        super().__init__()
        self.load = load
        self.low: _Evidence | None = None


class WindowedLimit:
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
    Busy windows also go to ``Knee`` (``_knee``), which looks for the limit below which latency
    stops falling and lowers the ratio the subclass parks at (``target``) to just above it; it
    may hold the limit a step down for a trial meanwhile, and the subclass does not move it
    then. While it holds a trial or a lowered target, busy windows teach no baseline: near the
    knee they queue a little by design. A window with under half the seats in use (the overload
    is over) or a relearnt baseline sends it back to the tolerance.
    Samples with a non-finite time, or an rtt below ``min_rtt`` (gate overhead, not service
    time; NaN and inf too) are ignored unless dropped. Kinds are meant to be few (lanes,
    route classes): each keeps a baseline for the life of the limit.
    """

    __slots__ = (
        "_acc", "_base", "_count", "_dropped", "_estimate", "_excess", "_knee", "_limit",
        "_load_sum", "_long_window", "_max", "_min", "_min_rtt", "_min_samples", "_peak",
        "_recent", "_ref", "_rtt_sum", "_seed", "_seed_load", "_seen", "_span", "_start",
        "_taught", "_timed", "_tolerance", "_waited", "_window",
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
        self._acc: dict[int, list[float]] = {}  # kind -> [sum of rtt, samples, of rtt^2] now
        self._recent = 1.0  # EMA of the ratio over a few windows
        self._excess = 0.0  # the last window's mean rtt above its baselines, seconds
        self._seed: list[tuple[float, int, int]] = []  # (rtt, inflight, kind) until seeded
        self._seed_load, self._taught = 0.0, 0
        self._ref: _Evidence | None = None  # an overload's peak, while one lasts
        self._start: float | None = None
        self._count = self._timed = self._peak = self._load_sum = self._waited = 0
        self._rtt_sum, self._dropped = 0.0, False
        self._knee = Knee(rtt_tolerance, min_limit, self._park)

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

    @property
    def target(self) -> float:
        """The ratio of latency to baseline the limit parks at under overload: the tolerance,
        or lower once the knee is found (``_knee``)."""
        return self._knee.target

    def on_sample(
        self, now: float, rtt: float, inflight: int, dropped: bool, kind: int = 0,
        waited: bool = False,
    ) -> int:
        """As ``Limit.on_sample``; ``kind`` names what was served (the gate passes the lane):
        each kind's latency is compared with that kind's own baseline. ``waited``: the request
        queued for its seat (the gate passes it; the knee is sought only while most did)."""
        if not -math.inf < now < math.inf:
            return self._limit
        if dropped:
            self._dropped = True
        elif self._min_rtt <= rtt < _MAX_RTT:  # false for NaN too
            self._timed += 1
            self._waited += waited
            self._rtt_sum += rtt
            self._load_sum += inflight
            acc = self._acc.get(kind)
            if acc is None:
                self._acc[kind] = [rtt, 1.0, rtt * rtt]
            else:
                acc[0] += rtt
                acc[1] += 1.0
                acc[2] += rtt * rtt
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
        pressed = self._waited * 2 >= timed > 0
        self._start, self._count, self._timed, self._peak, self._load_sum = None, 0, 0, 0, 0
        self._rtt_sum, self._dropped, self._acc, self._waited = 0.0, False, {}, 0
        if timed:
            self._window = min(max(short, self._span[0]), self._span[1])
        if not self._base:
            if timed:
                self._seed_baselines()
            return
        ratio = self._ratio(acc)
        saturated, busy = peak >= self._limit, peak * 2 >= self._estimate
        if ratio is not None:
            self._recent = 0.8 * self._recent + 0.2 * ratio
        knee, held = self._knee, False
        if not busy:  # the overload (if any) is over
            self._run_at(knee.forget(self._limit))
        elif dropped or ratio is None:
            self._run_at(knee.abandon(self._limit))
        else:
            limit, held = knee.window(acc, self._base, load, pressed, self._limit, self._recent)
            self._run_at(limit)
        if not held and (dropped or (busy and ratio is not None)):
            new = self._decide(self._estimate, ratio, short if timed else None, dropped)
            self._estimate = min(max(new, float(self._min)), float(self._max))
            self._limit = int(self._estimate)
        if timed:
            self._learn(acc, ratio, load, busy, saturated, elapsed)

    def _run_at(self, limit: int) -> None:
        """Set the limit to ``limit`` (a trial of the knee's, or its step given back)."""
        if limit != self._limit:
            self._estimate, self._limit = float(limit), limit

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
        spent, unloaded, samples = totals(acc, self._base)
        if not unloaded:
            return None
        self._excess = (spent - unloaded) / samples  # the mean time queued, if it queued
        return spent / unloaded

    def _learn(
        self, acc: dict[int, list[float]], ratio: float | None, load: float, busy: bool,
        saturated: bool, elapsed: float,
    ) -> None:
        bases = self._base
        for kind, (_, n, _) in acc.items():
            self._seen[kind] = self._seen.get(kind, 0) + int(n)
        if ratio is None:  # only kinds never seen: nothing to compare them with, so they
            if load <= 2 * self._seed_load:  # are seeded only at the first seed's load
                bases.update((kind, total / n) for kind, (total, n, _) in acc.items())
            return
        weight = 0.0
        band = (1.0 + self._tolerance) / 2 if busy else self._tolerance
        if self._taught < _WARMUP and load <= 2 * self._seed_load:
            self._taught += 1
            weight = 1.0 / (self._taught + 1)
        elif not saturated and ratio <= band and not (busy and self._knee.engaged):
            weight = min(1.0, 2.0 * elapsed / self._long_window)  # (near the knee found, a
            # busy window queues a little by design: learning it would creep the baseline)
        within = ratio <= self._tolerance
        for kind, (total, n, _) in acc.items():
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
        spent, unloaded, samples = totals(low.kinds, bases)
        if samples < _EVIDENCE:
            return
        top_spent, top_unloaded, _ = totals(peak.kinds, bases)
        if top_unloaded and spent * top_unloaded >= _FOLLOWED * top_spent * unloaded:
            for kind, (total, n, _) in low.kinds.items():
                bases[kind] = min(total / n, 2.0 * bases[kind])
            self._recent = 1.0
            self._ref = None
            self._run_at(self._knee.forget(self._limit))  # the knee's ratios are stale
        else:
            low.load = low.load_sum / samples
            self._ref = low

    def _decide(
        self, limit: float, ratio: float | None, short: float | None, dropped: bool
    ) -> float:
        raise NotImplementedError

    def _park(self, above: float, at: float) -> float:
        """The ratio to park at once the knee is found: ``above`` one step above it, ``at``
        at it. With one step's margin, so that noise at the knee does not cut below it."""
        return max(above, at * (1.0 + STEP))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(limit={self._limit}, baselines={self._base})"

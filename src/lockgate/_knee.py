"""Evidence pooled over windows, and ``Knee``: how far a limit can come down before latency
stops following it.

A delay-based limit parks where latency is its tolerance times the unloaded latency it
learned: with the default 1.25, behind a pool of P connections, at about 1.25 x P seats, so
every admitted request also waits about a quarter of a service time inside the app. It cannot
park lower on its baseline alone: a baseline learned at a cold start into overload comes from
the fastest first finishers and, behind a service whose times vary, can be 25 % low; a tighter
band would then take away seats the service needs.

``Knee`` finds the knee without trusting the baseline's level. While an overload lasts near
the tolerance (most requests waited for their seat, so the limit is what binds), it watches
the level the algorithm keeps, then holds the limit one step (5 %, one seat at least) lower
and compares. Above the knee requests queue in the app, and their latency falls with the load
(a pool's queue is as long as the requests in excess of it); at or below the knee latency stays
and only throughput falls. While latency follows, it steps again. At the first step that did
not pay it gives the step back and has the algorithm park at the ratio found there, with one
step's margin: ``target``, which replaces the tolerance as the ratio to park at until the
overload ends or a baseline is relearned. A baseline that is off shifts every level's ratio
alike, so the knee is found all the same.

Evidence is pooled until the ratio's standard error is a fifth of the fall a step should
cause: a few windows behind a steady service, seconds behind a noisy one. The error is taken
from the samples' spread and from the windows' scatter about their loads (samples queued
together share their wait and the service's speed of the moment, so they are not
independent). A service too noisy to judge within ``MOST`` samples is left where the algorithm
keeps it. Where the knee is found the target is at least two window deviations above the
ratio there, never below the baseline's latency plus a step, and stays the tolerance unless
that gains two steps: a noisy service gains little from a tighter trigger and would be cut on
noise.
This is not destructive probing (Envoy pins its limit to 3 seats to re-measure its minimum
rtt, and its users see 503s): a trial goes one step below a level just seen to queue, is held
only until its evidence is in, and is given back as soon as latency rises or the overload eases.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["Knee", "Pooled", "totals"]

STEP = 0.05
"""A trial step: this share of the limit, one seat at least; also the margin parked above."""
SIGMAS = 5.0
"""A level is judged once the standard error of a step's fall is ``1 / SIGMAS`` of the fall
expected above the knee; half that fall decides, 2.5 standard errors from either answer."""
LEAST, MOST, WINDOWS = 20, 4000, 4
"""Samples a level needs at least, and at most (beyond: too noisy to judge); windows at least
(their scatter is part of the evidence)."""
SWAY = 0.25
"""How far the limit may move while a level is watched (AIMD's saw-tooth spans about 20 %)."""
NEAR = 1.1
"""A level is near the tolerance while its ratio is at most this times it (Gradient2 parks a
little above its tolerance)."""


def totals(sums: dict[int, list[float]], bases: dict[int, float]) -> tuple[float, float, float]:
    """``(rtt spent, what it would have taken unloaded, samples)`` over the kinds of ``sums``
    (kind -> ``[sum of rtt, count, sum of rtt squared]``) that have a baseline."""
    spent = unloaded = samples = 0.0
    for kind, (total, n, _) in sums.items():
        base = bases.get(kind)
        if base is not None:
            spent += total
            unloaded += n * base
            samples += n
    return spent, unloaded, samples


class Pooled:
    """Windows pooled together: per kind ``[sum of rtt, count, sum of rtt squared]`` (kinds
    with a baseline only) and the samples' summed load."""

    __slots__ = ("kinds", "load_sum")

    def __init__(self) -> None:
        self.kinds: dict[int, list[float]] = {}
        self.load_sum = 0.0

    def add(self, acc: dict[int, list[float]], bases: dict[int, float], load: float) -> None:
        """Pool one window's sums (``acc``, as ``kinds``), its samples at mean load ``load``."""
        for kind, (total, n, squares) in acc.items():
            if kind in bases:
                pooled = self.kinds.get(kind)
                if pooled is None:
                    self.kinds[kind] = [total, n, squares]
                else:
                    pooled[0] += total
                    pooled[1] += n
                    pooled[2] += squares
                self.load_sum += n * load

    def spread(self, bases: dict[int, float]) -> tuple[float, float, float, float] | None:
        """``(ratio, its variance, samples, mean load)``, ``None`` without a known kind. The
        ratio is ``sum(rtt) / sum(baseline)``; its variance, for a ratio of sums, is the sum of
        each sample's squared residual from ``ratio * baseline`` over ``sum(baseline)^2``."""
        spent, unloaded, samples = totals(self.kinds, bases)
        if not unloaded:
            return None
        ratio = spent / unloaded
        residuals = 0.0
        for kind, (total, n, squares) in self.kinds.items():
            base = bases.get(kind)
            if base is not None:
                expected = ratio * base
                residuals += squares - 2.0 * expected * total + expected * expected * n
        variance = max(residuals, 0.0) / (unloaded * unloaded)
        return ratio, variance, samples, self.load_sum / samples


class _Level(Pooled):
    """One level of the limit, watched (the algorithm moves it) or held (a trial): its
    evidence, its windows and how many were pressed, the lowest limit it ran at, and how its
    windows' ratios scatter once their loads are accounted for (``noise``)."""

    __slots__ = ("_moments", "fresh", "lowest", "pressed", "windows")

    def __init__(self, limit: int, fresh: bool) -> None:
        super().__init__()
        self.lowest = limit
        self.fresh = fresh  # a trial's first window was admitted before its step
        self.pressed = self.windows = 0
        self._moments = [0.0] * 6  # over windows with a ratio: n, sums of r, l, r^2, l^2, r*l

    def add_window(
        self, acc: dict[int, list[float]], bases: dict[int, float], load: float, pressed: bool
    ) -> None:
        """Pool one closed window (``Pooled.add``); ``pressed`` as in ``Knee.window``."""
        self.add(acc, bases, load)
        self.windows += 1
        self.pressed += pressed
        spent, unloaded, _ = totals(acc, bases)
        if unloaded:
            ratio, m = spent / unloaded, self._moments
            m[0] += 1.0
            m[1] += ratio
            m[2] += load
            m[3] += ratio * ratio
            m[4] += load * load
            m[5] += ratio * load

    def noise(self) -> float:
        """The standard deviation of one window's ratio about a straight line in its load (a
        saw-tooth like AIMD's moves the ratio with the load; that is not noise); 0.0 before
        three windows."""
        n, r, load, rr, ll, rl = self._moments
        if n < 3:
            return 0.0
        srr, sll, srl = rr - r * r / n, ll - load * load / n, rl - r * load / n
        residual = srr - srl * srl / sll if sll > 1e-9 * (ll or 1.0) else srr
        return math.sqrt(max(residual, 0.0) / (n - 2))


class Knee:
    """The knee search of one limit; see the module docstring. ``target`` is the ratio to park
    at: the tolerance until the knee is found."""

    __slots__ = ("_above", "_floor", "_found", "_level", "_park", "_tolerance", "target")

    def __init__(
        self, tolerance: float, floor: int, park: Callable[[float, float], float]
    ) -> None:
        """``park(above, at)``: the ratio to park at, given the ratios one step above the knee
        and at it (the algorithm's own margin: AIMD swings below where it parks)."""
        self._tolerance, self._floor, self._park = tolerance, floor, park
        self.target = tolerance
        self._found = False
        self._level: _Level | None = None
        self._above: tuple[float, float, int] | None = None  # a trial's level: ratio, load, limit

    @property
    def engaged(self) -> bool:
        """Is a trial held, or the target lowered? (Windows near the knee teach no baseline.)"""
        return self._above is not None or self.target < self._tolerance

    def abandon(self, limit: int) -> int:
        """Stop watching; a trial gives its step back. Returns the limit to run at."""
        above, self._above, self._level = self._above, None, None
        return limit if above is None else above[2]

    def forget(self, limit: int) -> int:
        """The overload is over or a baseline was relearned: search anew next time. Returns
        the limit to run at."""
        self.target, self._found = self._tolerance, False
        return self.abandon(limit)

    def window(
        self, acc: dict[int, list[float]], bases: dict[int, float], load: float,
        pressed: bool, limit: int, recent: float,
    ) -> tuple[int, bool]:
        """One closed busy window with a ratio (``acc``, its sums per kind, at mean ``load``;
        ``pressed``: most of its requests waited for a seat; ``recent``: the smoothed ratio).
        Returns ``(limit, held)``: the limit to run at, and whether a trial holds it (the
        algorithm must not move it this window)."""
        level = self._level
        if self._found or (level is None and not pressed):
            return limit, False
        if self._above is None:  # watching the level the algorithm keeps
            if (
                level is None
                or abs(limit - level.lowest) > max(1.0, SWAY * limit)
                or recent > NEAR * self._tolerance
            ):
                self._level = _Level(limit, fresh=False)
                return limit, False
            level.lowest = min(level.lowest, limit)
        elif level is not None and level.fresh:
            level.fresh = False
            return limit, True
        assert level is not None
        level.add_window(acc, bases, load, pressed)
        spread = level.spread(bases)
        held = self._above is not None
        if spread is None:
            return limit, held
        ratio, variance, samples, mean_load = spread
        if ratio > NEAR * self._tolerance or 2 * level.pressed < level.windows:
            return self.abandon(limit), False  # latency rose, or the overload eased
        above = self._above
        if above is None:
            fall = ratio * STEP
        else:
            fall = above[0] * max(1.0 - mean_load / above[1], STEP)
        # Samples queued together share their wait and the service's speed of the moment:
        # they are not independent, so the windows' own scatter counts too.
        variance = max(variance, level.noise() ** 2 / level.windows)
        precise = (
            samples >= LEAST
            and level.windows >= WINDOWS
            and 2.0 * variance * SIGMAS * SIGMAS <= fall * fall
        )
        if not precise and samples < MOST:
            return limit, held
        if above is not None and not precise:  # too noisy to judge after all: give it back
            self._found = True
            return self.abandon(limit), False
        if above is None:
            if not precise or ratio <= 1.0 + STEP:  # too noisy to judge a step, or no queue to
                self._found, self._level = True, None  # take away (the limit is at its max)
                return limit, False
            return self._step(level.lowest, (ratio, mean_load, level.lowest))
        above_ratio, above_load, above_limit = above
        if above_load - mean_load < 0.5:  # the load did not come down (seats kept for a lane
            if precise:  # that leaves them idle): one step further, same comparison
                return self._step(limit, above)
        elif precise and above_ratio - ratio >= 0.5 * above_ratio * (1 - mean_load / above_load):
            return self._step(limit, (ratio, mean_load, limit))  # latency fell
        self.target = self._bounded(self._park(above_ratio, ratio), ratio, level)  # the knee
        self._found, self._level, self._above = True, None, None
        return above_limit, True

    def _bounded(self, target: float, ratio: float, level: _Level) -> float:
        """``target`` raised to two window deviations above ``level``'s ``ratio`` (the
        algorithm decides on single windows: their noise must not read as a rise) and to the
        baseline's own latency plus a step (a level read while the service was fast for a
        moment must not make the algorithm cut where nothing queues); the tolerance itself
        unless that is two steps lower (behind a noisy service a slightly tighter trigger
        gains little and makes AIMD cut on noise)."""
        target = max(target, ratio + 2.0 * level.noise(), 1.0 + STEP)
        if target > self._tolerance - 2 * STEP:  # too little to gain for a tighter trigger
            return self._tolerance
        return target

    def _step(self, limit: int, above: tuple[float, float, int]) -> tuple[int, bool]:
        """Hold the limit one step below ``limit``, to be compared with ``above``."""
        lower = max(self._floor, limit - max(1, int(limit * STEP)))
        if lower >= limit:  # at the floor: nothing lower to try
            self._found, self._level, self._above = True, None, None
            return limit, False
        self._above, self._level = above, _Level(lower, fresh=True)
        return lower, True

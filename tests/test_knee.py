"""The knee search (``lockgate._knee``), fed windows by hand: pure logic, exact numbers.

Every window here holds ``n`` samples of one kind whose baseline is 1.0, so a sample's rtt is
its ratio; behind a pool of ``P`` seats a level at load ``L`` reads ``max(1, L / P)``.
"""

from __future__ import annotations

import pytest

from lockgate._knee import MOST, NEAR, STEP, WINDOWS, Knee, Pooled

P = 20
BASES = {0: 1.0}
TOLERANCE = 1.25


def gradient2_park(above: float, at: float) -> float:
    return max(above, at * (1.0 + STEP))


def sums(ratio: float, n: int = 40, spread: float = 0.0) -> dict[int, list[float]]:
    """One window: half its samples at ``ratio + spread``, half at ``ratio - spread``."""
    return {0: [ratio * n, float(n), (ratio * ratio + spread * spread) * n]}


def behind_the_pool(knee: Knee, limit: int, windows: int = 200, spread: float = 0.0,
                    pool: int = P) -> list[tuple[int, bool]]:
    """Windows at ``limit`` seats (every seat in use, every request waited) behind a pool of
    ``pool``, following the knee's moves; ``(limit, held)`` after each."""
    out = []
    for _ in range(windows):
        ratio = max(1.0, limit / pool)
        limit, held = knee.window(sums(ratio, spread=spread), BASES, float(limit), True, limit,
                                  ratio)
        out.append((limit, held))
    return out


def test_pooled_spread_is_the_variance_of_a_ratio_of_sums() -> None:
    pooled = Pooled()
    pooled.add({0: [3.0, 2.0, 5.0], 1: [8.0, 2.0, 40.0], 2: [9.0, 9.0, 9.0]}, {0: 1.0, 1: 2.0},
               10.0)
    spread = pooled.spread({0: 1.0, 1: 2.0})
    assert spread is not None
    ratio, variance, samples, load = spread
    # samples 1, 2 (baseline 1) and 2, 6 (baseline 2): ratio 11 / 6; residuals from ratio x base
    expected = sum((rtt - 11 / 6 * base) ** 2 for rtt, base in [(1, 1), (2, 1), (2, 2), (6, 2)])
    assert ratio == pytest.approx(11 / 6) and samples == 4 and load == 10.0
    assert variance == pytest.approx(expected / 36)  # kind 2 has no baseline: not pooled


def test_steps_down_while_latency_follows_and_gives_the_last_step_back() -> None:
    """From 26 seats behind a pool of 20 the knee holds 25, 24, ... while each step shortens
    the queue in the app; the step to 19 does not (latency stays at the baseline): it is given
    back, and the limit is told to park a step's margin above the pool's latency."""
    knee = Knee(TOLERANCE, 4, gradient2_park)
    moves = behind_the_pool(knee, 26)
    held = [limit for limit, hold in moves if hold]
    assert sorted(set(held), reverse=True) == list(range(25, P - 2, -1))
    assert min(held) == P - 1 and moves[-1] == (P, False)
    assert knee.target == pytest.approx(1.0 + STEP) and knee.engaged


def test_a_knee_found_stays_found_until_forgotten() -> None:
    knee = Knee(TOLERANCE, 4, gradient2_park)
    behind_the_pool(knee, 26)
    assert all(move == (P, False) for move in behind_the_pool(knee, P, windows=50))
    assert knee.forget(P) == P and knee.target == TOLERANCE and not knee.engaged
    assert any(held for _, held in behind_the_pool(knee, 26))  # sought anew


@pytest.mark.parametrize("trouble", ["latency rose", "requests stopped waiting"])
def test_a_trial_is_given_back_at_once(trouble: str) -> None:
    """Held one step below a level, the trial ends and returns the step when latency rises
    past the tolerance, or when most requests no longer wait (the limit no longer binds)."""
    knee = Knee(TOLERANCE, 4, gradient2_park)
    moves = behind_the_pool(knee, 26, windows=WINDOWS + 2)  # watch, judge, step, skip one
    assert moves[-1] == (25, True)
    if trouble == "latency rose":
        back = knee.window(sums(2.0), BASES, 25.0, True, 25, 1.3)
    else:
        back = knee.window(sums(1.25), BASES, 25.0, False, 25, 1.25)
    assert back == (26, False) and not knee.engaged


def test_no_search_with_no_queue_to_take_away() -> None:
    """A limit already at the pool (its max, say) reads the baseline's latency: nothing in the
    app to shorten, so no seat is ever held back to find out."""
    knee = Knee(TOLERANCE, 4, gradient2_park)
    assert not any(held for _, held in behind_the_pool(knee, P))
    assert knee.target == TOLERANCE


def test_no_search_unless_requests_waited() -> None:
    knee = Knee(TOLERANCE, 4, gradient2_park)
    for _ in range(100):
        assert knee.window(sums(1.3), BASES, 26.0, False, 26, 1.3) == (26, False)
    assert knee.target == TOLERANCE and not knee.engaged


def test_the_evidence_needed_grows_with_the_spread() -> None:
    """A level is judged once the standard error of a step's fall is a fifth of it: behind a
    steady service a level takes ``WINDOWS`` windows, behind a noisy one many more; one too
    noisy to judge within ``MOST`` samples is left alone, with nothing held."""
    first_step = {}
    for spread in (0.0, 0.2, 0.4):
        knee = Knee(TOLERANCE, 4, gradient2_park)
        moves = behind_the_pool(knee, 26, windows=120, spread=spread)
        first_step[spread] = next(i for i, (_, held) in enumerate(moves) if held)
    assert first_step[0.0] == WINDOWS < first_step[0.2] < first_step[0.4]
    knee = Knee(TOLERANCE, 4, gradient2_park)
    moves = behind_the_pool(knee, 26, windows=MOST // 40 + 5, spread=3.0)
    assert not any(held for _, held in moves) and knee.target == TOLERANCE


def test_windows_that_scatter_are_noise_though_their_samples_agree() -> None:
    """Samples queued together share their wait and the service's speed of the moment, so a
    level's error also comes from how its windows scatter: windows exact inside but 5 % apart
    take many windows to judge. A scatter that follows the load (AIMD's saw-tooth, queueing
    above the knee) is not noise: judged in ``WINDOWS`` windows."""

    def first_step(ratios_and_loads: list[tuple[float, float]]) -> int:
        knee = Knee(TOLERANCE, 4, gradient2_park)
        for i, (ratio, load) in enumerate(ratios_and_loads):
            if knee.window(sums(ratio), BASES, load, True, 26, ratio)[1]:
                return i
        return len(ratios_and_loads)

    scattered = [(1.3 * (1.05 if i % 2 else 0.95), 26.0) for i in range(400)]
    sawing = [(1.2 * load / 26, load) for load in [26.0, 27.0, 28.0, 29.0, 24.0, 25.0] * 60]
    assert first_step(sawing) == WINDOWS < 30 < first_step(scattered)


def test_a_step_the_load_does_not_follow_is_taken_further() -> None:
    """Seats kept for a lane that leaves them idle can make a step of the limit no step of the
    load: the trial goes one step further and compares with the same level."""
    knee = Knee(TOLERANCE, 4, gradient2_park)
    moves = [knee.window(sums(1.3), BASES, 26.0, True, 26, 1.3) for _ in range(WINDOWS + 1)]
    assert moves[-1] == (25, True)  # watched WINDOWS windows at 26, then one step down
    moves = [knee.window(sums(1.3), BASES, 26.0, True, 25, 1.3) for _ in range(WINDOWS + 1)]
    assert moves[-1] == (24, True)  # the load stayed at 26: one step further


def test_a_target_is_never_below_the_baseline_nor_within_a_windows_noise() -> None:
    """Where the knee is found, the target is at least two window deviations above the ratio
    read there (the algorithm decides on single windows), and never below 1 + STEP: a level
    read while the service was fast for a moment (ratio 0.9) must not make the algorithm cut
    where nothing queues."""
    fast = Knee(TOLERANCE, 4, gradient2_park)
    behind_the_pool(fast, 26, pool=23)  # the knee at 23 seats reads 1.0 ...
    assert fast.target == pytest.approx(1.0 + STEP)
    fast = Knee(TOLERANCE, 4, lambda above, at: 0.9)  # ... or, read fast, 0.9
    behind_the_pool(fast, 26, pool=23)
    assert fast.target == pytest.approx(1.0 + STEP)
    noisy = Knee(TOLERANCE, 4, gradient2_park)
    limit, ratios = 26, [0.97, 1.03]  # windows alternate 3 % either side of the level's ratio
    for i in range(600):
        ratio = max(1.0, limit / 23) * ratios[i % 2]
        limit, _ = noisy.window(sums(ratio), BASES, float(limit), True, limit, ratio)
    assert limit == 23 and noisy.target == pytest.approx(1.0 + 2 * 0.03, rel=0.01)


def test_the_level_watched_restarts_when_the_algorithm_moves_the_limit() -> None:
    """A level is one while the limit stays within ``SWAY`` of its lowest: the saw-tooth of
    AIMD (about 20 %) is one level, a limit still coming down from 10x too high is not."""
    knee = Knee(TOLERANCE, 4, gradient2_park)
    noisy = sums(1.3, spread=0.2)  # a level needs about a dozen windows
    for limit in (200, 150, 110, 80, 60, 45, 34):
        assert knee.window(noisy, BASES, float(limit), True, limit, 1.3) == (limit, False)
    saw = [26, 27, 28, 29, 30, 31, 27] * 5
    held = next(i for i, limit in enumerate(saw)
                if knee.window(noisy, BASES, float(limit), True, limit, 1.3) == (25, True))
    assert held > 10  # one level, judged over the saw-tooth; the step is from its lowest, 26


def test_no_search_while_the_smoothed_ratio_is_far_over_the_tolerance() -> None:
    knee = Knee(TOLERANCE, 4, gradient2_park)
    recent = NEAR * TOLERANCE + 0.01
    for _ in range(50):
        assert knee.window(sums(1.3), BASES, 26.0, True, 26, recent) == (26, False)


def test_never_below_the_floor() -> None:
    knee = Knee(TOLERANCE, 6, gradient2_park)
    moves = behind_the_pool(knee, 8, pool=6)
    assert min(limit for limit, _ in moves) == 6 and moves[-1] == (6, False)

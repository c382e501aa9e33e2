"""The knee search (``lockgate._knee``), fed windows by hand: pure logic, exact numbers.

Every window here holds ``n`` samples of one kind whose baseline is 1.0, so a sample's rtt is
its ratio; behind a pool of ``P`` seats a level at load ``L`` reads ``max(1, L / P)``.
"""

from __future__ import annotations

import pytest

from lockgate._knee import MOST, NEAR, STEP, Knee, Pooled

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
    moves = behind_the_pool(knee, 26, windows=3)
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
    steady service a level takes a window or two, behind a noisy one many more; one too noisy
    to judge within ``MOST`` samples is left alone, with nothing held."""
    first_step = {}
    for spread in (0.0, 0.2, 0.4):
        knee = Knee(TOLERANCE, 4, gradient2_park)
        moves = behind_the_pool(knee, 26, windows=120, spread=spread)
        first_step[spread] = next(i for i, (_, held) in enumerate(moves) if held)
    assert first_step[0.0] < 3 < first_step[0.2] < first_step[0.4]
    knee = Knee(TOLERANCE, 4, gradient2_park)
    moves = behind_the_pool(knee, 26, windows=MOST // 40 + 5, spread=3.0)
    assert not any(held for _, held in moves) and knee.target == TOLERANCE


def test_a_step_the_load_does_not_follow_is_taken_further() -> None:
    """Seats kept for a lane that leaves them idle can make a step of the limit no step of the
    load: the trial goes one step further and compares with the same level."""
    knee = Knee(TOLERANCE, 4, gradient2_park)
    limit = 26
    knee.window(sums(1.3), BASES, 26.0, True, limit, 1.3)  # starts watching
    limit, held = knee.window(sums(1.3), BASES, 26.0, True, limit, 1.3)
    assert (limit, held) == (25, True)
    knee.window(sums(1.3), BASES, 26.0, True, limit, 1.3)  # the first window after a step
    limit, held = knee.window(sums(1.3), BASES, 26.0, True, limit, 1.3)  # load stayed at 26
    assert (limit, held) == (24, True)


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

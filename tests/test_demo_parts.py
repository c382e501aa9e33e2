"""The demo's pure pieces: counting, goodput, scenarios, SVG helpers, table layout.

Hand-built ``Results`` with worked-out expectations; no server, no load, no clock.
"""

from __future__ import annotations

import math
import re

import pytest

from lockgate import Priority
from lockgate.demo import DEMO_ROUTES, ROUTES, Options, Results, Route, Stats, goodput, tally
from lockgate.demo._loadgen import ERROR, OVERFLOW, TIMEOUT
from lockgate.demo._measure import lanes_of, percentile
from lockgate.demo._report import latency_series, throughput_series
from lockgate.demo._scenarios import scenarios
from lockgate.demo._svg import Axis, Series, chart, log_ticks, nice_ticks, segments
from lockgate.demo._table import Row, fmt_ms, scenario_table, summary_table, trade, verdict

FAST = Route("GET", "/fast", Priority.HIGH, 0.1, 1.0)
SLOW = Route("GET", "/slow", Priority.LOW, 1.0, 1.0)
TWO = (FAST, SLOW)


def results(*rows: tuple[int, float, float, int]) -> Results:
    """``Results`` from ``(route, scheduled at, latency, status)`` rows."""
    route, sched, latency, status = (list(x) for x in zip(*rows, strict=True))
    return Results(route, sched, [0.0] * len(rows), latency, status, [""] * len(rows))


def test_percentile_is_nearest_rank() -> None:
    values = [float(x) for x in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([3.0, 1.0, 2.0], 0.0) == 1.0
    assert math.isnan(percentile([], 0.5))


def test_stats_sorts_outcomes() -> None:
    stats = Stats()
    for status, latency in ((200, 0.1), (200, 0.3), (503, 0.01), (TIMEOUT, -1.0),
                            (ERROR, -1.0), (500, 0.2), (OVERFLOW, -1.0)):  # fmt: skip
        stats.add(status, latency)
    assert (stats.sent, stats.ok, stats.shed, stats.timeouts, stats.errors, stats.overflow) == (
        6, 2, 1, 1, 2, 1)  # fmt: skip
    assert stats.shed_pct == pytest.approx(100 / 6)
    assert stats.pct(0.5) == 0.1
    assert stats.summary(0.5)["p99"] == 0.3


def test_tally_counts_by_scheduled_time_per_lane() -> None:
    res = results((0, 0.5, 0.1, 200), (1, 0.9, 1.0, 200), (0, 1.5, 0.2, 503), (0, 2.5, 0.1, 200))
    lanes = tally(res, TWO, 0.0, 2.0)
    assert list(lanes) == ["high", "low", "all"]
    assert (lanes["high"].sent, lanes["high"].ok, lanes["high"].shed) == (2, 1, 1)
    assert (lanes["low"].sent, lanes["all"].sent) == (1, 3)


def test_goodput_counts_seat_time_of_timely_responses_by_completion() -> None:
    res = results(
        (0, 0.0, 0.1, 200),  # fast, on time: 0.1 s of seat time
        (0, 0.0, 0.6, 200),  # fast but 6x its service time: not good
        (1, 0.0, 4.0, 200),  # slow, 4x: 1.0 s
        (1, 0.0, 0.5, 503),  # shed: nothing
        (0, 9.5, 0.1, 200),  # completes after the window
    )  # fmt: skip
    good = goodput(res, TWO, pool=2, lo=0.0, hi=5.0)
    assert good == pytest.approx({"high": 0.01, "low": 0.1, "all": 0.11})


def test_lanes_of_orders_by_priority() -> None:
    assert lanes_of(DEMO_ROUTES) == ("critical", "high", "normal", "low")
    assert lanes_of(ROUTES) == ("high", "normal", "low")


def test_scenarios_are_multiples_of_capacity() -> None:
    options = Options(duration=6.0, rate=1.5, seats=10)
    assert options.capacity == pytest.approx(10 / (
        sum(r.weight * r.service_time for r in DEMO_ROUTES) / sum(r.weight for r in DEMO_ROUTES)))
    normal, threshold, overload, spike = scenarios(options)
    assert normal.shape == ((0.0, 0.7 * 1.5), (6.0, 0.7 * 1.5))
    assert threshold.shape == ((0.0, 1.5), (6.0, 1.5))
    assert overload.rates(100.0) == [(0.0, 300.0), (6.0, 300.0)]
    assert overload.window == (1.0, 6.0)
    assert spike.peak == pytest.approx(4.5)
    assert spike.end == pytest.approx(2.4 + 1.0 + 3.0 + 4.8)
    assert [s.name for s in scenarios(Options(names=("spike", "normal")))] == ["normal", "spike"]


def test_the_gated_variant_is_sized_from_the_seats() -> None:
    gated, bare = Options(seats=8).app("gated"), Options(seats=8).app("unprotected")
    assert (gated.kind, gated.pool, gated.seats, gated.queue_capacity) == ("lockgate", 8, 8, 80)
    assert (bare.kind, bare.pool) == ("bare", 8)


def test_series_bucket_latency_and_throughput() -> None:
    res = results((0, 0.1, 0.1, 200), (0, 0.2, 0.3, 200), (0, 0.3, -1.0, TIMEOUT),
                  (1, 0.1, 0.5, 503), (1, 0.9, 1.0, 200))  # fmt: skip
    lat = latency_series(res, TWO, end=2.0, timeout=5.0)
    assert [y for _, y in lat["high"][:2]] == [0.3, 5.0]  # a timeout ranks at the timeout
    assert lat["high"][0][0] == 0.125 and math.isnan(lat["high"][2][1])
    assert len(lat["low"]) == 8 and all(math.isnan(y) for _, y in lat["low"][:3])
    tput = throughput_series(res, TWO, end=2.0)
    per_s = {key: [y for _, y in points] for key, points in tput.items()}
    assert per_s["offered"] == [12.0, 4.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0]  # by scheduled time
    assert per_s["high"] == [4.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # by completion
    assert per_s["shed"] == [0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert per_s["low"] == [0.0] * 7 + [4.0]


def test_nice_ticks() -> None:
    assert nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(0, 11.2) == [0, 2.5, 5, 7.5, 10]
    assert nice_ticks(0, 640) == [0, 200, 400, 600]
    assert nice_ticks(3, 3) == [3]


def test_log_ticks() -> None:
    assert log_ticks(0.01, 6) == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5]
    assert log_ticks(1, 1) == [1]


def test_axis_fraction_clamps_linear_and_log() -> None:
    assert Axis(0, 10).fraction(2.5) == 0.25
    assert Axis(0, 10).fraction(-1) == 0.0 and Axis(0, 10).fraction(11) == 1.0
    assert Axis(0.01, 10, log=True).fraction(0.1) == pytest.approx(1 / 3)
    assert Axis(0.01, 10, log=True).fraction(0.0) == 0.0


def test_segments_split_at_nan() -> None:
    nan = math.nan
    points = [(0, nan), (1, 1.0), (2, 2.0), (3, nan), (4, nan), (5, 5.0)]
    assert segments(points) == [[(1, 1.0), (2, 2.0)], [(5, 5.0)]]
    assert segments([(0, nan)]) == []


def test_chart_draws_a_polyline_per_segment_and_an_area() -> None:
    svg = chart(
        [Series("offered", "#eeeeee", [(0, 5), (10, 5)], area=True),
         Series("high <1>", "#e53935", [(0, 1), (5, math.nan), (8, 2), (10, 3)], dash="4 4")],
        Axis(0, 10, "seconds"), Axis(0, 10, "req/s"), "title & more", width=200, height=100,
    )  # fmt: skip
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"') and svg.endswith("</svg>")
    assert svg.count("<polygon") == 1 and svg.count("<polyline") == 2
    assert 'data-series="high &lt;1&gt;"' in svg and "title &amp; more" in svg
    assert 'stroke-dasharray="4 4"' in svg and 'stroke="#e53935"' in svg
    # plot area: x 56..188, y 28..62; (8, 2) and (10, 3) land here:
    assert 'points="161.6,55.2 188.0,51.8"' in svg


def test_fmt_ms() -> None:
    assert [fmt_ms(x) for x in (0.0123, 0.0999, 0.1004, 2.5, math.nan)] == [
        "12.3", "99.9", "100", "2500", "-"]  # fmt: skip


BARE = Row(sent=1000, goodput=0.12, shed_pct=0.0, p50=1.2, p95=2.0, p99=2.4, failed=30)
GATED = Row(sent=1000, goodput=0.9, shed_pct=41.5, p50=0.06, p95=0.09, p99=0.1, failed=0)


def test_scenario_table_pairs_unprotected_and_gated() -> None:
    table = scenario_table("overload: 2x", {"high": BARE, "all": BARE},
                           {"high": GATED, "all": GATED})  # fmt: skip
    lines = table.splitlines()
    assert lines[0] == "overload: 2x"
    assert lines[2].split("|")[1].split() == ["unprot", "gated"]
    assert lines[4].split() == ["high", "1000", "|", "12.0", "90.0", "|", "0.0", "41.5", "|",
                                "1200", "60.0", "|", "2000", "90.0", "|", "2400", "100", "|",
                                "30", "0"]  # fmt: skip
    assert set(lines[5]) == {"-"} and lines[6].startswith("all ")
    assert len({len(line) for line in lines[1:]}) == 1


def test_verdict() -> None:
    assert verdict(BARE, GATED) == (
        "goodput 12 % -> 90 % of the pool (7.5x), p99 2400 -> 100 ms (24.0x lower), "
        "timeouts/errors 30 -> 0: GATED IS BETTER")
    same = Row(500, 0.65, 0.0, 0.05, 0.2, 0.2, 0)
    assert verdict(same, same).endswith(": about the same (the gate stays out of the way)")
    slower = Row(500, 0.65, 0.0, 0.05, 0.2, 0.3, 0)
    assert verdict(same, slower).endswith("(1.5x higher), timeouts/errors 0 -> 0: "
                                          "unprotected is ahead here")
    assert verdict(BARE, Row(1000, 0.05, 0, 0.05, 0.1, 0.1, 0)).endswith(": mixed")


def test_trade_names_the_lanes_made_faster_and_the_lanes_shed() -> None:
    """At exactly 1x the gate can lose on goodput overall: the verdict then says why (the
    threshold scenario of a real run: batch shed to keep logins and reads fast)."""
    def lane(p99: float, shed: float) -> Row:
        return Row(sent=300, goodput=0.3, shed_pct=shed, p50=0.05, p95=p99, p99=p99, failed=0)

    before = {"high": lane(0.212, 0.0), "normal": lane(0.214, 0.0), "low": lane(0.358, 0.0),
              "all": lane(0.326, 0.0)}
    after = {"high": lane(0.072, 0.0), "normal": lane(0.132, 2.5), "low": lane(0.490, 23.2),
             "all": lane(0.380, 4.2)}
    assert trade(before, after) == (
        "admitted faster: high p99 212 -> 72.0 ms, normal p99 214 -> 132 ms; shed: low 23 %")
    assert trade(before, before) == ""  # nothing shed, nothing faster
    assert trade(after, after) == ""


def test_summary_table() -> None:
    table = summary_table([("overload", "2x", BARE, GATED)])
    head, _, rule, line = table.splitlines()
    assert head.split("|")[1].strip() == "goodput %" and set(rule) == {"-"}
    assert re.split(r"[\s|]+", line) == ["overload", "2x", "12.0", "90.0", "2400", "100",
                                          "0.0", "41.5", "30", "0"]  # fmt: skip

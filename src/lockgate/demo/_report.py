"""The demo's HTML report: one self-contained file, tables and inline SVG plots.

Per scenario, latency and good throughput over time per lane, unprotected next to gated on the
same axes. No JavaScript, no fonts, no external resources: it opens offline, from an e-mail
attachment or a CI artifact. It is a picture of one run, not a dashboard.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from ._loadgen import TIMEOUT, Results
from ._measure import ALL, GOOD_WITHIN, lanes_of, percentile
from ._runner import Run
from ._scenarios import Options
from ._service import DEMO_ROUTES, Route
from ._svg import Axis, Series, chart
from ._table import Row, fmt_ms, row, trade, verdict

__all__ = ["LANE_COLORS", "latency_series", "render", "throughput_series"]

LANE_COLORS = {"critical": "#8e24aa", "high": "#e53935", "normal": "#1e88e5", "low": "#43a047"}
OFFERED_COLOR = "#e6e6e6"
SHED_COLOR = "#fb8c00"

Points = list[tuple[float, float]]


def _buckets(end: float) -> tuple[float, int]:
    step = 0.25 if end <= 8 else 0.5
    return step, max(1, math.ceil(end / step))


def latency_series(
    res: Results, routes: Sequence[Route], end: float, timeout: float
) -> dict[str, Points]:
    """Per lane, p99 latency (seconds) of the requests scheduled in each time bucket, by
    bucket middle; a timed-out request counts as ``timeout``, a ``503`` not at all."""
    step, n = _buckets(end)
    values: dict[str, list[list[float]]] = {lane: [[] for _ in range(n)]
                                            for lane in lanes_of(routes)}  # fmt: skip
    for route, t, latency, status in zip(res.route, res.sched, res.latency, res.status,
                                         strict=True):  # fmt: skip
        k = int(t / step)
        if k < n and (status == 200 or status == TIMEOUT):
            values[routes[route].lane.label][k].append(latency if status == 200 else timeout)
    return {lane: [((k + 0.5) * step, percentile(v, 0.99)) for k, v in enumerate(per)]
            for lane, per in values.items()}  # fmt: skip


def throughput_series(res: Results, routes: Sequence[Route], end: float) -> dict[str, Points]:
    """Per second, by bucket: per lane the good responses (``200`` within ``GOOD_WITHIN`` x
    the service time) by completion time; ``"shed"`` the ``503``s by completion time and
    ``"offered"`` the requests by scheduled time."""
    step, n = _buckets(end)
    counts = {key: [0] * n for key in (*lanes_of(routes), "shed", "offered")}
    for route, t, latency, status in zip(res.route, res.sched, res.latency, res.status,
                                         strict=True):  # fmt: skip
        k = int(t / step)
        if k < n:
            counts["offered"][k] += 1
        k = int((t + latency) / step)
        r = routes[route]
        if status == 200 and latency <= GOOD_WITHIN * r.service_time and 0 <= k < n:
            counts[r.lane.label][k] += 1
        elif status == 503 and 0 <= k < n:
            counts["shed"][k] += 1
    return {key: [((k + 0.5) * step, c / step) for k, c in enumerate(per)]
            for key, per in counts.items()}  # fmt: skip


def _charts(before: Run, after: Run, timeout: float) -> str:
    end = before.scenario.end
    x = Axis(0.0, end, "seconds")
    lat = Axis(0.01, max(1.0, 1.2 * timeout), "p99 latency (s, log)", log=True)
    tput = {run.variant: throughput_series(run.results, DEMO_ROUTES, end)
            for run in (before, after)}  # fmt: skip
    top = max(max(y for _, y in pts) for per in tput.values() for pts in per.values())
    rate = Axis(0.0, max(1.0, 1.05 * top), "responses / s")
    cells = []
    for run in (before, after):
        lanes = latency_series(run.results, DEMO_ROUTES, end, timeout)
        cells.append(chart(
            [Series(f"timeout {timeout:g} s", "#9e9e9e", [(0.0, timeout), (end, timeout)],
                    width=1, dash="4 4"),
             *(Series(lane, LANE_COLORS[lane], pts) for lane, pts in lanes.items())],
            x, lat, f"{run.variant}: latency p99 per lane (timeouts at {timeout:g} s)"))
    for run in (before, after):
        per = tput[run.variant]
        cells.append(chart(
            [Series("offered", OFFERED_COLOR, per["offered"], area=True),
             Series("shed (503)", SHED_COLOR, per["shed"], width=1.5, dash="5 3"),
             *(Series(lane, LANE_COLORS[lane], per[lane]) for lane in lanes_of(DEMO_ROUTES))],
            x, rate, f"{run.variant}: good responses/s per lane"))
    return '<div class="grid">' + "".join(f"<div>{c}</div>" for c in cells) + "</div>"


_FIGURES = ("goodput %", "shed %", "p50 ms", "p95 ms", "p99 ms", "timeouts/errors")


def _pairs(b: Row, a: Row) -> list[tuple[str, str]]:
    return [(f"{100 * b.goodput:.1f}", f"{100 * a.goodput:.1f}"),
            (f"{b.shed_pct:.1f}", f"{a.shed_pct:.1f}"), (fmt_ms(b.p50), fmt_ms(a.p50)),
            (fmt_ms(b.p95), fmt_ms(a.p95)), (fmt_ms(b.p99), fmt_ms(a.p99)),
            (str(b.failed), str(a.failed))]  # fmt: skip


def _table(lead: Sequence[str], body: Sequence[tuple[Sequence[str], Row, Row, bool]]) -> str:
    """A table of ``lead`` columns then each figure unprotected/gated; rows ``(lead cells,
    unprotected, gated, is a total)``."""
    head = ("<tr>" + "".join(f"<th rowspan=2>{t}</th>" for t in lead)
            + "".join(f"<th colspan=2>{t}</th>" for t in _FIGURES)
            + "</tr><tr>" + "<th>unprot.</th><th>gated</th>" * len(_FIGURES) + "</tr>")
    lines = []
    for cells, b, a, total in body:
        figures = "".join(f"<td>{p}</td><td class=gated>{q}</td>" for p, q in _pairs(b, a))
        lines.append(f"<tr{' class=total' if total else ''}>"
                     + "".join(f"<td>{c}</td>" for c in cells) + f"{figures}</tr>")
    return f"<table>{head}{''.join(lines)}</table>"


def _swatch(lane: str) -> str:
    color = LANE_COLORS.get(lane)
    return f'<span class="swatch" style="background:{color}"></span>{lane}' if color else lane


def rows(run: Run) -> dict[str, Row]:
    """Per lane and ``"all"``, the printed figures of ``run``."""
    good = run.goodput()
    return {lane: row(stats, good[lane]) for lane, stats in run.lanes().items()}


def render(pairs: Sequence[tuple[Run, Run]], options: Options, machine: str) -> str:
    """The whole report: ``pairs`` are ``(unprotected, gated)`` runs, one per scenario."""
    mix = ", ".join(f"{r.lane.label} {r.method} {r.path} {r.weight:.0%} "
                    f"{1000 * r.service_time:g} ms" for r in DEMO_ROUTES)  # fmt: skip
    tables = [(rows(before), rows(after)) for before, after in pairs]
    summary = _table(("scenario",), [((f'<a href="#{before.scenario.name}">'
                                      f"{before.scenario.name}</a>",), b[ALL], a[ALL], False)
                                     for (before, _), (b, a) in zip(pairs, tables, strict=True)])
    parts = [
        "<h1>lockgate demo: the sample service unprotected and gated</h1>",
        f"<p>{escape(machine)}</p>",
        f"<p>Pool of {options.seats} DB connections = the gate's {options.seats} seats; "
        f"capacity {options.capacity:.0f} req/s. Mix: {escape(mix)}. Open-loop Poisson load, "
        f"client timeout {options.timeout:g} s. <b>Goodput</b>: seat-time of responses "
        f"completed within {GOOD_WITHIN:g}x their service time, as a share of the pool's "
        "seat-time. Latencies are of <code>200</code> responses, from the scheduled send "
        "time.</p>",
        f"<p>Lanes: {' '.join(_swatch(lane) for lane in LANE_COLORS)}; grey area: offered "
        f'load; <span style="color:{SHED_COLOR}">dashed orange</span>: 503s answered per '
        "second; dashed grey: the client timeout.</p>",
        f"<h2>All lanes</h2>{summary}",
    ]
    for (before, after), (b, a) in zip(pairs, tables, strict=True):
        parts += [
            f'<section id="{before.scenario.name}"><h2>{escape(before.scenario.title)}</h2>',
            f'<p class="verdict">{escape(verdict(b[ALL], a[ALL]))}</p>',
            f'<p class="trade">{escape(traded)}</p>' if (traded := trade(b, a)) else "",
            _charts(before, after, options.timeout),
            _table(("lane", "sent"), [((_swatch(lane), str(row.sent)), row, a[lane],
                                        lane == ALL) for lane, row in b.items()]),
            "</section>",
        ]
    return _PAGE.format(body="\n".join(parts))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lockgate demo report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #212121;
        background: #fff; }}
h1 {{ font-size: 20px; margin: 0 0 8px; }} h2 {{ font-size: 16px; margin: 20px 0 4px; }}
.grid {{ display: grid; grid-template-columns: repeat(2, 600px); gap: 4px 16px; }}
svg.chart {{ display: block; }} svg .title {{ font-size: 13px; font-weight: 600; }}
svg .tick, svg .axis {{ font-size: 11px; fill: #616161; }}
svg .grid {{ stroke: #eeeeee; }} svg .frame {{ fill: none; stroke: #bdbdbd; }}
svg .area {{ opacity: 1; }}
table {{ border-collapse: collapse; margin: 6px 0 12px; font-variant-numeric: tabular-nums; }}
th, td {{ border: 1px solid #e0e0e0; padding: 2px 8px; text-align: right; }}
td:first-child {{ text-align: left; }} td.gated {{ font-weight: 600; }}
tr.total td {{ border-top: 2px solid #9e9e9e; }}
.swatch {{ display: inline-block; width: 12px; height: 3px; margin: 0 4px 3px 6px; }}
.verdict {{ font-weight: 600; }}
</style></head>
<body>
{body}
</body></html>
"""

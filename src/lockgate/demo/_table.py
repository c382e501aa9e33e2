"""The demo's console tables: per scenario and lane, unprotected next to gated.

Pure formatting of ``Row`` values (no measuring, no printing), so the layout is unit-tested.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._measure import ALL, Stats

__all__ = ["Row", "fmt_ms", "row", "scenario_table", "summary_table", "verdict"]


@dataclass(frozen=True, slots=True)
class Row:
    """One lane of one run, ready to print. Latencies in seconds, NaN for none."""

    sent: int
    goodput: float
    """Share of the pool's seat-time (0..1)."""
    shed_pct: float
    p50: float
    p95: float
    p99: float
    failed: int
    """Timeouts, errors and requests the client could not send."""


def row(stats: Stats, goodput: float) -> Row:
    return Row(stats.sent, goodput, stats.shed_pct, stats.pct(0.50), stats.pct(0.95),
               stats.pct(0.99), stats.timeouts + stats.errors + stats.overflow)  # fmt: skip


def fmt_ms(seconds: float) -> str:
    """Milliseconds, one decimal below 100 ms; ``-`` for no value."""
    if math.isnan(seconds):
        return "-"
    ms = 1000 * seconds
    return f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


_PAIRS = (("goodput %", 6), ("shed %", 6), ("p50 ms", 6), ("p95 ms", 6), ("p99 ms", 6),
          ("tmo/err", 6))  # fmt: skip
"""Column groups (title, width of each of the two numbers)."""


def _cells(r: Row) -> tuple[str, ...]:
    return (f"{100 * r.goodput:.1f}", f"{r.shed_pct:.1f}", fmt_ms(r.p50), fmt_ms(r.p95),
            fmt_ms(r.p99), str(r.failed))  # fmt: skip


def scenario_table(title: str, before: Mapping[str, Row], after: Mapping[str, Row]) -> str:
    """The per-lane table of one scenario: for each figure, unprotected then gated."""
    head1 = f"{'':<9} {'':>6}" + "".join(f" | {t:^{2 * w + 1}}" for t, w in _PAIRS)
    head2 = f"{'lane':<9} {'sent':>6}" + "".join(
        f" | {'unprot':>{w}} {'gated':>{w}}" for _, w in _PAIRS)  # fmt: skip
    lines = [title, head1, head2, "-" * len(head2)]
    for lane, b in before.items():
        a = after[lane]
        if lane == ALL:
            lines.append("-" * len(head2))
        line = f"{lane:<9} {b.sent:>6}"
        for (_, w), x, y in zip(_PAIRS, _cells(b), _cells(a), strict=True):
            line += f" | {x:>{w}} {y:>{w}}"
        lines.append(line)
    return "\n".join(lines)


def verdict(before: Row, after: Row) -> str:
    """One line: goodput and p99 of all lanes, unprotected -> gated, and which is better."""
    gain = "" if before.goodput <= 0 else f" ({after.goodput / before.goodput:.1f}x)"
    p99 = f"p99 {fmt_ms(before.p99)} -> {fmt_ms(after.p99)} ms"
    lower = before.p99 / after.p99 if after.p99 > 0 else math.nan
    if math.isnan(lower):
        lower = 1.0  # no comparison
    else:
        p99 += f" ({lower:.1f}x lower)" if lower >= 1 else f" ({1 / lower:.1f}x higher)"
    better = after.goodput > before.goodput + 0.03 or lower > 1.2
    worse = after.goodput < before.goodput - 0.03 or lower < 1 / 1.2
    if better and not worse:
        mark = "GATED IS BETTER"
    elif worse and not better:
        mark = "unprotected is ahead here"
    elif worse:
        mark = "mixed"
    else:
        mark = "about the same (the gate stays out of the way)"
    return (f"goodput {100 * before.goodput:.0f} % -> {100 * after.goodput:.0f} % of the "
            f"pool{gain}, {p99}, timeouts/errors {before.failed} -> {after.failed}: {mark}")


def trade(before: Mapping[str, Row], after: Mapping[str, Row]) -> str:
    """What the gate traded, per lane: the lanes whose admitted requests it made faster (p99
    at least 1.2x lower) and those it shed (5 % or more); "" unless it did both."""
    faster = [f"{lane} p99 {fmt_ms(before[lane].p99)} -> {fmt_ms(after[lane].p99)} ms"
              for lane in before if lane != ALL and after[lane].p99 * 1.2 <= before[lane].p99]
    shed = [f"{lane} {after[lane].shed_pct:.0f} %" for lane in before
            if lane != ALL and after[lane].shed_pct >= 5.0]
    if not faster or not shed:
        return ""
    return f"admitted faster: {', '.join(faster)}; shed: {', '.join(shed)}"


def summary_table(rows: Sequence[tuple[str, str, Row, Row]]) -> str:
    """All lanes of every scenario, one line each: ``(name, load, unprotected, gated)``."""
    cols = (("goodput %", 6), ("p99 ms", 6), ("shed %", 6), ("tmo/err", 6))
    head1 = f"{'scenario':<10} {'load':<10}" + "".join(f" | {t:^{2 * w + 1}}" for t, w in cols)
    head2 = f"{'':<10} {'':<10}" + "".join(f" | {'unprot':>{w}} {'gated':>{w}}" for _, w in cols)
    lines = [head1, head2, "-" * len(head2)]
    for name, load, b, a in rows:
        cells = ((f"{100 * b.goodput:.1f}", f"{100 * a.goodput:.1f}"),
                 (fmt_ms(b.p99), fmt_ms(a.p99)),
                 (f"{b.shed_pct:.1f}", f"{a.shed_pct:.1f}"),
                 (str(b.failed), str(a.failed)))  # fmt: skip
        line = f"{name:<10} {load:<10}"
        for (_, w), (x, y) in zip(cols, cells, strict=True):
            line += f" | {x:>{w}} {y:>{w}}"
        lines.append(line)
    return "\n".join(lines)

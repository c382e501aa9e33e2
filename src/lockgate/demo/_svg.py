"""A tiny line-chart writer: inline SVG text, linear or log axes, nothing else.

Enough for the demo report's time series (lines with gaps, a filled area, ticks, a title). It
is not a plotting library: no legends, no layout engine, no interactivity, no JavaScript.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Axis", "Series", "chart", "log_ticks", "nice_ticks", "segments"]


@dataclass(frozen=True, slots=True)
class Axis:
    """A value range mapped onto the plot area; ``log`` for a base-10 scale (``lo > 0``)."""

    lo: float
    hi: float
    label: str = ""
    log: bool = False

    def fraction(self, value: float) -> float:
        """Where ``value`` falls, 0 at ``lo`` and 1 at ``hi``, clamped to [0, 1]."""
        if self.log:
            value = max(value, self.lo)
            at = (math.log10(value) - math.log10(self.lo)) / (
                math.log10(self.hi) - math.log10(self.lo))  # fmt: skip
        else:
            at = (value - self.lo) / (self.hi - self.lo) if self.hi > self.lo else 0.0
        return min(1.0, max(0.0, at))

    def ticks(self) -> list[float]:
        return log_ticks(self.lo, self.hi) if self.log else nice_ticks(self.lo, self.hi)


@dataclass(frozen=True, slots=True)
class Series:
    """One line: points ``(x, y)``, a NaN ``y`` breaks it; ``area`` fills down to the axis."""

    label: str
    color: str
    points: Sequence[tuple[float, float]]
    width: float = 2.5
    dash: str = ""
    area: bool = False


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5 or 5 x 10^n steps) within ``[lo, hi]``."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks of each decade within ``[lo, hi]`` (``lo > 0``)."""
    out = []
    for decade in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            value = m * 10.0**decade
            if lo * (1 - 1e-9) <= value <= hi * (1 + 1e-9):
                out.append(value)
    return out


def segments(points: Sequence[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """The runs of ``points`` between NaN values (each a separate polyline)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if math.isnan(y):
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((x, y))
    return [run for run in runs if run]


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e5 else f"{value:.0e}"


def chart(
    series: Sequence[Series], x: Axis, y: Axis, title: str, width: int = 600, height: int = 260
) -> str:
    """An ``<svg>`` element: axes with ticks and grid, the series drawn in order."""
    left, right, top, bottom = 56, 12, 28, 38
    pw, ph = width - left - right, height - top - bottom

    def px(v: float) -> float:
        return round(left + pw * x.fraction(v), 2)

    def py(v: float) -> float:
        return round(top + ph * (1 - y.fraction(v)), 2)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{escape(title)}">',
           f'<text x="{left}" y="18" class="title">{escape(title)}</text>']  # fmt: skip
    for v in y.ticks():
        out.append(f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{py(v)}" '
                   f'y2="{py(v)}"/><text class="tick" x="{left - 6}" y="{py(v) + 4}" '
                   f'text-anchor="end">{_label(v)}</text>')  # fmt: skip
    for v in x.ticks():
        out.append(f'<line class="grid" x1="{px(v)}" x2="{px(v)}" y1="{top}" '
                   f'y2="{top + ph}"/><text class="tick" x="{px(v)}" y="{top + ph + 16}" '
                   f'text-anchor="middle">{_label(v)}</text>')  # fmt: skip
    out.append(f'<rect class="frame" x="{left}" y="{top}" width="{pw}" height="{ph}"/>')
    out.append(f'<text class="axis" x="{left + pw / 2}" y="{height - 4}" '
               f'text-anchor="middle">{escape(x.label)}</text>')  # fmt: skip
    out.append(f'<text class="axis" transform="translate(13 {top + ph / 2}) rotate(-90)" '
               f'text-anchor="middle">{escape(y.label)}</text>')  # fmt: skip
    for s in series:
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        for run in segments(s.points):
            coords = " ".join(f"{px(a)},{py(b)}" for a, b in run)
            if s.area:
                base = py(y.lo)
                out.append(f'<polygon class="area" data-series="{escape(s.label)}" '
                           f'fill="{s.color}" points="{px(run[0][0])},{base} {coords} '
                           f'{px(run[-1][0])},{base}"/>')  # fmt: skip
            else:
                out.append(f'<polyline class="series" data-series="{escape(s.label)}" '
                           f'fill="none" stroke="{s.color}" stroke-width="{s.width}" '
                           f'stroke-linejoin="round"{dash} points="{coords}"/>')  # fmt: skip
    out.append("</svg>")
    return "\n".join(out)

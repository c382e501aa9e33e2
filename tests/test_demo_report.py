"""The demo's HTML report in a real browser: headless Chromium renders it, Pillow looks.

The report is built from made-up runs (deterministic, no server) with every lane busy, written
to a file and opened as ``file://``. The screenshot must show each lane's plot colour on far
more pixels than the legend swatches alone hold, and ``--dump-dom`` must hold the SVG charts
and their lines. Chromium comes from Debian's ``chromium`` package (``.ci/run`` installs it);
without it these tests skip, or fail when ``LOCKGATE_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from lockgate.demo import DEMO_ROUTES, Options, Results
from lockgate.demo._report import LANE_COLORS, render
from lockgate.demo._runner import Run
from lockgate.demo._scenarios import scenarios

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
WIDTH, HEIGHT = 1280, 2000
MIN_PIXELS = 1500
"""Pixels of a lane's colour the screenshot must show; the legend swatches hold < 200."""


def chromium() -> str:
    """The browser's path; skip without it, or fail under ``LOCKGATE_REQUIRE_SERVICES=1``."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "chromium not found (Debian: apt-get install chromium)"
        if os.environ.get("LOCKGATE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{message}; LOCKGATE_REQUIRE_SERVICES=1 requires it")
        pytest.skip(message)
    return path


def made_up_run(options: Options, index: int, variant: str) -> Run:
    """A run whose latency grows without bound (unprotected) or stays flat (gated)."""
    scenario = scenarios(options)[index]
    rng = random.Random(index)
    rate = scenario.peak * options.capacity
    route, sched, latency, status = [], [], [], []
    t = 0.0
    while (t := t + rng.expovariate(rate)) < scenario.end:
        r = rng.choices(range(len(DEMO_ROUTES)), [x.weight for x in DEMO_ROUTES])[0]
        service = DEMO_ROUTES[r].service_time
        route.append(r)
        sched.append(t)
        if variant == "gated" and r == 2 and rng.random() < 0.4:
            latency.append(0.01)
            status.append(503)
        else:
            latency.append(service * (1.2 + rng.random()) + (t / 2 if variant != "gated" else 0))
            status.append(200)
    n = len(route)
    return Run(scenario, variant, Results(route, sched, [0.0] * n, latency, status, [""] * n),
               options.seats, options.capacity)  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    options = Options(duration=4.0, timeout=5.0)
    pairs = [(made_up_run(options, i, "unprotected"), made_up_run(options, i, "gated"))
             for i in range(len(scenarios(options)))]  # fmt: skip
    path = tmp_path_factory.mktemp("report") / "demo.html"
    path.write_text(render(pairs, options, "made-up runs"), encoding="utf-8")
    return path


def browse(report: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
         f"--window-size={WIDTH},{HEIGHT}", *args, report.as_uri()],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def near(pixel: tuple[int, ...] | float, color: str, tolerance: int = 12) -> bool:
    """Is the RGB ``pixel`` within ``tolerance`` of ``#rrggbb`` in every channel?"""
    want = (int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16))
    return isinstance(pixel, tuple) and all(
        abs(a - b) <= tolerance for a, b in zip(pixel, want, strict=True))  # fmt: skip


def test_screenshot_shows_every_lane_plotted(report: Path, tmp_path: Path) -> None:
    png = tmp_path / "shot.png"
    browse(report, tmp_path, f"--screenshot={png}")
    with Image.open(png) as image:
        assert image.size == (WIDTH, HEIGHT)
        colors = image.convert("RGB").getcolors(WIDTH * HEIGHT)
    assert colors is not None
    white = sum(n for n, rgb in colors if rgb == (255, 255, 255))
    assert white < 0.97 * WIDTH * HEIGHT  # something was drawn at all
    for lane, color in LANE_COLORS.items():
        seen: int = sum(n for n, rgb in colors if near(rgb, color))
        assert seen >= MIN_PIXELS, f"{lane} {color}: {seen} pixels"


def test_dom_holds_the_charts(report: Path, tmp_path: Path) -> None:
    dom = browse(report, tmp_path, "--dump-dom").stdout
    assert dom.count("<svg") == 16  # 4 scenarios x (latency, throughput) x (unprotected, gated)
    assert dom.count('class="chart"') == 16
    for lane, color in LANE_COLORS.items():
        assert dom.count(f'data-series="{lane}" fill="none" stroke="{color}"') >= 16, lane
    assert dom.count('class="area"') == 8  # offered load under each throughput chart
    assert "GATED IS BETTER" in dom

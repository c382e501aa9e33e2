"""``lockgate demo`` end to end: real uvicorn subprocesses, real load, short scenarios.

One run of all four scenarios (1.5 s each, 1 s client timeout: about 20 s) feeds every test
here. At 2x for 1.5 s the unprotected app's backlog makes its goodput collapse while the gate
keeps most of the pool busy with fresh work, so "gated beats unprotected" holds with a wide
margin; these tests check that and the shape of the output, never timings.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lockgate.cli import DEMO_NAMES, main

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The console output of one short demo run, and the report it wrote."""
    report = tmp_path_factory.mktemp("demo") / "report.html"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["demo", "--duration", "1.5", "--timeout", "1", "--report", str(report)])
    assert code == 0
    return out.getvalue(), report


def summary_row(text: str, scenario: str) -> list[float]:
    """The numbers of ``scenario``'s line in the closing all-lanes table."""
    line = next(ln for ln in text.splitlines() if re.match(rf"^{scenario} +[\d.x-]+x +\|", ln))
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", line.split("|", 1)[1])]


def test_prints_a_table_per_scenario_and_a_summary(demo: tuple[str, Path]) -> None:
    text, _ = demo
    for name in DEMO_NAMES:
        assert re.search(rf"^{name}: ", text, re.M), name
        assert len(summary_row(text, name)) == 8, name
    for lane in ("critical", "high", "normal", "low", "all"):
        assert len(re.findall(rf"^{lane} +\d+ \|", text, re.M)) == 4, lane
    assert "goodput %" in text and "p99 ms" in text and "timeouts" in text
    assert len(re.findall(r"^\[\d/8\] ", text, re.M)) == 8


def test_gated_goodput_beats_unprotected_under_overload(demo: tuple[str, Path]) -> None:
    goodput_bare, goodput_gated, p99_bare, p99_gated, *_ = summary_row(demo[0], "overload")
    assert goodput_gated > 1.5 * goodput_bare
    assert goodput_gated > 60
    assert p99_gated < p99_bare / 3


def test_gated_p99_beats_unprotected_in_the_spike(demo: tuple[str, Path]) -> None:
    goodput_bare, goodput_gated, p99_bare, p99_gated, *_ = summary_row(demo[0], "spike")
    assert goodput_gated > goodput_bare
    assert p99_gated < p99_bare


def test_writes_the_report_and_says_where(demo: tuple[str, Path]) -> None:
    text, report = demo
    assert f"report: {report.resolve()}" in text
    html = report.read_text(encoding="utf-8")
    assert html.startswith("<!doctype html>")
    assert html.count("<svg") == 4 * len(DEMO_NAMES)
    assert not re.search(r"<script|<link|src=|@import|url\(", html)


def test_rejects_unknown_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--scenarios", "overload,tsunami"])
    assert exc.value.code == 2
    assert "unknown scenarios: tsunami (choose from normal, threshold, overload, spike)" in (
        capsys.readouterr().err)  # fmt: skip


def test_names_the_extra_when_a_dependency_is_missing() -> None:
    """Without uvloop (hidden from the import system) the demo says what to install."""
    code = ("import sys; sys.modules['uvloop'] = None\n"
            "from lockgate.cli import main\nraise SystemExit(main(['demo', '--quick']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "lockgate demo needs uvloop: pip install 'lockgate[demo]'"
    assert done.stdout == ""

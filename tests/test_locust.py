"""Smoke tests of ``benchmarks/locust/``: a real locust run against the gated sample service.

locust monkey-patches the process with gevent as soon as it is imported, so this module never
imports it: every locust run, and the spike shape's ``tick()``, happen in a subprocess.
"""

from __future__ import annotations

import csv
import http.client
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._servers import HOST, free_port, wait_until

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust not installed"),
]

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
LOCUST_DIR = BENCHMARKS / "locust"
# Seats and pool of 2 serve at most 40 logins/s; 100 users send about 95/s, so the gate sheds.
GATED = {"kind": "lockgate", "pool": 2, "seats": 2}


def _env() -> dict[str, str]:
    """This environment without the settings that would change the gate or locust."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("BACKPRESSURE_", "LOCUST_")) and k != "ENABLE_BACKPRESSURE"}


def _healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=1)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return False


@pytest.fixture
def gated_service(tmp_path: Path) -> Iterator[str]:
    """The sample service behind lockgate, served by uvicorn in a subprocess; yields its URL."""
    port = free_port()
    env = _env()
    env["LOCKGATE_BENCH_APP"] = json.dumps(GATED)
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(BENCHMARKS), "--factory",
           "sample_service:create_app", "--host", HOST, "--port", str(port),
           "--no-access-log", "--log-level", "warning"]
    with (tmp_path / "uvicorn.log").open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: proc.poll() is not None or _healthy(port), timeout=15.0,
                       message="the sample service to answer /health")
            assert proc.poll() is None, (tmp_path / "uvicorn.log").read_text()
            yield f"http://{HOST}:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _run_locust(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "locust", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=40)


def test_overload_run_counts_503_as_shed_not_failed(gated_service: str, tmp_path: Path) -> None:
    # --exit-code-on-error 1 (locust's default, made explicit): any failure or error makes
    # the exit code 1, so exit code 0 means no request was counted as failed.
    result = _run_locust(
        "-f", str(LOCUST_DIR / "locustfile.py"), "--headless", "-u", "100", "-r", "100",
        "-t", "4s", "--host", gated_service, "--csv", str(tmp_path / "smoke"),
        "--only-summary", "--exit-code-on-error", "1", cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output

    with (tmp_path / "smoke_stats.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_type: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_type.setdefault(row["Type"], []).append(row)
    served = sum(int(r["Request Count"]) for r in by_type.get("POST", []))
    shed = by_type.get("SHED", [])
    shed_count = sum(int(r["Request Count"]) for r in shed)
    assert served > 0, output
    assert shed_count > 0, output
    assert all(r["Name"].startswith("503 shed: ") for r in shed), shed
    assert all(int(r["Failure Count"]) == 0 for r in rows), rows
    (aggregated,) = by_type[""]
    assert int(aggregated["Request Count"]) == served + shed_count

    with (tmp_path / "smoke_failures.csv").open(newline="") as f:
        assert list(csv.DictReader(f)) == []


SHAPE_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import spike
shape = spike.SpikeShape()
times = [0.0, 5.0, 9.99, 10.0, 25.0, 39.99, 40.0, 44.99, 45.0, 60.0, 74.99, 75.0, 1e6]
at = {str(t): shape.tick_at(t) for t in times}
shape.get_run_time = lambda: 42.0
print(json.dumps({"at": at, "tick_42": shape.tick(), "peak": spike.PEAK,
                  "baseline": spike.BASELINE}))
"""


@pytest.fixture(scope="module")
def spike_ticks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``SpikeShape.tick_at`` at fixed times and ``tick()`` at a faked 42 s, in a subprocess."""
    result = subprocess.run(
        [sys.executable, "-c", SHAPE_SCRIPT, str(LOCUST_DIR)], env=_env(),
        cwd=tmp_path_factory.mktemp("spike"), capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    ticks: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return ticks


def test_spike_ramps_to_peak_in_ten_seconds(spike_ticks: dict[str, Any]) -> None:
    peak = spike_ticks["peak"]
    assert peak == 500
    users, rate = spike_ticks["at"]["0.0"]
    assert users == peak
    assert rate * 10.0 == pytest.approx(peak)  # 0 -> 500 within the first 10 s
    assert spike_ticks["at"]["9.99"][0] == peak


def test_spike_holds_then_drops_to_baseline(spike_ticks: dict[str, Any]) -> None:
    at = spike_ticks["at"]
    assert [at[t][0] for t in ("10.0", "25.0", "39.99")] == [500] * 3
    baseline = spike_ticks["baseline"]
    assert 0 < baseline < spike_ticks["peak"]
    assert [at[t][0] for t in ("40.0", "44.99", "45.0", "60.0", "74.99")] == [baseline] * 5
    assert all(at[t][1] > 0 for t in at if at[t] is not None)


def test_spike_stops_after_recovery(spike_ticks: dict[str, Any]) -> None:
    assert spike_ticks["at"]["75.0"] is None
    assert spike_ticks["at"]["1000000.0"] is None


def test_spike_tick_reads_the_run_time(spike_ticks: dict[str, Any]) -> None:
    assert spike_ticks["tick_42"] == spike_ticks["at"]["40.0"]


def test_every_locustfile_loads(tmp_path: Path) -> None:
    files = ",".join(str(LOCUST_DIR / name) for name in ("locustfile.py", "mixed.py", "spike.py"))
    result = _run_locust("-f", files, "--list", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for user in ("LoginUser", "MixedUser", "SpikeUser"):
        assert user in result.stdout

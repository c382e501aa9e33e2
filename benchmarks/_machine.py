"""What the benchmarks share about the machine and their processes: what it is, how busy it
is, where a process runs, and ``wrk``. Linux only (``/proc``); no lockgate imports.

Not a benchmark itself: ``overhead.py``, ``redis_fastpath.py`` and ``overload.py`` use it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = [
    "HOST", "Wrk", "busy_seconds", "children_cpu_seconds", "cpu_seconds", "machine",
    "package_version", "pin", "stop", "wait_port", "wait_until_quiet", "wrk", "wrk_version",
]  # fmt: skip

HOST = "127.0.0.1"


def machine(packages: tuple[str, ...]) -> list[tuple[str, str]]:
    """CPU, kernel, Python, load average and the versions of ``packages``."""
    model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return [
        ("cpu", f"{model}, {os.cpu_count()} logical cores"),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("loadavg", " ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("packages", ", ".join(f"{name} {package_version(name)}" for name in packages)),
    ]


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def pin(cpu: str, command: list[str], pinned: bool = True) -> list[str]:
    """``command`` under ``taskset -c cpu`` when asked and available."""
    return ["taskset", "-c", cpu, *command] if pinned and shutil.which("taskset") else command


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU seconds all cores spent outside idle/iowait since boot (``/proc/stat``), to tell a
    run that shared its cores with something else."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children (e.g. ``wrk``)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_until_quiet(limit: float, threshold: float) -> float:
    """Wait (at most ``limit`` s) until the machine uses less than ``threshold`` of a core
    over one second. Returns the last reading (cores)."""
    deadline = time.monotonic() + limit
    while True:
        before = busy_seconds()
        time.sleep(1.0)
        busy = busy_seconds() - before
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    """Return once ``proc`` listens on ``port`` (15 s at most; exits the benchmark if not)."""
    deadline = time.monotonic() + 15.0
    while True:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
            return
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} at start-up")
        if time.monotonic() > deadline:
            stop(proc)
            raise SystemExit(f"{what} did not listen on {HOST}:{port} in 15 s")
        time.sleep(0.02)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass(frozen=True, slots=True)
class Wrk:
    """What one ``wrk`` run printed."""

    rps: float
    requests: int
    non_2xx: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk(url: str, duration: float, connections: int, cpu: str, pinned: bool = True) -> Wrk:
    """One closed-loop ``wrk`` run (one thread) against ``url``, pinned to ``cpu``."""
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", url,
    ]  # fmt: skip
    out = subprocess.run(
        pin(cpu, command, pinned), capture_output=True, text=True, timeout=duration + 30,
        check=True,
    ).stdout  # fmt: skip
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    requests = re.search(r"(\d+) requests in", out)
    if rps is None or requests is None:
        raise SystemExit(f"could not read wrk's output:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    return Wrk(
        rps=float(rps.group(1)),
        requests=int(requests.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        errors=sum(int(n) for n in errors.groups()) if errors else 0,
        p50_ms=_percentile_ms(out, "50%"),
        p99_ms=_percentile_ms(out, "99%"),
    )


def _percentile_ms(out: str, label: str) -> float | None:
    found = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s|m)\b", out, re.M)
    return float(found.group(1)) * _UNITS_MS[found.group(2)] if found else None


def wrk_version() -> str:
    if shutil.which("wrk") is None:
        return "not installed"
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    found = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return found.group(1) if found else "?"

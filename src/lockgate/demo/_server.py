"""The sample service in a uvicorn subprocess on a free loopback port, pinned to one core.

One process per run, killed afterwards, so that one run's backlog cannot leak into the next.
It is not a process manager: no restarts, no graceful drain (the demo does not need one).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO

from ._service import ENV_VAR, HEALTH_PATH, AppConfig

__all__ = ["HOST", "Server", "free_port", "serve", "split_cores", "wait_healthy"]

HOST = "127.0.0.1"
START_TIMEOUT = 15.0


def split_cores() -> tuple[set[int], set[int]] | None:
    """``(server cores, load generator cores)``: one core each when this process may use two
    or more, else ``None`` (both share what there is)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    return ({cores[0]}, {cores[1]}) if len(cores) >= 2 else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A uvicorn subprocess serving ``config``: starting from construction, ``ready()`` before
    use, ``stop()`` (a kill) after. Starting several at once overlaps their start-up."""

    def __init__(self, config: AppConfig) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "uvicorn", "lockgate.demo._service:create_app",
               "--factory", "--host", HOST, "--port", str(self.port), "--http", "httptools",
               "--loop", "uvloop", "--no-access-log", "--log-level", "warning",
               "--timeout-keep-alive", "75"]  # fmt: skip
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("BACKPRESSURE_") and k != "ENABLE_BACKPRESSURE"}
        env[ENV_VAR] = config.to_env()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def ready(self, cores: set[int] | None = None) -> int:
        """Move the server to ``cores``, wait until it answers; its port."""
        if cores:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.proc.pid, cores)
        wait_healthy(self.port, self.proc, self.log)
        return self.port

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


@contextlib.contextmanager
def serve(config: AppConfig, cores: set[int] | None = None) -> Iterator[int]:
    """Start a ``Server`` for ``config`` (on ``cores``), yield its port, kill it on exit."""
    server = Server(config)
    try:
        yield server.ready(cores)
    finally:
        server.stop()


def wait_healthy(
    port: int, proc: subprocess.Popen[bytes], log: IO[bytes], timeout: float = START_TIMEOUT
) -> None:
    """Poll ``GET /health`` until it answers ``200``; raise with the server's output if the
    process exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"server exited:\n{log.read().decode(errors='replace')}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(HOST, port, timeout=1)
            conn.request("GET", HEALTH_PATH)
            if conn.getresponse().status == 200:
                conn.close()
                return
        time.sleep(0.02)
    raise RuntimeError(f"server did not answer {HEALTH_PATH} within {timeout:g} s")

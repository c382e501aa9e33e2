"""Run a real ASGI server (uvicorn or hypercorn) on a loopback port, in a background thread.

``ServerThread(kind, app)`` starts the server on its own event loop in a daemon thread,
waits until the port accepts connections (polling the socket, bounded by a deadline) and
stops it cleanly: uvicorn through ``should_exit``, hypercorn through its
``shutdown_trigger``. Signal handlers are never installed (the server is not on the main
thread), so pytest's own handlers stay in place.

``call(fn)`` / ``acall(fn)`` run ``fn`` *on the server's loop* and return its result: the
gate and the test app are single-loop objects, so tests read ``gate.stats()`` and poke the
app's events there instead of from the test thread. ``wait_until`` / ``await_until`` are
the bounded polls the tests use instead of fixed sleeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

__all__ = [
    "SERVER_KINDS",
    "ServerKind",
    "ServerThread",
    "await_until",
    "free_port",
    "wait_for_port",
    "wait_until",
]

T = TypeVar("T")
ServerKind = Literal["uvicorn", "hypercorn"]
SERVER_KINDS: tuple[ServerKind, ...] = ("uvicorn", "hypercorn")
HOST = "127.0.0.1"
POLL = 0.005


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    host: str, port: int, timeout: float, alive: Callable[[], bool] = lambda: True
) -> None:
    """Poll until ``host:port`` accepts a TCP connection; ``TimeoutError`` after ``timeout``.

    ``alive`` is checked between attempts so a server that died at start-up fails fast.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if not alive():
            raise RuntimeError(f"server on {host}:{port} died before it was ready")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")
        time.sleep(POLL)


def wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, message: str = "condition"
) -> None:
    """Poll ``predicate`` until it is true; ``AssertionError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(POLL)


async def await_until(
    predicate: Callable[[], Awaitable[bool]], within: float = 5.0, message: str = "condition"
) -> None:
    """``wait_until`` for async predicates, without blocking the caller's loop."""
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within} s waiting for {message}")
        await asyncio.sleep(POLL)


class ServerThread:
    """One real server serving ``app`` on ``127.0.0.1:<free port>`` from a daemon thread.

    uvicorn runs with httptools on uvloop (its production setup) and the sans-I/O
    websockets implementation (the legacy one is deprecated in websockets >= 14);
    hypercorn runs on asyncio with h11/wsproto. Both keep logging to the root logger so
    that ``caplog`` sees server-side errors.
    """

    def __init__(
        self,
        kind: ServerKind,
        app: Any,
        *,
        host: str = HOST,
        graceful_timeout: float = 2.0,
    ) -> None:
        self.kind = kind
        self.app = app
        self.host = host
        self.port = free_port(host)
        self.graceful_timeout = graceful_timeout
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"{kind}-{self.port}", daemon=True
        )
        self._stop: Callable[[], None] | None = None
        self._uvicorn: Any = None
        self._stopped = False

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> ServerThread:
        """Start the thread and return once the port accepts connections."""
        self._thread.start()
        wait_for_port(self.host, self.port, timeout, alive=self._thread.is_alive)
        if self._uvicorn is not None:  # it listens before its start-up is over
            server = self._uvicorn
            wait_until(lambda: server.started, timeout, "uvicorn start-up")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to shut down (lifespan shutdown included) and join the thread."""
        if self._stopped:
            return
        self._stopped = True
        if self._stop is not None:
            self._stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"{self.kind} did not stop within {timeout} s")
        if self.error is not None:
            raise RuntimeError(f"{self.kind} failed") from self.error

    def _run(self) -> None:
        try:
            if self.kind == "uvicorn":
                import uvloop

                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    runner.run(self._serve_uvicorn())
            else:
                with asyncio.Runner() as runner:
                    runner.run(self._serve_hypercorn())
        except BaseException as exc:  # incl. uvicorn's sys.exit(1) on a failed bind
            self.error = exc

    async def _serve_uvicorn(self) -> None:
        import uvicorn

        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            http="httptools",
            ws="websockets-sansio",
            lifespan="on",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=int(self.graceful_timeout) or 1,
        )
        server = uvicorn.Server(config)
        self._uvicorn = server
        self.loop = asyncio.get_running_loop()

        def stop() -> None:
            server.should_exit = True  # uvicorn's main loop checks it every 0.1 s

        self._stop = stop
        await server.serve()

    async def _serve_hypercorn(self) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"{self.host}:{self.port}"]
        config.graceful_timeout = self.graceful_timeout
        config.errorlog = logging.getLogger("hypercorn.error")  # propagates to root
        config.accesslog = None
        loop = asyncio.get_running_loop()
        self.loop = loop
        stop_event = asyncio.Event()

        def stop() -> None:
            loop.call_soon_threadsafe(stop_event.set)

        self._stop = stop
        await serve(self.app, config, shutdown_trigger=stop_event.wait, mode="asgi")

    # -- reaching into the server's loop ----------------------------------------------------

    def _submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        if self.loop is None:
            raise RuntimeError("server is not running")

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop)

    def call(self, fn: Callable[[], T], timeout: float = 5.0) -> T:
        """Run ``fn()`` on the server's loop (from any other thread) and return its result."""
        return self._submit(fn).result(timeout)

    async def acall(self, fn: Callable[[], T], within: float = 5.0) -> T:
        """``call`` for coroutines on another loop: awaits instead of blocking it."""
        return await asyncio.wait_for(asyncio.wrap_future(self._submit(fn)), within)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ServerThread {self.kind} {self.base_url}>"

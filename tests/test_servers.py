"""The gate behind real servers: uvicorn (httptools, uvloop) and hypercorn (h11), over loopback.

Each test starts a server in a background thread (``tests/_servers.py``) serving
``Gate(ControlledApp())``. ``ControlledApp`` lets a test hold requests inside the app until it
releases them (``/block/<key>``, ``/stream/<key>``), so the gate's seats and queue are filled
deterministically; the test then watches ``gate.stats()`` (read on the server's own loop) with
bounded polls, never with sleep-and-hope. Real time is used only where it is the subject
(``wait_timeout``, ``X-Queue-Wait-Time``), and then only bounds are asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from lockgate import Gate, GateSettings, GateStats, Priority
from lockgate._types import Message, Receive, Scope, Send
from lockgate._watch import MAX_BUFFERED_BODY
from tests._servers import HOST, SERVER_KINDS, ServerKind, ServerThread, await_until

pytestmark = pytest.mark.server

REJECTION_CODES = {"QUEUE_FULL", "SYSTEM_OVERLOAD", "QUEUE_TIMEOUT"}


@pytest.fixture
def anyio_backend() -> str:
    """The client side runs on asyncio (the ``websockets`` client needs it)."""
    return "asyncio"


# -- the app behind the gate -------------------------------------------------------------------


class ControlledApp:
    """A raw ASGI app whose requests the test can hold and release.

    * ``/block/<key>``: waits until the test calls ``release(key)``, then ``200 <key>``.
    * ``/stream/<key>``: streams ``first`` at once, ``middle`` after ``release(key/1)``, and
      ``last`` (the end of the body) after ``release(key/2)``.
    * ``/boom``: raises. ``/echo``: answers the request body it read. ``/work``: reads the
      body, sleeps 0-4 ms, answers ``200 <body length>``.
    * anything else (``/ok``, ``/health``): ``200 ok``. A websocket echoes text frames.

    ``calls`` counts entries per path; ``lifespan`` records the lifespan events it saw. Every
    method runs on the server's loop (the test reaches it through ``ServerThread.acall``).
    """

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.lifespan: list[str] = []
        self._events: dict[str, asyncio.Event] = {}
        self._open = False
        self._random = random.Random(7)

    def _event(self, key: str) -> asyncio.Event:
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = asyncio.Event()
            if self._open:
                event.set()
        return event

    def release(self, key: str) -> None:
        self._event(key).set()

    def release_all(self) -> None:
        """Let every held and future request through (used before shutting down)."""
        self._open = True
        for event in self._events.values():
            event.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path: str = scope["path"]
        self.calls[path] += 1
        if scope["type"] == "websocket":
            await self._echo_websocket(receive, send)
        elif path.startswith("/block/"):
            key = path.removeprefix("/block/")
            await self._event(key).wait()
            await _respond(send, 200, key.encode())
        elif path.startswith("/stream/"):
            await self._stream(path.removeprefix("/stream/"), send)
        elif path == "/boom":
            raise RuntimeError("boom")
        elif path in ("/echo", "/work"):
            body = await _read_body(receive)
            if body is None:  # the client left
                return
            if path == "/work":
                await asyncio.sleep(self._random.random() * 0.004)
                body = str(len(body)).encode()
            await _respond(send, 200, body)
        else:
            await _respond(send, 200, b"ok")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.lifespan.append("startup")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.lifespan.append("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _stream(self, key: str, send: Send) -> None:
        start: Message = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
        await send(start)
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await self._event(f"{key}/1").wait()
        await send({"type": "http.response.body", "body": b"middle", "more_body": True})
        await self._event(f"{key}/2").wait()
        await send({"type": "http.response.body", "body": b"last", "more_body": False})

    @staticmethod
    async def _echo_websocket(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif message["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": message.get("text")})
            else:  # websocket.disconnect
                return


async def _respond(send: Send, status: int, body: bytes) -> None:
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class ReceiveProbe:
    """Sits between the server and the gate and counts the body bytes the gate has read,
    per path: lets a test see how far the gate read ahead while a request was queued."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.body_read: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]

        async def counting_receive() -> Message:
            message = await receive()
            self.body_read[path] += len(message.get("body", b""))
            return message

        await self.app(scope, counting_receive, send)


# -- fixtures ----------------------------------------------------------------------------------


@dataclass
class Served:
    """One running server with the gate and the app behind it."""

    server: ServerThread
    gate: Gate
    app: ControlledApp
    probe: ReceiveProbe

    @property
    def url(self) -> str:
        return self.server.base_url

    async def stats(self) -> GateStats:
        return await self.server.acall(self.gate.stats)

    async def calls(self, path: str) -> int:
        return await self.server.acall(lambda: self.app.calls[path])

    async def release(self, key: str) -> None:
        await self.server.acall(lambda: self.app.release(key))

    async def wait_stats(self, within: float = 5.0, **expected: int) -> GateStats:
        """Poll ``gate.stats()`` until every named field has the expected value."""
        last: list[GateStats] = []

        async def matches() -> bool:
            last[:] = [await self.stats()]
            return all(getattr(last[0], k) == v for k, v in expected.items())

        try:
            await await_until(matches, within, f"stats {expected}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last stats: {last[0] if last else None}") from None
        return last[0]


ServeFactory = Callable[..., Served]


@pytest.fixture(params=SERVER_KINDS)
def serve(request: pytest.FixtureRequest) -> Iterator[ServeFactory]:
    """``serve(**settings)`` starts the parametrised server with ``Gate(app, settings)``.

    Every server started is shut down in the finalizer, after its held requests are let go.
    """
    kind: ServerKind = request.param
    started: list[Served] = []

    def factory(**settings: Any) -> Served:
        app = ControlledApp()
        gate = Gate(app, GateSettings(**settings))
        probe = ReceiveProbe(gate)
        served = Served(ServerThread(kind, probe), gate, app, probe)
        served.server.start()
        started.append(served)
        return served

    yield factory
    errors = []
    for served in started:
        try:
            if served.server.loop is not None and served.server.loop.is_running():
                served.server.call(served.app.release_all)
            served.server.stop()
        except Exception as exc:  # stop the others first, then fail
            errors.append(exc)
    if errors:
        raise errors[0]


@contextlib.asynccontextmanager
async def client(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served.url, timeout=10.0, trust_env=False) as c:
        yield c


def assert_rejection(response: httpx.Response, code: str) -> None:
    """A well-formed rejection: 503, JSON, integer ``Retry-After`` equal to the body's."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    retry_after = response.headers["retry-after"]
    assert re.fullmatch(r"[1-9][0-9]*", retry_after), retry_after
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["error"]["retry_after"] == int(retry_after)
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


async def fill(served: Served, c: httpx.AsyncClient, *, active: int, queued: int) -> list[
    asyncio.Task[httpx.Response]
]:
    """Hold ``active`` seats and ``queued`` waiters with ``/block/hold-<i>`` requests."""
    tasks = []
    for i in range(active + queued):
        tasks.append(asyncio.create_task(c.get(f"/block/hold-{i}")))
        await served.wait_stats(active=min(i + 1, active), queued=max(0, i + 1 - active))
    return tasks


async def drain(served: Served, tasks: list[asyncio.Task[httpx.Response]]) -> None:
    """Release the ``fill`` requests one by one; each must end ``200``."""
    for i, task in enumerate(tasks):
        await served.release(f"hold-{i}")
        response = await asyncio.wait_for(task, 5)
        assert response.status_code == 200
        assert response.text == f"hold-{i}"
    await served.wait_stats(active=0, queued=0)


# -- rejections --------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("code", "settings", "queued"),
    [
        ("QUEUE_FULL", {"queue_capacity": 1}, 1),
        ("SYSTEM_OVERLOAD", {"queue_capacity": 5, "reject_threshold": 2}, 1),
        ("QUEUE_TIMEOUT", {"queue_capacity": 5, "wait_timeout": 0.2}, 0),
    ],
    ids=["QUEUE_FULL", "SYSTEM_OVERLOAD", "QUEUE_TIMEOUT"],
)
async def test_rejection_is_a_complete_503(
    serve: ServeFactory, code: str, settings: dict[str, Any], queued: int
) -> None:
    """Each rejection the core produces reaches the client as a well-formed 503.

    QUEUE_FULL: the queue is at capacity. SYSTEM_OVERLOAD: active + queued reached the
    threshold while the queue still has room. QUEUE_TIMEOUT: the wait outlived wait_timeout.
    """
    settings = {"max_concurrent": 1, "wait_timeout": 30.0, "target_wait": None, **settings}
    served = serve(**settings)
    async with client(served) as c:
        held = await fill(served, c, active=1, queued=queued)
        started = time.monotonic()
        response = await c.get("/ok")
        elapsed = time.monotonic() - started
        assert_rejection(response, code)
        if code == "QUEUE_TIMEOUT":
            assert 0.15 <= elapsed < 5.0, elapsed
        else:
            assert elapsed < 5.0, elapsed  # answered at once, not after wait_timeout (30 s)
        stats = await served.wait_stats(active=1, queued=queued)
        assert stats.lanes[Priority.NORMAL].rejected == {code: 1}
        assert await served.calls("/ok") == 0
        await drain(served, held)


@pytest.mark.anyio
async def test_queue_wait_header_only_after_a_real_wait(serve: ServeFactory) -> None:
    """``X-Queue-Wait-Time`` (3 dp) marks a request that waited > 100 ms, not an immediate one."""
    served = serve(max_concurrent=1, queue_capacity=4, wait_timeout=30.0, target_wait=None)
    async with client(served) as c:
        first = asyncio.create_task(c.get("/block/a"))
        await served.wait_stats(active=1, queued=0)
        second = asyncio.create_task(c.get("/block/b"))
        await served.wait_stats(active=1, queued=1)
        await asyncio.sleep(0.25)  # the stimulus: let the second request wait > 100 ms
        await served.release("a")
        immediate = await first
        assert immediate.status_code == 200
        assert "x-queue-wait-time" not in immediate.headers
        await served.wait_stats(active=1, queued=0)
        await served.release("b")
        waited = await second
        assert waited.status_code == 200
        value = waited.headers["x-queue-wait-time"]
        assert re.fullmatch(r"[0-9]+\.[0-9]{3}", value), value
        assert 0.249 <= float(value) < 10.0


# -- client disconnects, exceptions, streaming ------------------------------------------------


async def _open_raw(port: int, path: str, body: bytes = b"") -> asyncio.StreamWriter:
    """Send a request on a fresh connection and return its writer (the reader is dropped)."""
    _, writer = await asyncio.open_connection(HOST, port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    return writer


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


@pytest.mark.anyio
async def test_client_disconnect_while_queued_leaves_no_trace(serve: ServeFactory) -> None:
    """A queued client that hangs up leaves the queue, never reaches the app, takes no seat."""
    served = serve(max_concurrent=1, queue_capacity=4, wait_timeout=30.0, target_wait=None)
    async with client(served) as c:
        holder = asyncio.create_task(c.get("/block/holder"))
        await served.wait_stats(active=1, queued=0)
        writer = await _open_raw(served.server.port, "/block/gone")
        await served.wait_stats(active=1, queued=1)
        await _close(writer)
        stats = await served.wait_stats(active=1, queued=0)
        assert stats.rejected == 0
        await served.release("gone")  # had it been admitted after all, it could finish now
        await served.release("holder")
        assert (await holder).status_code == 200
        await served.wait_stats(active=0, queued=0)
        assert await served.calls("/block/gone") == 0
        # the seat is really free: the next request is admitted at once
        after = asyncio.create_task(c.get("/block/after"))
        stats = await served.wait_stats(active=1, queued=0)
        assert stats.admitted == 2
        await served.release("after")
        assert (await after).status_code == 200
        await served.wait_stats(active=0, queued=0)


@pytest.mark.anyio
@pytest.mark.parametrize("serve", ["uvicorn"], indirect=True)
async def test_queued_expect_100_continue_gets_no_continue_before_its_503(
    serve: ServeFactory,
) -> None:
    """A queued ``Expect: 100-continue`` request is not told to send its body while it waits:
    the gate does not read it (which makes the server send ``100 Continue``), so a request
    that ends in a 503 costs the client no upload. (Hypercorn answers ``100 Continue`` on
    its own as soon as the headers arrive, before any app sees the request: uvicorn only.)"""
    served = serve(max_concurrent=1, queue_capacity=4, wait_timeout=0.3, target_wait=None)
    async with client(served) as c:
        holder = asyncio.create_task(c.get("/block/holder"))
        await served.wait_stats(active=1, queued=0)
        reader, writer = await asyncio.open_connection(HOST, served.server.port)
        writer.write(
            f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n"
            "Expect: 100-continue\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10.0)
        assert status_line.startswith(b"HTTP/1.1 503"), status_line
        await _close(writer)
        assert await served.calls("/echo") == 0
        await served.release("holder")
        assert (await holder).status_code == 200
        await served.wait_stats(active=0, queued=0)


@pytest.mark.anyio
@pytest.mark.parametrize("size", [16 << 10, 3 << 20], ids=["16KiB", "3MiB"])
async def test_queued_request_body_is_replayed_to_the_app(serve: ServeFactory, size: int) -> None:
    """The body the gate read while the request waited reaches the app intact, in order
    (3 MiB: past the gate's 64 KiB read-ahead, the rest is read by the app itself)."""
    served = serve(max_concurrent=1, queue_capacity=4, wait_timeout=30.0, target_wait=None)
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    async with client(served) as c:
        holder = asyncio.create_task(c.get("/block/holder"))
        await served.wait_stats(active=1, queued=0)
        echo = asyncio.create_task(c.post("/echo", content=payload))
        await served.wait_stats(active=1, queued=1)
        read_ahead = min(size, MAX_BUFFERED_BODY + 1)  # the gate reads this much, then stops

        async def gate_read_ahead() -> bool:
            return await served.server.acall(lambda: served.probe.body_read["/echo"]) >= read_ahead

        await await_until(gate_read_ahead, 5.0, f"the gate to read {read_ahead} bytes ahead")
        await served.release("holder")
        assert (await holder).status_code == 200
        response = await echo
        assert response.status_code == 200
        assert response.content == payload
        await served.wait_stats(active=0, queued=0)


@pytest.mark.anyio
async def test_app_exception_releases_the_seat(serve: ServeFactory) -> None:
    """An exception in the app becomes the server's 500 and gives the seat back."""
    served = serve(max_concurrent=1, queue_capacity=4, wait_timeout=30.0, target_wait=None)
    async with client(served) as c:
        response = await c.get("/boom")
        assert response.status_code == 500
        await served.wait_stats(active=0, queued=0, admitted=1)
        after = asyncio.create_task(c.get("/block/after"))
        await served.wait_stats(active=1, queued=0, admitted=2)
        await served.release("after")
        assert (await after).status_code == 200


@pytest.mark.anyio
async def test_streaming_response_holds_the_seat_until_the_last_chunk(
    serve: ServeFactory,
) -> None:
    """The seat is held while the body streams; the next request gets it after the last chunk."""
    served = serve(max_concurrent=1, queue_capacity=4, wait_timeout=30.0, target_wait=None)
    async with client(served) as c, c.stream("GET", "/stream/s") as streaming:
        assert streaming.status_code == 200
        chunks = streaming.aiter_raw()
        received = b""
        while received != b"first":
            received += await asyncio.wait_for(anext(chunks), 5)
            assert b"first".startswith(received)
        await served.wait_stats(active=1, queued=0)
        second = asyncio.create_task(c.get("/ok"))
        await served.wait_stats(active=1, queued=1)
        await served.release("s/1")
        while received != b"firstmiddle":
            received += await asyncio.wait_for(anext(chunks), 5)
        stats = await served.stats()
        assert (stats.active, stats.queued) == (1, 1)
        assert not second.done()
        assert await served.calls("/ok") == 0
        await served.release("s/2")
        async for chunk in chunks:
            received += chunk
        assert received == b"firstmiddlelast"
        response = await asyncio.wait_for(second, 5)
        assert response.status_code == 200
        await served.wait_stats(active=0, queued=0, admitted=2)


# -- pass-through: lifespan, websocket, bypass paths ------------------------------------------


@pytest.mark.anyio
async def test_lifespan_passes_through(serve: ServeFactory) -> None:
    """The app's lifespan startup runs before serving and its shutdown when the server stops."""
    served = serve()
    assert await served.server.acall(lambda: list(served.app.lifespan)) == ["startup"]
    async with client(served) as c:
        assert (await c.get("/ok")).status_code == 200
    served.server.stop()
    assert served.app.lifespan == ["startup", "shutdown"]  # the server's loop is gone now
    assert served.gate.stats().admitted == 1


@pytest.mark.anyio
async def test_websocket_passes_through_while_http_is_full(serve: ServeFactory) -> None:
    """A websocket echo works while every HTTP seat and the whole queue are taken."""
    served = serve(max_concurrent=1, queue_capacity=1, wait_timeout=30.0, target_wait=None)
    async with client(served) as c:
        held = await fill(served, c, active=1, queued=1)
        assert_rejection(await c.get("/ok"), "QUEUE_FULL")
        async with ws_connect(f"{served.server.ws_url}/ws", proxy=None) as ws:
            for text in ("ping", "pong"):
                await ws.send(text)
                assert await asyncio.wait_for(ws.recv(), 5) == text
        assert await served.calls("/ws") == 1
        stats = await served.wait_stats(active=1, queued=1)
        assert stats.admitted == 1
        await drain(served, held)


@pytest.mark.anyio
async def test_bypass_paths_answer_when_everything_is_full(serve: ServeFactory) -> None:
    """``/health`` (and below it) reach the app, and the status path is served by the gate,
    while every seat and the whole queue are taken."""
    served = serve(max_concurrent=1, queue_capacity=1, wait_timeout=30.0, target_wait=None)
    async with client(served) as c:
        held = await fill(served, c, active=1, queued=1)
        assert_rejection(await c.get("/ok"), "QUEUE_FULL")
        for path in ("/health", "/health/ready"):
            response = await c.get(path)
            assert response.status_code == 200
            assert response.text == "ok"
            assert await served.calls(path) == 1
        status = await c.get("/metrics/backpressure")
        assert status.status_code == 200
        data = status.json()["data"]
        assert (data["current_requests"], data["queued_requests"]) == (1, 1)
        assert await served.calls("/metrics/backpressure") == 0
        await served.wait_stats(active=1, queued=1)
        await drain(served, held)


# -- load --------------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def _parse(data: bytes) -> RawResponse:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"incomplete response: {data!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert int(headers["content-length"]) == len(body), data
    return RawResponse(int(status_line.split()[1]), headers, body)


def _check_load_response(response: RawResponse, sent: int) -> str:
    """``"ok"`` for the app's 200, the code for a well-formed 503; anything else fails."""
    if response.status == 200:
        assert response.body == str(sent).encode(), response
        return "ok"
    assert response.status == 503, response
    assert response.headers["content-type"] == "application/json"
    body = json.loads(response.body)
    assert body["success"] is False
    code: str = body["error"]["code"]
    assert code in REJECTION_CODES, body
    assert re.fullmatch(r"[1-9][0-9]*", response.headers["retry-after"])
    assert body["error"]["retry_after"] == int(response.headers["retry-after"])
    return code


@pytest.mark.anyio
async def test_load_with_random_disconnects_leaks_nothing(
    serve: ServeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """~2000 requests from 48 concurrent clients, a fifth of them hanging up early.

    Afterwards nothing is active or queued, all four seats are really free, and every
    answer was the app's 200 or a well-formed 503; the servers logged no error.
    """
    caplog.set_level(logging.ERROR)
    served = serve(max_concurrent=4, queue_capacity=8, wait_timeout=0.5)
    port = served.server.port
    total, clients = 2000, 48
    rng = random.Random(2024)
    plan = [
        (rng.choice([0, 0, 100, 5000]), rng.random() < 0.2, rng.random() * 0.01)
        for _ in range(total)
    ]
    outcomes: Counter[str] = Counter()
    next_index = iter(range(total))

    async def one(size: int, abandon: bool, delay: float) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(
                f"POST /work HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Length: {size}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + b"x" * size
            )
            await writer.drain()
            if abandon:
                await asyncio.sleep(delay)
                outcomes["abandoned"] += 1
                return
            data = await asyncio.wait_for(reader.read(), 10)
        finally:
            await _close(writer)
        outcomes[_check_load_response(_parse(data), size)] += 1

    async def worker() -> None:
        for index in next_index:
            await one(*plan[index])

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(clients))), 40)
    elapsed = time.monotonic() - started

    assert sum(outcomes.values()) == total, outcomes
    assert outcomes["ok"] > 0 and outcomes["abandoned"] > 0, outcomes
    assert sum(outcomes[code] for code in REJECTION_CODES) > 0, outcomes
    stats = await served.wait_stats(active=0, queued=0)
    assert stats.admitted >= outcomes["ok"]
    assert await served.calls("/work") <= stats.admitted
    # every seat is really free again: four held requests are all admitted at once
    async with client(served) as c:
        held = [asyncio.create_task(c.get(f"/block/hold-{i}")) for i in range(4)]
        await served.wait_stats(active=4, queued=0)
        await drain(served, held)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    print(f"{served.server.kind}: {dict(outcomes)} in {elapsed:.1f} s")

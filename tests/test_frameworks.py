"""Real framework apps (Starlette, FastAPI, Quart, Django) behind ``lockgate.Gate``.

Each framework gets the same small app: ``/hold/{name}`` waits until the test releases
``name``, ``/fast`` and ``/health`` answer at once, ``POST /echo`` echoes a JSON body,
``POST /login`` is the high-priority route, ``/boom`` raises, ``/stream`` streams two chunks
with a hold in between. Requests go through ``httpx.ASGITransport`` on asyncio; time is a
``FakeClock``, so nothing here waits on the wall clock (the only wall-clock bounds are
generous guards that turn a hang into a failure).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from quart import Quart, abort
from quart import request as quart_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from lockgate import Gate, GateSettings, Priority, Rule, RuleClassifier
from lockgate._types import ASGIApp
from lockgate._watch import MAX_BUFFERED_BODY
from lockgate.testing import FakeClock

pytestmark = pytest.mark.anyio

GUARD_SECONDS = 10.0
"""Wall-clock guard per test: only ever reached when something hangs (then it fails)."""
WAIT_TIMEOUT = 2.0
STATUS_KEYS = {
    "current_requests",
    "queued_requests",
    "rejected_requests",
    "avg_wait_time_ms",
    "utilization_percent",
    "status",
}


@pytest.fixture
def anyio_backend() -> str:
    """The frameworks under test (Quart, Django) are asyncio-only."""
    return "asyncio"


class Boom(Exception):
    """What the Starlette, FastAPI and Quart ``/boom`` routes raise."""


class Probe:
    """Shared by a test and its app: which handlers ran, and which ones are held."""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self._events: dict[str, anyio.Event] = {}
        self._all_open = False

    def _event(self, name: str) -> anyio.Event:
        if name not in self._events:
            self._events[name] = anyio.Event()
        return self._events[name]

    async def hold(self, name: str) -> None:
        """Record ``name`` and wait until the test releases it."""
        self.entered.append(name)
        if not self._all_open:
            await self._event(name).wait()

    def release(self, name: str) -> None:
        self._event(name).set()

    def release_all(self) -> None:
        self._all_open = True
        for event in self._events.values():
            event.set()


Wrap = Callable[[ASGIApp], Gate]


# -- the apps ------------------------------------------------------------------------------


def _echo_fields(payload: Any) -> tuple[str, str] | None:
    if not isinstance(payload, dict):
        return None
    name, data = payload.get("name"), payload.get("data")
    if not isinstance(name, str) or not isinstance(data, str):
        return None
    return name, data


@asynccontextmanager
async def lifespan_hooks(probe: Probe, app: object) -> AsyncIterator[None]:
    probe.entered.append("startup")
    yield
    probe.entered.append("shutdown")


def build_starlette(probe: Probe, wrap: Wrap) -> ASGIApp:
    async def hold(request: Request) -> Response:
        name = request.path_params["name"]
        await probe.hold(name)
        return JSONResponse({"held": name})

    async def fast(request: Request) -> Response:
        probe.entered.append("fast")
        return JSONResponse({"fast": True})

    async def health(request: Request) -> Response:
        probe.entered.append("health")
        return JSONResponse({"status": "ok"})

    async def echo(request: Request) -> Response:
        fields = _echo_fields(await request.json())
        if fields is None:
            return PlainTextResponse("expected {name, data}", status_code=400)
        probe.entered.append(f"echo:{fields[0]}")
        return JSONResponse({"name": fields[0], "data": fields[1]})

    async def login(request: Request) -> Response:
        user = (await request.json())["user"]
        probe.entered.append(f"login:{user}")
        return JSONResponse({"user": user, "token": "t0k3n"})

    async def boom(request: Request) -> Response:
        probe.entered.append("boom")
        raise Boom("the handler failed")

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first,"
            await probe.hold("stream")  # the first chunk is already sent
            yield b"second"

        return StreamingResponse(chunks(), media_type="text/plain")

    app = Starlette(
        routes=[
            Route("/hold/{name}", hold),
            Route("/fast", fast),
            Route("/health", health),
            Route("/echo", echo, methods=["POST"]),
            Route("/login", login, methods=["POST"]),
            Route("/boom", boom),
            Route("/stream", stream),
        ],
        lifespan=functools.partial(lifespan_hooks, probe),
    )
    return wrap(app)


class EchoBody(BaseModel):
    name: str
    data: str


class LoginBody(BaseModel):
    user: str


class LoginReply(BaseModel):
    user: str
    token: str


def build_fastapi(probe: Probe, wrap: Wrap) -> ASGIApp:
    app = FastAPI(lifespan=functools.partial(lifespan_hooks, probe))

    @app.get("/hold/{name}")
    async def hold(name: str) -> dict[str, str]:
        await probe.hold(name)
        return {"held": name}

    @app.get("/fast")
    async def fast() -> dict[str, bool]:
        probe.entered.append("fast")
        return {"fast": True}

    @app.get("/health")
    async def health() -> dict[str, str]:
        probe.entered.append("health")
        return {"status": "ok"}

    @app.post("/echo")
    async def echo(body: EchoBody) -> EchoBody:
        probe.entered.append(f"echo:{body.name}")
        return body

    @app.post("/login")
    async def login(body: LoginBody) -> LoginReply:
        probe.entered.append(f"login:{body.user}")
        return LoginReply(user=body.user, token="t0k3n")

    @app.get("/boom")
    async def boom() -> dict[str, str]:
        probe.entered.append("boom")
        raise Boom("the path operation failed")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first,"
            await probe.hold("stream")
            yield b"second"

        return StreamingResponse(chunks(), media_type="text/plain")

    return wrap(app)


def build_quart(probe: Probe, wrap: Wrap) -> ASGIApp:
    app = Quart(__name__)

    @app.before_serving
    async def startup() -> None:
        probe.entered.append("startup")

    @app.after_serving
    async def shutdown() -> None:
        probe.entered.append("shutdown")

    @app.get("/hold/<name>")
    async def hold(name: str) -> dict[str, str]:
        await probe.hold(name)
        return {"held": name}

    @app.get("/fast")
    async def fast() -> dict[str, bool]:
        probe.entered.append("fast")
        return {"fast": True}

    @app.get("/health")
    async def health() -> dict[str, str]:
        probe.entered.append("health")
        return {"status": "ok"}

    @app.post("/echo")
    async def echo() -> dict[str, str]:
        fields = _echo_fields(await quart_request.get_json())
        if fields is None:
            abort(400)
        probe.entered.append(f"echo:{fields[0]}")
        return {"name": fields[0], "data": fields[1]}

    @app.post("/login")
    async def login() -> dict[str, str]:
        user = (await quart_request.get_json())["user"]
        probe.entered.append(f"login:{user}")
        return {"user": user, "token": "t0k3n"}

    @app.get("/boom")
    async def boom() -> str:
        probe.entered.append("boom")
        raise Boom("the view failed")

    @app.get("/stream")
    async def stream() -> tuple[AsyncIterator[bytes], int, dict[str, str]]:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first,"
            await probe.hold("stream")
            yield b"second"

        return chunks(), 200, {"content-type": "text/plain"}

    # Quart's documented way to add ASGI middleware: wrap ``asgi_app``, serve ``app``.
    gate: Any = wrap(cast(ASGIApp, app.asgi_app))
    app.asgi_app = gate  # type: ignore[method-assign]
    return cast(ASGIApp, app)


DJANGO_SETTINGS = f"{__package__}.django_project.settings"


@functools.cache
def django_asgi_application() -> ASGIApp:
    """Configure Django once per process and build its ASGI handler (shared by the tests)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", DJANGO_SETTINGS)
    from django.conf import settings
    from django.core.asgi import get_asgi_application

    handler: ASGIApp = get_asgi_application()
    if settings.SETTINGS_MODULE != DJANGO_SETTINGS:
        raise RuntimeError(f"Django is configured by {settings.SETTINGS_MODULE!r} already")
    return handler


def build_django(probe: Probe, wrap: Wrap) -> ASGIApp:
    handler = django_asgi_application()
    from .django_project import views

    views.use(probe)
    return wrap(handler)


@dataclass(frozen=True)
class Framework:
    name: str
    build: Callable[[Probe, Wrap], ASGIApp]
    on_error: Literal["raises", "500"]
    """What the framework does with a handler's exception: answer 500 itself, or send its
    500 and re-raise to the server (Starlette's ``ServerErrorMiddleware``)."""
    lifespan: bool = True
    """Whether it speaks the ASGI lifespan protocol (Django does not)."""


FRAMEWORKS = [
    Framework("starlette", build_starlette, "raises"),
    Framework("fastapi", build_fastapi, "raises"),
    Framework("quart", build_quart, "500"),
    Framework("django", build_django, "500", lifespan=False),
]


@pytest.fixture(params=FRAMEWORKS, ids=[f.name for f in FRAMEWORKS])
def framework(request: pytest.FixtureRequest) -> Framework:
    return cast(Framework, request.param)


# -- driving them --------------------------------------------------------------------------


class Call:
    """One request running in the background."""

    def __init__(self, client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> None:
        self._request = functools.partial(client.request, method, url, **kwargs)
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self.finished = anyio.Event()

    async def run(self) -> None:
        try:
            self.response = await self._request()
        except Exception as exc:
            self.error = exc
        finally:
            self.finished.set()

    async def result(self) -> httpx.Response:
        await self.finished.wait()
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return self.response


class Harness:
    def __init__(
        self,
        framework: Framework,
        settings: GateSettings,
        classifier: RuleClassifier | None,
    ) -> None:
        self.clock = FakeClock()
        self.probe = Probe()
        self.settings = settings
        self.tg: anyio.abc.TaskGroup | None = None
        gates: list[Gate] = []

        def wrap(inner: ASGIApp) -> Gate:
            gates.append(Gate(inner, settings, classifier=classifier, clock=self.clock))
            return gates[-1]

        app = framework.build(self.probe, wrap)
        assert len(gates) == 1
        self.gate = gates[0]
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )

    def start(self, method: str, url: str, **kwargs: Any) -> Call:
        call = Call(self.client, method, url, **kwargs)
        assert self.tg is not None
        self.tg.start_soon(call.run)
        return call

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        """Run the event loop (checkpoint by checkpoint) until ``predicate()`` holds.

        Django hops to worker threads, so no fixed number of checkpoints is enough; the
        bound is a generous wall-clock guard, and a condition already met returns at once.
        """
        with anyio.move_on_after(GUARD_SECONDS / 2):
            while not predicate():
                await anyio.lowlevel.checkpoint()
        assert predicate(), f"never happened: {what}"

    async def hold(self, name: str) -> Call:
        """A request that enters ``/hold/{name}`` and stays there until released."""
        call = self.start("GET", f"/hold/{name}")
        await self.until(lambda: name in self.probe.entered, f"{name} entered the handler")
        return call

    async def fill_seats(self) -> list[Call]:
        calls = [await self.hold(f"seat{i}") for i in range(self.settings.max_concurrent)]
        assert self.gate.stats().active == self.settings.max_concurrent
        return calls

    async def queue(self, method: str, url: str, **kwargs: Any) -> Call:
        """A request that the gate must queue (it fails if the gate does anything else)."""
        before = self.gate.stats().queued
        call = self.start(method, url, **kwargs)
        await self.until(
            lambda: self.gate.stats().queued == before + 1 or call.finished.is_set(),
            f"{method} {url} reached the gate",
        )
        assert not call.finished.is_set(), f"{url} was answered instead of queued"
        return call

    async def refused(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """A request the gate must answer at once (it fails if the gate queues it)."""
        before = self.gate.stats().queued
        call = self.start(method, url, **kwargs)
        await self.until(
            lambda: call.finished.is_set() or self.gate.stats().queued > before,
            f"{method} {url} was answered",
        )
        assert call.finished.is_set(), f"{url} was queued instead of answered at once"
        return await call.result()


@asynccontextmanager
async def harness(
    framework: Framework, settings: GateSettings, classifier: RuleClassifier | None = None
) -> AsyncIterator[Harness]:
    """A gated app and a client; on exit every held request is released and has finished."""
    failure: Exception | None = None
    with anyio.fail_after(GUARD_SECONDS):
        h = Harness(framework, settings, classifier)
        async with h.client, anyio.create_task_group() as tg:
            h.tg = tg
            try:
                yield h
            except Exception as exc:  # let the held requests finish (not be cancelled) first
                failure = exc
            finally:
                h.probe.release_all()
    if failure is not None:
        raise failure


def assert_rejection(response: httpx.Response, code: str, wait_timeout: float) -> int:
    """The gate's complete structured 503; returns its Retry-After."""
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    retry = int(response.headers["retry-after"])
    # Every rejection here comes before any hold time was measured: the predicted drain
    # time is then one wait_timeout, plus up to 50 % jitter.
    assert math.ceil(wait_timeout) <= retry <= math.ceil(wait_timeout * 1.5)
    body = response.json()
    assert body["success"] is False
    assert set(body["error"]) == {"code", "message", "retry_after"}
    assert body["error"]["code"] == code
    assert body["error"]["retry_after"] == retry
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return retry


def small_settings(**overrides: Any) -> GateSettings:
    values: dict[str, Any] = {
        "max_concurrent": 2,
        "queue_capacity": 1,
        "wait_timeout": WAIT_TIMEOUT,
        **overrides,
    }
    return GateSettings(**values)


# -- the scenarios -------------------------------------------------------------------------


async def test_queues_then_rejects_then_drains(framework: Framework) -> None:
    """Seats full → the next request waits, the one after gets QUEUE_FULL; a release runs
    the waiter (with its queue wait in a header) and the gate ends empty."""
    async with harness(framework, small_settings()) as h:
        seat0, seat1 = await h.fill_seats()
        waiting = await h.queue("GET", "/fast")
        stats = h.gate.stats()
        assert (stats.active, stats.queued) == (2, 1)
        assert stats.lanes[Priority.NORMAL].queued == 1

        rejected = await h.refused("GET", "/fast")
        assert_rejection(rejected, "QUEUE_FULL", WAIT_TIMEOUT)
        assert "fast" not in h.probe.entered  # neither the waiter nor the rejected one ran

        h.clock.advance(0.25)
        h.probe.release("seat0")
        first = await seat0.result()
        assert first.status_code == 200 and first.json() == {"held": "seat0"}
        assert "x-queue-wait-time" not in first.headers  # admitted without waiting
        admitted = await waiting.result()
        assert admitted.status_code == 200 and admitted.json() == {"fast": True}
        assert admitted.headers["x-queue-wait-time"] == "0.250"
        assert h.probe.entered.count("fast") == 1

        h.probe.release("seat1")
        assert (await seat1.result()).status_code == 200

    stats = h.gate.stats()
    assert (stats.active, stats.queued, stats.admitted, stats.rejected) == (0, 0, 3, 1)
    assert stats.lanes[Priority.NORMAL].rejected == {"QUEUE_FULL": 1}


async def test_queue_timeout_on_fake_clock(framework: Framework) -> None:
    """A waiter gets QUEUE_TIMEOUT when wait_timeout passes on the injected clock, not
    before; its handler never runs."""
    async with harness(framework, small_settings()) as h:
        await h.fill_seats()
        waiting = await h.queue("GET", "/fast")

        h.clock.advance(WAIT_TIMEOUT * 0.75)
        await anyio.wait_all_tasks_blocked()
        assert not waiting.finished.is_set() and h.gate.stats().queued == 1

        h.clock.advance(WAIT_TIMEOUT * 0.25)
        assert_rejection(await waiting.result(), "QUEUE_TIMEOUT", WAIT_TIMEOUT)
        stats = h.gate.stats()
        assert (stats.active, stats.queued) == (2, 0)
        assert stats.lanes[Priority.NORMAL].rejected == {"QUEUE_TIMEOUT": 1}

    assert "fast" not in h.probe.entered
    assert (h.gate.stats().active, h.gate.stats().queued) == (0, 0)


async def expect_failure(framework: Framework, call: Call) -> None:
    """The framework's own handling of ``/boom``: its 500, or the exception re-raised."""
    await call.finished.wait()
    if framework.on_error == "raises":
        assert isinstance(call.error, Boom), call.error
    else:
        assert call.error is None
        assert call.response is not None and call.response.status_code == 500


async def test_exception_route_releases_the_seat(framework: Framework) -> None:
    """A handler that raises (admitted at once, or after queueing) gives its seat back,
    whatever the framework makes of the exception; the gate does not swallow it."""
    async with harness(framework, small_settings(max_concurrent=1)) as h:
        failing = h.start("GET", "/boom")
        await expect_failure(framework, failing)
        assert h.probe.entered == ["boom"]
        assert h.gate.stats().active == 0

        holder = await h.hold("seat")
        queued_failing = await h.queue("GET", "/boom")
        h.probe.release("seat")
        assert (await holder.result()).status_code == 200
        await expect_failure(framework, queued_failing)
        assert h.probe.entered == ["boom", "seat", "boom"]
        assert (h.gate.stats().active, h.gate.stats().queued) == (0, 0)

        after = await h.client.get("/fast")  # the seat really is free again
        assert after.status_code == 200

    assert h.gate.stats().admitted == 4


CHUNK = 16 * 1024


def json_payload(name: str, size: int) -> dict[str, str]:
    """A JSON object whose ``data`` is ``size`` characters that differ chunk to chunk."""
    data = "".join(f"{i:07d}," for i in range(size // 8 + 1))[:size]
    return {"name": name, "data": data}


class ChunkedBody:
    """A request body sent in chunks, counting how many the server side has pulled."""

    def __init__(self, body: bytes, chunk: int) -> None:
        self.chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
        self.pulled = 0
        self.exhausted = False

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.pulled += 1
            yield chunk
        self.exhausted = True


@pytest.mark.parametrize(
    ("size", "chunk"),
    [(40, 7), (MAX_BUFFERED_BODY + MAX_BUFFERED_BODY // 2, CHUNK)],
    ids=["small-chunks", "past-read-ahead"],
)
async def test_queued_post_body_reaches_framework_intact(
    framework: Framework, size: int, chunk: int
) -> None:
    """The body the gate read while the request waited is replayed to the framework in
    order, followed by whatever the gate left unread (past its read-ahead bound)."""
    payload = json_payload("queued", size)
    encoded = json.dumps(payload).encode()
    body = ChunkedBody(encoded, chunk)
    assert len(body.chunks) > 2

    async with harness(framework, small_settings(max_concurrent=1)) as h:
        holder = await h.hold("seat")
        echo = await h.queue(
            "POST", "/echo", content=body.stream(), headers={"content-type": "application/json"}
        )
        await anyio.wait_all_tasks_blocked()  # let the gate read ahead as far as it will
        read_ahead = MAX_BUFFERED_BODY // chunk + 1  # it stops once past the bound
        if len(body.chunks) <= read_ahead:
            assert body.exhausted  # the whole body was read by the gate while queued
        else:
            assert body.pulled == read_ahead and not body.exhausted
        assert not any(e.startswith("echo:") for e in h.probe.entered)

        h.probe.release("seat")
        await holder.result()
        response = await echo.result()
        assert response.status_code == 200
        assert response.json() == payload
        assert body.exhausted
        assert h.probe.entered.count("echo:queued") == 1

    assert (h.gate.stats().active, h.gate.stats().queued) == (0, 0)


async def test_high_priority_waiter_is_admitted_first(framework: Framework) -> None:
    """A NORMAL waiter queued before a HIGH one (``/login``): the released seat goes to
    the HIGH one."""
    classifier = RuleClassifier([Rule(prefix="/login", priority=Priority.HIGH)])
    async with harness(framework, small_settings(queue_capacity=2), classifier) as h:
        seat0, seat1 = await h.fill_seats()
        normal = await h.queue("GET", "/hold/normal")
        login = await h.queue("POST", "/login", json={"user": "alice"})
        lanes = h.gate.stats().lanes
        assert (lanes[Priority.NORMAL].queued, lanes[Priority.HIGH].queued) == (1, 1)

        h.probe.release("seat0")
        await seat0.result()
        await h.until(lambda: len(h.probe.entered) > 2, "a waiter was admitted")
        assert h.probe.entered[2] == "login:alice"
        reply = await login.result()
        assert reply.status_code == 200
        assert reply.json() == {"user": "alice", "token": "t0k3n"}

        # The login's seat then goes to the NORMAL waiter.
        await h.until(lambda: "normal" in h.probe.entered, "the normal waiter ran")
        assert h.probe.entered == ["seat0", "seat1", "login:alice", "normal"]
        h.probe.release("normal")
        h.probe.release("seat1")
        assert (await normal.result()).status_code == 200
        await seat1.result()

    lanes = h.gate.stats().lanes
    assert (lanes[Priority.HIGH].admitted, lanes[Priority.NORMAL].admitted) == (1, 3)


async def test_high_arrival_displaces_queued_normal_when_queue_full(
    framework: Framework,
) -> None:
    """Queue full of NORMAL: a HIGH arrival takes the place of the youngest NORMAL waiter,
    which gets QUEUE_FULL without its handler running."""
    classifier = RuleClassifier([Rule(prefix="/login", priority=Priority.HIGH)])
    async with harness(framework, small_settings(), classifier) as h:
        await h.fill_seats()
        normal = h.start("GET", "/fast")
        await h.until(lambda: h.gate.stats().queued == 1, "the normal request queued")
        login = h.start("POST", "/login", json={"user": "bob"})
        await h.until(lambda: normal.finished.is_set() or login.finished.is_set(), "an answer")
        assert not login.finished.is_set()
        assert_rejection(await normal.result(), "QUEUE_FULL", WAIT_TIMEOUT)
        assert h.gate.stats().lanes[Priority.HIGH].queued == 1

        h.probe.release("seat0")
        assert (await login.result()).json() == {"user": "bob", "token": "t0k3n"}

    assert "fast" not in h.probe.entered
    lanes = h.gate.stats().lanes
    assert lanes[Priority.NORMAL].rejected == {"QUEUE_FULL": 1}
    assert lanes[Priority.HIGH].rejected == {}


async def test_status_endpoint_served_by_the_gate(framework: Framework) -> None:
    """``/metrics/backpressure`` answers the documented JSON from the gate, idle and full,
    although the framework app has no such route."""
    async with harness(framework, small_settings()) as h:
        idle = await h.client.get("/metrics/backpressure")
        assert idle.status_code == 200
        assert idle.headers["content-type"] == "application/json"
        body = idle.json()
        assert body["success"] is True and STATUS_KEYS <= set(body["data"])
        assert body["data"]["status"] == "healthy"
        assert body["data"]["current_requests"] == body["data"]["queued_requests"] == 0

        await h.fill_seats()
        await h.queue("GET", "/fast")
        assert (await h.refused("GET", "/fast")).status_code == 503  # one rejection
        data = (await h.client.get("/metrics/backpressure")).json()["data"]
        assert {k: data[k] for k in STATUS_KEYS} == {
            "current_requests": 2,
            "queued_requests": 1,
            "rejected_requests": 1,
            "avg_wait_time_ms": 0.0,
            "utilization_percent": 100.0,
            "status": "critical",
        }
        assert h.probe.entered == ["seat0", "seat1"]


async def test_bypass_path_reaches_framework_while_full(framework: Framework) -> None:
    """``/health`` (a bypass path) is served by the framework while seats and queue are
    full and other requests are turned away."""
    async with harness(framework, small_settings()) as h:
        await h.fill_seats()
        await h.queue("GET", "/fast")
        assert (await h.refused("GET", "/fast")).status_code == 503
        health = await h.client.get("/health")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert h.probe.entered == ["seat0", "seat1", "health"]
        assert (h.gate.stats().active, h.gate.stats().queued) == (2, 1)


async def test_streaming_response_holds_the_seat_until_sent(framework: Framework) -> None:
    """A streamed response keeps its seat until the last chunk is sent, not just until the
    handler returned the response object."""
    async with harness(framework, small_settings(max_concurrent=1)) as h:
        streaming = h.start("GET", "/stream")
        await h.until(lambda: "stream" in h.probe.entered, "the first chunk was sent")
        assert h.gate.stats().active == 1
        waiting = await h.queue("GET", "/fast")  # the seat is still taken

        h.probe.release("stream")
        response = await streaming.result()
        assert response.status_code == 200 and response.content == b"first,second"
        assert (await waiting.result()).status_code == 200

    assert (h.gate.stats().active, h.gate.stats().queued) == (0, 0)


async def test_lifespan_passes_through(framework: Framework) -> None:
    """Startup and shutdown reach the framework through the gate (for Quart the gate sits
    inside ``app``), or the framework's own refusal of lifespan does (Django)."""
    probe = Probe()
    app = framework.build(probe, lambda inner: Gate(inner, small_settings()))
    sent: list[str] = []
    started = anyio.Event()
    inbox = ["lifespan.startup", "lifespan.shutdown"]

    async def receive() -> dict[str, Any]:
        if inbox[0] == "lifespan.shutdown":
            await started.wait()
        return {"type": inbox.pop(0)}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            assert probe.entered == ["startup"]
            started.set()

    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    with anyio.fail_after(GUARD_SECONDS):
        if framework.lifespan:
            await app(scope, receive, send)
            assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
            assert probe.entered == ["startup", "shutdown"]
        else:
            with pytest.raises(ValueError, match="lifespan"):
                await app(scope, receive, send)
            assert sent == [] and probe.entered == []


async def test_low_priority_route_runs_on_an_idle_gate(framework: Framework) -> None:
    """A LOW route (``/batch``-style) on an idle gate with few seats runs at once: its
    nominal share rounds to 0 seats, and DESIGN §3 says such a lane runs on borrowed ones.

    Regression: ``lane_seats`` gave such a lane (finite borrow_limit) Max = 0: it never ran."""
    classifier = RuleClassifier([Rule(path="/fast", priority=Priority.LOW)])
    async with harness(framework, small_settings(), classifier) as h:
        assert h.gate.scheduler.seats[Priority.LOW].nominal == 0  # the case under test
        call = h.start("GET", "/fast")
        await h.until(lambda: call.finished.is_set() or h.gate.stats().queued == 1, "an admission")
        queued_while_idle = h.gate.stats().queued
        h.clock.advance(WAIT_TIMEOUT)  # settles a wrongly queued request instead of hanging
        response = await call.result()
        assert queued_while_idle == 0, f"LOW waited on an idle gate: {response.json()}"
        assert response.status_code == 200 and h.probe.entered == ["fast"]

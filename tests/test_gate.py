"""Gate driven message by message: admission, rejections, disconnects, streaming, pass-through."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import AsyncIterator

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from lockgate import Gate, GateSettings, Priority, PriorityScheduler, Rule, RuleClassifier
from lockgate._types import Message, Receive, Scope, Send
from lockgate.testing import FakeClock, make_scope, ok_app

from ._asgi import Exchange

pytestmark = pytest.mark.anyio


class HoldApp:
    """An app whose ``/hold...`` requests wait until the test opens their gate (by path).

    It reads the whole body first, records every message it received, and echoes the body.
    """

    def __init__(self) -> None:
        self.opened: dict[str, anyio.Event] = {}
        self.calls: list[str] = []
        self.received: dict[str, list[Message]] = {}
        self.running = 0

    def open(self, path: str) -> None:
        self.opened.setdefault(path, anyio.Event()).set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        self.calls.append(path)
        self.running += 1
        try:
            got = self.received.setdefault(path, [])
            body = b""
            while True:
                message = await receive()
                got.append(message)
                body += message.get("body", b"")
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
            if path.startswith("/hold"):
                await self.opened.setdefault(path, anyio.Event()).wait()
            if path.startswith("/boom"):
                raise RuntimeError("app failure")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body or b"ok"})
        finally:
            self.running -= 1


def gate_for(app: HoldApp, clock: FakeClock | None = None, **settings: object) -> Gate:
    """A gate on a fake clock: time moves only when a test says so."""
    clock = clock if clock is not None else FakeClock()
    return Gate(app, GateSettings(**settings), clock=clock)  # type: ignore[arg-type]


async def start(tg: anyio.abc.TaskGroup, gate: Gate, path: str) -> Exchange:
    """Start one request (its body complete) and let it settle."""
    ex = Exchange(gate, path=path)
    ex.push_body()
    tg.start_soon(ex.run)
    await wait_all_tasks_blocked()
    return ex


def assert_rejection(ex: Exchange, code: str) -> int:
    """A complete structured 503; returns its Retry-After."""
    assert ex.status == 503
    headers = ex.headers
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(ex.body)
    retry = int(headers["retry-after"])
    assert retry >= 1
    body = ex.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["error"]["retry_after"] == retry
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return retry


async def test_fast_path_admits_and_releases() -> None:
    """An uncontended request runs at once and gives its seat back."""
    app = HoldApp()
    gate = gate_for(app, max_concurrent=1)
    async with anyio.create_task_group() as tg:
        ex = await start(tg, gate, "/fast")
    assert ex.status == 200 and ex.body == b"ok"
    stats = gate.stats()
    assert (stats.active, stats.queued, stats.admitted) == (0, 0, 1)
    assert "x-queue-wait-time" not in ex.headers


async def test_queue_full_and_queue_admission() -> None:
    """Seats full + queue full → QUEUE_FULL at once; the queued request runs after a release."""
    app = HoldApp()
    gate = gate_for(app, max_concurrent=1, queue_capacity=1)
    async with anyio.create_task_group() as tg:
        holder = await start(tg, gate, "/hold1")
        queued = await start(tg, gate, "/hold2")
        full = await start(tg, gate, "/x")
        assert_rejection(full, "QUEUE_FULL")
        assert (gate.stats().active, gate.stats().queued) == (1, 1)
        assert app.calls == ["/hold1"]
        app.open("/hold1")
        app.open("/hold2")
    assert holder.status == queued.status == 200
    stats = gate.stats()
    assert (stats.active, stats.queued, stats.rejected) == (0, 0, 1)


async def test_system_overload_when_threshold_hit_before_queue_is_full() -> None:
    """reject_threshold below seats + queue → SYSTEM_OVERLOAD while the queue has room."""
    app = HoldApp()
    gate = gate_for(app, max_concurrent=1, queue_capacity=5, reject_threshold=2)
    async with anyio.create_task_group() as tg:
        await start(tg, gate, "/hold1")
        await start(tg, gate, "/hold2")
        over = await start(tg, gate, "/x")
        assert_rejection(over, "SYSTEM_OVERLOAD")
        app.open("/hold1")
        app.open("/hold2")
    assert gate.stats().lanes[Priority.NORMAL].rejected == {"SYSTEM_OVERLOAD": 1}


async def test_queue_timeout_with_injected_clock() -> None:
    """A waiter is answered QUEUE_TIMEOUT when wait_timeout passes, and not a moment before."""
    app, clock = HoldApp(), FakeClock()
    gate = gate_for(app, clock, max_concurrent=1, wait_timeout=2.0)
    async with anyio.create_task_group() as tg:
        await start(tg, gate, "/hold1")
        waiter = await start(tg, gate, "/x")
        clock.advance(1.999)
        await wait_all_tasks_blocked()
        assert waiter.status is None and gate.stats().queued == 1
        clock.advance(0.001)
        await wait_all_tasks_blocked()
        assert_rejection(waiter, "QUEUE_TIMEOUT")
        assert gate.stats().queued == 0
        app.open("/hold1")
    assert app.calls == ["/hold1"]
    assert gate.stats().active == 0


@pytest.mark.parametrize("queue", [20, 200])
async def test_retry_after_follows_the_drain_time(queue: int) -> None:
    """Retry-After is the queue's drain time by Little's law (waiters x mean service time /
    seats) plus at most 50 % jitter: it grows with the queue, it is not a constant."""
    clock = FakeClock()
    opened = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/hold":
            await opened.wait()
        clock.advance(0.1)  # every request holds its seat 0.1 s
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gate = Gate(app, GateSettings(max_concurrent=1, queue_capacity=queue), clock=clock)
    for _ in range(8):  # two timed samples (one in four immediate admissions is timed)
        ex = Exchange(gate, path="/fast")
        ex.push_body()
        await ex.run()
    async with anyio.create_task_group() as tg:
        for _ in range(1 + queue):  # one seat, then a full queue
            ex = Exchange(gate, path="/hold")
            ex.push_body()
            tg.start_soon(ex.run)
        await wait_all_tasks_blocked()
        assert gate.stats().queued == queue
        rejected = await start(tg, gate, "/x")
        opened.set()
    retry = assert_rejection(rejected, "QUEUE_FULL")
    drain = (queue + 1) * 0.1 / 1
    assert math.ceil(drain) <= retry <= math.ceil(drain * 1.5)


async def test_disconnect_while_queued_leaves_queue_and_takes_no_seat() -> None:
    """A client that leaves while queued is dropped at once; the app never sees it."""
    app = HoldApp()
    gate = gate_for(app, max_concurrent=1)
    async with anyio.create_task_group() as tg:
        await start(tg, gate, "/hold1")
        leaving = Exchange(gate, path="/hold2")
        leaving.push_body(b"part-1", more=True)
        tg.start_soon(leaving.run)
        await wait_all_tasks_blocked()
        assert gate.stats().queued == 1
        leaving.disconnect()
        await wait_all_tasks_blocked()
        assert leaving.done and leaving.error is None
        assert leaving.sent == []
        assert (gate.stats().active, gate.stats().queued) == (1, 0)
        app.open("/hold1")
    assert app.calls == ["/hold1"]
    assert gate.stats().active == 0


async def test_body_read_while_queued_is_replayed_in_order_without_invented_messages() -> None:
    """Body chunks read while waiting reach the app in order; nothing is added or lost."""
    app = HoldApp()
    gate = gate_for(app, max_concurrent=1)
    async with anyio.create_task_group() as tg:
        await start(tg, gate, "/hold1")
        ex = Exchange(gate, path="/echo", method="POST")
        tg.start_soon(ex.run)
        chunks = [b"alpha-", b"beta-", b"gamma"]
        for i, chunk in enumerate(chunks):
            ex.push_body(chunk, more=i < len(chunks) - 1)
            await wait_all_tasks_blocked()
        assert gate.stats().queued == 1 and app.calls == ["/hold1"]
        app.open("/hold1")
    assert ex.status == 200
    assert ex.body == b"alpha-beta-gamma"
    assert app.received["/echo"] == [
        {"type": "http.request", "body": c, "more_body": i < 2} for i, c in enumerate(chunks)
    ]


async def test_app_exception_releases_the_seat_on_both_paths() -> None:
    """An exception from the app propagates and the seat comes back, fast path or queued."""
    app = HoldApp()
    gate = gate_for(app, max_concurrent=1)
    async with anyio.create_task_group() as tg:
        boom_fast = await start(tg, gate, "/boom-fast")
        await start(tg, gate, "/hold1")
        boom_queued = await start(tg, gate, "/boom-queued")
        app.open("/hold1")
    assert isinstance(boom_fast.error, RuntimeError)
    assert isinstance(boom_queued.error, RuntimeError)
    assert (gate.stats().active, gate.stats().queued) == (0, 0)


async def test_admissions_with_and_without_a_permit_all_give_their_seat_back() -> None:
    """Three admissions in four take no ``Permit`` (the gate's hot path), the fourth is timed.
    Over three rounds of four requests that fail, are cancelled or succeed, every seat comes
    back, and the timed ones still teach the service time."""
    clock = FakeClock()
    app = HoldApp()
    gate = gate_for(app, clock, max_concurrent=8)
    for i in range(3):
        async with anyio.create_task_group() as outer:
            boom = await start(outer, gate, "/boom")
            async with anyio.create_task_group() as tg:
                await start(tg, gate, f"/hold-cancelled-{i}")
                tg.cancel_scope.cancel()
            fast = await start(outer, gate, "/ok")
            held = await start(outer, gate, f"/hold-ok-{i}")  # the fourth: timed
            assert gate.stats().active == 1
            clock.advance(0.05)
            app.open(f"/hold-ok-{i}")
        assert isinstance(boom.error, RuntimeError)
        assert held.status == 200 and fast.status == 200
        assert (gate.stats().active, gate.stats().queued) == (0, 0)
    assert gate.stats().admitted == 12
    assert gate.scheduler.discipline.mean_service > 0.0  # type: ignore[attr-defined]


async def test_disconnect_in_the_instant_of_the_grant_passes_the_seat_on() -> None:
    """The client leaves and its seat is granted in the same instant (the disconnect is seen
    first): the seat goes to the next waiter, the leaver gets nothing, nothing leaks."""
    app = HoldApp()
    gate = gate_for(app, max_concurrent=1)
    held = gate.scheduler.try_acquire(Priority.NORMAL)
    assert held is not None
    async with anyio.create_task_group() as tg:
        leaving = Exchange(gate, path="/gone")
        leaving.push_body(b"part-1", more=True)
        tg.start_soon(leaving.run)
        await wait_all_tasks_blocked()
        after = await start(tg, gate, "/after")
        assert gate.stats().queued == 2
        leaving.disconnect()  # the watcher wakes first ...
        held.release()  # ... and in the same instant the seat is granted to the leaver
        await wait_all_tasks_blocked()
        assert leaving.done and leaving.error is None and leaving.sent == []
    assert after.status == 200
    assert app.calls == ["/after"]
    assert (gate.stats().active, gate.stats().queued) == (0, 0)


async def test_an_outer_cancellation_is_not_swallowed_by_a_disconnect() -> None:
    """A queued request whose client left *and* whose task is cancelled from outside (server
    shutdown) still ends cancelled: the gate only absorbs its own cancellation."""
    app = HoldApp()
    gate = gate_for(app, max_concurrent=1)
    held = gate.scheduler.try_acquire(Priority.NORMAL)
    assert held is not None
    leaving = Exchange(gate, path="/gone")
    leaving.push_body()
    finished = False
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            nonlocal finished
            await leaving.run()
            finished = True  # not reached: the outer cancellation must propagate

        tg.start_soon(run)
        await wait_all_tasks_blocked()
        assert gate.stats().queued == 1
        leaving.disconnect()
        tg.cancel_scope.cancel()
    assert not finished
    held.release()
    assert (gate.stats().active, gate.stats().queued) == (0, 0)


async def test_cancellation_releases_seat_and_leaves_queue() -> None:
    """Cancelling a running request frees its seat; cancelling a queued one removes it."""
    app = HoldApp()
    gate = gate_for(app, max_concurrent=1)
    async with anyio.create_task_group() as outer:
        async with anyio.create_task_group() as tg:
            await start(tg, gate, "/hold-running")
            await start(tg, gate, "/hold-queued")
            assert (gate.stats().active, gate.stats().queued) == (1, 1)
            tg.cancel_scope.cancel()
        survivor = await start(outer, gate, "/fast")
    assert (gate.stats().active, gate.stats().queued) == (0, 0)
    assert survivor.status == 200
    assert app.calls == ["/hold-running", "/fast"]


async def test_streaming_response_holds_the_seat_until_the_last_chunk() -> None:
    """The permit spans the whole streamed body, not just the response start."""
    last_chunk = anyio.Event()

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await last_chunk.wait()
        await send({"type": "http.response.body", "body": b"last"})

    gate = Gate(streaming, GateSettings(max_concurrent=1), clock=FakeClock())
    async with anyio.create_task_group() as tg:
        stream = Exchange(gate, path="/stream")
        tg.start_soon(stream.run)
        await wait_all_tasks_blocked()
        assert stream.body == b"first" and gate.stats().active == 1
        second = await start(tg, gate, "/other")
        assert gate.stats().queued == 1 and second.status is None
        last_chunk.set()
    assert stream.body == b"firstlast"
    assert gate.stats().active == 0


async def test_queue_wait_header_only_after_100ms() -> None:
    """X-Queue-Wait-Time (seconds, 3 dp) on requests that waited over 100 ms only."""
    app, clock = HoldApp(), FakeClock()
    gate = gate_for(app, clock, max_concurrent=1)
    async with anyio.create_task_group() as tg:
        await start(tg, gate, "/hold1")
        short = await start(tg, gate, "/fast-short")
        clock.advance(0.05)
        app.open("/hold1")
    assert short.status == 200 and "x-queue-wait-time" not in short.headers
    async with anyio.create_task_group() as tg:
        await start(tg, gate, "/hold2")
        long = await start(tg, gate, "/fast-long")
        clock.advance(0.25)
        app.open("/hold2")
    assert long.headers["x-queue-wait-time"] == "0.250"


async def test_higher_lane_is_served_first() -> None:
    """A HIGH waiter that arrived after a NORMAL one gets the next seat."""
    app = HoldApp()
    classifier = RuleClassifier([Rule(prefix="/login", priority=Priority.HIGH)])
    gate = Gate(app, GateSettings(max_concurrent=1), classifier=classifier, clock=FakeClock())
    async with anyio.create_task_group() as tg:
        await start(tg, gate, "/hold1")
        await start(tg, gate, "/normal")
        await start(tg, gate, "/login")
        app.open("/hold1")
    assert app.calls == ["/hold1", "/login", "/normal"]


async def test_bypass_paths_and_sub_paths_skip_admission() -> None:
    """/health and /health/ready run even with every seat and the queue taken; /healthz not."""
    app = HoldApp()
    gate = gate_for(app, max_concurrent=1, queue_capacity=0)
    async with anyio.create_task_group() as tg:
        await start(tg, gate, "/hold1")
        health = await start(tg, gate, "/health")
        ready = await start(tg, gate, "/health/ready")
        lookalike = await start(tg, gate, "/healthz")
        app.open("/hold1")
    assert health.status == ready.status == 200
    assert_rejection(lookalike, "QUEUE_FULL")


async def test_status_endpoint_reports_utilisation_levels() -> None:
    """The JSON status: the original plan's fields; warning at >= 70 %, critical at >= 90 %."""
    app = HoldApp()
    gate = gate_for(app, max_concurrent=10)

    async def status() -> dict[str, object]:
        ex = Exchange(gate, path="/metrics/backpressure")
        await ex.run()
        assert ex.status == 200 and ex.headers["content-type"] == "application/json"
        data = ex.json()
        assert data["success"] is True
        return dict(data["data"])

    async with anyio.create_task_group() as tg:
        levels = []
        for i in range(9):
            await start(tg, gate, f"/hold{i}")
            levels.append(await status())
        app.open("/x")
        for i in range(9):
            app.open(f"/hold{i}")
    assert [d["current_requests"] for d in levels] == list(range(1, 10))
    assert [d["status"] for d in levels] == ["healthy"] * 6 + ["warning"] * 2 + ["critical"]
    # 7 of the 9 seats critical's idle guaranteed seat leaves to the others
    assert levels[6]["utilization_percent"] == 77.8
    assert levels[8]["utilization_percent"] == 100.0
    assert {"queued_requests", "rejected_requests", "avg_wait_time_ms"} <= set(levels[0])


async def test_kill_switch_passes_everything_through() -> None:
    """enabled=False: no admission, no status endpoint, the app sees every request."""
    app = HoldApp()
    gate = gate_for(app, enabled=False, max_concurrent=1, queue_capacity=0)
    async with anyio.create_task_group() as tg:
        for i in range(3):
            await start(tg, gate, f"/hold{i}")
        status = await start(tg, gate, "/metrics/backpressure")
        for i in range(3):
            app.open(f"/hold{i}")
    assert app.calls == ["/hold0", "/hold1", "/hold2", "/metrics/backpressure"]
    assert status.status == 200 and gate.stats().admitted == 0


@pytest.mark.parametrize("scope_type", ["lifespan", "websocket"])
async def test_lifespan_and_websocket_pass_through(scope_type: str) -> None:
    """Non-HTTP scopes reach the app untouched, even with every seat taken."""
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        if scope["type"] == "http":
            await anyio.sleep_forever()

    gate = Gate(app, GateSettings(max_concurrent=1, queue_capacity=0))
    async with anyio.create_task_group() as tg:
        await start(tg, gate, "/busy")
        scope = make_scope(type=scope_type)
        await gate(scope, Exchange(app).receive, Exchange(app).send)
        tg.cancel_scope.cancel()
    assert seen[-1] is scope


async def test_failing_classifier_falls_back_to_the_default_lane() -> None:
    """A classifier that raises never turns into a 500: the request takes the NORMAL lane."""

    class Broken:
        def classify(self, scope: Scope) -> Priority:
            raise KeyError("oops")

    gate = Gate(ok_app, classifier=Broken())
    ex = Exchange(gate, path="/x")
    ex.push_body()
    await ex.run()
    assert ex.status == 200
    assert gate.stats().lanes[Priority.NORMAL].admitted == 1


async def test_chaos_10000_requests_leave_nothing_behind(anyio_backend: str) -> None:
    """10,000 requests with random disconnects, app errors, cancellations and timeouts:
    afterwards zero seats in use, an empty queue, and every request accounted for.

    Regression: it found a seat leaked when a request was cancelled at the exit of the
    disconnect-watching task group, just after its seat had been granted."""
    import random

    rng = random.Random(1234)
    clock = FakeClock()
    in_app = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal in_app
        in_app += 1
        try:
            for _ in range(rng.randrange(4)):
                await anyio.lowlevel.checkpoint()
            if scope["path"] == "/boom":
                raise RuntimeError("boom")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await anyio.lowlevel.checkpoint()
            await send({"type": "http.response.body", "body": b"ok"})
        finally:
            in_app -= 1

    classifier = RuleClassifier(
        [Rule(prefix="/h", priority=Priority.HIGH), Rule(prefix="/l", priority=Priority.LOW)]
    )
    gate = Gate(
        app, GateSettings(max_concurrent=6, queue_capacity=20), classifier=classifier, clock=clock
    )
    outcomes: dict[str, int] = {}

    async def one(path: str, action: str) -> None:
        ex = Exchange(gate, path=path)
        ex.push_body(b"x", more=True)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(ex.run)
                for _ in range(rng.randrange(3)):
                    await anyio.lowlevel.checkpoint()
                if action == "disconnect":
                    ex.disconnect()
                elif action == "cancel":
                    scope.cancel()
                else:
                    ex.push_body(b"y")
        kind = "cancelled" if scope.cancelled_caught else str(ex.status)
        outcomes[kind] = outcomes.get(kind, 0) + 1

    paths = ["/h", "/n", "/l", "/boom"]
    actions = ["ok"] * 6 + ["disconnect", "cancel"]
    for _ in range(10_000 // 100):
        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(one, rng.choice(paths), rng.choice(actions))
            clock.advance(rng.choice([0.0, 0.0, 1.0, 3.0]))
    stats = gate.stats()
    assert (stats.active, stats.queued, in_app) == (0, 0, 0)
    assert sum(outcomes.values()) == 10_000
    assert outcomes.get("503", 0) > 0 and outcomes.get("200", 0) > 0
    assert json.loads(json.dumps(stats.as_status_json()))["data"]["current_requests"] == 0



@pytest.mark.parametrize(
    ("headers", "budget"),
    [
        ([(b"x-request-timeout", b"0.25")], 0.25),
        ([(b"X-Request-Timeout", b"2")], 2.0),
        ([(b"grpc-timeout", b"100m")], 0.1),
        ([(b"grpc-timeout", b"3S")], 3.0),
        ([(b"grpc-timeout", b"1H")], 3600.0),
        ([(b"x-request-timeout", b"abc"), (b"grpc-timeout", b"5S")], 5.0),
        ([(b"x-request-timeout", b"-1")], None),
        ([(b"x-request-timeout", b"nan")], None),
        ([(b"x-request-timeout", b"inf")], None),
        ([(b"x-request-timeout", b"\xff\xfe")], None),
        ([(b"grpc-timeout", b"123456789S")], None),
        ([(b"grpc-timeout", b"10x")], None),
        ([(b"grpc-timeout", b"S")], None),
        ([], None),
    ],
)
def test_request_budget_parsing(headers: list[tuple[bytes, bytes]], budget: float | None) -> None:
    """Deadline headers parse to seconds; malformed ones are ignored, never an error."""
    from lockgate._gate import request_budget

    assert request_budget(make_scope(headers=headers)) == budget


async def test_deadline_unreachable_only_when_deadline_headers_enabled() -> None:
    """A queued request whose deadline cannot be met is refused at once, if configured."""
    for enabled, expected in [(True, 503), (False, None)]:
        app = HoldApp()
        gate = gate_for(app, max_concurrent=1, deadline_headers=enabled)
        assert isinstance(gate.scheduler, PriorityScheduler)
        gate.scheduler.discipline.record_service(Priority.NORMAL, 2.0)  # a 2 s endpoint
        async with anyio.create_task_group() as tg:
            await start(tg, gate, "/hold")
            ex = Exchange(gate, path="/x", headers=[(b"x-request-timeout", b"0.5")])
            ex.push_body()
            tg.start_soon(ex.run)
            await wait_all_tasks_blocked()
            # The predicted wait (one 2 s service) alone exceeds the 0.5 s budget.
            assert ex.status == expected
            if expected:
                assert_rejection(ex, "DEADLINE_UNREACHABLE")
            app.open("/hold")
            tg.cancel_scope.cancel()


async def limit_after(algorithm: str, later_status: int) -> int:
    """The limit after 100 requests answered 200 then 200 answered ``later_status``."""
    clock = FakeClock()
    statuses = [200] * 100 + [later_status] * 200

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        clock.advance(0.01)
        status = statuses.pop(0)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gate = Gate(app, GateSettings(max_concurrent=50, limit=algorithm), clock=clock)
    assert gate.scheduler.adaptive and gate.stats().limit == 50
    while statuses:
        ex = Exchange(gate, path="/x")
        ex.push_body()
        await ex.run()
    return gate.stats().limit


@pytest.mark.parametrize("algorithm", ["aimd", "gradient2"])
async def test_adaptive_limit_backs_off_on_the_apps_overload_answers(algorithm: str) -> None:
    """With an adaptive limit, the app's own 503s are drops: after a healthy start the limit
    falls below max_concurrent; the same traffic answered 200 leaves it where it was."""
    assert await limit_after(algorithm, 200) == 50
    assert await limit_after(algorithm, 503) < 50


def test_unknown_limit_name_is_a_validation_error() -> None:
    """settings.limit must name a built-in or registered limit algorithm."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"unknown limit 'vegas'; built in: fixed, aimd"):
        GateSettings(limit="vegas")


async def test_lifespan_starts_and_closes_a_backend_that_needs_it() -> None:
    """A backend with start()/aclose() (Redis) is started before the app's start-up and
    closed after the app's shutdown; the app's lifespan messages pass unchanged."""
    events: list[str] = []

    class Started(PriorityScheduler):
        async def start(self) -> None:
            events.append("backend.start")

        async def aclose(self) -> None:
            events.append("backend.close")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            events.append(f"app:{message['type']}")
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    gate = Gate(app, backend=Started(4))
    ex = Exchange(gate, make_scope(type="lifespan"))
    ex.push({"type": "lifespan.startup"})
    ex.push({"type": "lifespan.shutdown"})
    await ex.run()
    assert events == [
        "backend.start", "app:lifespan.startup", "app:lifespan.shutdown", "backend.close",
    ]
    sent = [m["type"] for m in ex.sent]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_a_backend_built_with_other_settings_is_an_error_not_a_second_configuration() -> None:
    """``Gate(app, GateSettings(max_concurrent=80), backend=RedisBackend(url))`` used to run
    the backend at its own default of 100 seats while the gate said 80. (Building a
    ``RedisBackend`` does not connect: no server needed here.)"""
    from lockgate.backends.redis import RedisBackend

    eighty = GateSettings(max_concurrent=80)
    with pytest.raises(ValueError, match=r"\(max_concurrent 100 != 80\): pass the same"):
        Gate(ok_app, eighty, backend=RedisBackend("redis://127.0.0.1:1/0"))
    backend = RedisBackend("redis://127.0.0.1:1/0", settings=eighty)
    assert Gate(ok_app, backend=backend).settings is eighty  # the gate takes the backend's
    # the gate's own fields (status, bypass, trust) may differ from the backend's
    mine = GateSettings(max_concurrent=80, status_path=None, bypass_paths=())
    assert Gate(ok_app, mine, backend=backend).settings is mine


async def test_a_queued_upload_admitted_mid_body_loses_nothing() -> None:
    """Review finding: on admission the gate cancelled its watcher's ``receive()`` in flight.
    httpx's ASGITransport (an async generator under the hood) then failed on asyncio
    ("anext(): asynchronous generator is already running") and truncated the body on
    trio. The read in flight is now handed over to the app's first ``receive()``."""
    import httpx

    release, admitted = anyio.Event(), anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        if scope["path"] == "/hold":
            await release.wait()
        else:
            admitted.set()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % len(body)})

    gate = Gate(app, GateSettings(max_concurrent=1, target_wait=None))

    async def upload() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await wait_all_tasks_blocked()  # the watcher read the first chunk and is reading
        assert gate.stats().queued == 1  # (running this generator) for the next one
        release.set()
        await admitted.wait()  # the seat went to the upload with that read in flight
        for _ in range(9):
            yield b"x" * 1000

    transport = httpx.ASGITransport(app=gate)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(client.post, "/hold", content=b"y"))
                await wait_all_tasks_blocked()
                assert gate.stats().active == 1
                response = await client.post("/upload", content=upload())
    assert (response.status_code, response.text) == (200, "10000")
    assert (gate.stats().active, gate.stats().queued) == (0, 0)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # futures of an asyncio loop
async def test_a_message_the_server_hands_over_in_the_admitting_tick_reaches_the_app() -> None:
    """Review finding: a server whose ``receive()`` hands each message over through a
    future (a legitimate ASGI server) lost the chunk that arrived in the same loop tick as
    the seat: the watcher's read was cancelled after the server had completed it."""
    import asyncio

    class FutureServer:
        def __init__(self) -> None:
            self.pending: list[Message] = []
            self.waiter: asyncio.Future[Message] | None = None

        def deliver(self, message: Message) -> None:
            if self.waiter is not None and not self.waiter.done():
                waiter, self.waiter = self.waiter, None
                waiter.set_result(message)  # handed over: the server forgets it
            else:
                self.pending.append(message)

        async def receive(self) -> Message:
            if self.pending:
                return self.pending.pop(0)
            self.waiter = asyncio.get_running_loop().create_future()
            return await self.waiter

    release, got = anyio.Event(), list[bytes]()
    upload = FutureServer()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/hold":
            await release.wait()
            # chunk2 reaches the server in the tick in which this seat goes to the upload
            asyncio.get_running_loop().call_soon(
                upload.deliver, {"type": "http.request", "body": b"2", "more_body": True}
            )
        else:
            while True:
                message = await receive()
                got.append(message["body"])
                if not message["more_body"]:
                    break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def drop(message: Message) -> None:
        pass

    gate = Gate(app, GateSettings(max_concurrent=1, target_wait=None))
    hold = FutureServer()
    hold.deliver({"type": "http.request", "body": b"", "more_body": False})
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(gate, make_scope(path="/hold"), hold.receive, drop)
            await wait_all_tasks_blocked()
            tg.start_soon(gate, make_scope(path="/up", method="POST"), upload.receive, drop)
            await wait_all_tasks_blocked()
            upload.deliver({"type": "http.request", "body": b"1", "more_body": True})
            await wait_all_tasks_blocked()
            assert gate.stats().queued == 1 and upload.waiter is not None
            release.set()
            await wait_all_tasks_blocked()
            upload.deliver({"type": "http.request", "body": b"3", "more_body": False})
    assert got == [b"1", b"2", b"3"]
    assert (gate.stats().active, gate.stats().queued) == (0, 0)


async def test_a_queued_request_leaves_no_cycle_for_the_garbage_collector() -> None:
    """Measured: a watcher that kept its cancelled task made a cycle per queued request
    (task -> CancelledError -> traceback -> frame -> watcher -> task), and so did a refusal
    kept in a local (exception -> traceback -> frame -> exception). The cyclic collector
    then ran 8x as often, and its pauses cost T2's high lane 0.1-0.2x of its p99 and 0.5 %
    of goodput. Admitted, refused and timed-out waiters must all be freed by reference
    counting alone: nothing of lockgate's may be left for the collector."""
    import gc

    clock = FakeClock()
    app = HoldApp()
    gate = gate_for(app, clock, max_concurrent=1, queue_capacity=3, wait_timeout=1.0)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        async with anyio.create_task_group() as tg:
            holder = await start(tg, gate, "/hold0")
            admitted = [await start(tg, gate, f"/hold{i}") for i in (1, 2, 3)]
            full = await start(tg, gate, "/full")  # QUEUE_FULL at once
            for i in range(4):
                app.open(f"/hold{i}")
            await wait_all_tasks_blocked()
            holder = await start(tg, gate, "/hold4")
            late = await start(tg, gate, "/late")
            clock.advance(2.0)  # QUEUE_TIMEOUT
            await wait_all_tasks_blocked()
            app.open("/hold4")
        assert [ex.status for ex in admitted] == [200, 200, 200]
        assert (full.status, late.status, holder.status) == (503, 503, 200)
        gc.collect()
        ours = [thing for thing in gc.garbage if type(thing).__module__.startswith("lockgate")]
        assert not ours
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()

"""Degradation policies and trusted priority through the gate, plus a robustness run that
throws arbitrary headers, methods and paths at a fully configured gate."""

from __future__ import annotations

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockgate import (
    Gate,
    GateSettings,
    Priority,
    PriorityScheduler,
    RejectReason,
    Rule,
    RuleClassifier,
    TrustedSource,
)
from lockgate._types import Receive, Scope, Send
from lockgate.degrade import Answer, CacheOnlyPolicy, CircuitBreakerPolicy, ReadOnlyPolicy
from lockgate.testing import FakeClock

from ._asgi import Exchange

pytestmark = pytest.mark.anyio

TRUSTED = "10.0.0.0/8"


class App:
    """Holds ``/hold*`` until opened; ``/fail`` answers 500; else 200 with a counter body.
    ``/cookie`` sets a cookie. Counts the requests that reached it."""

    def __init__(self) -> None:
        self.opened = anyio.Event()
        self.calls: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        self.calls.append(path)
        if path.startswith("/hold"):
            await self.opened.wait()
        headers = [(b"content-type", b"text/plain")]
        if path == "/cookie":
            headers.append((b"set-cookie", b"session=abc"))
        status = 500 if path == "/fail" else 200
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": f"n={len(self.calls)}".encode()})


class Refuse:
    """A plugin policy that refuses every request with ``retry_after`` of any type."""

    wants_body = False

    def __init__(self, retry_after: object) -> None:
        self.retry_after = retry_after

    def before(self, request: object, stats: object, now: float) -> Answer:
        return Answer(reason=RejectReason.READ_ONLY, retry_after=self.retry_after)  # type: ignore[arg-type]

    def after(self, request: object, response: object, now: float) -> None:
        return None


class Gone(OSError):
    """What a server's ``send`` raises once the client has left (ASGI spec)."""


async def gone(message: object) -> None:
    """A server's ``send`` after its client has left."""
    raise Gone("the client left")


async def run_for_a_client_gone(gate: Gate, path: str) -> Exchange:
    """One request to ``path`` whose client has left: every ``send`` raises ``Gone``."""
    ex = Exchange(gate, path=path)
    ex.push_body()
    ex.send = gone  # type: ignore[method-assign]
    await ex.run()
    return ex


async def request(
    gate: Gate, path: str, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None,
    client: str = "203.0.113.5",
) -> Exchange:
    ex = Exchange(gate, path=path, method=method, headers=headers or [], client=(client, 4000))
    ex.push_body()
    await ex.run()
    return ex


async def hold(tg: anyio.abc.TaskGroup, gate: Gate, n: int) -> None:
    for i in range(n):
        ex = Exchange(gate, path=f"/hold{i}")
        ex.push_body()
        tg.start_soon(ex.run)
    await wait_all_tasks_blocked()


async def test_read_only_refuses_writes_under_load_and_lets_reads_through() -> None:
    """Above the threshold a POST gets READ_ONLY at once; a GET still runs; below the
    release point writes are accepted again."""
    app, clock = App(), FakeClock()
    # 10 seats, one of them critical's: 9 for this lane. Holding 8 is 80 % utilisation.
    gate = Gate(app, GateSettings(max_concurrent=10), policies=[ReadOnlyPolicy(0.8)], clock=clock)
    async with anyio.create_task_group() as tg:
        await hold(tg, gate, 8)
        clock.advance(0.02)  # a fresh stats snapshot for the policies
        write = await request(gate, "/items", "POST")
        read = await request(gate, "/items", "GET")
        app.opened.set()
    assert write.status == 503 and write.json()["error"]["code"] == "READ_ONLY"
    assert int(write.headers["retry-after"]) >= 1
    assert read.status == 200
    assert "/items" in app.calls and app.calls.count("/items") == 1
    clock.advance(0.02)
    assert (await request(gate, "/items", "POST")).status == 200
    assert gate.stats().lanes[Priority.NORMAL].rejected == {"READ_ONLY": 1}


async def test_cache_only_serves_hits_but_never_across_credentials() -> None:
    """Under load a cached GET is answered from the cache; a request with credentials is
    never served from it, and responses setting cookies are never stored."""
    app, clock = App(), FakeClock()
    policy = CacheOnlyPolicy(threshold=0.5, ttl=30)
    gate = Gate(app, GateSettings(max_concurrent=4, queue_capacity=0), policies=[policy],
                clock=clock)
    warm = await request(gate, "/data")
    await request(gate, "/cookie")
    assert warm.status == 200
    async with anyio.create_task_group() as tg:
        await hold(tg, gate, 4)  # utilisation 1.0: cache-only mode, and no seat left
        clock.advance(0.02)
        hit = await request(gate, "/data")
        with_auth = await request(gate, "/data", headers=[(b"authorization", b"Bearer x")])
        with_cookie = await request(gate, "/data", headers=[(b"cookie", b"session=other")])
        cookie_page = await request(gate, "/cookie")
        app.opened.set()
    assert hit.status == 200 and hit.body == warm.body
    assert hit.headers["x-lockgate-cache"] == "hit"
    for refused in (with_auth, with_cookie, cookie_page):  # not from the cache: no seat → 503
        assert refused.status == 503 and "x-lockgate-cache" not in refused.headers
    assert app.calls.count("/data") == 1


async def test_cache_only_serves_routes_under_a_starlette_mount() -> None:
    """Review finding: Starlette's router rewrites ``scope["root_path"]`` in place, so the
    key built in ``after`` differed from the one ``before`` looked up: routes under a
    ``Mount`` were stored and never served."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    calls = 0

    async def items(request: Request) -> PlainTextResponse:
        nonlocal calls
        calls += 1
        return PlainTextResponse(f"items #{calls}")

    inner = Starlette(routes=[Mount("/api", routes=[Route("/items", items)])])
    cache = CacheOnlyPolicy(threshold=0.0)  # serve from the cache at any load
    gate = Gate(inner, GateSettings(max_concurrent=4), policies=[cache])
    transport = httpx.ASGITransport(app=gate)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        first, second = await client.get("/api/items"), await client.get("/api/items")
    assert (first.text, second.text) == ("items #1", "items #1")
    assert second.headers["x-lockgate-cache"] == "hit" and calls == 1


async def test_default_thresholds_are_reachable_beside_critical_idle_seats() -> None:
    """Critical's guaranteed seats stay idle by default (2 of 25 here): with every other seat
    busy the gate is full, so the default thresholds (read-only 0.9, cache-only 0.95) must
    fire. Measured against all 25 seats the load could never pass 23 / 25 = 0.92."""
    app, clock = App(), FakeClock()
    read_only, cache = ReadOnlyPolicy(), CacheOnlyPolicy()
    gate = Gate(app, GateSettings(max_concurrent=25, queue_capacity=0),
                policies=[read_only, cache], clock=clock)
    warm = await request(gate, "/data")
    usable = 25 - gate.stats().lanes[Priority.CRITICAL].guaranteed
    async with anyio.create_task_group() as tg:
        await hold(tg, gate, usable)
        clock.advance(0.02)
        assert gate.stats().utilization == 1.0 and gate.stats().status == "critical"
        write = await request(gate, "/items", "POST")
        hit = await request(gate, "/data")
        app.opened.set()
    assert write.status == 503 and write.json()["error"]["code"] == "READ_ONLY"
    assert hit.headers.get("x-lockgate-cache") == "hit" and hit.body == warm.body


async def test_rules_assigned_after_the_gate_was_built_route_requests() -> None:
    """A rule-less classifier's lane is read per request: rules added later are obeyed."""
    app = App()
    classifier = RuleClassifier()
    gate = Gate(app, GateSettings(max_concurrent=4), classifier=classifier)
    await request(gate, "/batch/x")
    classifier.rules = [Rule(Priority.LOW, prefix="/batch")]
    await request(gate, "/batch/y")
    admitted = {s.lane.label: s.admitted for s in gate.stats().lanes}
    assert admitted["normal"] == 1 and admitted["low"] == 1


async def test_a_policy_retry_after_is_held_to_an_integer_of_at_least_one() -> None:
    """A plugin policy answering ``retry_after=-5`` (or 0.2) still sends ``Retry-After: 1``."""
    for offered, sent in ((-5, "1"), (0.2, "1"), (2.5, "3"), (7, "7"), (1e12, "3600")):
        gate = Gate(App(), GateSettings(max_concurrent=4), policies=[Refuse(offered)])
        refused = await request(gate, "/x", "POST")
        assert refused.status == 503 and refused.headers["retry-after"] == sent


async def test_a_policy_retry_after_of_any_type_never_breaks_the_answer() -> None:
    """Review finding: ``10**400`` raised OverflowError and ``"5"`` TypeError out of the
    gate (a 500). Nonsense now falls back to the scheduler's estimate; text that is a
    number is taken."""
    for offered in (10**400, "soon", None, float("nan"), [3], "5"):
        gate = Gate(App(), GateSettings(max_concurrent=4), policies=[Refuse(offered)])
        refused = await request(gate, "/x", "POST")
        assert refused.error is None and refused.status == 503
        given = int(refused.headers["retry-after"])
        assert given == 5 if offered == "5" else 1 <= given <= 60


async def test_the_gates_own_rejections_to_a_client_that_left_are_not_app_failures() -> None:
    """Review finding: a QUEUE_FULL answer whose ``send`` raised (the client had gone) was
    counted by the breaker as a failure of the app, which never ran; five opened it."""
    app, clock = App(), FakeClock()
    breaker = CircuitBreakerPolicy(failure_threshold=5, recovery_timeout=30)
    gate = Gate(app, GateSettings(max_concurrent=1, queue_capacity=0, target_wait=None),
                policies=[breaker], clock=clock)

    async with anyio.create_task_group() as tg:
        holder = Exchange(gate, path="/hold")
        holder.push_body()
        tg.start_soon(holder.run)
        await wait_all_tasks_blocked()
        for _ in range(5):
            refused = await run_for_a_client_gone(gate, "/x")
            assert isinstance(refused.error, Gone)
        app.opened.set()
    assert breaker.state(clock.now()) == "closed" and breaker.failures == 0
    assert (await request(gate, "/ok")).status == 200


async def test_a_client_that_leaves_mid_response_is_not_an_app_failure() -> None:
    """The app's send raising OSError (the client left) is the client's doing."""
    clock = FakeClock()
    breaker = CircuitBreakerPolicy(failure_threshold=2, recovery_timeout=30)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    gate = Gate(app, GateSettings(max_concurrent=4), policies=[breaker], clock=clock)

    for _ in range(3):
        ex = await run_for_a_client_gone(gate, "/x")
        assert isinstance(ex.error, Gone)
    assert breaker.state(clock.now()) == "closed"


async def test_an_app_that_returns_without_answering_is_a_failure() -> None:
    """Review finding: the server answers such a request 500, but the breaker saw "never
    ran" and stayed closed for ever. A client that left first is not the app's failure."""
    clock = FakeClock()
    breaker = CircuitBreakerPolicy(failure_threshold=3, recovery_timeout=30)

    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    gate = Gate(silent, GateSettings(max_concurrent=4), policies=[breaker], clock=clock)
    for _ in range(3):
        ex = Exchange(gate, path="/x")
        ex.disconnect()  # the app read that its client left, and gave up: no verdict
        await ex.run()
    assert breaker.state(clock.now()) == "closed"
    for _ in range(3):
        await request(gate, "/x")
    assert breaker.state(clock.now()) == "open"


async def test_a_healthy_streaming_probe_closes_the_circuit_when_it_starts() -> None:
    """Review finding: the verdict came only at the end of the probe's body, so a 200 that
    streamed for longer than ``probe_timeout`` counted as unanswered and reopened the
    circuit. The status decides now, as it starts."""
    clock = FakeClock()
    breaker = CircuitBreakerPolicy(failure_threshold=1, recovery_timeout=30, probe_timeout=5)
    streaming, finish = anyio.Event(), anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        status = 500 if scope["path"] == "/fail" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        if scope["path"] == "/stream":
            streaming.set()
            await finish.wait()
        await send({"type": "http.response.body", "body": b"x"})

    gate = Gate(app, GateSettings(max_concurrent=4), policies=[breaker], clock=clock)
    await request(gate, "/fail")
    assert breaker.state(clock.now()) == "open"
    clock.advance(30)
    async with anyio.create_task_group() as tg:
        probe = Exchange(gate, path="/stream")
        probe.push_body()
        tg.start_soon(probe.run)
        await streaming.wait()
        assert breaker.state(clock.now()) == "closed"
        clock.advance(60)  # far past probe_timeout, the body still streaming
        assert breaker.state(clock.now()) == "closed"
        assert (await request(gate, "/ok")).status == 200
        finish.set()
    assert probe.status == 200 and breaker.state(clock.now()) == "closed"


async def test_circuit_breaker_opens_and_recovers_through_a_probe() -> None:
    """Five consecutive 500s open the circuit (CIRCUIT_OPEN, Retry-After = time to
    half-open); after the recovery timeout one probe runs and its success closes it."""
    app, clock = App(), FakeClock()
    breaker = CircuitBreakerPolicy(failure_threshold=5, recovery_timeout=30)
    gate = Gate(app, GateSettings(max_concurrent=4), policies=[breaker], clock=clock)
    for _ in range(5):
        assert (await request(gate, "/fail")).status == 500
    clock.advance(10)
    refused = await request(gate, "/ok")
    assert refused.status == 503 and refused.json()["error"]["code"] == "CIRCUIT_OPEN"
    assert refused.headers["retry-after"] == "20"
    clock.advance(20)
    probe = await request(gate, "/ok")
    assert probe.status == 200
    assert (await request(gate, "/ok")).status == 200
    assert app.calls.count("/ok") == 2


@pytest.mark.parametrize(("client", "lane"), [("203.0.113.5", "normal"), ("10.1.2.3", "high")])
async def test_role_header_counts_only_from_trusted_proxies(client: str, lane: str) -> None:
    """A spoofed X-User-Role: admin from an untrusted client lands in the default lane; the
    same header from a trusted proxy network is honoured."""
    app = App()
    classifier = RuleClassifier(
        [Rule(role="admin", priority=Priority.HIGH)],
        trust=TrustedSource(trusted_proxies=[TRUSTED]),
    )
    gate = Gate(app, GateSettings(max_concurrent=4), classifier=classifier)
    await request(gate, "/me", headers=[(b"x-user-role", b"admin")], client=client)
    admitted = {s.lane.label: s.admitted for s in gate.stats().lanes}
    assert admitted[lane] == 1 and sum(admitted.values()) == 1


@pytest.mark.parametrize(("client", "refused"), [("203.0.113.5", False), ("10.9.9.9", True)])
async def test_deadline_headers_only_from_trusted_proxies(client: str, refused: bool) -> None:
    """deadline_headers='trusted': a deadline is believed only from trusted_proxies."""
    app, clock = App(), FakeClock()
    gate = Gate(app, GateSettings(max_concurrent=1, deadline_headers="trusted",
                                  trusted_proxies=(TRUSTED,)), clock=clock)
    assert isinstance(gate.scheduler, PriorityScheduler)
    gate.scheduler.discipline.record_service(Priority.NORMAL, 2.0)  # 2 s > the 0.5 s budget
    async with anyio.create_task_group() as tg:
        await hold(tg, gate, 1)
        ex = Exchange(gate, path="/x", headers=[(b"x-request-timeout", b"0.5")],
                      client=(client, 1))
        ex.push_body()
        tg.start_soon(ex.run)
        await wait_all_tasks_blocked()
        assert (ex.status == 503) is refused
        app.opened.set()
    assert ex.status == (503 if refused else 200)


HEADER_NAMES = st.one_of(
    st.sampled_from([b"x-user-role", b"x-request-timeout", b"grpc-timeout", b"authorization",
                     b"cookie", b"cache-control", b"vary", b"content-length", b"host"]),
    st.binary(min_size=0, max_size=40),
)
HEADER_VALUES = st.one_of(
    st.sampled_from([b"admin", b"0.001", b"1e308", b"-5", b"nan", b"10m", b"99999999H", b""]),
    st.binary(max_size=64),
    # oversized: a short random pattern repeated (drawing 4 KB byte by byte took 90 % of
    # this module's time, and the test over a minute on a slow machine)
    st.builds(lambda unit, n: (unit * n)[: 4000 + n % 100],
              st.binary(min_size=1, max_size=8), st.integers(4000, 4100)),
)
REQUESTS = st.lists(
    st.tuples(
        st.sampled_from(["GET", "POST", "HEAD", "DELETE", "OPTIONS", "BREW", "get", ""]),
        st.one_of(st.sampled_from(["/", "/fail", "/health", "/metrics/backpressure", "/admin",
                                   "/cookie", "/x?y=1"]), st.text(max_size=30)),
        st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6),
        st.sampled_from(["10.0.0.1", "203.0.113.9", "::1", "not-an-ip", ""]),
    ),
    min_size=5,
    max_size=8,
)


def test_arbitrary_requests_never_get_a_500_from_lockgate_nor_leak_a_seat() -> None:
    """≥ 2,000 generated requests (400 batches of 5-8 at once) against a gate with every policy,
    trusted roles and deadline headers on: the only 500s are the app's own ``/fail``;
    afterwards no seat is held and nothing is queued."""
    clock = FakeClock()
    app = App()
    app.opened.set()
    classifier = RuleClassifier(
        [Rule(role="admin", priority=Priority.HIGH), Rule(prefix="/admin", priority=Priority.LOW)],
        trust=TrustedSource(trusted_proxies=[TRUSTED, "::1/128"]),
    )
    gate = Gate(
        app,
        GateSettings(max_concurrent=3, queue_capacity=4, deadline_headers="all"),
        classifier=classifier,
        policies=[ReadOnlyPolicy(0.6), CacheOnlyPolicy(0.6), CircuitBreakerPolicy(3, 1.0)],
        clock=clock,
    )
    sent = 0

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(REQUESTS)
    def run(batch: list[tuple[str, str, list[tuple[bytes, bytes]], str]]) -> None:
        nonlocal sent

        async def go() -> None:
            exchanges = []
            async with anyio.create_task_group() as tg:
                for method, path, headers, client in batch:
                    ex = Exchange(gate, path=path, method=method, headers=headers,
                                  client=(client, 1))
                    ex.push_body(b"body")
                    exchanges.append(ex)
                    tg.start_soon(ex.run)
                await wait_all_tasks_blocked()
                clock.advance(0.5)
            for ex in exchanges:
                assert ex.error is None, ex.error
                assert ex.status is not None
                assert ex.status != 500 or ex.scope["path"] == "/fail"

        anyio.run(go, backend="trio")
        sent += len(batch)
        stats = gate.stats()
        assert (stats.active, stats.queued) == (0, 0)

    run()
    assert sent >= 2000

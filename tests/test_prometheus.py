"""Prometheus: the ``setup_prometheus`` helper, the shipped alert rules (promtool) and dashboard,
and a real Prometheus server scraping a gated app served by uvicorn.

``promtool`` and ``prometheus`` come from Debian's ``prometheus`` package (``.ci/run`` installs
it). Without them these tests skip, or fail when ``LOCKGATE_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lockgate import Gate, GateSettings, Priority, Rule, RuleClassifier
from lockgate._types import Receive, Scope, Send
from lockgate.prometheus import PrometheusMetrics, setup_prometheus
from lockgate.testing import ok_app

from ._asgi import Exchange
from ._servers import ServerThread, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "docs" / "operations"
ALERTS, ALERT_TESTS, DASHBOARD = (
    OPS / "alerts.yml", OPS / "alerts_test.yml", OPS / "grafana-dashboard.json"
)  # fmt: skip
NAMES = {
    "backpressure_active_requests": {"lane"},
    "backpressure_queued_requests": {"lane"},
    "backpressure_concurrency_limit": set(),
    "backpressure_degradation_mode": {"policy"},
    "backpressure_rejected_total": {"lane", "reason"},
    "backpressure_admitted_total": {"lane"},
    "backpressure_wait_time_seconds_bucket": {"lane", "le"},
    "backpressure_wait_time_seconds_count": {"lane"},
    "backpressure_wait_time_seconds_sum": {"lane"},
}
"""Every series name a scrape carries once a request has queued, with its labels."""
LANES = {"critical", "high", "normal", "low"}


def need(binary: str) -> str:
    """The path of ``binary``; skip without it, or fail under ``LOCKGATE_REQUIRE_SERVICES=1``."""
    path = shutil.which(binary)
    if path is None:
        message = f"{binary} not found (Debian: apt-get install prometheus)"
        if os.environ.get("LOCKGATE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{message}; LOCKGATE_REQUIRE_SERVICES=1 requires it")
        pytest.skip(message)
    return path


def scrape_text(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``{series name: [(labels, value)]}`` of a text exposition."""
    series: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return series


async def call(app: Any, path: str) -> Exchange:
    ex = Exchange(app, path=path)
    ex.push_body()
    await ex.run()
    return ex


@pytest.fixture
def isolated() -> Iterator[PrometheusMetrics]:
    """A helper that leaves the global provider alone (the test process shares it)."""
    metrics = setup_prometheus(set_global=False)
    yield metrics
    metrics.shutdown()


# -- setup_prometheus -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_exposition_has_the_original_names(isolated: PrometheusMetrics) -> None:
    """The scrape names are exactly the original dashboard's (plus admitted_total)."""
    hold = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await hold.wait()
        await ok_app(scope, receive, send)

    gate = Gate(app, GateSettings(max_concurrent=1, queue_capacity=1), meter=isolated.meter)
    gate.metrics.degradation = lambda: {"read_only": True}
    isolated.app = gate
    async with anyio.create_task_group() as tg:
        for path in ("/a", "/b"):
            ex = Exchange(isolated, path=path)
            ex.push_body()
            tg.start_soon(ex.run)
            await anyio.wait_all_tasks_blocked()
        full = await call(isolated, "/c")
        assert full.status == 503
        during = scrape_text((await call(isolated, "/metrics")).body.decode())
        hold.set()
    scrape = await call(isolated, "/metrics")
    assert scrape.status == 200
    assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
    series = scrape_text(scrape.body.decode())
    found = {name: labels for name, labels in series.items() if name.startswith("backpressure_")}
    assert set(found) == set(NAMES)
    for name, samples in found.items():
        assert {frozenset(labels) for labels, _ in samples} == {frozenset(NAMES[name])}, name
    assert {labels["lane"] for labels, _ in found["backpressure_queued_requests"]} == LANES
    assert dict((d["lane"], v) for d, v in during["backpressure_queued_requests"])["normal"] == 1
    assert dict((d["lane"], v) for d, v in during["backpressure_active_requests"])["normal"] == 1
    rejected = {(d["lane"], d["reason"]): v for d, v in found["backpressure_rejected_total"]}
    assert rejected[("normal", "queue_full")] == 1
    assert sum(rejected.values()) == 1
    buckets = {d["le"]: v for d, v in found["backpressure_wait_time_seconds_bucket"]}
    assert list(buckets) == ["0.01", "0.05", "0.1", "0.5", "1.0", "3.0", "5.0", "+Inf"]
    assert buckets["+Inf"] == 1  # the one request that queued; the immediate one is not in it
    assert found["backpressure_admitted_total"] == [
        ({"lane": lane.label}, 2.0 if lane is Priority.NORMAL else 0.0) for lane in Priority
    ]
    assert found["backpressure_concurrency_limit"] == [({}, 1.0)]
    assert found["backpressure_degradation_mode"] == [({"policy": "read_only"}, 1.0)]
    assert "process_cpu_seconds_total" in series  # the default registry's process metrics


@pytest.mark.anyio
async def test_mounted_endpoint_is_bypassed_by_a_full_gate(isolated: PrometheusMetrics) -> None:
    """``setup_prometheus()`` without an app, mounted under a router behind the gate: the
    gate's default ``bypass_paths`` let ``/metrics`` through while every seat is taken."""
    hold = anyio.Event()

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await isolated(scope, receive, send)
        else:
            await hold.wait()
            await ok_app(scope, receive, send)

    gate = Gate(router, GateSettings(max_concurrent=1, queue_capacity=0), meter=isolated.meter)
    async with anyio.create_task_group() as tg:
        busy = Exchange(gate, path="/busy")
        busy.push_body()
        tg.start_soon(busy.run)
        await anyio.wait_all_tasks_blocked()
        assert (await call(gate, "/other")).status == 503
        scrape = await call(gate, "/metrics")
        assert scrape.status == 200
        series = scrape_text(scrape.body.decode())
        assert series["backpressure_active_requests"][2] == ({"lane": "normal"}, 1.0)
        hold.set()
    assert busy.status == 200


@pytest.mark.anyio
async def test_starlette_route_as_in_the_docs(isolated: PrometheusMetrics) -> None:
    """``Route("/metrics", metrics_app)`` in a Starlette app behind the gate."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("home")

    routes = [Route("/", home), Route("/metrics", isolated)]
    app = Gate(Starlette(routes=routes), meter=isolated.meter)
    assert (await call(app, "/")).body == b"home"
    series = scrape_text((await call(app, "/metrics")).body.decode())
    assert series["backpressure_admitted_total"][2] == ({"lane": "normal"}, 1.0)


@pytest.mark.anyio
async def test_without_an_app_lifespan_completes_and_http_is_answered(
    isolated: PrometheusMetrics,
) -> None:
    ex = Exchange(isolated, scope={"type": "lifespan", "asgi": {"version": "3.0"}})
    ex.push({"type": "lifespan.startup"})
    ex.push({"type": "lifespan.shutdown"})
    await ex.run()
    assert [m["type"] for m in ex.sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert (await call(isolated, "/anything")).status == 200  # mounted: every path is metrics


def test_port_mode_serves_on_its_own_port() -> None:
    """``port=0``: the exposition comes from a thread on its own port; the app's ``/metrics``
    is then the app's (here: the gate bypasses it to ``ok_app``)."""
    metrics = setup_prometheus(port=0, set_global=False)
    try:
        metrics.app = Gate(ok_app, GateSettings(max_concurrent=7), meter=metrics.meter)
        port = metrics.port
        assert metrics.path is None and port
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert scrape_text(text)["backpressure_concurrency_limit"] == [({}, 7.0)]
        assert anyio.run(call, metrics, "/metrics").body == b"ok"
    finally:
        metrics.shutdown()
    assert metrics.port is None
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def _two_free_ports() -> int:
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def test_a_port_range_takes_the_first_free_port() -> None:
    """One range for all worker processes: each takes the first port no other has."""
    port = _two_free_ports()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        metrics = setup_prometheus(port=range(port, port + 2), set_global=False)
        try:
            assert metrics.port == port + 1
        finally:
            metrics.shutdown()
        with pytest.raises(OSError, match=r"^no free port for the metrics server on "):
            setup_prometheus(port=range(port, port + 1), set_global=False)


def test_invalid_path() -> None:
    with pytest.raises(ValueError, match=r"^path must start with '/': 'metrics'$"):
        setup_prometheus(path="metrics", set_global=False)


def test_missing_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.prometheus", None)
    monkeypatch.delitem(sys.modules, "lockgate.prometheus")
    with pytest.raises(ImportError, match=r"pip install 'lockgate\[prometheus\]'"):
        importlib.import_module("lockgate.prometheus")


def test_global_provider_reaches_gates_built_before_and_after() -> None:
    """The one-call form, in a fresh process (the global provider can be set only once):
    gates built with ``meter=None`` before and after ``setup_prometheus``, and one built with
    ``meter=result.meter``, all report; a second global setup is refused with a clear error."""
    script = textwrap.dedent(
        """
        import asyncio
        import httpx
        from lockgate import Gate, GateSettings
        from lockgate.prometheus import setup_prometheus
        from lockgate.testing import ok_app

        before = Gate(ok_app, GateSettings(max_concurrent=3))
        app = setup_prometheus(before)
        after = Gate(ok_app, GateSettings(max_concurrent=4))
        explicit = Gate(ok_app, GateSettings(max_concurrent=5), meter=app.meter)

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                assert (await client.get("/x")).status_code == 200
                print((await client.get("/metrics")).text)

        asyncio.run(main())
        try:
            setup_prometheus(before)
        except RuntimeError as exc:
            print("second:", exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    series = scrape_text(done.stdout.split("second:")[0])
    # the explicit meter= form shares the instruments of the meter=None form (it was lost)
    assert series["backpressure_concurrency_limit"] == [({}, 12.0)]
    assert ({"lane": "normal"}, 1.0) in series["backpressure_admitted_total"]
    assert "second: a global OpenTelemetry MeterProvider is already set" in done.stdout


# -- promtool: the alert rules and the dashboard's expressions --------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    done = subprocess.run(
        [need("promtool"), "check", "rules", str(ALERTS)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 4 rules found" in done.stdout


def test_alert_rules_unit_tests() -> None:
    """``alerts_test.yml``: each alert firing, and not firing where it should not."""
    done = subprocess.run(
        [need("promtool"), "test", "rules", str(ALERT_TESTS)],
        capture_output=True, text=True, timeout=60, cwd=OPS,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    tested = re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text())
    assert set(tested) == {"HighRejectionRate", "QueueBuildup", "HighQueueWaitTime",
                           "HighUtilization"}  # fmt: skip


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels += [panel, *panel.get("panels", [])]
    return [p for p in panels if p["type"] != "row"]


def dashboard_exprs(job: str = ".*", instance: str = ".*") -> dict[str, str]:
    """``{"panel title / legend": expr}`` with the dashboard's variables substituted."""
    exprs = {}
    for panel in dashboard_panels():
        for target in panel["targets"]:
            expr = target["expr"].replace("$job", job).replace("$instance", instance)
            assert "$" not in expr, f"unknown variable in {expr}"
            exprs[f"{panel['title']} / {target['legendFormat']}"] = expr
    return exprs


def test_dashboard_shape() -> None:
    """Datasource as a variable; every query filtered by job and instance; the panels the
    operators asked for; wait quantiles over rate(..._bucket[5m])."""
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["includeAll"] and variables["instance"]["allValue"] == ".*"
    titles = {p["title"] for p in dashboard_panels()}
    assert {
        "Active vs queued per lane", "Queue wait p50 / p95 / p99 (all admitted requests)",
        "Rejection rate by reason", "Utilisation vs limit", "Degradation mode",
    } <= titles  # fmt: skip
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert '{job=~"$job", instance=~"$instance"}' in target["expr"]
    quantiles = [
        t["expr"] for p in dashboard_panels() if p["title"].startswith("Queue wait p50")
        for t in p["targets"]
    ]  # fmt: skip
    for q, expr in zip(("0.5", "0.95", "0.99"), quantiles, strict=True):
        assert expr.startswith(f"histogram_quantile({q}, sum by (le) (rate(")
        assert "backpressure_wait_time_seconds_bucket" in expr and "[5m]" in expr


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    """Each dashboard query, as a recording rule, passes ``promtool check rules``."""
    rules = [
        f"      - record: dashboard:expr_{i}\n        expr: {json.dumps(expr)}"
        for i, expr in enumerate(dashboard_exprs().values())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text("groups:\n  - name: dashboard\n    rules:\n" + "\n".join(rules) + "\n")
    done = subprocess.run(
        [need("promtool"), "check", "rules", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


# -- a real Prometheus scraping a gated app ---------------------------------------------------

JOB = "lockgate-e2e"
HOLD = 1.0
"""Seconds each request of the e2e app takes: queues last long enough to be scraped."""


class PrometheusServer:
    """``prometheus`` on a loopback port with a temporary config and data directory."""

    def __init__(self, binary: str, tmp: Path, target: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        config.write_text(
            textwrap.dedent(
                f"""\
                global:
                  scrape_interval: 1s
                  scrape_timeout: 1s
                  evaluation_interval: 1s
                rule_files:
                  - {json.dumps(str(ALERTS))}
                scrape_configs:
                  - job_name: {JOB}
                    static_configs:
                      - targets: [{json.dumps(target)}]
                """
            )
        )
        self.log = (tmp / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
            ],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(self._ready, 30, "prometheus to be ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.proc.returncode}")
        try:
            return httpx.get(f"{self.base_url}/-/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.base_url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", (params, body)
        return body["data"]

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def poll(self, expr: str, within: float = 30.0) -> list[tuple[dict[str, str], float]]:
        """Query until ``expr`` returns something (bounded)."""
        deadline = time.monotonic() + within
        while not (result := self.query(expr)):
            if time.monotonic() >= deadline:
                raise AssertionError(f"no result for {expr} within {within} s")
            time.sleep(0.25)
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], PrometheusServer]]:
    binary = need("prometheus")
    started: list[PrometheusServer] = []

    def start(target: str) -> PrometheusServer:
        server = PrometheusServer(binary, tmp_path, target)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await anyio.sleep(HOLD)
    await ok_app(scope, receive, send)


async def drive(base_url: str) -> list[int]:
    """Three waves of 10 normal + 2 low requests at once: 2 seats, 4 queue places."""
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for _ in range(3):
            paths = ["/api/items"] * 10 + ["/batch/export"] * 2
            responses = await asyncio.gather(*(client.get(path) for path in paths))
            statuses += [r.status_code for r in responses]
    return statuses


@pytest.mark.server
@pytest.mark.timeout(180)
def test_real_prometheus_scrapes_a_gated_app(
    prometheus: Callable[[str], PrometheusServer], isolated: PrometheusMetrics
) -> None:
    """uvicorn serves ``setup_prometheus(Gate(app))``; Prometheus scrapes it every second
    while traffic queues and is rejected; then every dashboard query and every alert
    expression is evaluated by Prometheus and must return sane, non-empty results."""
    gate = Gate(
        slow_app,
        GateSettings(max_concurrent=2, queue_capacity=4, wait_timeout=10, target_wait=None),
        classifier=RuleClassifier([Rule(prefix="/batch", priority=Priority.LOW)]),
        meter=isolated.meter,
    )
    gate.metrics.degradation = lambda: {"read_only": False}
    isolated.app = gate
    with ServerThread("uvicorn", isolated) as app_server:
        prom = prometheus(f"127.0.0.1:{app_server.port}")
        prom.poll(f'up{{job="{JOB}"}} == 1')
        prom.poll(f'backpressure_concurrency_limit{{job="{JOB}"}}')  # two scrapes before load
        statuses = asyncio.run(drive(app_server.base_url))
        assert statuses.count(200) >= 18 and statuses.count(503) >= 6, statuses
        # wait until the last wave's counters are in, and rates have two samples
        done = sum(1 for s in statuses if s == 503)
        prom.poll(f'sum(backpressure_rejected_total{{job="{JOB}"}}) == {done}')
        prom.poll(f'sum(rate(backpressure_wait_time_seconds_count{{job="{JOB}"}}[5m])) > 0')

        names = {r["__name__"] for r, _ in prom.query(f'{{job="{JOB}", __name__=~"backp.*"}}')}
        assert names == set(NAMES)
        queued = prom.query(f'max_over_time(backpressure_queued_requests{{job="{JOB}"}}[5m])')
        assert {labels["lane"] for labels, _ in queued} == LANES
        assert dict((labels["lane"], v) for labels, v in queued)["normal"] >= 1
        by_reason = prom.query(
            f'sum by (reason) (increase(backpressure_rejected_total{{job="{JOB}"}}[5m]))'
        )
        assert dict((labels["reason"], v) for labels, v in by_reason)["queue_full"] > 0

        exprs = dashboard_exprs(job=JOB)
        results = {title: prom.query(expr) for title, expr in exprs.items()}
        for title, result in results.items():
            assert result, f"no data for {title}: {exprs[title]}"
            assert all(math.isfinite(v) and v >= 0 for _, v in result), (title, result)
        assert results["Utilisation vs limit / limit"] == [({}, 2.0)]
        p50, p95, p99 = (
            results[f"Queue wait p50 / p95 / p99 (all admitted requests) / {q}"][0][1]
            for q in ("p50", "p95", "p99")
        )
        assert 0 < p50 <= p95 <= p99 <= 5  # waits of ~1-2 s among immediate admissions
        assert p95 > 0.5
        admitted = dict((r["lane"], v) for r, v in results["Admitted per lane / {{lane}}"])
        refused = dict((r["lane"], v) for r, v in results["Rejection rate by lane / {{lane}}"])
        assert admitted["normal"] > 0 and refused["normal"] > 0
        assert admitted["low"] + refused["low"] > 0  # batch requests ran or were displaced
        assert admitted["high"] == refused["high"] == 0
        assert results["Degradation mode / {{policy}}"] == [({"policy": "read_only"}, 0.0)]

        groups = prom.api("rules", type="alert")["groups"]
        rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
        assert set(rules) == {
            "HighRejectionRate",
            "QueueBuildup",
            "HighQueueWaitTime",
            "HighUtilization",
        }
        wait_until(
            lambda: all(
                rule["health"] == "ok" and rule["lastEvaluation"] > "2000"  # not 0001-01-01
                for group in prom.api("rules", type="alert")["groups"]
                for rule in group["rules"]
            ),
            30,
            "every alert rule evaluated",
        )
        for name, rule in rules.items():
            lhs = re.sub(r"\s*>\s*[\d.]+\s*$", "", rule["query"])
            assert lhs != rule["query"], name
            value = prom.query(lhs)
            assert value and all(math.isfinite(v) for _, v in value), (name, lhs, value)
        rate = prom.query(re.sub(r"\s*>\s*[\d.]+\s*$", "", rules["HighRejectionRate"]["query"]))
        assert rate[0][0] == {"job": JOB} and rate[0][1] > 0

"""The documentation site's code is tested code.

* Every fenced Python block of the site (``docs/``) either includes files from ``examples/``
  with ``pymdownx.snippets`` (each of those modules is imported and exercised here or in
  ``test_examples.py``), or sits on one of the older reference pages listed in
  ``INLINE_PYTHON_PAGES`` and at least compiles.
* The README's quick-start blocks are the statements of the example files they name.
* ``docs/settings.md`` lists every ``GateSettings`` field with its variable and default.
* The ``lockgate plan`` outputs shown in the docs are what the command prints.
* Each new example under ``examples/`` is run here.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from lockgate import Gate, GateSettings, LaneSettings, LanesSettings, Priority
from lockgate.degrade import (
    CacheOnlyPolicy,
    CircuitBreakerPolicy,
    ReadOnlyPolicy,
    RequestInfo,
)
from lockgate.testing import make_scope

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
INLINE_PYTHON_PAGES = {
    # Reference pages written before the site; their snippets are fragments of a larger app
    # (``inner_app``, ports, a lifespan) whose APIs tests/test_prometheus.py and
    # tests/test_redis_backend.py exercise. New pages include files from examples/ instead.
    "operations/metrics.md",
    "redis.md",
}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)(?P<info>[^\n]*)$")
SNIPPET = re.compile(r'^\s*--8<--\s+"(?P<path>[^"]+)"\s*$')


# -- helpers --------------------------------------------------------------------------------


def fenced_blocks(text: str, language: str) -> Iterator[str]:
    """The dedented bodies of the fenced blocks of ``language`` (nested in tabs and
    admonitions too)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening["fence"], opening["indent"]
        info = opening["info"].strip().split()
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        if info and info[0] == language:
            yield textwrap.dedent("\n".join(body))


def doc_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def example_modules_imported_by_tests() -> set[str]:
    """``examples.<name>`` modules that a test imports."""
    names: set[str] = set()
    for test in ("test_examples.py", "test_docs.py"):
        names |= set(re.findall(r"examples\.\w+", (ROOT / "tests" / test).read_text()))
    return names


def canonical_lines(source: str) -> list[str]:
    """The source's top-level statements, one canonical form each (``ast.unparse``): comments
    and formatting dropped, code kept exactly."""
    return [
        line
        for statement in ast.parse(source).body
        for line in ast.unparse(statement).splitlines()
    ]


def markdown_section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + len(heading) + 2)
    return text[start : end if end != -1 else len(text)]


def table_rows(text: str, header: str) -> dict[str, list[str]]:
    """The rows of the Markdown table whose header row starts with ``header``, keyed by their
    first cell's code span (``| `name` | ...``)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        match = re.match(r"^\| `([\w.]+)` \|(.*)\|\s*$", line)
        assert match, f"not a row of a setting: {line}"
        rows[match[1]] = [cell.strip() for cell in match[2].split("|")]
    return rows


# -- the site's code blocks ---------------------------------------------------------------


def test_every_python_block_of_the_site_is_tested_code() -> None:
    tested = example_modules_imported_by_tests()
    included: set[str] = set()
    inline_pages: set[str] = set()
    for page in doc_pages():
        name = page.relative_to(DOCS).as_posix()
        for block in fenced_blocks(page.read_text(), "python"):
            lines = [line for line in block.splitlines() if line.strip()]
            snippets = [SNIPPET.match(line) for line in lines]
            if lines and all(snippets):
                for match in snippets:
                    assert match is not None
                    path = match["path"]
                    assert path.startswith("examples/") and path.endswith(".py"), (name, path)
                    assert (ROOT / path).is_file(), (name, path)
                    module = path[: -len(".py")].replace("/", ".")
                    assert module in tested, f"{name}: {path} is not imported by any test"
                    included.add(path)
                continue
            assert not any(snippets), f"{name}: mixes a snippet include with inline code"
            inline_pages.add(name)
            compile(block, f"{name} (python block)", "exec")
    assert inline_pages <= INLINE_PYTHON_PAGES, (
        f"inline Python on {sorted(inline_pages - INLINE_PYTHON_PAGES)}: put it in a file "
        "under examples/, test it, and include it with --8<--"
    )
    assert "examples/starlette_app.py" in included  # the quick start is pulled in


def test_every_file_the_site_includes_exists() -> None:
    """``check_paths`` makes mkdocs fail too; this says which page and file at test time."""
    for page in doc_pages():
        for line in page.read_text().splitlines():
            match = SNIPPET.match(line)
            if match:
                assert (ROOT / match["path"]).is_file(), (page, match["path"])


def test_readme_quick_start_blocks_are_the_code_of_their_example_files() -> None:
    """Each Python block of the README's quick start names an example file, and its lines --
    statement by statement, comments and line wrapping aside -- appear in that file in the
    same order."""
    section = markdown_section((ROOT / "README.md").read_text(), "## Quick start")
    blocks = list(fenced_blocks(section, "python"))
    assert blocks, "no python block in the README's quick start"
    for block in blocks:
        named = re.findall(r"examples/\w+\.py", block)
        assert len(named) == 1, f"a quick-start block must name its example file:\n{block}"
        source = (ROOT / named[0]).read_text()
        wanted, present = canonical_lines(block), canonical_lines(source)
        assert wanted, block
        position = 0
        for line in wanted:
            assert line in present[position:], (
                f"README quick start drifted from {named[0]}: {line!r} is not in the file"
                + (" (after the lines before it)" if line in present else "")
            )
            position = present.index(line, position) + 1


def test_canonical_lines_ignore_comments_and_wrapping_only() -> None:
    file = 'x = f(\n    [\n        1,\n        2,\n    ]\n)  # note\n'
    assert canonical_lines("x = f([1, 2])   # other note") == canonical_lines(file)
    assert canonical_lines("x = f([1, 3])") != canonical_lines(file)


# -- settings reference -------------------------------------------------------------------


def test_settings_page_lists_every_field_with_its_variable_and_default() -> None:
    text = (DOCS / "settings.md").read_text()
    rows = table_rows(text, "| field | environment variable | default |")
    fields = GateSettings.model_fields
    assert set(rows) == set(fields), "docs/settings.md and GateSettings differ"
    for name, info in fields.items():
        variable, default = rows[name][0], rows[name][1]
        expected = "ENABLE_BACKPRESSURE" if name == "enabled" else f"BACKPRESSURE_{name.upper()}"
        assert f"`{expected}" in variable, (name, variable)
        if name != "lanes":
            assert default == f"`{info.default!r}`", (name, default, info.default)


def test_settings_page_lane_defaults_are_the_code() -> None:
    text = (DOCS / "settings.md").read_text()
    settings = set(LaneSettings.model_fields)
    assert set(table_rows(text, "| setting | range | meaning |")) == settings
    rows = table_rows(text, "| lane |")
    assert set(rows) == {lane.label for lane in Priority}
    defaults = LanesSettings()
    header = next(line for line in text.splitlines() if line.startswith("| lane |"))
    columns = [cell.strip(" `") for cell in header.strip("|").split("|")][1:]
    assert set(columns) == settings
    for lane in Priority:
        values = rows[lane.label]
        for column, cell in zip(columns, values, strict=True):
            assert cell == f"`{getattr(defaults[lane], column)!r}`", (lane.label, column, cell)


# -- lockgate plan ------------------------------------------------------------------------


def plan_examples() -> list[tuple[str, list[str], str]]:
    found = []
    for page in doc_pages():
        for block in fenced_blocks(page.read_text(), "text"):
            first, _, output = block.partition("\n")
            if first.startswith("$ lockgate plan "):
                found.append((page.relative_to(DOCS).as_posix(), first.split()[3:], output))
    return found


def test_the_docs_show_lockgate_plan_output() -> None:
    assert {page for page, _, _ in plan_examples()} >= {"sizing.md"}


@pytest.mark.parametrize(
    ("page", "args", "shown"),
    plan_examples(),
    ids=[f"{page}: {' '.join(args)}" for page, args, _ in plan_examples()],
)
def test_lockgate_plan_output_in_the_docs_is_what_it_prints(
    page: str, args: list[str], shown: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lockgate.cli", "plan", *args],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout == shown + "\n", f"{page}: re-run `lockgate plan {' '.join(args)}`"


# -- the examples the site includes ---------------------------------------------------------


async def call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.request(method, path, **kwargs)


def test_lanes_example() -> None:
    module = importlib.import_module("examples.lanes")
    seats = {lane.lane: lane for lane in module.app.stats().lanes}
    assert (seats[Priority.NORMAL].nominal, seats[Priority.NORMAL].guaranteed) == (8, 4)
    assert seats[Priority.NORMAL].max == 20
    assert (seats[Priority.CRITICAL].guaranteed, seats[Priority.HIGH].guaranteed) == (2, 0)
    assert module.settings.lanes.normal.share == 0.4  # the other lane settings kept
    assert module.app.classifier.classify(make_scope("/api/v1/auth/login")) is Priority.HIGH


@pytest.mark.anyio
async def test_scheduler_alone_example(capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module("examples.scheduler_alone")
    module = importlib.reload(module)  # a fresh scheduler per backend
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, module.scheduler.stats().active)
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        await module.main()
        tg.cancel_scope.cancel()
    assert capsys.readouterr().out == "50\n"
    assert 1 <= most <= 10
    assert await module.call_the_database(Priority.HIGH) == "done"


@pytest.mark.anyio
async def test_degradation_example() -> None:
    module = importlib.reload(importlib.import_module("examples.degradation"))
    policies = module.app.policies.policies
    assert [type(p) for p in policies] == [CircuitBreakerPolicy, ReadOnlyPolicy, CacheOnlyPolicy]
    assert policies[1].release_below == pytest.approx(0.8)
    assert (await call(module.app, "POST", "/api/v1/orders")).status_code == 200
    breakers = module.per_route.policies.policies
    assert [b.prefixes for b in breakers] == [("/api/v1/payments",), ("/api/v1/search",)]

    def request(state: dict[str, Any]) -> RequestInfo:
        scope = {**make_scope("/api/v1/users/me"), "state": state}
        return RequestInfo(scope, "GET", "/api/v1/users/me", Priority.NORMAL, ())

    assert module.per_user(request({"user_id": 42})) == "user:42"
    assert module.per_user(request({})) is None
    assert module.per_user_cache.key_covers_credentials


@pytest.mark.anyio
async def test_degradation_example_breaker_opens_after_five_failures() -> None:
    module = importlib.reload(importlib.import_module("examples.degradation"))

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    module.app.app = failing  # the example's chain in front of a failing app
    statuses = [(await call(module.app, "GET", "/x")).status_code for _ in range(6)]
    assert statuses == [500] * 5 + [503]
    assert (await call(module.app, "GET", "/x")).json()["error"]["code"] == "CIRCUIT_OPEN"


@pytest.mark.anyio
async def test_trusted_roles_example() -> None:
    module = importlib.import_module("examples.trusted_roles")
    classify = module.classifier.classify
    role = [(b"x-user-role", b"admin")]
    assert classify(make_scope("/x", headers=role, client=("203.0.113.7", 1))) is Priority.NORMAL
    assert classify(make_scope("/x", headers=role, client=("10.1.2.3", 1))) is Priority.HIGH
    assert classify({**make_scope("/x"), "state": {"lockgate_role": "admin"}}) is Priority.HIGH
    claims = {"jwt_claims": {"role": "admin"}}
    assert classify({**make_scope("/x"), "state": claims}) is Priority.HIGH
    assert classify(make_scope("/api/v1/auth/login", "POST")) is Priority.HIGH
    assert classify(make_scope("/api/v1/auth/login", "GET")) is Priority.NORMAL
    assert classify(make_scope("/bulk/import", "POST")) is Priority.LOW
    tier = module.custom.classify
    assert tier({**make_scope("/x"), "state": {"tenant_tier": "enterprise"}}) is Priority.HIGH
    headers = [(b"x-tenant-tier", b"enterprise")]
    assert tier(make_scope("/x", headers=headers)) is Priority.NORMAL
    for app in (module.app, module.tiered):
        assert (await call(app, "GET", "/x")).status_code == 200


@pytest.mark.anyio
async def test_queue_tuning_example() -> None:
    module = importlib.import_module("examples.queue_tuning")
    settings = module.settings
    assert (settings.target_wait, settings.deadline_headers) == (0.05, "trusted")
    assert module.app.scheduler.adaptive
    assert module.fifo.target_wait is None
    assert (await call(module.app, "GET", "/x")).status_code == 200
    assert module.noisy.scheduler.adaptive
    assert module.noisy.stats().limit == 200  # the hand-built limit's, not max_concurrent's 20
    assert (await call(module.noisy, "GET", "/x")).status_code == 200


def test_settings_env_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKPRESSURE_MAX_CONCURRENT", "80")
    monkeypatch.setenv("BACKPRESSURE_QUEUE_CAPACITY", "500")
    monkeypatch.setenv("BACKPRESSURE_WAIT_TIMEOUT", "5")
    monkeypatch.setenv("BACKPRESSURE_LANES__LOW__BORROW_LIMIT", "1")
    monkeypatch.setenv("ENABLE_BACKPRESSURE", "false")
    module = importlib.reload(importlib.import_module("examples.settings_env"))
    settings = module.settings
    assert (settings.max_concurrent, settings.queue_capacity, settings.wait_timeout) == (
        80, 500, 5.0,
    )  # fmt: skip
    assert settings.lanes.low.borrow_limit == 1 and settings.lanes.low.share == 0.1
    assert settings.enabled is False
    staging = module.staging
    assert (staging.max_concurrent, staging.queue_capacity, staging.wait_timeout) == (80, 500, 5)
    assert (staging.effective_reject_threshold, staging.target_wait) == (580, 0.1)


# -- the retry client -------------------------------------------------------------------------


class Sleeps:
    def __init__(self, then: Callable[[], Awaitable[None]] | None = None) -> None:
        self.delays: list[float] = []
        self.then = then

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.then is not None:
            await self.then()


def scripted(*responses: httpx.Response) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    """A client whose transport answers ``responses`` in turn (the last one from then on)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses[min(len(seen), len(responses)) - 1]

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://t")
    return client, seen


def overloaded(retry_after: str = "1", code: str = "QUEUE_FULL") -> httpx.Response:
    error = {"code": code, "message": "...", "retry_after": 1}
    return httpx.Response(
        503, headers={"retry-after": retry_after}, json={"success": False, "error": error}
    )


@pytest.fixture
def rc() -> Any:
    return importlib.import_module("examples.retry_client")


@pytest.mark.anyio
async def test_retry_client_against_a_real_gate(rc: Any) -> None:
    """One seat, no queue: the second request gets lockgate's 503, waits Retry-After plus
    jitter, and is admitted once the first request has finished."""
    entered, release, first_done = anyio.Event(), anyio.Event(), anyio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    gate = Gate(slow, GateSettings(max_concurrent=1, queue_capacity=0))
    transport = httpx.ASGITransport(app=gate)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

        async def first() -> None:
            assert (await client.get("/slow")).status_code == 200
            first_done.set()

        async def let_first_finish() -> None:
            release.set()
            await first_done.wait()  # the gate has released its seat by now

        sleeps = Sleeps(then=let_first_finish)
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await entered.wait()
            response = await rc.send_with_retries(
                client, "POST", "/slow", budget=rc.RetryBudget(), sleep=sleeps
            )
    assert response.status_code == 200 and response.text == "done"
    assert len(sleeps.delays) == 1
    rejected = gate.stats().lanes[Priority.NORMAL].rejected
    assert rejected == {"QUEUE_FULL": 1}
    assert 1.0 <= sleeps.delays[0] <= 60 + 0.2  # Retry-After (>= 1) plus at most `base`


@pytest.mark.anyio
async def test_retry_client_waits_retry_after_plus_full_jitter_and_gives_up(rc: Any) -> None:
    client, seen = scripted(overloaded("2"))
    sleeps = Sleeps()
    async with client:
        response = await rc.send_with_retries(
            client, "GET", "/", budget=rc.RetryBudget(), sleep=sleeps, rng=lambda: 1.0
        )
    assert response.status_code == 503 and len(seen) == 4
    assert sleeps.delays == pytest.approx([2.2, 2.4, 2.8])  # 2 s + base x 2^attempt
    sleeps = Sleeps()
    client, _ = scripted(overloaded("2"))
    async with client:
        await rc.send_with_retries(
            client, "GET", "/", budget=rc.RetryBudget(), sleep=sleeps, rng=lambda: 0.0, cap=0.3
        )
    assert sleeps.delays == [2.0, 2.0, 2.0]  # never sooner than Retry-After


@pytest.mark.anyio
async def test_retry_client_backs_off_without_retry_after(rc: Any) -> None:
    client, seen = scripted(httpx.Response(429), httpx.Response(429), httpx.Response(200))
    sleeps = Sleeps()
    async with client:
        response = await rc.send_with_retries(
            client, "GET", "/", budget=rc.RetryBudget(), sleep=sleeps, rng=lambda: 0.5
        )
    assert response.status_code == 200 and len(seen) == 3
    assert sleeps.delays == pytest.approx([0.1, 0.2])
    assert all(delay > 0 for delay in sleeps.delays)  # never a tight loop


@pytest.mark.anyio
async def test_retry_client_retries_only_what_is_safe(rc: Any) -> None:
    other_503 = httpx.Response(503, headers={"retry-after": "1"}, text="upstream down")
    cases = [
        ("POST", {}, other_503, 1),  # not idempotent, maybe processed: not retried
        ("POST", {"idempotency-key": "k1"}, other_503, 2),
        ("POST", {}, overloaded(), 2),  # lockgate's own 503: the app never saw it
        ("PUT", {}, other_503, 2),
        ("GET", {}, httpx.Response(500), 1),  # not an overload answer
    ]
    for method, headers, first, expected in cases:
        client, seen = scripted(first, httpx.Response(200))
        async with client:
            await rc.send_with_retries(
                client, method, "/", budget=rc.RetryBudget(), sleep=Sleeps(), headers=headers
            )
        assert len(seen) == expected, (method, headers, first.text)


@pytest.mark.anyio
async def test_retry_client_budget_and_deadline(rc: Any) -> None:
    budget = rc.RetryBudget(ratio=0.5, reserve=1.0)
    client, seen = scripted(overloaded())
    async with client:
        await rc.send_with_retries(client, "GET", "/", budget=budget, sleep=Sleeps())
        assert len(seen) == 2  # the reserve of one retry, then no more
        await rc.send_with_retries(client, "GET", "/", budget=budget, sleep=Sleeps())
        assert len(seen) == 3  # 0.5 earned: not enough for a retry
        await rc.send_with_retries(client, "GET", "/", budget=budget, sleep=Sleeps())
        assert len(seen) == 5  # 1.0 earned: one retry
    client, seen = scripted(overloaded("30"))
    sleeps = Sleeps()
    async with client:
        response = await rc.send_with_retries(
            client, "GET", "/", budget=rc.RetryBudget(), sleep=sleeps, deadline=5.0
        )
    assert response.status_code == 503 and len(seen) == 1 and sleeps.delays == []

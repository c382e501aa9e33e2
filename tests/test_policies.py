"""Degradation policies alone: direct calls to before/after with made-up stats and times."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import EntryPoint, EntryPoints
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lockgate import GateStats, Priority, RejectReason
from lockgate.degrade import (
    Answer,
    CacheOnlyPolicy,
    CircuitBreakerPolicy,
    DegradationPolicy,
    PolicyChain,
    ReadOnlyPolicy,
    RequestInfo,
    ResponseInfo,
    _base,
    load_policy,
)
from lockgate.testing import make_scope

H = list[tuple[bytes, bytes]]


def load(utilization: float) -> GateStats:
    """A snapshot whose ``utilization`` is ``utilization`` (limit 1000)."""
    return GateStats(
        limit=1000, active=round(utilization * 1000), queued=0, rejected=0, admitted=0,
        avg_wait_time_ms=0.0, lanes=(),
    )


IDLE, BUSY = load(0.1), load(0.99)


def req(path: str = "/x", method: str = "GET", headers: H | None = None,
        query: bytes = b"") -> RequestInfo:
    scope = make_scope(path, method, headers or [])
    scope["query_string"] = query
    return RequestInfo(scope, method, path, Priority.NORMAL, scope["headers"])


def ok(body: bytes = b"payload", headers: H | None = None, status: int = 200) -> ResponseInfo:
    return ResponseInfo(status=status, headers=headers or [], body=body)


def test_policies_satisfy_the_protocol() -> None:
    """Each built-in is a DegradationPolicy, usable alone."""
    for policy in (ReadOnlyPolicy(), CacheOnlyPolicy(), CircuitBreakerPolicy()):
        assert isinstance(policy, DegradationPolicy)


# --- ReadOnlyPolicy --------------------------------------------------------------------------


def test_read_only_refuses_writes_only_above_threshold() -> None:
    """Writes pass below the threshold; at it, they get READ_ONLY; reads always pass."""
    policy = ReadOnlyPolicy(threshold=0.9)
    assert policy.before(req(method="POST"), load(0.89), 0.0) is None
    for method in ("POST", "PUT", "PATCH", "DELETE", "PROPFIND"):
        answer = policy.before(req(method=method), load(0.9), 1.0)
        assert answer == Answer(reason=RejectReason.READ_ONLY), method
    for method in ("GET", "HEAD", "OPTIONS"):
        assert policy.before(req(method=method), load(1.0), 2.0) is None


def test_read_only_hysteresis_does_not_flap() -> None:
    """Entered at >= threshold, left only below release_below (default threshold - 0.1)."""
    policy = ReadOnlyPolicy(threshold=0.9)
    assert policy.release_below == pytest.approx(0.8)
    post = req(method="POST")
    steps = [(0.85, False), (0.9, True), (0.85, True), (0.8, True), (0.79, False),
             (0.85, False), (0.89, False), (0.95, True)]
    for t, (utilization, refused) in enumerate(steps):
        assert (policy.before(post, load(utilization), float(t)) is not None) is refused, t


def test_read_only_is_entered_by_reads_too() -> None:
    """The mode follows the load on every request, so a write after a high-load read is
    refused even if the load dipped into the hysteresis band."""
    policy = ReadOnlyPolicy(threshold=0.9, release_below=0.5)
    assert policy.before(req(method="GET"), load(0.95), 0.0) is None
    assert policy.active
    assert policy.before(req(method="POST"), load(0.6), 1.0) is not None


def test_read_only_min_dwell() -> None:
    """With min_dwell, the mode lasts at least that long even when the load falls."""
    policy = ReadOnlyPolicy(threshold=0.9, min_dwell=10.0)
    post = req(method="POST")
    assert policy.before(post, load(0.95), 100.0) is not None
    assert policy.before(post, load(0.0), 109.9) is not None
    assert policy.before(post, load(0.0), 110.0) is None


@given(st.lists(st.tuples(st.floats(0, 1.5), st.floats(0, 5)), max_size=60))
def test_read_only_mode_property(steps: list[tuple[float, float]]) -> None:
    """On whenever the load >= threshold; unchanged inside [release_below, threshold);
    off below release_below once min_dwell has passed since it was entered."""
    policy = ReadOnlyPolicy(threshold=0.9, release_below=0.6, min_dwell=2.0)
    now, entered = 0.0, None
    for utilization, dt in steps:
        now += dt
        was = policy.active
        on = policy.update(load(utilization), now)
        stats_value = load(utilization).utilization
        if stats_value >= 0.9:
            assert on
            entered = entered if was else now
        elif stats_value >= 0.6:
            assert on == was
        elif was:
            assert entered is not None and on == (now - entered < 2.0)
        else:
            assert not on
        if not on:
            entered = None


def test_read_only_validation() -> None:
    with pytest.raises(ValueError, match=r"^release_below must be between 0 and threshold$"):
        ReadOnlyPolicy(threshold=0.5, release_below=0.7)
    with pytest.raises(ValueError, match=r"^threshold must be a finite number > 0$"):
        ReadOnlyPolicy(threshold=float("nan"))
    with pytest.raises(ValueError, match=r"^min_dwell must be a finite number >= 0$"):
        ReadOnlyPolicy(min_dwell=-1)


# --- CacheOnlyPolicy -------------------------------------------------------------------------


def test_cache_stores_when_idle_and_serves_only_when_busy() -> None:
    """The cache is warmed at any load but answers only at/above the threshold."""
    cache = CacheOnlyPolicy(threshold=0.95)
    cache.after(req("/x"), ok(b"hello", [(b"Content-Type", b"text/plain")]), 0.0)
    assert cache.before(req("/x"), IDLE, 1.0) is None
    assert cache.before(req("/x"), load(0.94), 1.0) is None
    answer = cache.before(req("/x"), load(0.95), 1.0)
    assert answer is not None and answer.reason is None
    assert (answer.status, answer.body) == (200, b"hello")
    assert (b"x-lockgate-cache", b"hit") in answer.headers
    assert (b"content-type", b"text/plain") in answer.headers
    assert (b"content-length", b"5") in answer.headers


def test_cache_misses_pass() -> None:
    """Another path, query string or method is a miss; misses return None."""
    cache = CacheOnlyPolicy()
    cache.after(req("/x", query=b"a=1"), ok(), 0.0)
    assert cache.before(req("/x", query=b"a=1"), BUSY, 1.0) is not None
    assert cache.before(req("/x", query=b"a=2"), BUSY, 1.0) is None
    assert cache.before(req("/x"), BUSY, 1.0) is None
    assert cache.before(req("/y", query=b"a=1"), BUSY, 1.0) is None
    assert cache.before(req("/x", "HEAD", query=b"a=1"), BUSY, 1.0) is None


def test_cache_key_is_unambiguous() -> None:
    """Regression: a decoded ``?`` in the path (``/a%3Fb``) must not reach the entry of
    ``/a`` with query ``b?``, as a joined string key would."""
    cache = CacheOnlyPolicy()
    cache.after(req("/a?b"), ok(b"crafted"), 0.0)
    assert cache.before(req("/a", query=b"b?"), BUSY, 1.0) is None
    assert cache.before(req("/a?b"), BUSY, 1.0) is not None


def test_cache_key_holds_the_origin() -> None:
    """Two tenants (virtual hosts) of one app, or http and https, never share an entry: a
    page cached for tenant-a.example does not answer tenant-b.example."""
    cache = CacheOnlyPolicy()
    tenant_a = req("/items", headers=[(b"host", b"tenant-a.example")])
    cache.after(tenant_a, ok(b"tenant a's items"), 0.0)
    assert cache.before(req("/items", headers=[(b"host", b"tenant-b.example")]), BUSY, 1.0) is None
    secure = req("/items", headers=[(b"host", b"tenant-a.example")])
    secure.scope["scheme"] = "https"
    assert cache.before(secure, BUSY, 1.0) is None
    mounted = req("/items", headers=[(b"host", b"tenant-a.example")])
    mounted.scope["root_path"] = "/tenant-b"
    assert cache.before(mounted, BUSY, 1.0) is None
    same = cache.before(req("/items", headers=[(b"Host", b"TENANT-A.example")]), BUSY, 1.0)
    assert same is not None and same.body == b"tenant a's items"


@pytest.mark.parametrize("name", [b"x-api-key", b"api-key", b"x-auth-token", b"x-access-token"])
def test_cache_treats_common_api_key_headers_as_credentials(name: bytes) -> None:
    """API keys and tokens outside Authorization are credentials too, by default."""
    cache = CacheOnlyPolicy()
    cache.after(req("/me", headers=[(name, b"alice-secret")]), ok(b"alice's data"), 0.0)
    assert len(cache) == 0
    cache.after(req("/me"), ok(b"anonymous"), 0.0)
    assert cache.before(req("/me", headers=[(name, b"bob-secret")]), BUSY, 1.0) is None


@pytest.mark.parametrize("name", [b"authorization", b"Authorization", b"cookie",
                                  b"proxy-authorization", b"x-api-key"])
def test_cache_never_serves_or_stores_for_credentials(name: bytes) -> None:
    """A request with credentials is never served from the cache, and its response is
    never stored (x-api-key: declared through credential_headers)."""
    cache = CacheOnlyPolicy(credential_headers=["X-Api-Key"])
    with_creds = req("/me", headers=[(name, b"secret-of-alice")])
    cache.after(req("/me"), ok(b"anonymous"), 0.0)
    assert cache.before(with_creds, BUSY, 1.0) is None
    cache.after(with_creds, ok(b"alice's data"), 2.0)
    answer = cache.before(req("/me"), BUSY, 3.0)
    assert answer is not None and answer.body == b"anonymous"
    cache.after(req("/private"), ok(b""), 0.0)
    cache.after(req("/alice", headers=[(name, b"alice")]), ok(b"alice"), 0.0)
    assert cache.before(req("/alice"), BUSY, 1.0) is None
    assert len(cache) == 2


@pytest.mark.parametrize(
    "headers",
    [
        [(b"set-cookie", b"session=abc")],
        [(b"Set-Cookie", b"session=abc")],
        [(b"cache-control", b"private")],
        [(b"cache-control", b"public, max-age=60, Private")],
        [(b"cache-control", b'private="x-user"')],
        [(b"cache-control", b"public"), (b"Cache-Control", b"no-store")],
        [(b"cache-control", b"NO-STORE")],
        [(b"cache-control", b'no-cache="set-cookie", no-store')],
        [(b"vary", b"*")],
        [(b"vary", b"Accept, *")],
    ],
)
def test_cache_never_stores_excluded_responses(headers: H) -> None:
    """Set-Cookie, Cache-Control private / no-store (any case, any position) and Vary: *."""
    cache = CacheOnlyPolicy()
    cache.after(req("/x"), ok(headers=headers), 0.0)
    assert cache.before(req("/x"), BUSY, 1.0) is None
    assert len(cache) == 0


@pytest.mark.parametrize(
    "headers",
    [
        [(b"cache-control", b"public, max-age=60")],
        [(b"cache-control", b'no-cache="x-a, private, no-store, x-b"')],  # field names
        [(b"cache-control", b"x-private")],
        [(b"vary", b"accept-encoding")],
    ],
)
def test_cache_stores_ordinary_responses(headers: H) -> None:
    """The directive list is parsed, not searched: quoted arguments are not directives."""
    cache = CacheOnlyPolicy()
    cache.after(req("/x"), ok(headers=headers), 0.0)
    assert cache.before(req("/x"), BUSY, 1.0) is not None


@pytest.mark.parametrize(
    "response",
    [ok(status=201), ok(status=203), ok(status=404), ok(status=500),
     ResponseInfo(status=200, body=None), ResponseInfo(status=200, body=b"x", error=True),
     ResponseInfo(status=0)],
)
def test_cache_stores_only_complete_200s(response: ResponseInfo) -> None:
    cache = CacheOnlyPolicy()
    cache.after(req("/x"), response, 0.0)
    assert len(cache) == 0


def test_cache_stores_only_get() -> None:
    cache = CacheOnlyPolicy()
    cache.after(req("/x", "POST"), ok(), 0.0)
    cache.after(req("/x", "HEAD"), ok(b""), 0.0)
    assert len(cache) == 0


def test_cache_honours_vary() -> None:
    """A response that varies on Accept-Language is served only to the same language."""
    cache = CacheOnlyPolicy()
    vary = [(b"Vary", b"Accept-Language")]
    english = req("/x", headers=[(b"accept-language", b"en")])
    french = req("/x", headers=[(b"accept-language", b"fr")])
    cache.after(english, ok(b"hello", vary), 0.0)
    assert cache.before(french, BUSY, 1.0) is None
    assert cache.before(req("/x"), BUSY, 1.0) is None
    hit = cache.before(req("/x", headers=[(b"accept-language", b"en")]), BUSY, 1.0)
    assert hit is not None and hit.body == b"hello"
    cache.after(french, ok(b"bonjour", vary), 2.0)
    for request, body in ((english, b"hello"), (french, b"bonjour")):
        answer = cache.before(request, BUSY, 3.0)
        assert answer is not None and answer.body == body


def test_cache_ttl_expiry_and_age() -> None:
    """An entry lives ttl seconds (injected now); Age says how old it is."""
    cache = CacheOnlyPolicy(ttl=30.0)
    cache.after(req("/x"), ok(headers=[(b"age", b"999")]), 100.0)
    answer = cache.before(req("/x"), BUSY, 129.9)
    assert answer is not None
    assert (b"age", b"29") in answer.headers and (b"age", b"999") not in answer.headers
    assert cache.before(req("/x"), BUSY, 130.0) is None
    assert len(cache) == 0


def test_cache_lru_bound() -> None:
    """At most max_entries entries; the least recently used goes first."""
    cache = CacheOnlyPolicy(max_entries=2)
    cache.after(req("/a"), ok(b"a"), 0.0)
    cache.after(req("/b"), ok(b"b"), 0.0)
    assert cache.before(req("/a"), BUSY, 1.0) is not None  # /a is now the most recent
    cache.after(req("/c"), ok(b"c"), 2.0)
    assert len(cache) == 2
    assert cache.before(req("/b"), BUSY, 3.0) is None
    assert cache.before(req("/a"), BUSY, 3.0) is not None
    assert cache.before(req("/c"), BUSY, 3.0) is not None


def test_cache_body_bounds() -> None:
    """Bodies over max_body are not stored; max_bytes bounds all bodies together."""
    cache = CacheOnlyPolicy(max_body=10, max_bytes=25)
    cache.after(req("/ten"), ok(b"x" * 10), 0.0)
    cache.after(req("/eleven"), ok(b"x" * 11), 0.0)
    assert cache.before(req("/ten"), BUSY, 1.0) is not None
    assert cache.before(req("/eleven"), BUSY, 1.0) is None
    cache.after(req("/b"), ok(b"y" * 10), 0.0)
    cache.after(req("/c"), ok(b"z" * 10), 0.0)  # 30 bytes > 25: /ten is evicted
    assert cache.before(req("/ten"), BUSY, 1.0) is None
    assert len(cache) == 2


def test_cache_refresh_replaces_and_drops_hop_by_hop_headers() -> None:
    """A newer response replaces the stored one; hop-by-hop and gate headers are dropped."""
    cache = CacheOnlyPolicy()
    cache.after(req("/x"), ok(b"old"), 0.0)
    headers = [(b"transfer-encoding", b"chunked"), (b"x-queue-wait-time", b"0.200"),
               (b"content-length", b"999"), (b"etag", b'"v2"')]
    cache.after(req("/x"), ok(b"new", headers), 1.0)
    answer = cache.before(req("/x"), BUSY, 2.0)
    assert answer is not None and answer.body == b"new"
    names = [name for name, _ in answer.headers]
    assert b"transfer-encoding" not in names and b"x-queue-wait-time" not in names
    assert (b"content-length", b"3") in answer.headers and b"etag" in names
    assert len(cache) == 1


def user_key(request: RequestInfo) -> str | None:
    """A key covering credentials: the Authorization value (a real one would hash a user id)."""
    for name, value in request.headers:
        if name == b"authorization":
            return value.decode("latin-1")
    return "anonymous"


def test_key_function_that_covers_credentials() -> None:
    """A covering key caches per user: never served across different credentials; it may
    store Set-Cookie and private responses, but never no-store or Vary: *."""
    cache = CacheOnlyPolicy(key=user_key, key_covers_credentials=True)
    alice = req("/me", headers=[(b"authorization", b"Bearer alice")])
    bob = req("/me", headers=[(b"authorization", b"Bearer bob")])
    cache.after(alice, ok(b"alice", [(b"cache-control", b"private"),
                                     (b"set-cookie", b"s=1")]), 0.0)
    assert cache.before(bob, BUSY, 1.0) is None
    assert cache.before(req("/me"), BUSY, 1.0) is None
    answer = cache.before(alice, BUSY, 1.0)
    assert answer is not None and answer.body == b"alice"
    cache.after(bob, ok(b"bob", [(b"cache-control", b"no-store")]), 2.0)
    cache.after(bob, ok(b"bob", [(b"vary", b"*")]), 2.0)
    assert cache.before(bob, BUSY, 3.0) is None


def test_key_function_that_does_not_cover_credentials() -> None:
    """A key without the flag narrows the key but credentials still exclude a request;
    None means "do not cache"; a raising key means "do not cache", logged once."""
    calls: list[str] = []

    def key(request: RequestInfo) -> str | None:
        calls.append(request.path)
        if request.path == "/boom":
            raise RuntimeError("bad key")
        return None if request.path == "/never" else "tenant-1"

    cache = CacheOnlyPolicy(key=key)
    cache.after(req("/x", headers=[(b"cookie", b"a=1")]), ok(), 0.0)
    assert calls == []  # excluded before the key is asked
    cache.after(req("/never"), ok(), 0.0)
    cache.after(req("/x"), ok(), 0.0)
    assert len(cache) == 1
    assert cache.before(req("/x"), BUSY, 1.0) is not None
    assert cache.before(req("/never"), BUSY, 1.0) is None


def test_key_function_raising_is_no_cache(caplog: pytest.LogCaptureFixture) -> None:
    def key(request: RequestInfo) -> str | None:
        raise RuntimeError("bad key")

    cache = CacheOnlyPolicy(key=key)
    with caplog.at_level(logging.ERROR, logger="lockgate"):
        cache.after(req("/x"), ok(), 0.0)
        assert cache.before(req("/x"), BUSY, 1.0) is None
    assert len(cache) == 0
    assert len([r for r in caplog.records if "key function failed" in r.message]) == 1


def test_cache_validation() -> None:
    with pytest.raises(ValueError, match=r"^key_covers_credentials needs a key function$"):
        CacheOnlyPolicy(key_covers_credentials=True)
    with pytest.raises(ValueError, match=r"^ttl must be a finite number > 0$"):
        CacheOnlyPolicy(ttl=0)
    with pytest.raises(ValueError, match=r"^max_entries must be >= 1, max_body and max_bytes"):
        CacheOnlyPolicy(max_entries=0)


USERS = st.sampled_from([None, b"alice", b"bob"])
OPS = st.lists(st.tuples(st.booleans(), USERS, st.sampled_from(["/a", "/b"])), max_size=40)


def as_user(path: str, user: bytes | None) -> RequestInfo:
    return req(path, headers=[(b"authorization", user)] if user else [])


@given(OPS)
def test_cache_never_crosses_credentials_default_key(ops: list[Any]) -> None:
    """Whatever the history, a hit only goes to a request without credentials, and carries
    a body produced for a request without credentials."""
    cache = CacheOnlyPolicy()
    for t, (store, user, path) in enumerate(ops):
        request = as_user(path, user)
        if store:
            cache.after(request, ok(user or b"anonymous"), float(t))
        else:
            answer = cache.before(request, BUSY, float(t))
            if answer is not None:
                assert user is None and answer.body == b"anonymous"


@given(OPS)
def test_cache_never_crosses_credentials_covering_key(ops: list[Any]) -> None:
    """With a per-user key, a hit is always the requester's own data."""
    cache = CacheOnlyPolicy(key=user_key, key_covers_credentials=True)
    for t, (store, user, path) in enumerate(ops):
        request = as_user(path, user)
        if store:
            cache.after(request, ok(user or b"anonymous"), float(t))
        else:
            answer = cache.before(request, BUSY, float(t))
            if answer is not None:
                assert answer.body == (user or b"anonymous")


# --- CircuitBreakerPolicy --------------------------------------------------------------------

FAIL, SERVER_ERROR, GOOD = ResponseInfo(0, error=True), ResponseInfo(500), ResponseInfo(200)


def report(breaker: CircuitBreakerPolicy, outcomes: Iterable[ResponseInfo], now: float) -> None:
    for outcome in outcomes:
        request = req("/api")
        assert breaker.before(request, IDLE, now) is None
        breaker.after(request, outcome, now)


def opened(at: float = 100.0, **kwargs: Any) -> CircuitBreakerPolicy:
    breaker = CircuitBreakerPolicy(failure_threshold=3, recovery_timeout=60.0, **kwargs)
    report(breaker, [FAIL, SERVER_ERROR, ResponseInfo(503)], at)
    assert breaker.state(at) == "open"
    return breaker


def test_breaker_opens_after_n_consecutive_failures() -> None:
    """N-1 failures keep it closed; the Nth (exceptions and 5xx alike) opens it."""
    breaker = CircuitBreakerPolicy(failure_threshold=3, recovery_timeout=60.0)
    report(breaker, [FAIL, SERVER_ERROR], 0.0)
    assert breaker.state(0.0) == "closed"
    report(breaker, [ResponseInfo(502)], 0.0)
    answer = breaker.before(req("/api"), IDLE, 0.0)
    assert answer == Answer(reason=RejectReason.CIRCUIT_OPEN, retry_after=60)


def test_breaker_needs_consecutive_failures() -> None:
    """A success (any status < 500) resets the count; a non-answer (status 0) does not
    count either way."""
    breaker = CircuitBreakerPolicy(failure_threshold=3)
    report(breaker, [FAIL, FAIL, ResponseInfo(404), FAIL, FAIL, GOOD, FAIL], 0.0)
    assert breaker.state(0.0) == "closed"
    report(breaker, [ResponseInfo(0), FAIL], 0.0)
    assert breaker.state(0.0) == "closed"
    report(breaker, [FAIL], 0.0)  # the third in a row: the non-answer did not reset
    assert breaker.state(0.0) == "open"


def test_breaker_retry_after_is_time_to_half_open() -> None:
    breaker = opened(at=100.0)
    for now, expected in ((100.0, 60), (130.7, 30), (159.0, 1), (159.99, 1)):
        answer = breaker.before(req("/api"), IDLE, now)
        assert answer is not None and answer.retry_after == expected, now


def test_breaker_half_open_lets_exactly_one_probe() -> None:
    """At recovery, the first request is the probe; others get CIRCUIT_OPEN, Retry-After 1;
    a success of another request does not close it; the probe's success does."""
    breaker = opened(at=100.0)
    probe, other = req("/api"), req("/api")
    assert breaker.before(probe, IDLE, 160.0) is None
    for now in (160.0, 161.0, 170.0):
        assert breaker.before(other, IDLE, now) == Answer(
            reason=RejectReason.CIRCUIT_OPEN, retry_after=1)
    breaker.after(other, GOOD, 170.0)  # a straggler admitted before the circuit opened
    assert breaker.state(170.0) == "half_open"
    breaker.after(probe, GOOD, 171.0)
    assert breaker.state(171.0) == "closed"
    assert breaker.before(other, IDLE, 171.0) is None


@pytest.mark.parametrize("failure", [FAIL, SERVER_ERROR, ResponseInfo(504)])
def test_breaker_probe_failure_reopens(failure: ResponseInfo) -> None:
    breaker = opened(at=100.0)
    probe = req("/api")
    assert breaker.before(probe, IDLE, 160.0) is None
    breaker.after(probe, failure, 165.0)
    answer = breaker.before(req("/api"), IDLE, 165.0)
    assert answer is not None and answer.retry_after == 60
    assert breaker.before(req("/api"), IDLE, 225.0) is None  # the next probe


def test_breaker_unanswered_probe_frees_the_slot() -> None:
    """A probe the app never answered (rejected by the queue, client gone) is no verdict:
    the next request becomes the probe."""
    breaker = opened(at=100.0)
    probe, second = req("/api"), req("/api")
    assert breaker.before(probe, IDLE, 160.0) is None
    breaker.after(probe, ResponseInfo(0), 160.5)
    assert breaker.state(160.5) == "half_open"
    assert breaker.before(second, IDLE, 161.0) is None
    assert breaker.before(req("/api"), IDLE, 161.0) is not None


def test_breaker_wedged_probe_recovers() -> None:
    """Regression: a probe that never reports back (cancelled, hung) must not keep the
    breaker half-open forever. After probe_timeout it counts as a failure."""
    breaker = opened(at=100.0, probe_timeout=5.0)
    lost = req("/api")
    assert breaker.before(lost, IDLE, 160.0) is None
    assert breaker.before(req("/api"), IDLE, 164.9) is not None
    answer = breaker.before(req("/api"), IDLE, 165.0)  # reopened at 165 for 60 s
    assert answer is not None and answer.retry_after == 60
    breaker.after(lost, GOOD, 170.0)  # too late: no longer the probe
    assert breaker.state(170.0) == "open"
    assert breaker.before(req("/api"), IDLE, 225.0) is None


def test_breaker_state_only_reads() -> None:
    """``state()`` is what the metrics ask, possibly from an exporter's thread: it used to
    expire a lost probe itself, changing what the event loop's ``before``/``after`` were
    using. It now reports the expiry without making it; the loop makes it."""
    breaker = opened(at=100.0, probe_timeout=5.0)
    lost = req("/api")
    assert breaker.before(lost, IDLE, 160.0) is None
    snapshot = (breaker._opened_at, breaker._probe, breaker.failures)
    assert breaker.state(170.0) == "open"  # the lost probe counts as failed at 165
    assert breaker.state(224.9) == "open" and breaker.state(225.0) == "half_open"
    assert (breaker._opened_at, breaker._probe, breaker.failures) == snapshot
    answer = breaker.before(req("/api"), IDLE, 170.0)  # the loop: reopened at 165
    assert answer is not None and answer.retry_after == 55


def test_breaker_probe_timeout_defaults_to_recovery_timeout() -> None:
    breaker = opened(at=0.0)
    assert breaker.before(req("/api"), IDLE, 60.0) is None
    assert breaker.state(119.9) == "half_open"
    assert breaker.state(120.0) == "open"


def test_breaker_prefix() -> None:
    """With prefixes, only matching paths count and are refused; per_prefix gives each
    route its own breaker."""
    breaker = CircuitBreakerPolicy(failure_threshold=1, prefix=("/api/", "/v2/"))
    for path in ("/other", "/apix"):
        request = req(path)
        breaker.after(request, FAIL, 0.0)
        assert breaker.state(0.0) == "closed"
    breaker.after(req("/v2/x"), FAIL, 0.0)
    assert breaker.before(req("/api/y"), IDLE, 1.0) is not None
    assert breaker.before(req("/other"), IDLE, 1.0) is None
    first, second = CircuitBreakerPolicy.per_prefix(["/a/", "/b/"], failure_threshold=1)
    first.after(req("/a/1"), FAIL, 0.0)
    assert first.state(0.0) == "open" and second.state(0.0) == "closed"
    assert second.before(req("/b/1"), IDLE, 0.0) is None


def test_breaker_validation() -> None:
    with pytest.raises(ValueError, match=r"^failure_threshold must be >= 1$"):
        CircuitBreakerPolicy(failure_threshold=0)
    with pytest.raises(ValueError, match=r"^recovery_timeout must be a finite number > 0$"):
        CircuitBreakerPolicy(recovery_timeout=float("inf"))
    with pytest.raises(ValueError, match=r"^probe_timeout must be a finite number > 0$"):
        CircuitBreakerPolicy(probe_timeout=0)
    with pytest.raises(ValueError, match=r"^prefix must name at least one prefix \(or be None\)$"):
        CircuitBreakerPolicy(prefix=[])


OUTCOMES = st.sampled_from([GOOD, FAIL, SERVER_ERROR, ResponseInfo(0), ResponseInfo(404)])


@given(st.lists(st.tuples(st.integers(0, 3), OUTCOMES, st.floats(0, 40)), max_size=80))
def test_breaker_one_probe_at_a_time_property(ops: list[tuple[int, ResponseInfo, float]]) -> None:
    """Random arrivals, reports and time: while not closed, at most one request is let
    through until it reports or its probe time is up; every refusal has Retry-After >= 1."""
    breaker = CircuitBreakerPolicy(failure_threshold=2, recovery_timeout=30.0,
                                   probe_timeout=10.0)
    now = 0.0
    in_flight: list[tuple[RequestInfo, float]] = []  # let through while not closed
    for action, outcome, dt in ops:
        now += dt
        if action and in_flight:  # a report
            request, _ = in_flight.pop(0)
            breaker.after(request, outcome, now)
            continue
        request = req("/api")
        was_closed = breaker.state(now) == "closed"
        answer = breaker.before(request, IDLE, now)
        if answer is not None:
            assert answer.reason is RejectReason.CIRCUIT_OPEN
            assert isinstance(answer.retry_after, int) and answer.retry_after >= 1
        elif not was_closed:
            live = [at for _, at in in_flight if now - at < 10.0]
            assert not live, "a second probe while one is still pending"
            in_flight.append((request, now))
        elif action == 0:
            breaker.after(request, outcome, now)
        if breaker.state(now) == "closed":
            in_flight.clear()


# --- chain and plugins -----------------------------------------------------------------------


class Recorder:
    """A policy that answers (or not) and records what it was told."""

    def __init__(self, answer: Answer | None = None, raises: bool = False,
                 wants_body: bool = False) -> None:
        self.answer, self.raises, self.wants_body = answer, raises, wants_body
        self.told: list[ResponseInfo] = []

    def before(self, request: RequestInfo, stats: GateStats, now: float) -> Answer | None:
        if self.raises:
            raise RuntimeError("policy bug")
        return self.answer

    def after(self, request: RequestInfo, response: ResponseInfo, now: float) -> None:
        if self.raises:
            raise RuntimeError("policy bug")
        self.told.append(response)


def test_chain_first_answer_wins_and_after_reaches_those_that_passed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first answer wins; a raising policy counts as pass (logged once); after() goes to
    exactly the policies before the answering one."""
    stop = Answer(reason=RejectReason.READ_ONLY)
    passing, broken, answering, later = Recorder(), Recorder(raises=True), Recorder(stop), \
        Recorder()
    chain = PolicyChain([passing, broken, answering, later])
    with caplog.at_level(logging.ERROR, logger="lockgate"):
        for _ in range(3):
            answer, passed = chain.before(req(), IDLE, 0.0)
            assert (answer, passed) == (stop, 2)
            chain.after(req(), passed, ResponseInfo(0), 0.0)
    assert len(passing.told) == 3 and not answering.told and not later.told
    assert len([r for r in caplog.records if "before" in r.message]) == 1
    assert len([r for r in caplog.records if "after" in r.message]) == 1


def test_chain_capture_limit() -> None:
    """The gate captures bodies only when a policy wants them, up to the largest max_body."""
    assert PolicyChain([ReadOnlyPolicy(), CircuitBreakerPolicy()]).capture_limit == 0
    chain = PolicyChain([CacheOnlyPolicy(max_body=10), CacheOnlyPolicy(max_body=99)])
    assert chain.wants_body and chain.capture_limit == 99
    assert PolicyChain([Recorder(wants_body=True)]).capture_limit == _base.DEFAULT_BODY_CAPTURE
    assert not PolicyChain()
    with pytest.raises(TypeError, match=r"^not a DegradationPolicy"):
        PolicyChain([object()])  # type: ignore[list-item]


def test_chain_frees_a_probe_answered_by_a_later_policy() -> None:
    """A probe let through by the breaker but refused by a later policy is reported with
    status 0, so the breaker picks another probe instead of waiting for the timeout."""
    breaker = opened(at=0.0)
    chain = PolicyChain([breaker, ReadOnlyPolicy(threshold=0.5)])
    write = req("/api", "POST")
    answer, passed = chain.before(write, BUSY, 60.0)
    assert answer is not None and answer.reason is RejectReason.READ_ONLY and passed == 1
    chain.after(write, passed, ResponseInfo(0), 60.0)
    assert chain.before(req("/api"), BUSY, 60.0) == (None, 2)


BUILTINS = {
    "read_only": "lockgate.degrade:ReadOnlyPolicy",
    "cache_only": "lockgate.degrade:CacheOnlyPolicy",
    "circuit_breaker": "lockgate.degrade:CircuitBreakerPolicy",
    "not_a_policy": "builtins:object",
}


def fake_entry_points(eps: dict[str, str]) -> Callable[..., EntryPoints]:
    found = EntryPoints(EntryPoint(name, value, _base.ENTRY_POINT_GROUP)
                        for name, value in eps.items())

    def entry_points(**params: Any) -> EntryPoints:
        return found.select(**params)

    return entry_points


@pytest.mark.parametrize(("name", "cls"), [("read_only", ReadOnlyPolicy),
                                           ("cache_only", CacheOnlyPolicy),
                                           ("circuit_breaker", CircuitBreakerPolicy)])
def test_load_policy_by_entry_point(
    monkeypatch: pytest.MonkeyPatch, name: str, cls: type[object]
) -> None:
    """The documented entry-point values resolve; kwargs reach the constructor."""
    monkeypatch.setattr(_base, "entry_points", fake_entry_points(BUILTINS))
    kwargs = {"failure_threshold": 7} if name == "circuit_breaker" else {"threshold": 0.5}
    policy = load_policy(name, **kwargs)
    assert isinstance(policy, cls)
    assert getattr(policy, next(iter(kwargs))) == next(iter(kwargs.values()))
    assert isinstance(PolicyChain([name]).policies[0], cls)


def test_load_policy_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_base, "entry_points", fake_entry_points(BUILTINS))
    with pytest.raises(LookupError, match=r"^no policy named 'nope' \(available: cache_only, "):
        load_policy("nope")
    with pytest.raises(TypeError, match=r"^'not_a_policy' did not produce a DegradationPolicy"):
        load_policy("not_a_policy")


def test_installed_entry_points() -> None:
    """Once pyproject registers the built-ins (and the package is reinstalled), they load."""
    from importlib.metadata import entry_points

    names: Sequence[str] = entry_points(group=_base.ENTRY_POINT_GROUP).names  # type: ignore[assignment]
    if "read_only" not in names:
        pytest.skip("lockgate.policies entry points are not installed yet")
    assert isinstance(load_policy("read_only"), ReadOnlyPolicy)

"""``CacheOnlyPolicy``: under heavy load, answer GETs from what the service already said.

The policy keeps a bounded, TTL-limited LRU cache of earlier ``200`` responses to ``GET``
requests. It stores at every load, so the cache is warm when overload comes, but it serves
only while the load is at or above ``threshold``: a hit is answered at once, with the stored
headers plus ``Age`` and ``X-Lockgate-Cache: hit``; a miss goes on to the queue as usual (and
its response refreshes the cache).

Safety first — a shared cache must never hand one user's data to another. Unless the user's
``key`` function declares that it covers credentials (``key_covers_credentials=True``), it
never serves nor stores anything for requests carrying ``Authorization``,
``Proxy-Authorization``, ``Cookie``, ``X-Api-Key``, ``Api-Key``, ``X-Auth-Token``,
``X-Access-Token`` (or the extra ``credential_headers``), nor responses
with ``Set-Cookie`` or ``Cache-Control: private``. Responses with ``Cache-Control: no-store``
or ``Vary: *`` are never stored at all: the first forbids it, the second cannot be keyed.
Other ``Vary`` headers are honoured: the request's values of the listed headers are part of
the key. The key holds the origin too (scheme, ``Host``, root path): one tenant's or virtual
host's page never answers another's. Bodies over ``max_body`` are not stored.

What it is not: an HTTP cache. It does not revalidate, does not read ``max-age``/``Expires``
(the ``ttl`` is the freshness it allows) and serves knowingly stale content under overload,
as ``stale-if-error`` would. Apps whose responses must never be served stale say
``no-store`` or ``private``.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .._stats import GateStats
from ._base import Answer, Headers, RequestInfo, ResponseInfo, directives, header_values
from .read_only import utilization

__all__ = ["CacheOnlyPolicy", "KeyFunction"]

logger = logging.getLogger("lockgate")

KeyFunction = Callable[[RequestInfo], str | None]
"""Returns a string added to the built-in key (method, path, query), or ``None``: don't cache."""
_Key = tuple[str, bytes, str, bytes, str | None]  # method, origin, path, query, user's part

CREDENTIAL_HEADERS = frozenset({
    b"authorization", b"proxy-authorization", b"cookie",
    b"x-api-key", b"api-key", b"x-auth-token", b"x-access-token",
})
MAX_VARIANTS = 8
"""Stored variants (different ``Vary`` values) of one URL at most."""
_DROPPED = frozenset({
    b"age", b"connection", b"content-length", b"keep-alive", b"proxy-connection",
    b"te", b"trailer", b"transfer-encoding", b"upgrade", b"x-lockgate-cache",
    b"x-queue-wait-time",
})
_HIT = (b"x-lockgate-cache", b"hit")


@dataclass(slots=True, eq=False)
class _Stored:
    vary: tuple[bytes, ...]
    varied: tuple[bytes | None, ...]
    stored_at: float
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


class CacheOnlyPolicy:
    """Serve GETs from a small TTL/LRU cache under heavy load. See the module docstring."""

    wants_body = True

    def __init__(
        self,
        threshold: float = 0.95,
        ttl: float = 30.0,
        max_entries: int = 1000,
        max_body: int = 256 * 1024,
        key: KeyFunction | None = None,
        *,
        key_covers_credentials: bool = False,
        credential_headers: Iterable[str] = (),
        max_bytes: int = 32 * 1024 * 1024,
        measure: Callable[[GateStats], float] = utilization,
    ) -> None:
        if not (math.isfinite(threshold) and threshold >= 0):
            raise ValueError("threshold must be a finite number >= 0")
        if not (math.isfinite(ttl) and ttl > 0):
            raise ValueError("ttl must be a finite number > 0")
        if max_entries < 1 or max_body < 0 or max_bytes < 0:
            raise ValueError("max_entries must be >= 1, max_body and max_bytes >= 0")
        if key_covers_credentials and key is None:
            raise ValueError("key_covers_credentials needs a key function")
        self.threshold, self.ttl, self.measure = threshold, ttl, measure
        self.max_entries, self.max_body, self.max_bytes = max_entries, max_body, max_bytes
        self.key, self.key_covers_credentials = key, key_covers_credentials
        self.credential_headers = CREDENTIAL_HEADERS | {
            h.lower().encode("latin-1") for h in credential_headers
        }
        self._entries: OrderedDict[_Key, list[_Stored]] = OrderedDict()
        self._count = 0
        self._bytes = 0
        self._key_failed = False
        self._serving = False

    @property
    def active(self) -> bool:
        """Was the load at or above ``threshold`` at the last request (cache hits served)?"""
        return self._serving

    def __len__(self) -> int:
        """Stored responses (variants included), expired ones not yet dropped too."""
        return self._count

    def before(self, request: RequestInfo, stats: GateStats, now: float) -> Answer | None:
        self._serving = serving = self.measure(stats) >= self.threshold
        if request.method != "GET" or not serving:
            return None
        base = self._base_key(request)
        bucket = self._entries.get(base) if base is not None else None
        if base is None or not bucket:
            return None
        self._drop_expired(base, bucket, now)
        for stored in bucket:
            if stored.varied == _varied(request.headers, stored.vary):
                self._entries.move_to_end(base)
                age = (b"age", str(max(0, int(now - stored.stored_at))).encode())
                return Answer(status=200, headers=(*stored.headers, age, _HIT), body=stored.body)
        return None

    def after(self, request: RequestInfo, response: ResponseInfo, now: float) -> None:
        body = response.body
        if (
            request.method != "GET" or response.status != 200 or response.error
            or body is None or len(body) > self.max_body or len(body) > self.max_bytes
        ):
            return
        headers = response.headers
        covered = self.key_covers_credentials
        cache_control = directives(header_values(headers, b"cache-control"))
        if "no-store" in cache_control or ("private" in cache_control and not covered):
            return
        if not covered and header_values(headers, b"set-cookie"):
            return
        vary = tuple(sorted(directives(header_values(headers, b"vary"))))
        if "*" in vary:
            return
        base = self._base_key(request)
        if base is None:
            return
        names = tuple(name.encode("latin-1") for name in vary)
        kept = [(bytes(k).lower(), bytes(v)) for k, v in headers]
        kept = [(k, v) for k, v in kept if k not in _DROPPED]
        kept.append((b"content-length", str(len(body)).encode()))
        varied = _varied(request.headers, names)
        self._store(base, _Stored(names, varied, now, tuple(kept), body), now)

    def _base_key(self, request: RequestInfo) -> _Key | None:
        """Method, origin (scheme, ``Host``, root path), path, query and the user's key;
        ``None``: not cacheable. The origin keeps one tenant's or virtual host's page from
        answering another's."""
        if not self.key_covers_credentials and any(
            bytes(name).lower() in self.credential_headers for name, _ in request.headers
        ):
            return None
        origin = _origin(request)
        if self.key is None:
            return (request.method, origin, request.path, request.query_string, None)
        try:
            extra = self.key(request)
        except Exception:
            if not self._key_failed:
                self._key_failed = True
                logger.exception("CacheOnlyPolicy key function failed; not caching")
            return None
        if not isinstance(extra, str):
            return None
        return (request.method, origin, request.path, request.query_string, extra)

    def _store(self, base: _Key, stored: _Stored, now: float) -> None:
        bucket = self._entries.pop(base, [])
        self._drop_expired(base, bucket, now)
        for old in [s for s in bucket if s.varied == stored.varied and s.vary == stored.vary]:
            self._forget(bucket, old)
        bucket.insert(0, stored)
        self._count += 1
        self._bytes += len(stored.body)
        while len(bucket) > MAX_VARIANTS:
            self._forget(bucket, bucket[-1])
        self._entries[base] = bucket
        while self._count > self.max_entries or self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._count -= len(evicted)
            self._bytes -= sum(len(s.body) for s in evicted)

    def _drop_expired(self, base: _Key, bucket: list[_Stored], now: float) -> None:
        for stored in [s for s in bucket if now - s.stored_at >= self.ttl]:
            self._forget(bucket, stored)
        if not bucket:
            self._entries.pop(base, None)

    def _forget(self, bucket: list[_Stored], stored: _Stored) -> None:
        bucket.remove(stored)
        self._count -= 1
        self._bytes -= len(stored.body)

    def __repr__(self) -> str:
        return (
            f"CacheOnlyPolicy(threshold={self.threshold}, ttl={self.ttl},"
            f" max_entries={self.max_entries}, max_body={self.max_body})"
        )


def _varied(headers: Headers, names: tuple[bytes, ...]) -> tuple[bytes | None, ...]:
    """The request's values of the ``Vary`` header ``names`` (``None``: absent)."""
    values = []
    for name in names:
        found = header_values(headers, name)
        values.append(b", ".join(found) if found else None)
    return tuple(values)


def _origin(request: RequestInfo) -> bytes:
    """``scheme://host`` and the root path the app is mounted at, as the client addressed it
    (the ``Host`` header, else the server's address)."""
    scope = request.scope
    host = next((bytes(v) for k, v in request.headers if bytes(k).lower() == b"host"), None)
    if host is None:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}".encode() if isinstance(server, tuple | list) else b""
    scheme = str(scope.get("scheme", "http")).encode("latin-1", "replace")
    root = str(scope.get("root_path", "")).encode("utf-8", "surrogateescape")
    return scheme + b"://" + host.lower() + b"\x00" + root

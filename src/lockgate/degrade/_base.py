"""The degradation-policy protocol: what a policy is asked before admission and told after.

A policy looks at the request and a ``GateStats`` snapshot and either lets it pass (returns
``None``) or answers it itself (returns an ``Answer``: a structured 503 with a reason, or a
complete response such as a cached one). Policies run in order; the first answer wins.

Every policy that let a request pass is told, exactly once, how it ended (``after``) — also
when the app never ran it (a later policy answered, the scheduler rejected it, the client left
or the request was cancelled): ``ResponseInfo.status`` is then ``0``. A ``ResponseInfo``
describes what the *app* did, never lockgate's own answers. ``after`` gets the same
``RequestInfo`` object that ``before`` got.

Policies are synchronous and must not block; the gate treats an exception from ``before`` as
"pass" and one from ``after`` as nothing (``PolicyChain`` does both). ``now`` is the gate's
monotonic clock in seconds, the same clock the scheduler uses, so tests drive policies with
made-up times.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from .._exceptions import RejectReason
from .._lanes import Priority
from .._stats import GateStats
from .._types import Scope

__all__ = [
    "DEFAULT_BODY_CAPTURE",
    "Answer",
    "DegradationPolicy",
    "RequestInfo",
    "ResponseInfo",
    "body_capture_limit",
    "directives",
    "header_values",
    "load_policy",
]

ENTRY_POINT_GROUP = "lockgate.policies"
DEFAULT_BODY_CAPTURE = 256 * 1024
"""Body bytes the gate captures for a policy that wants bodies but names no ``max_body``."""

Headers = Sequence[tuple[bytes, bytes]]
_QUOTED = re.compile(rb'"(?:[^"\\]|\\.)*"')


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a policy may know of a request (built once per request, only when policies exist).

    ``headers`` are the scope's raw request headers (lower-case names, per ASGI). ``scope``
    is a shallow copy of the scope the gate received, unchanged by the app's routing.
    """

    scope: Scope
    method: str
    path: str
    lane: Priority
    headers: Headers

    @property
    def query_string(self) -> bytes:
        """The raw query string (``b""`` when absent)."""
        value = self.scope.get("query_string", b"")
        return bytes(value) if isinstance(value, bytes | bytearray) else b""


@dataclass(frozen=True, slots=True)
class ResponseInfo:
    """How a request the policy let pass ended.

    ``status`` is the status the app sent, ``0`` when the app never started a response (not
    admitted, cancelled, or it raised first). ``body`` is ``None`` unless a policy asked for
    bodies (``wants_body``), the app finished without error, and the body stayed within the
    gate's capture bound (``body_capture_limit``).
    """

    status: int
    headers: Headers = ()
    body: bytes | None = None
    error: bool = False
    """The app raised an exception (not a cancellation) instead of finishing its response."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A policy's answer in place of the app.

    With ``reason`` set it is a lockgate rejection (``503``, the structured JSON body, and
    ``Retry-After`` = ``retry_after`` or the gate's own estimate); otherwise ``status``,
    ``headers`` and ``body`` are sent as they are (e.g. a cached response).
    """

    reason: RejectReason | None = None
    retry_after: int | None = None
    status: int = 503
    headers: Headers = field(default=())
    body: bytes = b""


@runtime_checkable
class DegradationPolicy(Protocol):
    """A rule that makes the service cheaper under load. See the module docstring."""

    wants_body: bool
    """Should the gate capture response bodies for ``after`` (bounded)? Only caches need it.
    A policy may also have ``max_body: int``, the bytes it would store at most."""

    def before(self, request: RequestInfo, stats: GateStats, now: float) -> Answer | None:
        """Answer the request instead of the app, or ``None`` to let it go on."""
        ...

    def after(self, request: RequestInfo, response: ResponseInfo, now: float) -> None:
        """Learn how a request this policy let pass ended (``status == 0``: the app never
        answered it). A policy may also have ``started(request, status, now)``: called when
        the app starts its response, before a stream's body."""
        ...


def body_capture_limit(policies: Sequence[DegradationPolicy]) -> int:
    """How many response-body bytes the gate must capture for ``policies``: the largest
    ``max_body`` of those that want bodies (``DEFAULT_BODY_CAPTURE`` if they name none);
    ``0`` when none wants bodies, and the gate captures nothing."""
    limits = [
        max(0, int(getattr(policy, "max_body", DEFAULT_BODY_CAPTURE)))
        for policy in policies
        if policy.wants_body
    ]
    return max(limits, default=0)


def header_values(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of header ``name`` (lower-case), in order; names compared case-blind."""
    return [bytes(value) for key, value in headers if bytes(key).lower() == name]


def directives(values: Iterable[bytes]) -> set[str]:
    """Lower-case names in comma-separated header values (``Cache-Control``, ``Vary``);
    quoted arguments are skipped, so ``no-cache="private"`` does not name ``private``."""
    names = set()
    for value in values:
        for part in _QUOTED.sub(b"", value).split(b","):
            name = part.split(b"=", 1)[0].strip().lower()
            if name:
                names.add(name.decode("latin-1"))
    return names


def load_policy(name: str, **kwargs: Any) -> DegradationPolicy:
    """Instantiate the policy registered as ``name`` in the ``lockgate.policies`` group."""
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        available = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        raise LookupError(f"no policy named {name!r} (available: {', '.join(available)})")
    policy = next(iter(found)).load()(**kwargs)
    if not isinstance(policy, DegradationPolicy):
        raise TypeError(f"{name!r} did not produce a DegradationPolicy: {policy!r}")
    return policy

"""The degradation-policy protocol: what a policy is asked before admission and told after.

A policy looks at the request and a ``GateStats`` snapshot and either lets it pass (returns
``None``) or answers it itself (returns an ``Answer``: a structured 503 with a reason, or a
complete response such as a cached one). After an admitted request finishes, each policy that
asked for it is told the outcome (``after``). Policies run in order; the first answer wins.
They are synchronous and must not block or raise: the gate treats an exception as "pass".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .._exceptions import RejectReason
from .._lanes import Priority
from .._stats import GateStats
from .._types import Scope

__all__ = ["Answer", "DegradationPolicy", "RequestInfo", "ResponseInfo"]

Headers = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a policy may know of a request (built once per request, only when policies exist)."""

    scope: Scope
    method: str
    path: str
    lane: Priority
    headers: Headers


@dataclass(frozen=True, slots=True)
class ResponseInfo:
    """How an admitted request ended. ``body`` is ``None`` unless a policy asked for bodies
    (``wants_body``) and the body stayed under the gate's capture bound."""

    status: int
    headers: Headers = ()
    body: bytes | None = None
    error: bool = False
    """The app raised instead of finishing its response."""


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
    """Should the gate capture response bodies for ``after`` (bounded)? Only caches need it."""

    def before(self, request: RequestInfo, stats: GateStats, now: float) -> Answer | None:
        """Answer the request instead of the app, or ``None`` to let it go on."""
        ...

    def after(self, request: RequestInfo, response: ResponseInfo, now: float) -> None:
        """Learn how an admitted request ended."""
        ...

"""``PolicyChain``: the ordered chain of policies, as the gate runs it.

The chain owns the rules the gate must follow so that every policy sees the contract of
``_base``: the first answer wins; a policy that raises in ``before`` counts as "pass" and one
that raises in ``after`` is ignored (logged once per policy and method, not per request);
``after`` reaches exactly the policies that let the request pass.

It keeps no per-request state: ``before`` returns how many policies were asked and passed,
and the gate hands that number back to ``after``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .._stats import GateStats
from ._base import (
    Answer,
    DegradationPolicy,
    RequestInfo,
    ResponseInfo,
    body_capture_limit,
    load_policy,
)

__all__ = ["PolicyChain"]

logger = logging.getLogger("lockgate")


class PolicyChain:
    """Ordered policies; strings are loaded by name from the ``lockgate.policies`` group."""

    __slots__ = ("_logged", "capture_limit", "policies", "wants_body")

    def __init__(self, policies: Iterable[DegradationPolicy | str] = ()) -> None:
        self.policies: tuple[DegradationPolicy, ...] = tuple(
            load_policy(p) if isinstance(p, str) else p for p in policies
        )
        for policy in self.policies:
            if not isinstance(policy, DegradationPolicy):
                raise TypeError(f"not a DegradationPolicy: {policy!r}")
        self.capture_limit = body_capture_limit(self.policies)
        """Response-body bytes the gate captures for ``after``; 0: capture nothing."""
        self.wants_body = self.capture_limit > 0
        self._logged: set[tuple[int, str]] = set()

    def __bool__(self) -> bool:
        return bool(self.policies)

    def before(
        self, request: RequestInfo, stats: GateStats, now: float
    ) -> tuple[Answer | None, int]:
        """Ask each policy in order. Returns ``(answer, passed)``: the first answer (or
        ``None``) and how many policies let the request pass before it."""
        for index, policy in enumerate(self.policies):
            try:
                answer = policy.before(request, stats, now)
            except Exception:
                self._log_once(policy, "before")
                continue
            if answer is not None:
                return answer, index
        return None, len(self.policies)

    def after(
        self, request: RequestInfo, passed: int, response: ResponseInfo, now: float
    ) -> None:
        """Tell the first ``passed`` policies how the request ended."""
        for policy in self.policies[:passed]:
            try:
                policy.after(request, response, now)
            except Exception:
                self._log_once(policy, "after")

    def started(self, request: RequestInfo, passed: int, status: int, now: float) -> None:
        """Tell the first ``passed`` policies that have a ``started`` method the status the
        app answered with, as it starts its response (a stream may run for long after)."""
        for policy in self.policies[:passed]:
            started = getattr(policy, "started", None)
            if started is None:
                continue
            try:
                started(request, status, now)
            except Exception:
                self._log_once(policy, "started")

    def _log_once(self, policy: DegradationPolicy, where: str) -> None:
        if (id(policy), where) in self._logged:
            return
        self._logged.add((id(policy), where))
        logger.exception("degradation policy %r failed in %s(); ignored", policy, where)

    def __repr__(self) -> str:
        return f"PolicyChain({list(self.policies)!r})"

"""``CircuitBreakerPolicy``: stop sending requests to an app that keeps failing.

After ``failure_threshold`` *consecutive* failures of the app — a ``5xx`` status or an
exception (``ResponseInfo.error``) — the circuit opens: every request is answered ``503
CIRCUIT_OPEN`` with ``Retry-After`` = the seconds until it half-opens (at least 1). After
``recovery_timeout`` seconds it half-opens and lets exactly one request through as a probe;
the others keep getting ``CIRCUIT_OPEN`` (``Retry-After: 1``: the answer is near). The probe
decides: a status below 500 closes the circuit, a failure opens it for another
``recovery_timeout``. A probe that ends without an answer from the app (rejected by the
queue, client gone, cancelled) frees the slot for the next request; one still unanswered
after ``probe_timeout`` (default ``recovery_timeout``) counts as a failure, so a lost or hung
probe never wedges the breaker half-open.

With ``prefix`` (a path prefix or several) it watches and guards only matching paths; give
each route its own breaker with ``CircuitBreakerPolicy.per_prefix([...])``.

What it is not: a timeout, a retry or a rate limiter; lockgate's own rejections are not app
failures and never count. The state is per policy instance (per process).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

from .._exceptions import RejectReason
from .._stats import GateStats
from .._types import Scope
from ._base import Answer, RequestInfo, ResponseInfo

__all__ = ["CircuitBreakerPolicy"]

State = Literal["closed", "open", "half_open"]


class CircuitBreakerPolicy:
    """Answer ``CIRCUIT_OPEN`` while the app keeps failing. See the module docstring."""

    wants_body = False

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_timeout: float = 60.0,
        prefix: str | Iterable[str] | None = None,
        *,
        probe_timeout: float | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if not (math.isfinite(recovery_timeout) and recovery_timeout > 0):
            raise ValueError("recovery_timeout must be a finite number > 0")
        if probe_timeout is None:
            probe_timeout = recovery_timeout
        if not (math.isfinite(probe_timeout) and probe_timeout > 0):
            raise ValueError("probe_timeout must be a finite number > 0")
        self.failure_threshold = failure_threshold
        self.recovery_timeout = recovery_timeout
        self.probe_timeout = probe_timeout
        self.prefixes: tuple[str, ...] | None = (
            None if prefix is None else (prefix,) if isinstance(prefix, str) else tuple(prefix)
        )
        if self.prefixes == ():
            raise ValueError("prefix must name at least one prefix (or be None)")
        self.failures = 0
        """Consecutive failures seen while closed."""
        self._opened_at: float | None = None
        self._probe: Scope | None = None
        self._probe_deadline = 0.0

    @classmethod
    def per_prefix(cls, prefixes: Iterable[str], **kwargs: Any) -> list[CircuitBreakerPolicy]:
        """One independent breaker per prefix (same settings), to put in a policy chain."""
        return [cls(prefix=prefix, **kwargs) for prefix in prefixes]

    def applies(self, path: str) -> bool:
        return self.prefixes is None or path.startswith(self.prefixes)

    def state(self, now: float) -> State:
        """``closed``, ``open`` or ``half_open`` at ``now``. Reads only: metrics may ask from
        another thread (an exporter's), so the state the event loop changes is left alone."""
        opened, probe, deadline = self._opened_at, self._probe, self._probe_deadline
        if probe is not None and now >= deadline:  # the probe failed by going unanswered
            opened = deadline
        if opened is None:
            return "closed"
        return "open" if now < opened + self.recovery_timeout else "half_open"

    def before(self, request: RequestInfo, stats: GateStats, now: float) -> Answer | None:
        if not self.applies(request.path):
            return None
        self._expire_probe(now)
        opened = self._opened_at
        if opened is None:
            return None
        wait = opened + self.recovery_timeout - now
        if wait > 0:
            return Answer(reason=RejectReason.CIRCUIT_OPEN, retry_after=max(1, math.ceil(wait)))
        if self._probe is None:
            self._probe = request.scope
            self._probe_deadline = now + self.probe_timeout
            return None
        return Answer(reason=RejectReason.CIRCUIT_OPEN, retry_after=1)

    def after(self, request: RequestInfo, response: ResponseInfo, now: float) -> None:
        if not self.applies(request.path):
            return
        failed = response.error or response.status >= 500
        answered = failed or response.status > 0
        self._expire_probe(now)
        state = self.state(now)
        if state == "closed":
            if failed:
                self.failures += 1
                if self.failures >= self.failure_threshold:
                    self._open(now)
            elif answered:
                self.failures = 0
        elif self._probe is not None and request.scope is self._probe:
            if not answered:
                self._probe = None  # the next request becomes the probe
            elif failed:
                self._open(now)
            else:
                self._opened_at, self._probe, self.failures = None, None, 0
        # else: a request admitted before the circuit opened, or not the probe: no verdict.

    def started(self, request: RequestInfo, status: int, now: float) -> None:
        """The probe's verdict comes with its status, not at the end of its body: a healthy
        stream that outlives ``probe_timeout`` must not count as unanswered."""
        if self._probe is not None and request.scope is self._probe and now < self._probe_deadline:
            if status >= 500:
                self._open(now)
            else:
                self._opened_at, self._probe, self.failures = None, None, 0

    def _open(self, at: float) -> None:
        self._opened_at, self._probe, self.failures = at, None, 0

    def _expire_probe(self, now: float) -> None:
        """A probe unanswered past its deadline failed: open again from that deadline."""
        if self._probe is not None and now >= self._probe_deadline:
            self._open(self._probe_deadline)

    def __repr__(self) -> str:
        return (
            f"CircuitBreakerPolicy(failure_threshold={self.failure_threshold},"
            f" recovery_timeout={self.recovery_timeout}, prefix={self.prefixes!r})"
        )

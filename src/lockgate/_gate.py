"""``Gate``: the pure ASGI wrapper, and the only module that knows ASGI messages.

Per HTTP request: classify → take a seat (at once, or wait in the lane's queue while watching
for the client to leave) → run the app → give the seat back in ``finally``, after the last
body chunk was sent. Rejections are complete ``503`` JSON responses of the gate's own; the
app and its framework never see them. Nothing per request is stored on ``self``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from asyncio.events import _get_running_loop
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ._classifier import Classifier, RuleClassifier, load_classifier
from ._clock import Clock, MonotonicClock
from ._exceptions import Rejected, RejectReason
from ._lanes import Priority
from ._permit import Permit
from ._responses import send_json, send_rejection, status_body
from ._scheduler import PriorityScheduler
from ._settings import GateSettings
from ._stats import GateStats
from ._trust import is_trusted_client, parse_networks
from ._types import ASGIApp, Message, Receive, Scope, Send
from ._watch import Watcher
from .backends import Backend
from .degrade import (
    Answer,
    CacheOnlyPolicy,
    CircuitBreakerPolicy,
    DegradationPolicy,
    PolicyChain,
    ReadOnlyPolicy,
    RequestInfo,
    ResponseInfo,
)

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter

__all__ = ["Gate"]

logger = logging.getLogger("lockgate")

QUEUE_WAIT_HEADER_AFTER = 0.1
"""Admitted requests that waited longer than this many seconds get ``X-Queue-Wait-Time``."""
POLICY_RETRY_AFTER_MAX = 3600
"""A policy's ``Retry-After`` is capped at an hour (a breaker's recovery time may well be
longer than the scheduler's own cap of 60 s; 10**12 seconds is nonsense)."""
POLICY_STATS_EVERY = 0.01
"""Seconds a ``GateStats`` snapshot is reused for the degradation policies."""


_BACKEND_FIELDS = (
    "max_concurrent", "queue_capacity", "wait_timeout", "reject_threshold", "lanes",
    "target_wait", "limit",
)
"""The settings a backend counts seats and queues by."""


def _agreed_settings(settings: GateSettings | None, backend: Backend | None) -> GateSettings:
    """The gate's settings: ``settings``, else the backend's, else ``GateSettings()``. A
    backend built with other seats, queue or lanes than the gate's is an error, not a
    silent second configuration (``RedisBackend(url)`` without ``settings=`` reads only
    the defaults and the environment)."""
    own = getattr(backend, "settings", None)
    if not isinstance(own, GateSettings):
        return settings if settings is not None else GateSettings()
    if settings is None:
        return own
    differ = [
        f"{name} {getattr(own, name)!r} != {getattr(settings, name)!r}"
        for name in _BACKEND_FIELDS if getattr(own, name) != getattr(settings, name)
    ]
    if differ:
        raise ValueError(
            "the backend was built with other settings than the gate's ("
            + "; ".join(differ) + "): pass the same GateSettings to both, e.g. "
            "Gate(app, settings, backend=RedisBackend(url, settings=settings)), or leave "
            "the gate's out"
        )
    return settings


class Gate:
    """Admission control for an ASGI app: bounded seats, priority lanes, a bounded queue.

    ``Gate(app, settings)`` is itself an ASGI app. ``lifespan`` and ``websocket`` scopes pass
    straight through, as do ``settings.bypass_paths`` (and their sub-paths). The gate serves
    its JSON status at ``settings.status_path``. ``ENABLE_BACKPRESSURE=false`` makes it a
    pass-through.
    """

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        settings: GateSettings | None = None,
        *,
        classifier: Classifier | str | None = None,
        policies: Iterable[DegradationPolicy | str] = (),
        backend: Backend | None = None,
        meter: Meter | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.app: ASGIApp = app  # any ASGI 3 callable (framework-typed ones included)
        self.settings = _agreed_settings(settings, backend)
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        if isinstance(classifier, str):
            classifier = load_classifier(classifier)
        self.classifier: Classifier = classifier if classifier is not None else RuleClassifier()
        self.scheduler: Backend = (
            backend if backend is not None
            else PriorityScheduler.from_settings(self.settings, self._clock)
        )
        self._backend_start = getattr(self.scheduler, "start", None)
        self._backend_close = getattr(self.scheduler, "aclose", None)
        self.policies = PolicyChain(policies)
        self._has_policies = bool(self.policies)  # the chain is a tuple: fixed from here on
        self._snapshot: tuple[float, GateStats] | None = None
        self._enabled = self.settings.enabled
        self._status_path = self.settings.status_path
        self._bypass = _path_matcher(self.settings.bypass_paths)
        # Every path the gate treats specially starts with one of these, so one C-level
        # ``startswith`` sends ordinary requests past the status and bypass checks.
        status = (self._status_path,) if self._status_path else ()
        self._special = tuple(p.rstrip("/") or "/" for p in (*self.settings.bypass_paths, *status))
        self._classify = self.classifier.classify
        # A rule-less RuleClassifier always answers its default lane: skip the call (its
        # ``fixed`` follows later changes to its rules or default).
        self._plain = self.classifier if type(self.classifier) is RuleClassifier else None
        self._try_acquire = self.scheduler.try_acquire
        scheduler = self.scheduler
        self._take: Callable[[Priority], bool] | None = None
        self._give: Callable[[Priority], None] = lambda lane: None
        if isinstance(scheduler, PriorityScheduler) and not scheduler.adaptive:
            self._take, self._give = scheduler._take_untimed, scheduler._give_untimed
        self._deadline_mode = self.settings.deadline_headers
        self._trusted = parse_networks(self.settings.trusted_proxies)
        self._adaptive = self.scheduler.adaptive
        from .otel import GateMetrics  # metrics (issue 5): observed from stats() at collection

        self.metrics = GateMetrics(
            self.scheduler.stats, meter, degradation=self._degradation_modes
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._enabled:
            if scope["type"] == "lifespan" and self._backend_start is not None:
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith(self._special):
            if path == self._status_path:
                mode = getattr(self.scheduler, "mode", None)
                await send_json(send, 200, status_body(self.scheduler.stats(), mode))
                return
            if self._bypass(path):
                await self.app(scope, receive, send)
                return
        plain = self._plain
        lane = plain.fixed if plain is not None else None
        if lane is None:
            try:
                lane = self._classify(scope)
            except Exception:
                logger.exception("classifier failed; using the default lane")
                lane = Priority.NORMAL
        if self._has_policies:
            await self._with_policies(scope, receive, send, lane)
            return
        take = self._take  # in-process, not adaptive: most admissions need no permit
        if take is not None and take(lane):
            try:
                await self.app(scope, receive, send)
            finally:
                self._give(lane)
            return
        # ``_admit`` inlined: the common case costs no extra coroutine frame.
        permit = self._try_acquire(lane)
        if permit is None:
            await self._queued(self.app, scope, receive, send, lane)
        elif self._adaptive:
            await self._run_sampled(self.app, permit, scope, receive, send)
        else:
            try:
                await self.app(scope, receive, send)
            finally:
                permit.release()

    async def _admit(
        self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, lane: Priority
    ) -> None:
        """Take a seat (at once or after queueing), run ``app``, give the seat back."""
        permit = self._try_acquire(lane)
        if permit is None:
            await self._queued(app, scope, receive, send, lane)
        elif self._adaptive:
            await self._run_sampled(app, permit, scope, receive, send)
        else:
            try:
                await app(scope, receive, send)
            finally:
                permit.release()

    async def _with_policies(
        self, scope: Scope, receive: Receive, send: Send, lane: Priority
    ) -> None:
        """Ask the degradation policies first; tell them how the app's response ended."""
        policies = self.policies
        # A copy: the app may rewrite the scope as it routes (Starlette's Mount and
        # FastAPI's root_path change "root_path" in place), and a policy must see in
        # ``after`` the request it saw in ``before`` (a cache keys on both).
        request = RequestInfo(dict(scope), scope.get("method", "GET"), scope["path"], lane,
                              scope.get("headers", ()))
        now = self._clock.now()
        answer, passed = policies.before(request, self._policy_stats(now), now)
        if answer is not None:
            try:
                await self._answer(send, lane, answer)
            finally:
                policies.after(request, passed, ResponseInfo(0), self._clock.now())
            return
        status, headers, error = 0, [], False
        chunks: list[bytes] | None = [] if policies.wants_body else None
        room, complete, gone = policies.capture_limit, False, False

        async def observed(scope: Scope, receive: Receive, app_send: Send) -> None:
            # Only the app's own failures are errors: not the gate's rejections, nor a
            # client that left (a send that raises OSError, or an http.disconnect read).
            async def capture(message: Message) -> None:
                nonlocal status, headers, chunks, room, complete, gone
                if message["type"] == "http.response.start":
                    status, headers = message["status"], message.get("headers", [])
                    policies.started(request, passed, status, self._clock.now())
                elif message["type"] == "http.response.body":
                    complete = not message.get("more_body", False)
                    body = message.get("body", b"")
                    room -= len(body)
                    if chunks is not None and room >= 0:
                        chunks.append(body)
                    else:
                        chunks = None
                try:
                    await app_send(message)
                except OSError:
                    gone = True
                    raise

            async def noting() -> Message:
                nonlocal gone
                message = await receive()
                gone = gone or message["type"] == "http.disconnect"
                return message

            nonlocal error
            try:
                await self.app(scope, noting, capture)
            except Exception:
                error = not gone
                raise
            # returned without an answer: the server answers 500 for it
            error = status == 0 and not gone

        try:
            await self._admit(observed, scope, receive, send, lane)
        finally:
            body = b"".join(chunks) if chunks is not None and complete and not error else None
            response = ResponseInfo(status, headers, body, error)
            policies.after(request, passed, response, self._clock.now())

    async def _answer(self, send: Send, lane: Priority, answer: Answer) -> None:
        """Send a policy's answer: a structured rejection or a complete response."""
        if answer.reason is not None:
            self.scheduler.record_rejection(lane, answer.reason)
            retry = _policy_retry_after(answer.retry_after)
            if retry is None:
                retry = self.scheduler.retry_after(lane)
            await send_rejection(send, answer.reason, retry)
            return
        start = {"type": "http.response.start", "status": answer.status,
                 "headers": list(answer.headers)}
        await send(start)
        await send({"type": "http.response.body", "body": answer.body})

    def _policy_stats(self, now: float) -> GateStats:
        """A snapshot for the policies, rebuilt at most every 10 ms (it costs ~10 us)."""
        if self._snapshot is None or now - self._snapshot[0] >= POLICY_STATS_EVERY:
            self._snapshot = (now, self.scheduler.stats())
        return self._snapshot[1]

    async def _run_sampled(
        self, app: ASGIApp, permit: Permit, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Run the app and tell an adaptive limit how it went: overload answers (the app's
        own 429/503/504, or a ``TimeoutError``) are drops; cancelled runs are no sample."""
        status = 0

        async def watch_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, watch_status)
        except BaseException as exc:
            cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
            permit.release(dropped=isinstance(exc, TimeoutError), sample=not cancelled)
            raise
        permit.release(dropped=status in _OVERLOAD_STATUSES)

    async def _queued(
        self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, lane: Priority
    ) -> None:
        """The slow path: wait for a seat while a ``Watcher`` looks for the client leaving."""
        permit: Permit | None = None
        rejected: RejectReason | None = None
        budget = self._budget(scope) if self._deadline_mode != "off" else None
        task = asyncio.current_task() if _get_running_loop() is not None else None
        watcher = Watcher(receive)
        try:
            if task is not None:
                # asyncio: a plain task watches, and cancels this one on a disconnect (an
                # anyio task group costs several times more, on every queued request).
                watcher.start(scope, task.cancel)
                try:
                    permit = await self.scheduler.acquire(lane, budget=budget)
                except Rejected as exc:
                    rejected = exc.reason  # not the exception: its traceback holds this frame
                except asyncio.CancelledError:
                    # Ours (the client left) unless someone else cancelled this task too.
                    if not watcher.disconnected or task.uncancel():
                        raise
            else:
                with anyio.CancelScope() as waiting:
                    watcher.start(scope, waiting.cancel, trio=True)
                    try:
                        permit = await self.scheduler.acquire(lane, budget=budget)
                    except Rejected as exc:
                        rejected = exc.reason
                if permit is not None:  # a disconnect read in the instant of the grant is
                    await anyio.lowlevel.cancel_shielded_checkpoint()  # seen before the app
            # Past this point a cancellation may still arrive: the seat is released and the
            # watcher stopped in the ``finally`` whatever happens.
            if rejected is not None:
                watcher.close()
                if not watcher.disconnected:
                    retry = self.scheduler.retry_after(lane)
                    await send_rejection(send, rejected, retry)
                return
            if permit is None or watcher.disconnected:  # the client left: it takes no seat
                return
            self.metrics.record_wait(lane, permit.waited)  # queued admissions only (otel.py)
            receive = watcher.hand_over()
            if permit.waited > QUEUE_WAIT_HEADER_AFTER:
                send = _with_wait_header(send, permit.waited)
            if self._adaptive:
                await self._run_sampled(app, permit, scope, receive, send)
            else:
                await app(scope, receive, send)
        finally:
            watcher.close()
            if permit is not None:
                permit.release()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start the backend (e.g. Redis) before the app's start-up; close it after the
        app's shutdown. The app's own lifespan handling is otherwise untouched."""

        async def receive_() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup" and self._backend_start is not None:
                await self._backend_start()
            return message

        async def send_(message: Message) -> None:
            closing = ("lifespan.shutdown.complete", "lifespan.shutdown.failed")
            if message["type"] in closing and self._backend_close is not None:
                await self._backend_close()
            await send(message)

        await self.app(scope, receive_, send_)

    def _degradation_modes(self) -> dict[str, bool]:
        """Which built-in degradation modes are on (``backpressure_degradation_mode``)."""
        now, modes = self._clock.now(), dict[str, bool]()
        for policy in self.policies.policies:
            if isinstance(policy, ReadOnlyPolicy):
                modes["read_only"] = modes.get("read_only", False) or policy.active
            elif isinstance(policy, CacheOnlyPolicy):
                modes["cache_only"] = modes.get("cache_only", False) or policy.active
            elif isinstance(policy, CircuitBreakerPolicy):
                is_open = policy.state(now) != "closed"
                modes["circuit_breaker"] = modes.get("circuit_breaker", False) or is_open
        return modes

    def _budget(self, scope: Scope) -> float | None:
        """The request's deadline, if the settings let lockgate believe it."""
        if self._deadline_mode == "trusted" and not is_trusted_client(scope, self._trusted):
            return None
        return request_budget(scope)

    def stats(self) -> GateStats:
        """A frozen snapshot of the gate's seats, queue and counters."""
        return self.scheduler.stats()

    def __repr__(self) -> str:
        return f"Gate({self.app!r}, {self.scheduler!r})"


_OVERLOAD_STATUSES = frozenset({429, 503, 504})
_GRPC_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def request_budget(scope: Scope) -> float | None:
    """The deadline a request carries, in seconds from now, or None.

    ``X-Request-Timeout: <seconds>`` (a positive decimal) or gRPC's ``grpc-timeout``
    (up to 8 digits and a unit of H M S m u n). Malformed values are ignored.
    """
    for name, value in scope.get("headers", ()):
        name = bytes(name).lower()
        try:
            if name == b"x-request-timeout":
                seconds = float(value)
            elif name == b"grpc-timeout" and 2 <= len(value) <= 9 and value[:-1].isdigit():
                seconds = int(value[:-1]) * _GRPC_UNITS[bytes(value[-1:])]
            else:
                continue
        except (ValueError, KeyError):
            continue
        if 0.0 < seconds < math.inf:
            return seconds
    return None


def _path_matcher(paths: Iterable[str]) -> Any:
    """A fast predicate: is ``path`` one of ``paths`` or below one of them?"""
    paths = [p.rstrip("/") or "/" for p in paths]
    if not paths:
        return lambda path: False
    if "/" in paths:
        return lambda path: True
    alternatives = "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
    return re.compile(f"(?:{alternatives})(?:/|$)").match


def _policy_retry_after(given: object) -> int | None:
    """A policy's ``Answer.retry_after`` as DESIGN §5 wants it, an integer in 1..``POLICY_
    RETRY_AFTER_MAX``; ``None`` (the scheduler's estimate instead) for none or nonsense."""
    try:
        seconds = float(given)  # type: ignore[arg-type]  # anything, from a plugin
    except (TypeError, ValueError, OverflowError):
        return None
    if seconds == 0 or not math.isfinite(seconds):
        return None
    return max(1, min(POLICY_RETRY_AFTER_MAX, math.ceil(seconds)))


def _with_wait_header(send: Send, waited: float) -> Send:
    header = (b"x-queue-wait-time", f"{waited:.3f}".encode())

    async def send_with_header(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return send_with_header

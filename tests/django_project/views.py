"""Async views of the test project. The test installs its ``Probe`` with ``use()``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseNotAllowed,
    JsonResponse,
    StreamingHttpResponse,
)


class Boom(Exception):
    """What ``/boom`` raises (the test module has its own ``Boom`` for the other apps)."""


class Probe(Protocol):
    """What the views need from the test: a log of handler entries and held requests."""

    entered: list[str]

    async def hold(self, name: str) -> None: ...


_probe: Probe | None = None


def use(probe: Probe) -> None:
    """Route this process's Django views to ``probe`` (one test at a time)."""
    global _probe
    _probe = probe


def _current() -> Probe:
    if _probe is None:
        raise RuntimeError("views.use(probe) was not called")
    return _probe


async def hold(request: HttpRequest, name: str) -> HttpResponse:
    await _current().hold(name)
    return JsonResponse({"held": name})


async def fast(request: HttpRequest) -> HttpResponse:
    _current().entered.append("fast")
    return JsonResponse({"fast": True})


async def health(request: HttpRequest) -> HttpResponse:
    _current().entered.append("health")
    return JsonResponse({"status": "ok"})


def _json_object(request: HttpRequest) -> dict[str, Any] | None:
    try:
        payload = json.loads(request.body)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


async def echo(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    payload = _json_object(request)
    if payload is None or not isinstance(payload.get("data"), str):
        return HttpResponseBadRequest("expected {name, data}")
    _current().entered.append(f"echo:{payload.get('name')}")
    return JsonResponse({"name": payload.get("name"), "data": payload["data"]})


async def login(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    payload = _json_object(request)
    if payload is None or not isinstance(payload.get("user"), str):
        return HttpResponseBadRequest("expected {user}")
    _current().entered.append(f"login:{payload['user']}")
    return JsonResponse({"user": payload["user"], "token": "t0k3n"})


async def boom(request: HttpRequest) -> HttpResponse:
    _current().entered.append("boom")
    raise Boom("the view failed")


async def stream(request: HttpRequest) -> HttpResponse:
    probe = _current()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first,"
        await probe.hold("stream")  # the first chunk is already sent
        yield b"second"

    return StreamingHttpResponse(chunks(), content_type="text/plain")

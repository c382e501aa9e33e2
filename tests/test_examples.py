"""Every quick-start snippet of the README is a file under examples/; each is run here."""

from __future__ import annotations

import importlib
import os
import sys

import httpx
import pytest

from lockgate import Gate, Priority
from lockgate.testing import make_scope

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def get(app: object, method: str, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.request(method, path)


async def test_starlette_example() -> None:
    """The Starlette snippet: gated app answers, login classified HIGH, status served."""
    module = importlib.import_module("examples.starlette_app")
    app = module.app
    assert isinstance(app, Gate)
    assert (await get(app, "POST", "/api/v1/auth/login")).json() == {"token": "..."}
    assert (await get(app, "GET", "/api/v1/users/me")).status_code == 200
    assert app.classifier.classify(make_scope("/api/v1/auth/login", "POST")) is Priority.HIGH
    assert app.classifier.classify(make_scope("/batch/export", "POST")) is Priority.LOW
    status = (await get(app, "GET", "/metrics/backpressure")).json()
    assert status["data"]["lanes"]["high"]["admitted"] == 1
    assert app.stats().limit == 20


async def test_fastapi_example(monkeypatch: pytest.MonkeyPatch) -> None:
    """The FastAPI snippet: sized by the environment, the route answers through the gate."""
    monkeypatch.setenv("BACKPRESSURE_MAX_CONCURRENT", "20")
    monkeypatch.delitem(sys.modules, "examples.fastapi_app", raising=False)
    module = importlib.import_module("examples.fastapi_app")
    assert (await get(module.app, "GET", "/api/v1/users/me")).json() == {"user": "me"}
    assert module.app.stats().limit == 20 and module.app.stats().admitted == 1


async def test_quart_example() -> None:
    """The Quart snippet: the Quart object stays the app; its asgi_app is the gate."""
    module = importlib.import_module("examples.quart_app")
    assert isinstance(module.app.asgi_app, Gate)
    assert (await get(module.app, "GET", "/api/v1/users/me")).json() == {"user": "me"}
    assert module.app.asgi_app.stats().admitted == 1


async def test_django_example(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Django snippet wraps get_asgi_application(); settings come from the env."""
    from .test_frameworks import DJANGO_SETTINGS

    monkeypatch.setitem(os.environ, "DJANGO_SETTINGS_MODULE", DJANGO_SETTINGS)
    monkeypatch.setenv("BACKPRESSURE_MAX_CONCURRENT", "7")
    module = importlib.import_module("examples.django_asgi")
    module = importlib.reload(module)  # read the env of this test
    application = module.application
    assert isinstance(application, Gate)
    assert application.stats().limit == 7
    response = await get(application, "GET", "/no-such-page")
    assert response.status_code == 404  # Django's own answer: the request went through
    assert application.stats().admitted == 1

"""Shared fixtures. Async tests run on asyncio and trio unless a module pins the backend."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)

from __future__ import annotations

import pytest

from lockgate import Priority, PriorityScheduler


@pytest.mark.anyio
async def test_acquire_release_roundtrip() -> None:
    scheduler = PriorityScheduler(2)
    async with await scheduler.acquire(Priority.NORMAL) as permit:
        assert scheduler.stats().active == 1
        assert permit.lane is Priority.NORMAL
    assert scheduler.stats().active == 0

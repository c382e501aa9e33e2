"""The real clock's timers on trio (asyncio's are the loop's own): one task's heap of callbacks.

Run under trio's ``MockClock`` with autojump, so times are exact and no test waits for real.
"""

from __future__ import annotations

import functools
import logging
import time

import pytest
import trio
import trio.testing

from lockgate import Priority, PriorityScheduler, QueueTimeout
from lockgate._clock import MonotonicClock, _trio_timers


def run_mocked(main: object) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


def test_callbacks_fire_at_their_times_in_order_and_a_called_off_one_never() -> None:
    fired: list[tuple[str, float]] = []

    async def main() -> None:
        clock, start = MonotonicClock(), trio.current_time()

        def note(name: str) -> None:
            fired.append((name, round(trio.current_time() - start, 6)))

        clock.call_at(clock.now() + 0.3, lambda: note("c"))
        clock.call_at(clock.now() + 0.2, lambda: note("b")).cancel()
        await trio.sleep(0.05)  # the timer task now sleeps until 0.3: an earlier one wakes it
        clock.call_at(clock.now() + 0.05, lambda: note("a"))
        await trio.sleep(1.0)

    run_mocked(main)
    # call_at reads time.monotonic once, so each delay is exact to within that read
    assert [name for name, _ in fired] == ["a", "c"]
    assert fired[0][1] == pytest.approx(0.1, abs=1e-3)
    assert fired[1][1] == pytest.approx(0.3, abs=1e-3)


def test_a_failing_callback_is_logged_and_the_timers_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fired: list[str] = []

    def boom() -> None:
        raise ValueError("boom")

    async def main() -> None:
        clock = MonotonicClock()
        clock.call_at(clock.now() + 0.1, boom)
        clock.call_at(clock.now() + 0.1, lambda: fired.append("same time"))
        clock.call_at(clock.now() + 0.2, lambda: fired.append("later"))
        await trio.sleep(1.0)

    with caplog.at_level(logging.ERROR, logger="lockgate"):
        run_mocked(main)
    assert fired == ["same time", "later"]
    assert "a timer callback failed" in caplog.text


def test_outside_an_event_loop_there_are_no_timers() -> None:
    with pytest.raises(RuntimeError):
        MonotonicClock().call_at(time.monotonic() + 1.0, lambda: None)


def test_each_trio_run_has_its_own_timers() -> None:
    fired: list[int] = []

    for run in range(2):  # the first run's timer task ended with it; the second starts its own

        async def main(run: int = run) -> None:
            clock = MonotonicClock()
            clock.call_at(clock.now() + 0.1, lambda: fired.append(run))
            await trio.sleep(1.0)

        run_mocked(main)
    assert fired == [0, 1]


def test_a_queued_request_on_trio_times_out_at_its_deadline() -> None:
    outcome: list[tuple[str, float]] = []

    async def main() -> None:
        scheduler = PriorityScheduler(1, wait_timeout=2.0, target_wait=None)
        held = scheduler.try_acquire(Priority.NORMAL)
        assert held is not None
        start = trio.current_time()
        try:
            await scheduler.acquire(Priority.NORMAL)
        except QueueTimeout:
            outcome.append(("timed out", trio.current_time() - start))
        assert scheduler.stats().queued == 0

    run_mocked(main)
    assert outcome and outcome[0][0] == "timed out"
    assert outcome[0][1] == pytest.approx(2.0, abs=1e-3)


def test_a_queued_request_on_trio_leaves_when_cancelled_and_the_next_gets_the_seat() -> None:
    got: list[str] = []

    async def main() -> None:
        scheduler = PriorityScheduler(1, wait_timeout=10.0, target_wait=None)
        held = scheduler.try_acquire(Priority.NORMAL)
        assert held is not None
        scopes: dict[str, trio.CancelScope] = {}

        async def wait(name: str) -> None:
            with trio.CancelScope() as scopes[name]:
                permit = await scheduler.acquire(Priority.NORMAL)
                got.append(name)
                permit.release()
                return
            got.append(f"{name} cancelled")

        async with trio.open_nursery() as nursery:
            for name in ("first", "second"):
                nursery.start_soon(wait, name)
                await trio.testing.wait_all_tasks_blocked()
            assert scheduler.stats().queued == 2
            scopes["first"].cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert got == ["first cancelled"] and scheduler.stats().queued == 1
            held.release()
        stats = scheduler.stats()
        assert stats.active == 0 and stats.queued == 0

    run_mocked(main)
    assert got == ["first cancelled", "second"]


def test_called_off_timers_do_not_pile_up_until_their_time() -> None:
    """Waiters admitted at once call their timers off: with a long wait_timeout the heap
    would otherwise keep every one of them for that long."""
    sizes: list[int] = []
    fired: list[int] = []

    async def main() -> None:
        clock = MonotonicClock()
        clock.call_at(clock.now() + 0.5, lambda: fired.append(-1))
        for i in range(1000):
            clock.call_at(clock.now() + 3600.0, functools.partial(fired.append, i)).cancel()
        sizes.append(len(_trio_timers()._heap))
        kept = clock.call_at(clock.now() + 1.0, lambda: fired.append(1000))
        await trio.sleep(2.0)
        kept.cancel()  # already fired: calling it off changes nothing
        sizes.append(len(_trio_timers()._heap))

    run_mocked(main)
    assert fired == [-1, 1000]
    assert sizes[0] <= 102 and sizes[1] <= 102

"""The scheduler without the gate: seats and lanes for any async code (asyncio or trio)."""

import anyio

from lockgate import Priority, PriorityScheduler, QueueFull, QueueTimeout

scheduler = PriorityScheduler(limit=10, queue_capacity=100, wait_timeout=3.0)


async def call_the_database(lane: Priority) -> str:
    try:
        async with await scheduler.acquire(lane, timeout=1.0):
            await anyio.sleep(0.01)  # at most 10 of these run at once
            return "done"
    except (QueueFull, QueueTimeout):
        return "busy, try later"


async def main() -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(call_the_database, Priority.NORMAL)
    print(scheduler.stats().admitted)  # 50


if __name__ == "__main__":
    anyio.run(main)

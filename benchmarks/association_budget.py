"""Time to acquire a lease of the Redis association budget, uncontended and handed over from
one process's holder to another's waiter (pub/sub wake-up), on a local Redis.

    python -m benchmarks.association_budget redis://127.0.0.1:6379/15
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from app.cache.budget import RedisAssociationBudget

ROUNDS = 200


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    return f"median {statistics.median(ordered) * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms"


async def main(url: str) -> None:
    """Print both figures."""
    holder, waiter = RedisAssociationBudget(url), RedisAssociationBudget(url)
    try:
        uncontended = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            lease = await holder.acquire("bench", 4, 5)
            uncontended.append(time.perf_counter() - start)
            assert lease is not None
            lease.release()
            await asyncio.sleep(0.002)
        handover = []
        for _ in range(ROUNDS // 4):
            held = await holder.acquire("bench", 1, 5)
            assert held is not None
            waiting = asyncio.create_task(waiter.acquire("bench", 1, 5))
            await asyncio.sleep(0.02)  # the waiter is queued and asleep
            start = time.perf_counter()
            held.release()
            lease = await waiting
            handover.append(time.perf_counter() - start)
            assert lease is not None
            lease.release()
            await asyncio.sleep(0.01)
        print(f"uncontended acquire: {_ms(uncontended)}")
        print(f"release -> next waiter granted: {_ms(handover)}")
    finally:
        await holder.aclose()
        await waiter.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/15"))

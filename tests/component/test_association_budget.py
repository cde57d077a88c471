"""The Redis association budget against a real (throwaway) Redis: several budget objects stand for
several processes. Grants are first come, first served; a holder that stops renewing loses its
lease after ``lease_ttl``; a wait ends with None after its timeout; a Redis that does not answer
degrades to the process's own limit (a local lease at once), logged once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
import redis

from app.cache.budget import LocalLease, RedisAssociationBudget, RedisLease
from tests.peers.ports import free_port

PEER = "budget-pacs"


@pytest.fixture
async def budgets(redis_url: str) -> AsyncIterator[list[RedisAssociationBudget]]:
    """Six independent budgets (six "processes") on an emptied Redis."""
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    made = [RedisAssociationBudget(redis_url, lease_ttl=3.0) for _ in range(6)]
    yield made
    for budget in made:
        await budget.aclose()


def _holders(redis_url: str) -> int:
    with redis.Redis.from_url(redis_url) as client:
        return int(client.zcard(f"dwg:assoc:{{{PEER}}}:holders"))


def _queued(redis_url: str) -> int:
    with redis.Redis.from_url(redis_url) as client:
        return int(client.zcard(f"dwg:assoc:{{{PEER}}}:queue"))


async def test_the_limit_holds_and_the_oldest_waiter_is_served_first(
        budgets: list[RedisAssociationBudget], redis_url: str) -> None:
    first = await budgets[0].acquire(PEER, 1, 5)
    assert isinstance(first, RedisLease) and _holders(redis_url) == 1
    granted: list[int] = []
    leases: dict[int, RedisLease] = {}

    async def wait(index: int) -> None:
        lease = await budgets[index].acquire(PEER, 1, 20)
        assert isinstance(lease, RedisLease)
        granted.append(index)
        leases[index] = lease

    # Waiters join in the order 5, 3, 1, 4, 2 (each once the previous one is queued), from
    # different "processes", so the order is the queue's and not any one client's.
    order = [5, 3, 1, 4, 2]
    tasks = []
    for position, index in enumerate(order, start=1):
        tasks.append(asyncio.create_task(wait(index)))
        for _ in range(200):
            if _queued(redis_url) == position:
                break
            await asyncio.sleep(0.01)
        assert _queued(redis_url) == position
    await asyncio.sleep(0.2)
    assert granted == [] and _holders(redis_url) == 1  # nobody overtakes the holder

    first.release()
    for served in range(1, len(order) + 1):
        for _ in range(300):
            if len(granted) == served:
                break
            await asyncio.sleep(0.01)
        assert len(granted) == served and _holders(redis_url) == 1
        leases[granted[-1]].release()
    await asyncio.gather(*tasks)
    assert granted == order


async def test_a_holder_that_stops_renewing_loses_its_lease_after_the_ttl(
        budgets: list[RedisAssociationBudget], redis_url: str) -> None:
    dead, alive = budgets[0], budgets[1]
    lease = await dead.acquire(PEER, 1, 5)
    assert isinstance(lease, RedisLease)
    # Keep the live holder renewing a lease of its own for longer than the TTL...
    other = await alive.acquire("another-pacs", 1, 5)
    assert isinstance(other, RedisLease)
    # ...while the first "process" dies: no renewal, no release (as after SIGKILL).
    assert dead._renewer is not None
    dead._renewer.cancel()
    start = time.monotonic()
    late = await alive.acquire(PEER, 1, 10)
    waited = time.monotonic() - start
    assert isinstance(late, RedisLease)
    assert 1.5 < waited < 3.0 + 1.5  # the TTL (3 s) from the last renewal, checked every 1 s
    await asyncio.sleep(4)  # past another TTL: the live holder's leases were renewed
    assert _holders(redis_url) == 1
    with redis.Redis.from_url(redis_url) as client:
        assert client.zcard("dwg:assoc:{another-pacs}:holders") == 1


async def test_a_wait_ends_with_none_after_its_timeout_and_leaves_the_queue(
        budgets: list[RedisAssociationBudget], redis_url: str) -> None:
    held = await budgets[0].acquire(PEER, 1, 5)
    start = time.monotonic()
    assert await budgets[1].acquire(PEER, 1, 0.5) is None
    assert 0.4 < time.monotonic() - start < 1.5
    for _ in range(100):
        if _queued(redis_url) == 0:
            break
        await asyncio.sleep(0.01)
    assert _queued(redis_url) == 0
    assert held is not None
    held.release()


async def test_release_wakes_a_waiter_without_polling(
        budgets: list[RedisAssociationBudget]) -> None:
    held = await budgets[0].acquire(PEER, 1, 5)
    assert held is not None
    waiter = asyncio.create_task(budgets[1].acquire(PEER, 1, 10))
    await asyncio.sleep(0.3)
    released_at = time.monotonic()
    held.release()
    lease = await waiter
    assert isinstance(lease, RedisLease)
    # Pub/sub wakes the waiter at once; its fallback re-check would take up to a second.
    assert time.monotonic() - released_at < 0.5
    lease.release()


async def test_holders_with_idle_slots_hear_that_someone_waits(
        budgets: list[RedisAssociationBudget]) -> None:
    heard = asyncio.Event()
    budgets[0].on_contended(PEER, heard.set)
    held = await budgets[0].acquire(PEER, 1, 5)
    assert held is not None and not budgets[0].contended(PEER)
    waiter = asyncio.create_task(budgets[1].acquire(PEER, 1, 10))
    await asyncio.wait_for(heard.wait(), 2)
    assert budgets[0].contended(PEER)
    held.release()
    lease = await waiter
    assert lease is not None
    lease.release()


async def test_redis_down_grants_a_local_lease_and_says_so_once(
        caplog: pytest.LogCaptureFixture) -> None:
    budget = RedisAssociationBudget(f"redis://127.0.0.1:{free_port()}/0", lease_ttl=3.0,
                                    socket_timeout=0.5)
    caplog.set_level(logging.WARNING, logger="app.cache.budget")
    try:
        leases = [await budget.acquire(PEER, 1, 5) for _ in range(3)]
    finally:
        await budget.aclose()
    assert all(isinstance(lease, LocalLease) for lease in leases)
    assert not budget.up
    assert len([r for r in caplog.records if "does not answer" in r.getMessage()]) == 1

"""Writing a fill's instances behind it: batches (values before the events that announce them),
local followers told at once, other processes only once an instance is readable, a byte budget
that holds the fill back, refused instances handed over, and a failing backend reported."""

from __future__ import annotations

import asyncio

import pytest

from app.cache.backend import CacheBackend, CacheUnavailable
from app.cache.memory import MemoryBackend
from app.cache.redisbackend import RedisBackend
from app.cache.singleflight import FillContext, FillEvent, SingleFlight
from app.cache.store import CachedInstance, GatewayCache
from app.cache.write_behind import WriteBehind
from app.dimse.engine.part10 import part10
from tests.unit.cache.conftest import MAX_OBJECT_BYTES

pytestmark = pytest.mark.timeout(30)

SERIES = "1.2.3.4"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def instance(sop: str, size: int = 40) -> CachedInstance:
    body = (sop.encode() * size)[:size]
    return CachedInstance(sop, CT_IMAGE, EXPLICIT_LE, part10(body, CT_IMAGE, sop, EXPLICIT_LE))


def context(backend: CacheBackend, key: str = "dwg:t:ev:{1.2.3.4}:tok") -> FillContext:
    return FillContext(backend, "dwg:t:lock:{1.2.3.4}", "tok", key, 5.0, 60.0)


async def test_write_batch_stores_values_then_appends_events(backend: CacheBackend) -> None:
    stored = await backend.write_batch(
        [("dwg:t:a", b"1" * 10, None), ("dwg:t:big", b"2" * (MAX_OBJECT_BYTES + 1), None),
         ("dwg:t:b", b"3" * 10, 60.0)],
        [("dwg:t:log", "i:a", 60.0), ("dwg:t:log", "i:b", 60.0)])
    assert stored == [True, False, True]
    assert await backend.get("dwg:t:a") == b"1" * 10 and await backend.get("dwg:t:big") is None
    assert await backend.read_events("dwg:t:log", 0) == ["i:a", "i:b"]


async def test_write_batch_wakes_waiters_on_the_event_log(backend: CacheBackend) -> None:
    waiting = asyncio.ensure_future(backend.wait_events("dwg:t:log2", 0, 5.0))
    await asyncio.sleep(0.05)
    await backend.write_batch([("dwg:t:v", b"x", None)], [("dwg:t:log2", "i:v", 60.0)])
    async with asyncio.timeout(2):
        assert await waiting == ["i:v"]


async def test_local_followers_first_shared_log_once_readable(backend: CacheBackend) -> None:
    cache = GatewayCache(backend, "t", ttl=60, query_ttl=0)
    ctx = context(backend)
    writer = WriteBehind(cache, SERIES, ctx)
    items = [instance(f"9.{n}") for n in range(5)]
    for item in items:
        await writer.add(item)
        assert ctx.local.events[-1] == FillEvent("instance", sop=item.sop_instance_uid)
        assert writer.pending(item.sop_instance_uid) is item or (
            await cache.get_instance(SERIES, item.sop_instance_uid) is not None)
    await writer.finish()
    assert writer.written == [i.sop_instance_uid for i in items] and not writer.declined
    shared = await backend.read_events(ctx.events_key, 0)
    assert shared == [f"i:{i.sop_instance_uid}" for i in items]
    for item in items:
        assert writer.pending(item.sop_instance_uid) is None
        cached = await cache.get_instance(SERIES, item.sop_instance_uid)
        assert cached is not None and cached.data == item.data


class SlowWrites(MemoryBackend):
    """A backend whose batches take 50 ms, recording the keys written."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.written: list[str] = []

    async def write_batch(self, values, events):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.05)
        self.written.extend(key for key, _, _ in values)
        return await super().write_batch(values, events)


async def test_budget_holds_the_fill_back_until_written() -> None:
    """With a budget smaller than two instances, each add waits for the previous write."""
    backend = SlowWrites(10_000_000)
    written = backend.written
    cache = GatewayCache(backend, "t", ttl=60, query_ttl=0)
    item_size = len(instance("9.0", 400).data)
    writer = WriteBehind(cache, SERIES, context(backend), max_pending=item_size + 10)
    for n in range(3):
        await writer.add(instance(f"9.{n}", 400))
        assert len(written) >= n  # the previous ones are written before the next add returns
    await writer.finish()
    assert len(written) == 3


async def test_within_the_budget_the_fill_runs_ahead_of_its_writes() -> None:
    """The fill does not wait for each write: every add returns before the first batch is
    written, queued instances are readable from ``pending``, and finish waits for them all."""
    backend = SlowWrites(10_000_000)
    written = backend.written
    cache = GatewayCache(backend, "t", ttl=60, query_ttl=0)
    writer = WriteBehind(cache, SERIES, context(backend))
    for n in range(5):
        await writer.add(instance(f"9.{n}", 400))
    assert written == [] and writer.pending("9.4") is not None
    await writer.finish()
    assert len(written) == 5 and writer.pending("9.4") is None


async def test_refused_instances_are_handed_over() -> None:
    backend = MemoryBackend(10_000_000, max_object_bytes=1000)
    cache = GatewayCache(backend, "t", ttl=60, query_ttl=0)
    handed: list[str] = []
    writer = WriteBehind(cache, SERIES, context(backend),
                         on_declined=lambda i: handed.append(i.sop_instance_uid))
    await writer.add(instance("9.1", 40))
    await writer.add(instance("9.2", 2000))
    await writer.finish()
    assert writer.written == ["9.1"] and writer.declined == ["9.2"] and handed == ["9.2"]
    # announced all the same: local followers take it from the hand-over
    assert await backend.read_events("dwg:t:ev:{1.2.3.4}:tok", 0) == ["i:9.1", "i:9.2"]


async def test_an_unreachable_cache_is_raised_to_the_fill() -> None:
    backend = RedisBackend("redis://127.0.0.1:1", socket_timeout=0.5)
    cache = GatewayCache(backend, "t", ttl=60, query_ttl=0)
    writer = WriteBehind(cache, SERIES, context(backend))
    await writer.add(instance("9.1"))
    with pytest.raises(CacheUnavailable):
        await writer.finish()
    assert writer.pending("9.1") is not None  # still there for local readers
    await backend.close()


async def test_other_processes_see_an_instance_only_once_it_is_readable(
        empty_redis: object) -> None:
    """A follower with its own Redis connection and SingleFlight (another worker) reads every
    announced instance from Redis at the moment it is announced."""
    url = empty_redis.url  # type: ignore[attr-defined]
    holder_backend, other_backend = RedisBackend(url), RedisBackend(url)
    holder_cache = GatewayCache(holder_backend, "t", ttl=60, query_ttl=0)
    other_cache = GatewayCache(other_backend, "t", ttl=60, query_ttl=0)
    lock = holder_cache.keys.lock(SERIES)

    def events_key(token: str) -> str:
        return holder_cache.keys.events(SERIES, token)

    started = asyncio.Event()

    async def fill(ctx: FillContext) -> None:
        writer = WriteBehind(holder_cache, SERIES, ctx)
        started.set()
        for n in range(20):
            await writer.add(instance(f"9.{n}", 50_000))
        await writer.finish()
        await ctx.publish(FillEvent("done"))

    async def never_complete() -> bool:
        return False

    holder, other = SingleFlight(holder_backend), SingleFlight(other_backend)
    local_seen: list[str] = []

    async def local() -> None:
        async for event in holder.follow(lock, events_key, fill, never_complete):
            local_seen.append(event.kind)

    running = asyncio.ensure_future(local())
    await started.wait()
    seen = 0
    async with asyncio.timeout(20):
        async for event in other.follow(lock, events_key, fill, never_complete):
            if event.kind == "instance":
                assert await other_cache.get_instance(SERIES, event.sop) is not None
                seen += 1
        await running
    assert seen == 20 and local_seen.count("instance") == 20 and local_seen[-1] == "done"
    await holder.close()
    await other.close()
    await holder_backend.close()
    await other_backend.close()

"""MemoryBackend specifics: an LRU bounded by bytes (recently read keys survive), a per-object
cap, and byte accounting that stays exact through overwrites, deletes and expiry."""

from __future__ import annotations

import asyncio

from app.cache.memory import MemoryBackend


async def test_lru_evicts_least_recently_used_by_bytes() -> None:
    cache = MemoryBackend(max_bytes=100, max_object_bytes=100)
    assert await cache.set("a", b"a" * 40)
    assert await cache.set("b", b"b" * 40)
    assert await cache.get("a") == b"a" * 40  # a is now the most recently used
    assert await cache.set("c", b"c" * 40)  # 120 > 100: the least recently used (b) goes
    assert await cache.get("b") is None
    assert await cache.get("a") == b"a" * 40
    assert await cache.get("c") == b"c" * 40
    stats = await cache.stats()
    assert stats["bytes"] == 80
    assert stats["keys"] == 2
    assert stats["evictions"] == 1


async def test_eviction_frees_as_many_keys_as_needed() -> None:
    cache = MemoryBackend(max_bytes=100, max_object_bytes=100)
    for name in "abcde":
        await cache.set(name, b"x" * 20)
    assert await cache.set("big", b"y" * 70)  # needs 90 bytes free: four small keys go
    assert [await cache.get(k) for k in "abcd"] == [None] * 4
    assert await cache.get("e") == b"x" * 20
    assert (await cache.stats())["bytes"] == 90


async def test_object_over_the_cap_is_refused_and_evicts_nothing() -> None:
    cache = MemoryBackend(max_bytes=100, max_object_bytes=30)
    assert await cache.set("small", b"s" * 30)
    assert not await cache.set("large", b"l" * 31)
    assert await cache.get("large") is None
    assert await cache.get("small") == b"s" * 30
    refused_whole = MemoryBackend(max_bytes=10)  # the cap defaults to the whole budget
    assert not await refused_whole.set("k", b"k" * 11)
    assert (await refused_whole.stats())["bytes"] == 0


async def test_byte_accounting_through_overwrite_delete_and_expiry() -> None:
    cache = MemoryBackend(max_bytes=1000)
    await cache.set("k", b"1" * 100)
    await cache.set("k", b"2" * 10)  # overwrite: 10 bytes, not 110
    assert (await cache.stats())["bytes"] == 10
    await cache.set("gone", b"g" * 50, ttl=0.05)
    await asyncio.sleep(0.1)
    assert await cache.get("gone") is None  # an expired key is dropped when read
    assert (await cache.stats())["bytes"] == 10
    assert await cache.delete("k", "never-there") == 1
    assert (await cache.stats())["bytes"] == 0


async def test_expired_keys_do_not_count_as_present() -> None:
    cache = MemoryBackend(max_bytes=1000)
    await cache.set("short", b"x", ttl=0.05)
    await cache.set("long", b"y")
    assert await cache.exists(["short", "long"]) == 2
    await asyncio.sleep(0.1)
    assert await cache.exists(["short", "long"]) == 1
    assert await cache.get_many(["short", "long"]) == [None, b"y"]


async def test_expired_event_logs_and_locks_do_not_accumulate() -> None:
    """Every fill writes a one-off event log: expired ones must be forgotten even if nobody
    reads them again (they are outside the byte budget)."""
    cache = MemoryBackend(max_bytes=1000)
    for n in range(300):
        await cache.append_event(f"ev:{n}", "d", ttl=0.05)
        await cache.acquire_lock(f"lock:{n}", ttl=0.05)
    await asyncio.sleep(0.1)
    for n in range(300):
        await cache.append_event(f"fresh:{n}", "d", ttl=30)
    # internal bookkeeping: only the live logs (and their conditions) remain
    assert not any(k.startswith("ev:") for k in cache._events)
    assert not any(k.startswith("ev:") for k in cache._conditions)
    assert not cache._locks
    assert await cache.read_events("fresh:0", 0) == ["d"]

"""The CacheBackend contract, run on MemoryBackend and on RedisBackend against a real throwaway
Redis: values with TTLs, the per-object cap, pattern deletes, token-checked locks with expiry,
and event logs that wake waiters (also across two Redis clients, as across two workers)."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.cache.backend import CacheBackend
from app.cache.redisbackend import RedisBackend
from tests.peers import RedisServer
from tests.unit.cache.conftest import MAX_OBJECT_BYTES

pytestmark = pytest.mark.timeout(30)


async def test_set_get_delete(backend: CacheBackend) -> None:
    assert await backend.get("dwg:t:k") is None
    assert await backend.set("dwg:t:k", b"\x00value\xff")
    assert await backend.get("dwg:t:k") == b"\x00value\xff"
    assert await backend.get_many(["dwg:t:k", "dwg:t:absent"]) == [b"\x00value\xff", None]
    assert await backend.exists(["dwg:t:k", "dwg:t:absent"]) == 1
    assert await backend.delete("dwg:t:k", "dwg:t:absent") == 1
    assert await backend.get("dwg:t:k") is None


async def test_per_object_cap(backend: CacheBackend) -> None:
    assert await backend.set("dwg:t:fits", b"x" * MAX_OBJECT_BYTES)
    assert not await backend.set("dwg:t:over", b"x" * (MAX_OBJECT_BYTES + 1))
    assert await backend.get("dwg:t:over") is None
    assert await backend.get("dwg:t:fits") == b"x" * MAX_OBJECT_BYTES


async def test_ttl_expiry(backend: CacheBackend) -> None:
    await backend.set("dwg:t:short", b"s", ttl=0.15)
    await backend.set("dwg:t:long", b"l", ttl=30)
    assert await backend.get("dwg:t:short") == b"s"
    await asyncio.sleep(0.3)
    assert await backend.get("dwg:t:short") is None
    assert await backend.exists(["dwg:t:short", "dwg:t:long"]) == 1
    assert await backend.get("dwg:t:long") == b"l"


async def test_delete_matching_with_hash_tags(backend: CacheBackend) -> None:
    for key in ("dwg:p:i:{1.2.3}:a", "dwg:p:m:{1.2.3}:a", "dwg:p:s:{1.2.3}",
                "dwg:p:i:{1.2.34}:a", "dwg:p:s:{9.9}"):
        await backend.set(key, b"v")
    assert await backend.delete_matching("dwg:p:*{1.2.3}*") == 3
    assert await backend.exists(["dwg:p:i:{1.2.34}:a", "dwg:p:s:{9.9}"]) == 2


async def test_clear_removes_everything_of_the_gateway(backend: CacheBackend) -> None:
    await backend.set("dwg:p:a", b"1")
    await backend.set("dwg:p:b", b"2")
    assert await backend.clear() == 2
    assert await backend.exists(["dwg:p:a", "dwg:p:b"]) == 0
    assert await backend.ping()


async def test_lock_acquire_renew_release(backend: CacheBackend) -> None:
    key = "dwg:t:lock:{s}"
    token = await backend.acquire_lock(key, 10)
    assert token
    assert await backend.lock_holder(key) == token
    assert await backend.acquire_lock(key, 10) is None  # held
    assert not await backend.renew_lock(key, "not-the-token", 10)
    assert await backend.renew_lock(key, token, 10)
    await backend.release_lock(key, "not-the-token")  # a stranger cannot release it
    assert await backend.lock_holder(key) == token
    await backend.release_lock(key, token)
    assert await backend.lock_holder(key) is None
    second = await backend.acquire_lock(key, 10)
    assert second and second != token


async def test_lock_expires_and_the_old_holder_cannot_touch_the_new_one(
        backend: CacheBackend) -> None:
    key = "dwg:t:lock:{e}"
    old = await backend.acquire_lock(key, 0.15)
    assert old
    await asyncio.sleep(0.3)
    assert await backend.lock_holder(key) is None
    new = await backend.acquire_lock(key, 10)
    assert new and new != old
    assert not await backend.renew_lock(key, old, 10)
    await backend.release_lock(key, old)
    assert await backend.lock_holder(key) == new


async def test_renew_extends_the_expiry(backend: CacheBackend) -> None:
    key = "dwg:t:lock:{r}"
    token = await backend.acquire_lock(key, 1.0)
    assert token
    for _ in range(5):  # 1.5 s in all: past the first expiry only if renewals work
        await asyncio.sleep(0.3)  # a stall of up to 0.7 s on a loaded machine still renews
        assert await backend.renew_lock(key, token, 1.0)
    assert await backend.lock_holder(key) == token


async def test_event_log_append_and_read(backend: CacheBackend) -> None:
    key = "dwg:t:ev:{s}:tok"
    assert await backend.read_events(key, 0) == []
    for event in ("i:1", "i:2", "d"):
        await backend.append_event(key, event, 30)
    assert await backend.read_events(key, 0) == ["i:1", "i:2", "d"]
    assert await backend.read_events(key, 2) == ["d"]
    assert await backend.read_events(key, 3) == []
    assert await backend.wait_events(key, 1, 5) == ["i:2", "d"]  # already there: no wait


async def test_event_log_expires(backend: CacheBackend) -> None:
    key = "dwg:t:ev:{x}:tok"
    await backend.append_event(key, "i:1", 0.15)
    await asyncio.sleep(0.3)
    assert await backend.read_events(key, 0) == []


async def test_wait_events_times_out_empty(backend: CacheBackend) -> None:
    started = time.monotonic()
    assert await backend.wait_events("dwg:t:ev:{none}:tok", 0, 0.3) == []
    assert 0.25 <= time.monotonic() - started < 2.0


async def test_wait_events_wakes_on_append(backend: CacheBackend) -> None:
    key = "dwg:t:ev:{w}:tok"

    async def later() -> None:
        await asyncio.sleep(0.2)
        await backend.append_event(key, "i:9", 30)

    writer = asyncio.create_task(later())
    started = time.monotonic()
    waiters = await asyncio.gather(*(backend.wait_events(key, 0, 10) for _ in range(3)))
    elapsed = time.monotonic() - started
    await writer
    assert waiters == [["i:9"]] * 3
    assert elapsed < 2.0  # woken, not timed out


async def test_redis_wait_events_wakes_across_clients(empty_redis: RedisServer) -> None:
    """Two RedisBackends (as in two workers): one appends, the other's waiter wakes at once."""
    waiter_side = RedisBackend(empty_redis.url)
    writer_side = RedisBackend(empty_redis.url)
    key = "dwg:t:ev:{two}:tok"
    try:
        async def later() -> None:
            await asyncio.sleep(0.3)
            await writer_side.append_event(key, "d", 30)

        writer = asyncio.create_task(later())
        started = time.monotonic()
        got = await waiter_side.wait_events(key, 0, 10)
        await writer
        assert got == ["d"]
        assert time.monotonic() - started < 2.0
        assert await writer_side.acquire_lock("dwg:t:lock:{two}", 10)
        assert await waiter_side.acquire_lock("dwg:t:lock:{two}", 10) is None
    finally:
        await waiter_side.close()
        await writer_side.close()


async def test_redis_values_get_the_default_ttl(empty_redis: RedisServer) -> None:
    backend = RedisBackend(empty_redis.url, default_ttl=0.15)
    try:
        await backend.set("dwg:t:default", b"v")
        await backend.set("dwg:t:own", b"v", ttl=30)
        await asyncio.sleep(0.3)
        assert await backend.get("dwg:t:default") is None
        assert await backend.get("dwg:t:own") == b"v"
    finally:
        await backend.close()


async def test_redis_clear_leaves_foreign_keys(empty_redis: RedisServer) -> None:
    backend = RedisBackend(empty_redis.url)
    try:
        await backend.set("dwg:a", b"1")
        await backend.set("someone-else", b"2")
        assert await backend.clear() == 1
        assert await backend.get("someone-else") == b"2"
        stats = await backend.stats()
        assert stats["backend"] == "redis"
        assert stats["keys"] == 0
        assert stats["used_memory"] > 0
    finally:
        await backend.close()


async def test_redis_unreachable_raises_cache_unavailable() -> None:
    from app.cache.backend import CacheUnavailable
    from tests.peers import free_port

    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    try:
        assert not await backend.ping()
        with pytest.raises(CacheUnavailable):
            await backend.get("dwg:x")
        with pytest.raises(CacheUnavailable):
            await backend.acquire_lock("dwg:lock:{x}", 1)
    finally:
        await backend.close()


async def test_redis_waiters_are_forgotten(empty_redis: RedisServer) -> None:
    """Event logs are one-off keys (one per fill): a long-running process must not keep a
    waiter per key it ever waited on."""
    backend = RedisBackend(empty_redis.url)
    try:
        async def later(key: str) -> None:
            await asyncio.sleep(0.05)
            await backend.append_event(key, "d", 30)

        for n in range(5):
            key = f"dwg:t:ev:{{f}}:{n}"
            writer = asyncio.create_task(later(key))
            assert await asyncio.gather(backend.wait_events(key, 0, 5),
                                        backend.wait_events(key, 0, 5)) == [["d"], ["d"]]
            await writer
        assert await backend.wait_events("dwg:t:ev:{f}:none", 0, 0.05) == []
        assert backend._waiters == {}  # internal bookkeeping: nothing left behind
    finally:
        await backend.close()


async def test_sizes_without_reading_the_values(backend: CacheBackend) -> None:
    """What a worklist prefetch counts: each value's length, 0 when absent."""
    assert await backend.sizes([]) == []
    await backend.set("dwg:t:a", b"x" * 10)
    await backend.set("dwg:t:b", b"")
    assert await backend.sizes(["dwg:t:a", "dwg:t:absent", "dwg:t:b"]) == [10, 0, 0]


async def test_redis_batch_error_reply_is_raised_and_the_connection_stays_in_step(
        empty_redis: RedisServer) -> None:
    """An error reply in a written batch (RPUSH to a key holding a string) fails the batch;
    the values before it are stored, and the next batch's replies are its own."""
    import redis as redis_py

    backend = RedisBackend(empty_redis.url)
    try:
        await backend.set("dwg:t:notalist", b"x")
        big = b"v" * 100_000
        with pytest.raises(redis_py.exceptions.ResponseError, match="WRONGTYPE"):
            await backend.write_batch([("dwg:t:a", big, 60.0)],
                                      [("dwg:t:notalist", "i:a", 60.0)])
        assert await backend.get("dwg:t:a") == big
        assert await backend.write_batch([("dwg:t:b", big, None), ("dwg:t:c", b"c", 60.0)],
                                         [("dwg:t:log", "i:b", 60.0),
                                          ("dwg:t:log", "i:c", 30.0)]) == [True, True]
        assert await backend.read_events("dwg:t:log", 0) == ["i:b", "i:c"]
        assert await backend.get("dwg:t:b") == big and await backend.get("dwg:t:c") == b"c"
    finally:
        await backend.close()

"""ResilientBackend against a real Redis that goes away and comes back on the same port: calls
keep succeeding on the local fallback, errors are counted, and a background probe returns to
Redis without waiting for traffic."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.cache.memory import MemoryBackend
from app.cache.redisbackend import RedisBackend
from app.cache.resilient import ResilientBackend
from tests.peers import RedisServer, require_binary

pytestmark = pytest.mark.timeout(30)


async def test_falls_back_and_recovers(tmp_path: Path) -> None:
    require_binary("redis-server")
    server = RedisServer(tmp_path / "redis")
    server.start()
    errors: list[int] = []
    cache = ResilientBackend(RedisBackend(server.url, socket_timeout=0.5),
                             MemoryBackend(10_000), retry_interval=0.3,
                             on_error=lambda: errors.append(1))
    try:
        assert await cache.set("dwg:k", b"shared")
        assert cache.healthy
        server.stop()
        assert await cache.get("dwg:k") is None  # answered (by the fallback), not raised
        assert not cache.healthy
        assert errors
        assert await cache.set("dwg:local", b"v")
        assert await cache.get("dwg:local") == b"v"  # the fallback works as a cache
        token = await cache.acquire_lock("dwg:lock:{s}", 5)  # single-flight still works
        assert token and await cache.acquire_lock("dwg:lock:{s}", 5) is None
        stats = await cache.stats()
        assert stats["healthy"] is False and "local" in stats
        server.start()  # same port
        for _ in range(100):  # no traffic: the background probe alone must notice
            if cache.healthy:
                break
            await asyncio.sleep(0.05)
        assert cache.healthy
        assert await cache.set("dwg:after", b"back")
        assert await cache.primary.get("dwg:after") == b"back"  # really in Redis again
    finally:
        await cache.close()
        server.stop()


async def test_close_stops_the_probe(tmp_path: Path) -> None:
    from tests.peers import free_port

    cache = ResilientBackend(RedisBackend(f"redis://127.0.0.1:{free_port()}/0",
                                          socket_timeout=0.5),
                             MemoryBackend(10_000), retry_interval=0.1)
    assert await cache.get("dwg:k") is None
    assert not cache.healthy
    probes = [t for t in asyncio.all_tasks() if t.get_name().startswith("probe cache")]
    assert len(probes) == 1 and not probes[0].done()
    await cache.close()
    assert probes[0].done()

"""Cache unit fixtures: every backend contract test runs on the in-process MemoryBackend and on
RedisBackend against a throwaway redis-server (one per session, emptied before each test)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from app.cache.backend import CacheBackend
from app.cache.memory import MemoryBackend
from app.cache.redisbackend import RedisBackend
from tests.peers import RedisServer, require_binary

MAX_BYTES = 100_000
MAX_OBJECT_BYTES = 400


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port for the whole session."""
    require_binary("redis-server")
    server = RedisServer(tmp_path_factory.mktemp("redis-unit"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def empty_redis(redis_server: RedisServer) -> RedisServer:
    """The session's Redis with every key removed."""
    with redis.Redis.from_url(redis_server.url, socket_timeout=5) as client:
        client.flushall()
    return redis_server


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[CacheBackend]:
    """Each backend in turn, with a per-object cap of MAX_OBJECT_BYTES."""
    if request.param == "memory":
        yield MemoryBackend(MAX_BYTES, MAX_OBJECT_BYTES)
        return
    server: RedisServer = request.getfixturevalue("empty_redis")
    backend = RedisBackend(server.url, max_object_bytes=MAX_OBJECT_BYTES)
    try:
        yield backend
    finally:
        await backend.close()

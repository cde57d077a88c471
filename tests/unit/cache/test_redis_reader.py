"""The raw pipelined value reader against real redis-servers: values of every size come back
exactly and in order whatever the interleaving of callers, misses are None, and a failing,
silent or password-protected server is handled as the cache backend promises (CacheUnavailable,
then a fresh connection)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.cache.backend import CacheUnavailable
from app.cache.redis_reader import RedisBulkReader, supports
from tests.peers import RedisServer, require_binary


def _values() -> dict[str, bytes]:
    sizes = [0, 1, 2, 13, 65_535, 65_536, 262_144, 525_001, 3_000_000]
    return {f"k{i}": bytes((i + j) % 256 for j in range(min(n, 256))) * (n // 256)
            + bytes(n % 256) for i, n in enumerate(sizes)}


@pytest.fixture(scope="module")
def secured_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server with a password and a user of its own."""
    require_binary("redis-server")
    server = RedisServer(tmp_path_factory.mktemp("redis-auth"),
                         extra_args=("--requirepass", "s3cret pass",
                                     "--user", "reader", "on", ">r3ader", "~*", "+@all"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_supports_plain_tcp_and_unix_socket_urls() -> None:
    assert supports("redis://127.0.0.1:6379/0")
    assert supports("unix:///run/redis.sock")
    assert not supports("rediss://127.0.0.1:6380/0")


async def test_values_misses_and_order_under_concurrency(empty_redis: RedisServer) -> None:
    values = _values()
    with redis.Redis.from_url(empty_redis.url) as client:
        client.mset(values)
        client.rpush("a-list", "x")
    reader = RedisBulkReader(empty_redis.url, timeout=5, max_value=4_000_000)
    try:
        keys = list(values) + ["missing"]
        assert await reader.get_many(keys) == [*values.values(), None]
        # Many callers at once on the one connection, each with its own keys and order.
        orders = [keys[i:] + keys[:i] for i in range(len(keys))] * 3
        results = await asyncio.gather(*(reader.get_many(o) for o in orders))
        for order, got in zip(orders, results, strict=True):
            assert got == [values.get(k) for k in order]
        assert await reader.get("k3") == values["k3"]
        with pytest.raises(CacheUnavailable, match="WRONGTYPE"):
            await reader.get("a-list")
        assert await reader.get("k1") == values["k1"]  # the connection survives an error reply
    finally:
        reader.close()


async def test_a_caller_that_gives_up_does_not_shift_the_replies(
        empty_redis: RedisServer) -> None:
    values = _values()
    with redis.Redis.from_url(empty_redis.url) as client:
        client.mset(values)
    reader = RedisBulkReader(empty_redis.url, timeout=5, max_value=4_000_000)
    try:
        task = asyncio.ensure_future(reader.get_many(["k8", "k7", "k8"]))
        await asyncio.sleep(0)
        task.cancel()
        assert await reader.get_many(["k2", "k6"]) == [values["k2"], values["k6"]]
    finally:
        reader.close()


async def test_values_over_the_cap_are_refused(empty_redis: RedisServer) -> None:
    with redis.Redis.from_url(empty_redis.url) as client:
        client.set("big", b"x" * 10_000)
        client.set("small", b"y")
    reader = RedisBulkReader(empty_redis.url, timeout=5, max_value=1_000)
    try:
        with pytest.raises(CacheUnavailable, match="over the cap"):
            await reader.get("big")
        assert await reader.get("small") == b"y"  # reconnected
    finally:
        reader.close()


async def test_password_user_and_database(secured_redis: RedisServer) -> None:
    base = f"redis://:{'s3cret%20pass'}@127.0.0.1:{secured_redis.port}"
    with redis.Redis(host="127.0.0.1", port=secured_redis.port, password="s3cret pass",
                     db=3) as client:
        client.set("where", b"db3")
    for url in (f"{base}/3", f"redis://reader:r3ader@127.0.0.1:{secured_redis.port}/3"):
        reader = RedisBulkReader(url, timeout=5, max_value=1_000)
        try:
            assert await reader.get("where") == b"db3"
        finally:
            reader.close()
    wrong = RedisBulkReader(f"redis://:nope@127.0.0.1:{secured_redis.port}/3", timeout=5,
                            max_value=1_000)
    with pytest.raises(CacheUnavailable, match="cannot connect"):
        await wrong.get("where")


async def test_a_killed_connection_and_a_restarted_server(tmp_path: Path) -> None:
    require_binary("redis-server")
    server = RedisServer(tmp_path / "redis")
    server.start()
    reader = RedisBulkReader(server.url, timeout=2, max_value=1_000)
    try:
        with redis.Redis.from_url(server.url) as client:
            client.set("a", b"1")
            assert await reader.get("a") == b"1"
            client.client_kill_filter(_type="normal", skipme=True)
        with pytest.raises(CacheUnavailable):
            await reader.get("a")
        assert await reader.get("a") == b"1"  # a fresh connection
        server.stop()
        with pytest.raises(CacheUnavailable):
            await reader.get("a")
        server.start()
        assert await reader.get("a") is None  # no persistence: the value is gone
    finally:
        reader.close()
        server.stop()


async def test_a_silent_server_times_out() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    reader = RedisBulkReader(f"redis://127.0.0.1:{port}/0", timeout=0.3, max_value=1_000)
    try:
        with pytest.raises(CacheUnavailable, match="in time"):
            await reader.get("a")
    finally:
        reader.close()
        listener.close()


@pytest.fixture(scope="module")
def socket_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server with a password, listening on a Unix socket as well as on TCP."""
    require_binary("redis-server")
    server = RedisServer(tmp_path_factory.mktemp("redis-unix"), unix_socket=True,
                         extra_args=("--requirepass", "pw"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_values_over_a_unix_socket_with_password_and_database(
        socket_redis: RedisServer) -> None:
    values = _values()
    with redis.Redis(host="127.0.0.1", port=socket_redis.port, password="pw", db=2) as client:
        client.flushall()
        client.mset(values)
    path = socket_redis.socket_url.removeprefix("unix://")
    url = f"unix://:pw@{path}?db=2"
    assert supports(url)
    reader = RedisBulkReader(url, timeout=5, max_value=4_000_000)
    try:
        keys = list(values) + ["missing"]
        assert await reader.get_many(keys) == [*values.values(), None]
    finally:
        reader.close()
    # The database of the URL is the one read: database 0 holds none of these keys.
    default_db = RedisBulkReader(f"unix://:pw@{path}", timeout=5, max_value=4_000_000)
    try:
        assert await default_db.get("k3") is None
    finally:
        default_db.close()

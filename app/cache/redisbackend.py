"""The Redis cache backend (redis-py asyncio), for one server or a Redis Cluster.

Keys carry a hash tag (``{series UID}``) so a series' instances, index, lock and event log live
in one Cluster slot. Locks are SET NX PX with token-checked renew/release scripts; event logs are
lists with a PUBLISH on a single channel to wake waiters (polling remains as a fallback, and is
the only mechanism on a Cluster, where pub/sub is not used).

Values are read over a raw pipelined connection of their own (``redis_reader``) on plain TCP
and Unix-socket URLs, with one copy per value; other commands, TLS and Cluster URLs use
redis-py. A Unix socket (``unix:///run/redis/redis.sock``), where Redis runs on the gateway's
host, costs the kernel less per byte than loopback TCP (see docs/benchmarks.md).

Batches of a cache fill (instances, then their events) are written by one thread of their own
over a synchronous connection, pipelined: the socket writes of hundreds of megabytes then run
outside the event loop (and the GIL), at a lower CPU priority than the requests being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from redis import Redis as SyncRedis
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.cluster import RedisCluster as SyncRedisCluster

from app.cache.backend import CacheBackend, CacheUnavailable
from app.cache.redis_reader import RedisBulkReader, supports
from app.cache.resp import pack

log = logging.getLogger(__name__)
EVENTS_CHANNEL = "dwg:events"
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
# RedisClusterException: a Cluster client that reaches no node (or finds a slot uncovered)
# raises it rather than ConnectionError; it must degrade the cache like any outage.
ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError,
          redis_errors.ClusterDownError, redis_errors.BusyLoadingError,
          redis_errors.RedisClusterException)
MAX_VALUE = 512 * 1024 * 1024  # the largest value read when objects are not capped
LISTENER_STOP_S = 2.0  # how long close() waits for the pub/sub listener to end
WRITER_NICENESS = 5  # the batch writer thread yields the CPU to the event loop's thread


def _lower_priority() -> None:
    """Make the calling thread nicer (Linux schedules threads by their own nice value)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)


class RedisBackend(CacheBackend):
    """Cache in Redis; every value expires after ``default_ttl`` unless given its own TTL."""

    name = "redis"
    spans_processes = True

    def __init__(self, url: str, *, cluster: bool = False, default_ttl: float | None = None,
                 max_object_bytes: int | None = None, prefix: str = "dwg:",
                 socket_timeout: float = 5.0) -> None:
        self._cluster = cluster
        self._prefix = prefix
        self._default_ttl = default_ttl
        self._max_object = max_object_bytes
        common: dict[str, Any] = {"socket_timeout": socket_timeout,
                                  "socket_connect_timeout": socket_timeout}
        self._redis: Redis | RedisCluster
        if cluster:
            self._redis = RedisCluster.from_url(url, **common)
        else:
            self._redis = Redis.from_url(url, health_check_interval=10, **common)
        self._url = url
        self._common = common
        self._writer: ThreadPoolExecutor | None = None
        self._sync: SyncRedis | SyncRedisCluster | None = None
        self._waiters: dict[str, asyncio.Event] = {}
        self._waiting: dict[str, int] = {}  # how many wait_events calls use each waiter
        self._listener: asyncio.Task[None] | None = None
        # Reads of values go through a raw pipelined connection where the URL allows it.
        self._reader = (RedisBulkReader(url, timeout=socket_timeout,
                                        max_value=(max_object_bytes or MAX_VALUE) + 4096)
                        if supports(url) and not cluster else None)
        self._closing = False

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except ERRORS as exc:
            raise CacheUnavailable(f"redis: {exc}") from exc

    async def get(self, key: str) -> bytes | None:
        if self._reader is not None:
            return await self._reader.get(key)
        value = await self._call(self._redis.get(key))
        return bytes(value) if value is not None else None

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        if self._reader is not None:
            return await self._reader.get_many(keys)
        if self._cluster:
            return [await self.get(k) for k in keys]
        values = await self._call(self._redis.mget(list(keys)))
        return [bytes(v) if v is not None else None for v in values]

    async def sizes(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        if self._cluster:
            return [int(await self._call(self._redis.strlen(k))) for k in keys]
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.strlen(key)
        return [int(n) for n in await self._call(pipe.execute())]

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        if self._max_object is not None and len(value) > self._max_object:
            return False
        ttl = ttl or self._default_ttl
        px = int(ttl * 1000) if ttl else None
        await self._call(self._redis.set(key, value, px=px))
        return True

    async def write_batch(self, values: Sequence[tuple[str, bytes, float | None]],
                          events: Sequence[tuple[str, str, float]]) -> list[bool]:
        stored = [self._max_object is None or len(value) <= self._max_object
                  for _, value, _ in values]
        if not values and not events:
            return stored
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, "redis-writer", initializer=_lower_priority)
        kept = [entry for entry, ok in zip(values, stored, strict=True) if ok]
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._writer, self._write_pipelined, kept, list(events))
        except ERRORS as exc:
            raise CacheUnavailable(f"redis: {exc}") from exc
        return stored

    def _write_pipelined(self, values: list[tuple[str, bytes, float | None]],
                         events: list[tuple[str, str, float]]) -> None:
        """SETs, then per event log one RPUSH of its events (in order), one PEXPIRE (the
        longest ttl) and one PUBLISH, pipelined (runs in the writer thread). On one server
        the commands are encoded here and written without copying the values (redis-py's
        packer would copy each into one bytes object); a Cluster takes redis-py's pipeline,
        which routes each command to its node."""
        if self._sync is None:
            self._sync = (SyncRedisCluster.from_url(self._url, **self._common) if self._cluster
                          else SyncRedis.from_url(self._url, **self._common))
        commands: list[list[bytes]] = []
        for key, value, ttl in values:
            ttl = ttl or self._default_ttl
            commands.append([b"SET", key.encode(), value,
                             *((b"PX", b"%d" % int(ttl * 1000)) if ttl else ())])
        logs: dict[str, list[bytes]] = {}  # each log's events, in order
        longest: dict[str, float] = {}
        for key, event, ttl in events:
            logs.setdefault(key, []).append(event.encode())
            longest[key] = max(longest.get(key, ttl), ttl)
        for key, texts in logs.items():
            name = key.encode()
            commands += [[b"RPUSH", name, *texts],
                         [b"PEXPIRE", name, b"%d" % int(longest[key] * 1000)]]
            if not self._cluster:
                commands.append([b"PUBLISH", EVENTS_CHANNEL.encode(), name])
        if isinstance(self._sync, SyncRedisCluster):
            pipe = self._sync.pipeline(transaction=False)
            for name, *args in commands:  # redis-py routes by the command's name, a str
                pipe.execute_command(name.decode(), *args)
            pipe.execute()
            return
        pool = self._sync.connection_pool
        conn = pool.get_connection()
        failed: redis_errors.ResponseError | None = None
        try:
            conn.send_packed_command(pack(commands))
            for _ in commands:  # every reply is read, so the connection stays in step
                try:
                    conn.read_response()
                except redis_errors.ResponseError as exc:
                    failed = failed or exc
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        if failed is not None:
            raise failed

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        if self._cluster:
            return sum([int(await self._call(self._redis.delete(k))) for k in keys])
        return int(await self._call(self._redis.delete(*keys)))

    async def exists(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        if self._cluster:
            return sum([int(await self._call(self._redis.exists(k))) for k in keys])
        return int(await self._call(self._redis.exists(*keys)))

    async def keys(self, pattern: str) -> list[str]:
        try:
            return [k.decode() if isinstance(k, bytes) else str(k)
                    async for k in self._redis.scan_iter(match=pattern, count=500)]
        except ERRORS as exc:
            raise CacheUnavailable(f"redis: {exc}") from exc

    async def delete_matching(self, pattern: str) -> int:
        count = 0
        try:
            async for key in self._redis.scan_iter(match=pattern, count=500):
                count += int(await self._redis.delete(key))
        except ERRORS as exc:
            raise CacheUnavailable(f"redis: {exc}") from exc
        return count

    async def acquire_lock(self, key: str, ttl: float) -> str | None:
        token = secrets.token_hex(8)
        ok = await self._call(self._redis.set(key, token, nx=True, px=int(ttl * 1000)))
        return token if ok else None

    async def renew_lock(self, key: str, token: str, ttl: float) -> bool:
        done = await self._call(self._redis.eval(_RENEW, 1, key, token, int(ttl * 1000)))
        return bool(done)

    async def release_lock(self, key: str, token: str) -> None:
        await self._call(self._redis.eval(_RELEASE, 1, key, token))

    async def lock_holder(self, key: str) -> str | None:
        value = await self._call(self._redis.get(key))
        return value.decode() if value is not None else None

    async def append_event(self, key: str, event: str, ttl: float) -> None:
        async def run() -> None:
            await self._redis.rpush(key, event)
            await self._redis.pexpire(key, int(ttl * 1000))
            if not self._cluster:
                await self._redis.publish(EVENTS_CHANNEL, key)
        await self._call(run())

    async def read_events(self, key: str, start: int) -> list[str]:
        values = await self._call(self._redis.lrange(key, start, -1))
        return [v.decode() for v in values]

    async def wait_events(self, key: str, start: int, timeout: float) -> list[str]:
        events = await self.read_events(key, start)
        if events:
            return events
        if not self._cluster:
            self._ensure_listener()
        waiter = self._waiters.setdefault(key, asyncio.Event())
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            poll = 0.02
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return []
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the wait's
                # result when a cancellation lands just after the wake-up, and the cancelled
                # caller (a C-MOVE's relay, a follower) would go on waiting.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(poll, remaining)):
                        await waiter.wait()
                waiter.clear()
                events = await self.read_events(key, start)
                if events:
                    return events
                poll = min(poll * 2, 0.25)
        finally:  # the last waiter on a key forgets it: event logs are one-off keys
            left = self._waiting.pop(key) - 1
            if left:
                self._waiting[key] = left
            else:
                self._waiters.pop(key, None)

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        """Wake local waiters when any process appends to an event log."""
        assert isinstance(self._redis, Redis)
        while not self._closing:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(EVENTS_CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    key = message["data"].decode()
                    waiter = self._waiters.get(key)
                    if waiter is not None:
                        waiter.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis went away: waiters fall back to polling; retry later
                log.debug("redis event listener lost its connection", exc_info=True)
                await asyncio.sleep(1.0)

    async def stats(self) -> dict[str, Any]:
        if isinstance(self._redis, RedisCluster):  # INFO goes to one node unless told
            info = await self._call(self._redis.info("memory",
                                                     target_nodes=RedisCluster.PRIMARIES))
        else:
            info = await self._call(self._redis.info("memory"))
        if self._cluster and isinstance(info, dict) and "used_memory" not in info:
            used = sum(int(v.get("used_memory", 0)) for v in info.values() if isinstance(v, dict))
        else:
            used = int(info.get("used_memory", 0))
        keys = 0
        try:
            async for _ in self._redis.scan_iter(match=f"{self._prefix}*", count=1000):
                keys += 1
        except ERRORS as exc:
            raise CacheUnavailable(f"redis: {exc}") from exc
        return {"backend": self.name + (" cluster" if self._cluster else ""), "keys": keys,
                "used_memory": used}

    async def clear(self) -> int:
        return await self.delete_matching(f"{self._prefix}*")

    async def ping(self) -> bool:
        # Pooled connections from before a Redis restart fail once each: after a failure drop
        # the whole pool, then try again before calling Redis unreachable.
        for attempt in range(2):
            try:
                return bool(await self._redis.ping())
            except Exception:
                if attempt == 0 and isinstance(self._redis, Redis):
                    with contextlib.suppress(Exception):
                        await self._redis.connection_pool.disconnect()
        return False

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._closing = True
        if self._listener is not None:
            # Bounded: a cancellation landing as a redis-py call completes can be lost on
            # Python 3.11 (see wait_events), and the listener would then listen on.
            self._listener.cancel()
            await asyncio.wait({self._listener}, timeout=LISTENER_STOP_S)
        with contextlib.suppress(Exception):
            await self._redis.aclose()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.shutdown)
        if self._sync is not None:
            with contextlib.suppress(Exception):
                self._sync.close()

"""The embedded in-process cache: an LRU bounded by bytes, with TTLs, locks and event logs.

Used when no Redis is configured (the demo's default). It lives in the event loop's thread, so
it needs no locking; it serves one process only (several workers each get their own).
"""

from __future__ import annotations

import asyncio
import fnmatch
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from app.cache.backend import CacheBackend
from app.cache.heap import keep_freed_memory


class MemoryBackend(CacheBackend):
    """LRU of bytes values bounded by ``max_bytes``; values over ``max_object_bytes`` refused."""

    name = "memory"

    def __init__(self, max_bytes: int, max_object_bytes: int | None = None) -> None:
        self._max_bytes = max_bytes
        keep_freed_memory(max_bytes)  # a refill reuses what an eviction freed
        self._max_object = max_object_bytes if max_object_bytes is not None else max_bytes
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._bytes = 0
        self._locks: dict[str, tuple[str, float]] = {}
        self._events: dict[str, tuple[list[str], float]] = {}
        self._conditions: dict[str, asyncio.Condition] = {}
        self._appends = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def _expired(self, expiry: float | None) -> bool:
        return expiry is not None and expiry <= time.monotonic()

    def _drop(self, key: str) -> bool:
        item = self._data.pop(key, None)
        if item is None:
            return False
        self._bytes -= len(item[0])
        return True

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None or self._expired(item[1]):
            if item is not None:
                self._drop(key)
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return item[0]

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        if len(value) > self._max_object or len(value) > self._max_bytes:
            return False
        self._drop(key)
        expiry = time.monotonic() + ttl if ttl else None
        self._data[key] = (value, expiry)
        self._bytes += len(value)
        while self._bytes > self._max_bytes and self._data:
            oldest = next(iter(self._data))
            self._drop(oldest)
            self.evictions += 1
        return True

    async def delete(self, *keys: str) -> int:
        return sum(1 for k in keys if self._drop(k))

    async def sizes(self, keys: Sequence[str]) -> list[int]:
        out = []
        for key in keys:
            item = self._data.get(key)
            out.append(len(item[0]) if item is not None and not self._expired(item[1]) else 0)
        return out

    async def exists(self, keys: Sequence[str]) -> int:
        count = 0
        for key in keys:
            item = self._data.get(key)
            if item is not None and not self._expired(item[1]):
                count += 1
        return count

    async def keys(self, pattern: str) -> list[str]:
        return [k for k in self._data if fnmatch.fnmatchcase(k, pattern)
                and not self._expired(self._data[k][1])]

    async def delete_matching(self, pattern: str) -> int:
        doomed = [k for k in self._data if fnmatch.fnmatchcase(k, pattern)]
        for key in doomed:
            self._drop(key)
        for key in [k for k in self._events if fnmatch.fnmatchcase(k, pattern)]:
            del self._events[key]
        return len(doomed)

    async def acquire_lock(self, key: str, ttl: float) -> str | None:
        held = self._locks.get(key)
        if held is not None and held[1] > time.monotonic():
            return None
        token = secrets.token_hex(8)
        self._locks[key] = (token, time.monotonic() + ttl)
        return token

    async def renew_lock(self, key: str, token: str, ttl: float) -> bool:
        held = self._locks.get(key)
        if held is None or held[0] != token:
            return False
        self._locks[key] = (token, time.monotonic() + ttl)
        return True

    async def release_lock(self, key: str, token: str) -> None:
        held = self._locks.get(key)
        if held is not None and held[0] == token:
            del self._locks[key]

    async def lock_holder(self, key: str) -> str | None:
        held = self._locks.get(key)
        if held is None or held[1] <= time.monotonic():
            return None
        return held[0]

    def _condition(self, key: str) -> asyncio.Condition:
        cond = self._conditions.get(key)
        if cond is None:
            cond = self._conditions[key] = asyncio.Condition()
        return cond

    def _log(self, key: str) -> list[str]:
        item = self._events.get(key)
        if item is None or item[1] <= time.monotonic():
            self._events.pop(key, None)
            return []
        return item[0]

    def _sweep(self) -> None:
        """Forget expired event logs and their idle conditions and locks (bounded memory)."""
        now = time.monotonic()
        for key in [k for k, (_, expiry) in self._events.items() if expiry <= now]:
            del self._events[key]
        for key in [k for k, c in self._conditions.items()
                    if k not in self._events and not getattr(c, "_waiters", None)]:
            del self._conditions[key]
        for key in [k for k, (_, expiry) in self._locks.items() if expiry <= now]:
            del self._locks[key]

    async def append_event(self, key: str, event: str, ttl: float) -> None:
        self._appends += 1
        if self._appends % 256 == 0:
            self._sweep()
        log = self._log(key)
        log.append(event)
        self._events[key] = (log, time.monotonic() + ttl)
        cond = self._condition(key)
        async with cond:
            cond.notify_all()

    async def read_events(self, key: str, start: int) -> list[str]:
        return list(self._log(key)[start:])

    async def wait_events(self, key: str, start: int, timeout: float) -> list[str]:
        events = await self.read_events(key, start)
        if events:
            return events
        cond = self._condition(key)
        try:  # asyncio.timeout keeps a cancellation that lands with the wake-up (see redis)
            async with asyncio.timeout(timeout), cond:
                await cond.wait()
        except TimeoutError:
            pass
        return await self.read_events(key, start)

    async def stats(self) -> dict[str, Any]:
        return {"backend": self.name, "keys": len(self._data), "bytes": self._bytes,
                "max_bytes": self._max_bytes, "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions}

    async def clear(self) -> int:
        count = len(self._data)
        self._data.clear()
        self._bytes = 0
        self._events.clear()
        return count

    async def ping(self) -> bool:
        return True

"""A cache that never breaks the gateway: when Redis fails, work goes on against a small local
in-process backend (pass-through for sharing, single-flight kept within the process) until a
background probe finds Redis back; readiness and metrics report the degraded state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from app.cache.backend import CacheBackend, CacheUnavailable
from app.cache.memory import MemoryBackend

log = logging.getLogger(__name__)
T = TypeVar("T")


class ResilientBackend(CacheBackend):
    """Delegates to ``primary``; on CacheUnavailable switches to ``fallback`` and re-probes."""

    spans_processes = True  # built around a shared backend (Redis); its fallback is not

    def __init__(self, primary: CacheBackend, fallback: MemoryBackend,
                 retry_interval: float = 2.0,
                 on_error: Callable[[], None] | None = None) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name
        self._retry_interval = retry_interval
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._on_error = on_error
        self._probe_lock = asyncio.Lock()
        self._prober: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        """False while the primary is unreachable."""
        return self._down_since is None

    @property
    def answering(self) -> bool:
        """False while the primary is unreachable (writes land in the process-local fallback)."""
        return self.healthy

    async def _probe(self) -> bool:
        """Ping the primary (one probe at a time); True, and healthy again, if it answers."""
        if self._probe_lock.locked():
            return False
        async with self._probe_lock:
            self._next_probe = time.monotonic() + self._retry_interval
            if not await self.primary.ping():
                return False
            if self._down_since is not None:
                log.warning("cache backend %s is back after %.1f s", self.name,
                            time.monotonic() - self._down_since)
                self._down_since = None
            return True

    async def check(self) -> bool:
        """Ping the primary now (readiness, start-up); marks it down if it does not answer."""
        if self._down_since is not None:
            return await self._probe()
        if await self.primary.ping():
            return True
        self._mark_down("no answer to PING")
        return False

    def _mark_down(self, reason: object) -> None:
        if self._down_since is None:
            log.error("cache backend %s unavailable, serving pass-through: %s", self.name, reason)
            self._down_since = time.monotonic()
        self._next_probe = time.monotonic() + self._retry_interval
        self._start_prober()
        if self._on_error is not None:
            self._on_error()

    async def _probe_until_up(self) -> None:
        """Runs while the primary is down, so recovery (and readiness, metrics) does not wait
        for the next request."""
        while self._down_since is not None:
            await asyncio.sleep(self._retry_interval)
            with contextlib.suppress(Exception):
                await self._probe()

    def _start_prober(self) -> None:
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(
                self._probe_until_up(), name=f"probe cache backend {self.name}")

    async def _backend(self) -> CacheBackend:
        if self._down_since is None:
            return self.primary
        if time.monotonic() >= self._next_probe and await self._probe():
            return self.primary
        return self.fallback

    async def _run(self, call: Callable[[CacheBackend], Awaitable[T]]) -> T:
        backend = await self._backend()
        try:
            return await call(backend)
        except CacheUnavailable as exc:
            if backend is self.fallback:
                raise
            self._mark_down(exc)
            return await call(self.fallback)

    async def get(self, key: str) -> bytes | None:
        return await self._run(lambda b: b.get(key))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self._run(lambda b: b.get_many(keys))

    async def sizes(self, keys: Sequence[str]) -> list[int]:
        return await self._run(lambda b: b.sizes(keys))

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        return await self._run(lambda b: b.set(key, value, ttl))

    async def write_batch(self, values: Sequence[tuple[str, bytes, float | None]],
                          events: Sequence[tuple[str, str, float]]) -> list[bool]:
        return await self._run(lambda b: b.write_batch(values, events))

    async def delete(self, *keys: str) -> int:
        return await self._run(lambda b: b.delete(*keys))

    async def exists(self, keys: Sequence[str]) -> int:
        return await self._run(lambda b: b.exists(keys))

    async def keys(self, pattern: str) -> list[str]:
        return await self._run(lambda b: b.keys(pattern))

    async def delete_matching(self, pattern: str) -> int:
        return await self._run(lambda b: b.delete_matching(pattern))

    async def acquire_lock(self, key: str, ttl: float) -> str | None:
        return await self._run(lambda b: b.acquire_lock(key, ttl))

    async def renew_lock(self, key: str, token: str, ttl: float) -> bool:
        return await self._run(lambda b: b.renew_lock(key, token, ttl))

    async def release_lock(self, key: str, token: str) -> None:
        await self._run(lambda b: b.release_lock(key, token))

    async def lock_holder(self, key: str) -> str | None:
        return await self._run(lambda b: b.lock_holder(key))

    async def append_event(self, key: str, event: str, ttl: float) -> None:
        await self._run(lambda b: b.append_event(key, event, ttl))

    async def read_events(self, key: str, start: int) -> list[str]:
        return await self._run(lambda b: b.read_events(key, start))

    async def wait_events(self, key: str, start: int, timeout: float) -> list[str]:
        return await self._run(lambda b: b.wait_events(key, start, timeout))

    async def stats(self) -> dict[str, Any]:
        try:
            out = await self.primary.stats()
            out["healthy"] = self.healthy
            return out
        except CacheUnavailable as exc:
            local = await self.fallback.stats()
            return {"backend": self.name, "healthy": False, "error": str(exc), "local": local}

    async def clear(self) -> int:
        cleared = await self.fallback.clear()
        return cleared + await self._run(lambda b: b.clear() if b is not self.fallback
                                         else _zero())

    async def ping(self) -> bool:
        return await self.primary.ping()

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._prober
        await self.primary.close()


async def _zero() -> int:
    return 0

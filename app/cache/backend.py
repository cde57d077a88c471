"""The cache backend interface: bytes by key, short-lived locks and per-key event logs.

Two implementations: an embedded in-process LRU (memory.py) and Redis (redisbackend.py, single
server or Cluster). Everything above speaks only this interface, so single-flight and the
instance, metadata and query caches behave the same on both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any


class CacheUnavailable(Exception):
    """The backend cannot be reached; callers degrade to pass-through."""


class CacheBackend(ABC):
    """Async key/value store with locks and event logs; all values are bytes."""

    name: str = "backend"
    #: Whether other processes (workers, replicas) see what this backend holds.
    spans_processes: bool = False

    @property
    def answering(self) -> bool:
        """Whether the backend answers now, as far as it knows (only a backend that tracks
        outages says otherwise)."""
        return True

    @property
    def shared(self) -> bool:
        """Whether other processes see what is written now: it spans processes and answers."""
        return self.spans_processes and self.answering

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value, or None when absent or expired."""

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of several keys, None for each absent one."""
        return [await self.get(k) for k in keys]

    async def sizes(self, keys: Sequence[str]) -> list[int]:
        """The length in bytes of each key's value, 0 for an absent one (backends answer it
        without sending the values, and without counting it as a read)."""
        return [len(v) if v is not None else 0 for v in await self.get_many(keys)]

    @abstractmethod
    async def set(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Store ``value``; False when the backend declined it (e.g. over the size cap)."""

    async def write_batch(self, values: Sequence[tuple[str, bytes, float | None]],
                          events: Sequence[tuple[str, str, float]]) -> list[bool]:
        """Store several values (key, value, ttl), then append events (log key, event, ttl),
        in that order: whoever reads an event finds the values written before it. Whether
        each value was stored, as ``set`` says. Backends batch it into one round trip."""
        stored = [await self.set(key, value, ttl) for key, value, ttl in values]
        for key, event, ttl in events:
            await self.append_event(key, event, ttl)
        return stored

    @abstractmethod
    async def delete(self, *keys: str) -> int:
        """Remove keys; the number removed."""

    @abstractmethod
    async def exists(self, keys: Sequence[str]) -> int:
        """How many of ``keys`` are present."""

    @abstractmethod
    async def keys(self, pattern: str) -> list[str]:
        """Every key matching a glob ``pattern`` (for management, not for hot paths)."""

    @abstractmethod
    async def delete_matching(self, pattern: str) -> int:
        """Remove every key matching a glob ``pattern``; the number removed."""

    @abstractmethod
    async def acquire_lock(self, key: str, ttl: float) -> str | None:
        """Take a lock that expires after ``ttl`` seconds; a token, or None if held."""

    @abstractmethod
    async def renew_lock(self, key: str, token: str, ttl: float) -> bool:
        """Extend a lock we hold; False if it is no longer ours."""

    @abstractmethod
    async def release_lock(self, key: str, token: str) -> None:
        """Release a lock if we still hold it."""

    @abstractmethod
    async def lock_holder(self, key: str) -> str | None:
        """The token holding a lock, or None if free."""

    @abstractmethod
    async def append_event(self, key: str, event: str, ttl: float) -> None:
        """Append to an event log (kept for ``ttl``) and wake everyone waiting on it."""

    @abstractmethod
    async def read_events(self, key: str, start: int) -> list[str]:
        """Events from position ``start`` on."""

    @abstractmethod
    async def wait_events(self, key: str, start: int, timeout: float) -> list[str]:
        """Events from ``start`` on, waiting up to ``timeout`` seconds for one to appear."""

    @abstractmethod
    async def stats(self) -> dict[str, Any]:
        """Size and hit figures for `cache stats`."""

    @abstractmethod
    async def clear(self) -> int:
        """Remove every key of this gateway; the number removed."""

    @abstractmethod
    async def ping(self) -> bool:
        """True when the backend answers."""

    async def close(self) -> None:
        """Release connections."""

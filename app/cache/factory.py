"""Building the configured cache backend (memory, Redis with a local fallback, or none)."""

from __future__ import annotations

from collections.abc import Callable

from app.cache.backend import CacheBackend
from app.cache.memory import MemoryBackend
from app.cache.redisbackend import RedisBackend
from app.cache.resilient import ResilientBackend
from app.settings import Settings

FALLBACK_BYTES = 64 * 1024 * 1024


def build_backend(settings: Settings, on_error: Callable[[], None] | None = None
                  ) -> CacheBackend | None:
    """The backend ``settings`` ask for; None when caching is off."""
    if settings.cache_backend == "none":
        return None
    if settings.cache_backend == "memory":
        return MemoryBackend(settings.cache_max_bytes, settings.cache_max_object_bytes)
    assert settings.redis_url is not None
    primary = RedisBackend(settings.redis_url, cluster=settings.redis_cluster,
                           default_ttl=settings.cache_ttl,
                           max_object_bytes=settings.cache_max_object_bytes)
    fallback = MemoryBackend(min(settings.cache_max_bytes, FALLBACK_BYTES),
                             settings.cache_max_object_bytes)
    return ResilientBackend(primary, fallback, settings.cache_retry_interval, on_error)

"""Looking at this process's threads, for tests that check a gateway leaks none: pynetdicom
association threads, threads started since a baseline (leaving out idle-by-design pool workers),
and a poll-until-true helper for the checks that settle after a disconnect."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from pynetdicom.association import Association

SETTLE_S = 5.0
# Worker pools keep idle threads by design: the DIMSE pool, the event loop's default executor
# and AnyIO's thread pool.
POOL_PREFIXES = ("dimse", "asyncio_", "uvloop_", "AnyIO worker thread")


def association_threads() -> list[str]:
    """Every pynetdicom association thread in this process (PACS and gateway sides)."""
    return [t.name for t in threading.enumerate() if isinstance(t, Association)]


def non_pool_threads() -> set[threading.Thread]:
    """Live threads, leaving out idle-by-design pool workers."""
    return {t for t in threading.enumerate() if not t.name.startswith(POOL_PREFIXES)}


def new_threads(baseline: set[threading.Thread]) -> list[str]:
    """Names of non-pool threads started since ``baseline`` and still alive (threads of
    earlier tests that end meanwhile do not count)."""
    return sorted(t.name for t in non_pool_threads() - baseline)


def pool_threads() -> int:
    """Live pool worker threads."""
    return sum(1 for t in threading.enumerate() if t.name.startswith(POOL_PREFIXES))


def eventually(predicate: Callable[[], bool], within: float = SETTLE_S) -> bool:
    """Poll ``predicate`` (blocking, every 50 ms) until it is true or ``within`` seconds pass;
    its last value."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@asynccontextmanager
async def worker_pool(prefix: str, max_workers: int = 16, shutdown_within: float = 10.0
                      ) -> AsyncIterator[ThreadPoolExecutor]:
    """A thread pool for producers under test; on exit every worker must have returned:
    shutting down cannot block past ``shutdown_within`` and leaves no thread named ``prefix``."""
    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=prefix)
    yield pool
    await asyncio.wait_for(asyncio.to_thread(pool.shutdown, True), shutdown_within)
    assert not [t for t in threading.enumerate() if t.name.startswith(prefix)]

"""Association reuse per PACS (PS3.7 allows many operations on one association): established
associations are kept idle by what they negotiated, checked before reuse, released after an
idle time, and discarded after any error or abort. At most ``max_associations`` are open."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from app.dimse.engine.association import (
    Association,
    AssociationError,
    AssociationRequest,
    State,
)
from app.dimse.engine.operations import Progress

log = logging.getLogger(__name__)
R = TypeVar("R")
Opener = Callable[[AssociationRequest], Awaitable[Association]]


class AssociationPool:
    """Idle associations of one PACS, keyed by their association request."""

    def __init__(self, opener: Opener, *, limit: int, idle_timeout: float) -> None:
        self._opener = opener
        self._limit = limit
        self._idle_timeout = idle_timeout
        self._slots = asyncio.Semaphore(limit)
        self._leased = 0
        self._idle: dict[AssociationRequest, list[tuple[Association, asyncio.TimerHandle]]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.opened = 0
        self.reused = 0

    @property
    def idle_count(self) -> int:
        """Associations open and waiting for reuse."""
        return sum(len(v) for v in self._idle.values())

    @property
    def leased_count(self) -> int:
        """Associations in use by an operation."""
        return self._leased

    async def acquire(self, request: AssociationRequest) -> tuple[Association, bool]:
        """An established association for ``request`` and whether it was reused; waits for a
        free slot (the caller bounds the wait)."""
        await self._slots.acquire()
        self._leased += 1
        try:
            idle = self._idle.get(request)
            while idle:
                assoc, expiry = idle.pop()
                if not idle:
                    del self._idle[request]
                expiry.cancel()
                if assoc.is_established:
                    self.reused += 1
                    return assoc, True
                assoc.abort("stale pooled association")
            self._make_room()
            assoc = await self._opener(request)
            self.opened += 1
            return assoc, False
        except BaseException:
            self._leased -= 1
            self._slots.release()
            raise

    def give_back(self, assoc: Association, request: AssociationRequest, reusable: bool) -> None:
        """Return a leased association: kept idle when reusable, else closed."""
        self._leased -= 1
        self._slots.release()
        if reusable and self._idle_timeout > 0 and assoc.is_established:
            expiry = asyncio.get_running_loop().call_later(
                self._idle_timeout, self._expire, request, assoc)
            self._idle.setdefault(request, []).append((assoc, expiry))
            return
        self._close(assoc, graceful=reusable)

    async def run(self, request: AssociationRequest,
                  body: Callable[[Association, Progress], Awaitable[R]],
                  on_association: Callable[[Association], None] | None = None) -> R:
        """Run ``body`` on a leased association; retried once on a fresh association when a
        reused one turns out to be dead before any response (the peer closed it while idle)."""
        for attempt in range(2):
            assoc, reused = await self.acquire(request)
            if on_association is not None:
                on_association(assoc)
            progress = Progress()
            try:
                assoc.stats.operations += 1
                return await body(assoc, progress)
            except AssociationError:
                if reused and not progress.responded and attempt == 0:
                    log.info("%s: pooled association was gone, retrying on a new one",
                             assoc.label)
                    continue
                raise
            finally:
                self.give_back(assoc, request, progress.finished)
        raise AssertionError("unreachable")  # pragma: no cover

    def _make_room(self) -> None:
        """Close the oldest idle associations so that a new one stays within the limit."""
        while self._leased + self.idle_count > self._limit and self._idle:
            request = next(iter(self._idle))
            entries = self._idle[request]
            if not entries:  # pragma: no cover - emptied lists are removed where emptied
                del self._idle[request]
                continue
            assoc, expiry = entries.pop(0)
            if not entries:
                del self._idle[request]
            expiry.cancel()
            self._close(assoc, graceful=True)

    def _expire(self, request: AssociationRequest, assoc: Association) -> None:
        entries = self._idle.get(request, [])
        for index, (candidate, _) in enumerate(entries):
            if candidate is assoc:
                del entries[index]
                break
        if not entries:
            self._idle.pop(request, None)
        self._close(assoc, graceful=True)

    def _close(self, assoc: Association, *, graceful: bool) -> None:
        if graceful and assoc.state is State.STA6:
            task = asyncio.get_running_loop().create_task(assoc.release())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        else:
            assoc.abort("not reusable")

    async def close(self) -> None:
        """Release every idle association and wait (briefly) for releases in progress."""
        for entries in list(self._idle.values()):
            for assoc, expiry in entries:
                expiry.cancel()
                self._close(assoc, graceful=True)
        self._idle.clear()
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=5)

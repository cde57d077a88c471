"""Association reuse per PACS (PS3.7 allows many operations on one association): established
associations are kept idle by what they negotiated, checked before reuse, released after an
idle time, and discarded after any error or abort. At most ``max_associations`` are open, and
at most ``max_idle`` of them wait idle: a PACS serves each open association with a worker (Orthanc
has 4 by default), so associations parked for reuse must not keep other clients out."""

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

    def __init__(self, opener: Opener, *, limit: int, idle_timeout: float,
                 max_idle: int = 1) -> None:
        self._opener = opener
        self._limit = limit
        self._idle_timeout = idle_timeout
        self._max_idle = max_idle
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
            while (found := self._idle_for(request)) is not None:
                key, assoc, expiry = found
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

    def _idle_for(self, request: AssociationRequest
                  ) -> tuple[AssociationRequest, Association, asyncio.TimerHandle] | None:
        """Take the newest idle association that can carry ``request``: one negotiated for it,
        else one whose negotiation covers it and whose PACS accepted each of its SOP classes
        (a C-GET association also proposes C-FIND, so one association serves a retrieval's
        query and its C-GET)."""
        keys = [request] if request in self._idle else []
        keys += [key for key in self._idle if key != request and key.covers(request)]
        for key in keys:
            entries = self._idle[key]
            for index in range(len(entries) - 1, -1, -1):
                assoc, expiry = entries[index]
                if key != request and not _accepts(assoc, request):
                    continue
                del entries[index]
                if not entries:
                    del self._idle[key]
                return key, assoc, expiry
        return None

    def give_back(self, assoc: Association, request: AssociationRequest, reusable: bool) -> None:
        """Return a leased association: kept idle when reusable (under what it negotiated, which
        may cover more than ``request``), else closed."""
        request = assoc.requested or request
        self._leased -= 1
        self._slots.release()
        if (reusable and self._idle_timeout > 0 and self._max_idle > 0
                and assoc.is_established):
            expiry = asyncio.get_running_loop().call_later(
                self._idle_timeout, self._expire, request, assoc)
            self._idle.setdefault(request, []).append((assoc, expiry))
            self._close_oldest_idle(self._max_idle)
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
        self._close_oldest_idle(self._limit - self._leased)

    def _close_oldest_idle(self, keep: int) -> None:
        """Close idle associations, oldest first, until at most ``keep`` are left."""
        while self.idle_count > max(keep, 0) and self._idle:
            request = min(self._idle, key=lambda r: self._idle[r][0][1].when())
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


def _accepts(assoc: Association, request: AssociationRequest) -> bool:
    """Whether ``assoc`` has an accepted context for every SOP class ``request`` proposes."""
    accepted = {cx.abstract_syntax for cx in assoc.contexts.values()}
    return all(p.abstract_syntax in accepted for p in request.contexts)

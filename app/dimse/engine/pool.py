"""Association reuse per PACS (PS3.7 allows many operations on one association): established
associations are kept idle by what they negotiated, checked before reuse, released after an
idle time, and discarded after any error or abort. At most ``max_associations`` are open, and
at most ``max_idle`` of them wait idle: a PACS serves each open association with a worker (Orthanc
has 4 by default), so associations parked for reuse must not keep other clients out.

With a shared ``AssociationBudget`` (several workers or replicas), each open association also
holds a lease from the budget, from before it is requested until it is closed: an idle pooled
association counts against the PACS's limit like a busy one. A new association takes over the
lease of an idle one this pool closes for it; idle associations are closed at once when other
processes wait for a lease. Waiting for a slot (local or shared) ends after ``wait_timeout``
seconds with AssociationsBusy (503, Retry-After)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

from app.dimse.budget import NO_LEASE, AssociationBudget, AssociationsBusy, DimseMetrics, Lease
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
                 max_idle: int = 1, peer: str = "pacs", wait_timeout: float = math.inf,
                 budget: AssociationBudget | None = None,
                 metrics: DimseMetrics | None = None) -> None:
        self._opener = opener
        self._limit = limit
        self._peer = peer
        self._wait_timeout = wait_timeout
        self._budget = budget
        self._metrics = metrics
        self._leases: dict[int, Lease] = {}  # id(association) -> its share of the budget
        self.waiting = 0
        self._idle_timeout = idle_timeout
        self._max_idle = max_idle
        self._slots = asyncio.Semaphore(limit)
        self._leased = 0
        self._idle: dict[AssociationRequest, list[tuple[Association, asyncio.TimerHandle]]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.opened = 0
        self.reused = 0
        self._closed = False
        if budget is not None:
            budget.on_contended(peer, self._drop_idle)

    @property
    def idle_count(self) -> int:
        """Associations open and waiting for reuse."""
        return sum(len(v) for v in self._idle.values())

    @property
    def leased_count(self) -> int:
        """Associations in use by an operation."""
        return self._leased

    @property
    def open_count(self) -> int:
        """Associations open: in use or idle."""
        return self._leased + self.idle_count

    async def acquire(self, request: AssociationRequest) -> tuple[Association, bool]:
        """An established association for ``request`` and whether it was reused; waits for a
        free slot, at most ``wait_timeout`` seconds (AssociationsBusy)."""
        if self._closed:
            raise AssociationError("the association pool is closed (shutting down)")
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self._wait_timeout
        self.waiting += 1
        waiting = True
        try:
            try:
                async with asyncio.timeout_at(deadline if math.isfinite(deadline) else None):
                    await self._slots.acquire()
            except TimeoutError:
                raise self._busy(loop.time() - start) from None
            self._leased += 1
            try:
                while (found := self._idle_for(request)) is not None:
                    key, assoc, expiry = found
                    expiry.cancel()
                    if assoc.is_established:
                        self.reused += 1
                        return assoc, True
                    self._close(assoc, graceful=False)  # stale: its lease goes back
                lease = await self._lease(deadline, start)
                self.waiting -= 1
                waiting = False
                self._observe_wait(loop.time() - start)
                try:
                    assoc = await self._opener(request)
                except BaseException:
                    lease.release()
                    raise
                self._leases[id(assoc)] = lease
                self.opened += 1
                return assoc, False
            except BaseException:
                self._leased -= 1
                self._slots.release()
                raise
        finally:
            if waiting:
                self.waiting -= 1

    async def _lease(self, deadline: float, start: float) -> Lease:
        """The budget's share for one more association: taken over from the oldest idle
        association (closed for it), else acquired from the shared budget; without a budget,
        idle associations are closed to stay within the process's limit."""
        if self._budget is None:
            self._make_room()
            return NO_LEASE
        taken = self._take_oldest_idle()
        if taken is not None:
            lease = self._leases.pop(id(taken), NO_LEASE)
            self._close(taken, graceful=True)
            return lease
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        granted = await self._budget.acquire(self._peer, self._limit,
                                             remaining if math.isfinite(remaining) else 1e9)
        if granted is None:
            raise self._busy(loop.time() - start)
        return granted

    def _busy(self, waited: float) -> AssociationsBusy:
        if self._metrics is not None:
            self._metrics.inc("dimse_association_wait_timeouts_total", peer=self._peer)
        return AssociationsBusy(self._peer, self._limit, round(waited, 1))

    def _observe_wait(self, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.observe("dimse_association_wait_seconds", seconds, peer=self._peer)

    def _drop_idle(self) -> None:
        """Close every idle association (others wait for the budget's leases they hold)."""
        self._close_oldest_idle(0)

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
        contended = self._budget is not None and self._budget.contended(self._peer)
        if (reusable and self._idle_timeout > 0 and self._max_idle > 0 and not self._closed
                and assoc.is_established and not contended):
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
        while self.idle_count > max(keep, 0):
            assoc = self._take_oldest_idle()
            if assoc is None:  # pragma: no cover - idle_count > 0 means there is one
                return
            self._close(assoc, graceful=True)

    def _take_oldest_idle(self) -> Association | None:
        """Remove the oldest idle association from the pool (None if there is none)."""
        while self._idle:
            request = min(self._idle, key=lambda r: self._idle[r][0][1].when())
            entries = self._idle[request]
            if not entries:  # pragma: no cover - emptied lists are removed where emptied
                del self._idle[request]
                continue
            assoc, expiry = entries.pop(0)
            if not entries:
                del self._idle[request]
            expiry.cancel()
            return assoc
        return None

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
        """Release (or abort) an association; its lease goes back once it is closed."""
        lease = self._leases.pop(id(assoc), NO_LEASE)
        if graceful and assoc.state is State.STA6:
            task = asyncio.get_running_loop().create_task(assoc.release())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            task.add_done_callback(lambda _t: lease.release())
        else:
            assoc.abort("not reusable")
            lease.release()

    async def close(self) -> None:
        """Release every idle association and wait (briefly) for releases in progress; an
        association still leased is closed when it is given back."""
        self._closed = True
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

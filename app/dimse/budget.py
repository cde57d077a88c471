"""Association budgets: how many associations a PACS may have open from the whole gateway.

Each process bounds its own associations per PACS (``max_associations``). When the gateway runs
as several workers or replicas, an ``AssociationBudget`` shared by all of them (a distributed
semaphore, injected at app construction: see app/cache/budget.py for the Redis one) bounds their
sum as well: an association is opened only under a lease from the budget, and the lease is
given back when the association closes. The DIMSE layer knows the budget only by this protocol.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Protocol

from app.errors import UpstreamUnavailable

BUSY_RETRY_AFTER_S = 5


class Lease(Protocol):
    """One association's share of a budget; ``release`` gives it back (idempotent, never
    blocks: any network work happens in the background)."""

    def release(self) -> None: ...


class AssociationBudget(Protocol):
    """A limit on open associations per PACS shared by every process of the gateway."""

    async def acquire(self, peer: str, limit: int, timeout: float) -> Lease | None:
        """A lease once fewer than ``limit`` are held for ``peer`` and earlier waiters were
        served (first come, first served); None after ``timeout`` seconds."""
        ...

    def contended(self, peer: str) -> bool:
        """Whether other holders wait for ``peer`` (idle associations should then close)."""
        ...

    def on_contended(self, peer: str, callback: Callable[[], None]) -> None:
        """Have ``callback`` called when waiters appear for ``peer``."""
        ...


class DimseMetrics(Protocol):
    """What the DIMSE layer records (app.metrics.Metrics has these)."""

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None: ...

    def observe(self, name: str, value: float, **labels: str) -> None: ...


class NoLease:
    """The lease of a process-local limit: nothing to give back."""

    def release(self) -> None:
        """Nothing to do."""


NO_LEASE = NoLease()


class AssociationsBusy(UpstreamUnavailable):
    """No association slot became free within ``association_wait_timeout`` (503, Retry-After)."""

    def __init__(self, peer: str, limit: int, waited: float) -> None:
        super().__init__(
            f"PACS {peer}: all {limit} associations allowed (max_associations) stayed busy "
            f"for {waited:g} s; try again later", retry_after=BUSY_RETRY_AFTER_S)


class SlotGate:
    """One slot per operation, as an ``asyncio.Semaphore``-like ``acquire``/``release`` pair:
    the process's own limit, then a lease from the shared budget (the pynetdicom engine opens
    an association per operation, so a slot is an association)."""

    def __init__(self, peer: str, limit: int, wait_timeout: float,
                 budget: AssociationBudget | None = None,
                 metrics: DimseMetrics | None = None) -> None:
        self._peer = peer
        self._limit = limit
        self._wait_timeout = wait_timeout
        self._budget = budget
        self._metrics = metrics
        self._local = asyncio.Semaphore(limit)
        self._leases: list[Lease] = []
        self.waiting = 0

    @property
    def in_use(self) -> int:
        """Slots held by running operations."""
        return len(self._leases)

    async def acquire(self) -> bool:
        """Wait for a slot; AssociationsBusy after ``wait_timeout`` seconds."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        self.waiting += 1
        try:
            try:
                async with asyncio.timeout(self._wait_timeout):
                    await self._local.acquire()
            except TimeoutError:
                raise self._busy(loop.time() - start) from None
            lease: Lease = NO_LEASE
            if self._budget is not None:
                remaining = max(0.0, self._wait_timeout - (loop.time() - start))
                try:
                    granted = await self._budget.acquire(self._peer, self._limit, remaining)
                except BaseException:
                    self._local.release()
                    raise
                if granted is None:
                    self._local.release()
                    raise self._busy(loop.time() - start)
                lease = granted
            self._leases.append(lease)
        finally:
            self.waiting -= 1
        if self._metrics is not None:
            self._metrics.observe("dimse_association_wait_seconds", loop.time() - start,
                                  peer=self._peer)
        return True

    def release(self) -> None:
        """Give a slot back (its lease first, then the local slot)."""
        if self._leases:
            self._leases.pop().release()
        self._local.release()

    def _busy(self, waited: float) -> AssociationsBusy:
        if self._metrics is not None:
            self._metrics.inc("dimse_association_wait_timeouts_total", peer=self._peer)
        return AssociationsBusy(self._peer, self._limit, _rounded(waited))


def _rounded(seconds: float) -> float:
    """Seconds for a message: tenths below ten, whole seconds above."""
    return round(seconds, 1) if seconds < 10 else float(math.floor(seconds))

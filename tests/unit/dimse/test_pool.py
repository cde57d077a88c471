"""The association pool's bookkeeping, with stand-in associations: reuse by request, the
limit on open associations, and stale entries."""

from __future__ import annotations

import asyncio
from typing import Any

from app.dimse.engine.association import (
    AcceptedContext,
    AssociationError,
    AssociationRequest,
    ContextProposal,
    State,
)
from app.dimse.engine.pool import AssociationPool


class StubAssociation:
    """What the pool looks at: established or not, abort and release."""

    def __init__(self, request: AssociationRequest) -> None:
        self.requested = request
        self.state = State.STA6
        self.contexts = {2 * i + 1: AcceptedContext(2 * i + 1, p.abstract_syntax,
                                                     p.transfer_syntaxes[0], True, False)
                         for i, p in enumerate(request.contexts)
                         if p.abstract_syntax != REJECTED}
        self.aborted = self.released = False

    @property
    def is_established(self) -> bool:
        return self.state is State.STA6

    def abort(self, reason: str = "") -> None:
        self.aborted = True
        self.state = State.STA1

    async def release(self) -> None:
        self.released = True
        self.state = State.STA1


REJECTED = "1.2.3.99"  # a SOP class the stand-in PACS does not accept


def request(*models: str) -> AssociationRequest:
    return AssociationRequest("GW", "PACS", tuple(ContextProposal(m, ("1.2.840.10008.1.2",))
                                                  for m in models))


async def opener(req: AssociationRequest) -> Any:
    return StubAssociation(req)


FIND, GET, ECHO = request("1.2.3.1"), request("1.2.3.3"), request("1.2.840.10008.1.1")


async def test_reuse_by_request_and_room_made_within_the_limit() -> None:
    pool = AssociationPool(opener, limit=2, idle_timeout=30, max_idle=2)
    find, _ = await pool.acquire(FIND)
    pool.give_back(find, FIND, reusable=True)
    again, reused = await pool.acquire(FIND)
    assert again is find and reused
    pool.give_back(again, FIND, reusable=True)
    get, _ = await pool.acquire(GET)
    pool.give_back(get, GET, reusable=True)
    assert pool.idle_count == 2
    echo, reused = await pool.acquire(ECHO)  # a third kind: the oldest idle one makes room
    assert not reused and pool.idle_count + pool.leased_count <= 2
    await asyncio.sleep(0)
    assert find.released or find.aborted
    pool.give_back(echo, ECHO, reusable=False)
    await pool.close()


async def test_a_stale_entry_leaves_no_empty_list_behind() -> None:
    """A pooled association found dead is dropped; making room later must not trip over the
    emptied entry (it once raised IndexError and answered 500)."""
    pool = AssociationPool(opener, limit=2, idle_timeout=30, max_idle=2)
    find, _ = await pool.acquire(FIND)
    pool.give_back(find, FIND, reusable=True)
    get, _ = await pool.acquire(GET)
    pool.give_back(get, GET, reusable=True)
    find.state = State.STA1  # the PACS closed it while idle
    fresh, reused = await pool.acquire(FIND)
    assert fresh is not find and not reused and find.aborted
    echo, _ = await pool.acquire(ECHO)  # needs room: the idle GET association goes
    assert pool.leased_count == 2 and pool.idle_count == 0
    pool.give_back(fresh, FIND, reusable=False)
    pool.give_back(echo, ECHO, reusable=False)
    await pool.close()


async def test_not_reusable_is_closed_and_idle_expires() -> None:
    pool = AssociationPool(opener, limit=1, idle_timeout=0.05)
    first, _ = await pool.acquire(FIND)
    pool.give_back(first, FIND, reusable=False)
    assert first.aborted and pool.idle_count == 0
    second, _ = await pool.acquire(FIND)
    pool.give_back(second, FIND, reusable=True)
    assert pool.idle_count == 1
    await asyncio.sleep(0.2)
    assert pool.idle_count == 0 and second.released
    await pool.close()


async def test_at_most_max_idle_wait_and_the_oldest_goes_first() -> None:
    """Idle associations hold PACS workers (Orthanc has 4): beyond ``max_idle`` the oldest
    idle one is released, whatever its negotiation; ``max_idle=0`` keeps none."""
    pool = AssociationPool(opener, limit=4, idle_timeout=30, max_idle=1)
    find, _ = await pool.acquire(FIND)
    get, _ = await pool.acquire(GET)
    pool.give_back(find, FIND, reusable=True)
    pool.give_back(get, GET, reusable=True)
    await asyncio.sleep(0)
    assert pool.idle_count == 1 and find.released and not get.released
    again, reused = await pool.acquire(GET)
    assert again is get and reused
    pool.give_back(again, GET, reusable=True)
    await pool.close()

    none_kept = AssociationPool(opener, limit=4, idle_timeout=30, max_idle=0)
    echo, _ = await none_kept.acquire(ECHO)
    none_kept.give_back(echo, ECHO, reusable=True)
    await asyncio.sleep(0)
    assert none_kept.idle_count == 0 and echo.released
    await none_kept.close()


async def test_an_association_whose_negotiation_covers_a_request_carries_it() -> None:
    """A C-GET association also proposes the query context: the C-FIND that precedes the next
    retrieval reuses it rather than opening a second association; a class the PACS rejected on
    it, or one it never proposed, needs a new association."""
    pool = AssociationPool(opener, limit=4, idle_timeout=30, max_idle=1)
    get_with_find = request("1.2.3.1", "1.2.3.3", "1.2.840.10008.5.1.4.1.1.2")
    retrieval, _ = await pool.acquire(get_with_find)
    pool.give_back(retrieval, get_with_find, reusable=True)
    query, reused = await pool.acquire(FIND)
    assert reused and query is retrieval
    pool.give_back(query, FIND, reusable=True)
    again, reused = await pool.acquire(get_with_find)
    assert reused and again is retrieval
    pool.give_back(again, get_with_find, reusable=True)
    other, reused = await pool.acquire(request("1.2.3.1", "1.2.3.5"))
    assert not reused and other is not retrieval
    pool.give_back(other, other.requested, reusable=False)

    # A C-GET (storage contexts with SCP roles) needs its own negotiation, in its own order:
    # some PACS send each instance on the first accepted context of its class.
    storage = tuple(ContextProposal("1.2.840.10008.5.1.4.1.1.2", (ts,))
                    for ts in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"))
    first = AssociationRequest("GW", "PACS", storage, ("1.2.840.10008.5.1.4.1.1.2",))
    compressed_first = AssociationRequest("GW", "PACS", storage[::-1],
                                          ("1.2.840.10008.5.1.4.1.1.2",))
    plain, _ = await pool.acquire(first)
    pool.give_back(plain, first, reusable=True)
    retry, reused = await pool.acquire(compressed_first)
    assert not reused and retry is not plain
    pool.give_back(retry, compressed_first, reusable=False)

    rejected = request("1.2.3.1", "1.2.3.3", REJECTED)
    partly, _ = await pool.acquire(rejected)
    pool.give_back(partly, rejected, reusable=True)
    needs, reused = await pool.acquire(request("1.2.3.3", REJECTED))
    assert not reused and needs is not partly
    pool.give_back(needs, needs.requested, reusable=False)
    await pool.close()


async def test_a_closed_pool_parks_nothing_and_opens_nothing() -> None:
    """At shutdown: what is still leased is closed when given back, and no new association is
    opened."""
    pool = AssociationPool(opener, limit=2, idle_timeout=30, max_idle=1)
    leased, _ = await pool.acquire(FIND)
    await pool.close()
    pool.give_back(leased, FIND, reusable=True)
    await asyncio.sleep(0)
    assert pool.idle_count == 0 and leased.released
    try:
        await pool.acquire(FIND)
    except AssociationError:
        pass
    else:
        raise AssertionError("a closed pool opened an association")


class CountingBudget:
    """An in-process AssociationBudget: ``limit`` leases, counted; None once exhausted."""

    def __init__(self) -> None:
        self.held = 0
        self.granted = 0
        self.busy = False
        self.callbacks: list[Any] = []

    async def acquire(self, peer: str, limit: int, timeout: float) -> Any:
        if self.held >= limit:
            await asyncio.sleep(timeout)
            return None
        self.held += 1
        self.granted += 1
        budget = self

        class Lease:
            done = False

            def release(self) -> None:
                if not self.done:
                    self.done = True
                    budget.held -= 1
        return Lease()

    def contended(self, peer: str) -> bool:
        return self.busy

    def on_contended(self, peer: str, callback: Any) -> None:
        self.callbacks.append(callback)


async def test_with_a_budget_each_open_association_holds_one_lease_until_it_closes() -> None:
    budget = CountingBudget()
    pool = AssociationPool(opener, limit=2, idle_timeout=30, max_idle=2, peer="p",
                           wait_timeout=0.2, budget=budget)
    find, _ = await pool.acquire(FIND)
    assert budget.held == 1
    pool.give_back(find, FIND, reusable=True)  # idle: still holds its lease
    assert budget.held == 1 and pool.idle_count == 1
    get, reused = await pool.acquire(GET)  # takes over the idle one's lease
    assert not reused and budget.granted == 1 and budget.held == 1
    await asyncio.sleep(0)
    assert find.released
    pool.give_back(get, GET, reusable=False)  # closed: its lease goes back
    assert budget.held == 0
    await pool.close()


async def test_with_a_budget_idle_associations_close_when_others_wait() -> None:
    budget = CountingBudget()
    pool = AssociationPool(opener, limit=2, idle_timeout=30, max_idle=2, peer="p",
                           wait_timeout=0.2, budget=budget)
    first, _ = await pool.acquire(FIND)
    pool.give_back(first, FIND, reusable=True)
    assert pool.idle_count == 1
    for callback in budget.callbacks:  # another process waits for a lease
        callback()
    await asyncio.sleep(0.01)  # the release, then its done callback
    assert pool.idle_count == 0 and first.released and budget.held == 0
    budget.busy = True  # while contended, a returned association is not kept idle
    second, _ = await pool.acquire(FIND)
    pool.give_back(second, FIND, reusable=True)
    await asyncio.sleep(0.01)
    assert pool.idle_count == 0 and budget.held == 0
    await pool.close()


async def test_no_lease_within_the_wait_timeout_is_associations_busy() -> None:
    from app.dimse.budget import AssociationsBusy

    budget = CountingBudget()
    budget.held = 5  # every lease is held elsewhere
    pool = AssociationPool(opener, limit=2, idle_timeout=30, peer="p", wait_timeout=0.1,
                           budget=budget)
    try:
        await pool.acquire(FIND)
    except AssociationsBusy as exc:
        assert exc.http_status == 503 and exc.headers["Retry-After"] == "5"
    else:
        raise AssertionError("a lease was granted beyond the budget")
    assert pool.leased_count == 0 and pool.waiting == 0
    await pool.close()

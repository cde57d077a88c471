"""The association pool's bookkeeping, with stand-in associations: reuse by request, the
limit on open associations, and stale entries."""

from __future__ import annotations

import asyncio
from typing import Any

from app.dimse.engine.association import AssociationRequest, ContextProposal, State
from app.dimse.engine.pool import AssociationPool


class StubAssociation:
    """What the pool looks at: established or not, abort and release."""

    def __init__(self, request: AssociationRequest) -> None:
        self.request = request
        self.state = State.STA6
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


def request(model: str) -> AssociationRequest:
    return AssociationRequest("GW", "PACS", (ContextProposal(model, ("1.2.840.10008.1.2",)),))


async def opener(req: AssociationRequest) -> Any:
    return StubAssociation(req)


FIND, GET, ECHO = request("1.2.3.1"), request("1.2.3.3"), request("1.2.840.10008.1.1")


async def test_reuse_by_request_and_room_made_within_the_limit() -> None:
    pool = AssociationPool(opener, limit=2, idle_timeout=30)
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
    pool = AssociationPool(opener, limit=2, idle_timeout=30)
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

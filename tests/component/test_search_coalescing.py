"""Identical concurrent QIDO-RS searches share one C-FIND sequence, computed counts included:
10 at once cost the PACS exactly what one search alone costs (counted at the DemoPacs), and all
get the same answer; with the in-process cache and with a real Redis, with the query cache on
and off (``qido_cache_ttl = 0``). A failing search fails every follower with the same status,
after one C-FIND."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from pydicom.dataset import Dataset
from pynetdicom.events import Event

from app.demo.pacs import DemoPacs
from tests.component.conftest import (
    GatewayFactory,
    eventually,
    gateway_settings,
    peer_config,
)

pytestmark = pytest.mark.timeout(90)

CONCURRENT = 10
# OHIF's study list: counts the PACS leaves out are computed with extra C-FINDs.
SEARCH = {"limit": "101", "offset": "0", "fuzzymatching": "false",
          "includefield": "00081030,00080060"}
UNABLE_TO_PROCESS = 0xC000


class GatedPacs(DemoPacs):
    """A countless DemoPacs (like dcmqrscp) refusing UID lists (so counts cost a C-FIND per
    study and series) whose C-FINDs wait for ``gate`` while it is set, and fail when
    ``failing``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, omit_counts=True, strict_unique_keys=True, **kwargs)
        self.gate: threading.Event | None = None
        self.failing = False
        self.arrived = 0

    def _on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        self.arrived += 1  # before the gate (operation_counts counts after it)
        gate = self.gate
        if gate is not None:
            gate.wait(30)
        if self.failing:
            self._count("C-FIND")
            yield UNABLE_TO_PROCESS, None
            return
        yield from super()._on_find(event)


@pytest.fixture(scope="module")
def pacs(samples: list[Dataset]) -> Iterator[GatedPacs]:
    server = GatedPacs(samples, ae_title="COALESCE")
    server.start("127.0.0.1", 0)
    yield server
    server.stop()


@pytest.fixture
def fresh_pacs(pacs: GatedPacs) -> Iterator[GatedPacs]:
    pacs.reset_operation_counts()
    pacs.gate, pacs.failing, pacs.arrived = None, False, 0
    yield pacs
    if pacs.gate is not None:
        pacs.gate.set()
    pacs.gate, pacs.failing = None, False


def finds(pacs: DemoPacs) -> int:
    return pacs.operation_counts["C-FIND"]


async def concurrent_searches(client: httpx.AsyncClient, pacs: GatedPacs
                              ) -> list[httpx.Response]:
    """CONCURRENT identical searches started while the PACS holds the first C-FIND."""
    pacs.gate = threading.Event()
    pacs.arrived = 0
    tasks = [asyncio.ensure_future(client.get("/dicomweb/studies", params=SEARCH))
             for _ in range(CONCURRENT)]
    try:
        assert await eventually(lambda: pacs.arrived > 0, 10)
        await asyncio.sleep(0.5)  # let every request reach the search's lock
    finally:
        pacs.gate.set()
    return list(await asyncio.gather(*tasks))


@pytest.mark.parametrize("qido_cache_ttl", [0.0, 10.0])
async def test_identical_concurrent_searches_cost_one_search(
        gateway: GatewayFactory, fresh_pacs: GatedPacs, cache_settings: dict[str, Any],
        qido_cache_ttl: float) -> None:
    peer = peer_config(fresh_pacs.port, ae_title=fresh_pacs.ae_title)
    settings = gateway_settings(peer, qido_cache_ttl=qido_cache_ttl, **cache_settings)
    async with gateway(settings) as client:
        alone = await client.get("/dicomweb/studies", params=SEARCH)
        assert alone.status_code == 200
        one_search = finds(fresh_pacs)
        assert one_search > 1  # the counts cost C-FINDs of their own

    if cache_settings["cache_backend"] == "redis":
        with redis.Redis.from_url(cache_settings["redis_url"], socket_timeout=5) as r:
            r.flushall()
    fresh_pacs.reset_operation_counts()
    async with gateway(settings) as client:
        responses = await concurrent_searches(client, fresh_pacs)
        assert [r.status_code for r in responses] == [200] * CONCURRENT
        assert all(r.json() == alone.json() for r in responses)
        assert finds(fresh_pacs) == one_search


async def test_a_failing_search_fails_every_follower_after_one_c_find(
        gateway: GatewayFactory, fresh_pacs: GatedPacs, cache_settings: dict[str, Any]) -> None:
    peer = peer_config(fresh_pacs.port, ae_title=fresh_pacs.ae_title)
    async with gateway(gateway_settings(peer, **cache_settings)) as client:
        fresh_pacs.failing = True
        responses = await concurrent_searches(client, fresh_pacs)
        statuses = {r.status_code for r in responses}
        assert len(statuses) == 1 and statuses != {200}, statuses
        assert finds(fresh_pacs) == 1
        fresh_pacs.failing = False
        again = await client.get("/dicomweb/studies", params=SEARCH)
        assert again.status_code == 200  # a failure is not cached


# -- refresh-ahead -------------------------------------------------------------------------------

REFRESH_TTL = 4.0  # qido_cache_ttl of these tests; half of it is when a hit is refreshed


async def _late_in_ttl(stored: float, fraction: float) -> None:
    """Sleep until ``fraction`` of REFRESH_TTL after ``stored`` (loop time)."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, stored + fraction * REFRESH_TTL - loop.time()))


@pytest.mark.parametrize("refresh_ahead", [0.5, 0.0])
async def test_a_search_asked_late_in_its_ttl_is_refreshed_in_the_background(
        gateway: GatewayFactory, fresh_pacs: GatedPacs, cache_settings: dict[str, Any],
        refresh_ahead: float) -> None:
    """A hit older than half the TTL is answered from the cache and searched again in the
    background, so the search is still a hit after the first entry would have expired; with
    ``qido_cache_refresh_ahead = 0`` it expires and the next search goes to the PACS."""
    peer = peer_config(fresh_pacs.port, ae_title=fresh_pacs.ae_title)
    settings = gateway_settings(peer, qido_cache_ttl=REFRESH_TTL,
                                qido_cache_refresh_ahead=refresh_ahead, **cache_settings)
    async with gateway(settings) as client:
        first = await client.get("/dicomweb/studies", params=SEARCH)
        stored = asyncio.get_running_loop().time()  # the entry was made just before
        assert first.status_code == 200
        one_search = finds(fresh_pacs)
        await _late_in_ttl(stored, 0.6)
        late = await client.get("/dicomweb/studies", params=SEARCH)
        assert late.status_code == 200 and late.json() == first.json()
        if refresh_ahead:
            # (a second search costs a C-FIND less: the PACS's refusal of UID lists is known)
            assert await eventually(lambda: finds(fresh_pacs) >= 2 * one_search - 1, 10)
            again = await client.get("/dicomweb/studies", params=SEARCH)  # fresh: no refresh
            assert again.json() == first.json()
        await asyncio.sleep(0.5)
        searched = finds(fresh_pacs)
        assert searched == (2 * one_search - 1 if refresh_ahead else one_search)
        await _late_in_ttl(stored, 1.1)  # the first entry has expired
        after = await client.get("/dicomweb/studies", params=SEARCH)
        assert after.json() == first.json()
        if refresh_ahead:
            assert finds(fresh_pacs) == searched  # the refreshed entry answered
        else:
            assert finds(fresh_pacs) > searched  # expired: searched again


async def test_a_failed_refresh_is_not_repeated_and_the_entry_still_answers(
        gateway: GatewayFactory, fresh_pacs: GatedPacs, cache_settings: dict[str, Any]) -> None:
    peer = peer_config(fresh_pacs.port, ae_title=fresh_pacs.ae_title)
    settings = gateway_settings(peer, qido_cache_ttl=REFRESH_TTL, **cache_settings)
    async with gateway(settings) as client:
        first = await client.get("/dicomweb/studies", params=SEARCH)
        stored = asyncio.get_running_loop().time()
        one_search = finds(fresh_pacs)
        fresh_pacs.failing = True
        await _late_in_ttl(stored, 0.6)
        for _ in range(3):
            late = await client.get("/dicomweb/studies", params=SEARCH)
            assert late.status_code == 200 and late.json() == first.json()
        assert await eventually(lambda: finds(fresh_pacs) == one_search + 1, 10)
        await asyncio.sleep(0.5)
        assert finds(fresh_pacs) == one_search + 1  # one failed refresh, not one per hit

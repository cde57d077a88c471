"""Issue #12 item 1, capability discovery: ``retrieve_method = "auto"`` learns that a PACS
refuses C-GET and retrieves from it by C-MOVE to the gateway's storage SCP, without trying C-GET
again until ``capability_ttl`` has passed; without the storage SCP the refusal is a 502 that
says why.

The PACS is the in-process demo PACS over real sockets, refusing C-GET either at association
time (no Query/Retrieve GET presentation context, like dcmqrscp ``--disable-get``) or with a
Refused/Error status before any sub-operation. What the gateway did is read from its /metrics
and from the PACS's own operation counters. Relational-query support is re-learned after
``capability_ttl`` too.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from io import BytesIO
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from app.demo.pacs import DemoPacs
from app.demo.samples import generate_ct_series
from app.dicomweb.multipart import parse_multipart
from app.dimse.client import DimseClients
from app.settings import PacsPeer, Settings
from tests.component.conftest import GATEWAY_AE, free_port, gateway_settings, open_app, peer_config

pytestmark = pytest.mark.timeout(60)
CAPABILITY_LOGGER = "app.services.capabilities"


@pytest.fixture(scope="module")
def series() -> list[Dataset]:
    """One small CT series."""
    return list(generate_ct_series(3, rows=32, columns=32, seed=121))


@pytest.fixture
def make_pacs(series: list[Dataset]) -> Iterator[Any]:
    """``make_pacs(refuse_get, destination=True)``: a demo PACS holding ``series`` that
    refuses C-GET as told, knowing the gateway as a C-MOVE destination on a free port (or not);
    returns (pacs, storage port)."""
    started: list[DemoPacs] = []

    def make(refuse_get: Any, destination: bool = True) -> tuple[DemoPacs, int]:
        pacs = DemoPacs(series, ae_title="NOGET_PACS", refuse_get=refuse_get)
        pacs.start("127.0.0.1", 0)
        started.append(pacs)
        port = free_port()
        if destination:
            pacs.add_move_destination(GATEWAY_AE, "127.0.0.1", port)
        return pacs, port

    yield make
    for pacs in started:
        pacs.stop()


def settings_for(pacs: DemoPacs, port: int, *, scp: bool = True, **peer: Any) -> Settings:
    """A gateway with an "auto" PACS (the default), no cache, its storage SCP on ``port``."""
    config = peer_config(pacs.port, ae_title=pacs.ae_title, dimse_timeout=10,
                         overall_timeout=20, **peer)
    settings = gateway_settings(config, cache_backend="none", storage_scp_host="127.0.0.1",
                                storage_scp_port=port)
    return settings.model_copy(update={"storage_scp_enabled": scp})


@asynccontextmanager
async def open_gateway(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on a fresh app through ASGI, inside its lifespan."""
    async with open_app(settings) as (client, _):
        yield client


def series_path(series: list[Dataset]) -> str:
    ds = series[0]
    return f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"


def received_uids(response: httpx.Response) -> set[str]:
    """SOP Instance UIDs of a multipart/related application/dicom response."""
    assert response.status_code == 200, response.text[:300]
    parts = parse_multipart(response.content, response.headers["content-type"])
    return {str(dcmread(BytesIO(p.body)).SOPInstanceUID) for p in parts}


async def metric(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    """One counter from the gateway's /metrics (0 when absent)."""
    text = (await client.get("/metrics")).text
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    return 0.0


def refusal_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == CAPABILITY_LOGGER and r.levelno == logging.WARNING]


def test_auto_is_the_default_retrieve_method() -> None:
    assert PacsPeer(ae_title="X").retrieve_method == "auto"


@pytest.mark.parametrize("refuse_get", ["context", 0xA702, 0xC000],
                         ids=["context-rejected", "A702", "C000"])
async def test_a_pacs_refusing_c_get_is_retrieved_by_c_move_learned_once(
    make_pacs: Any, series: list[Dataset], refuse_get: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pacs, port = make_pacs(refuse_get)
    wanted = {str(ds.SOPInstanceUID) for ds in series}
    with caplog.at_level(logging.INFO):
        async with open_gateway(settings_for(pacs, port)) as client:
            assert (await client.get("/readyz")).json()["pacs"]["demo"]["retrieve"] == "C-GET"
            assert received_uids(await client.get(series_path(series))) == wanted
            assert (await client.get("/readyz")).json()["pacs"]["demo"]["retrieve"] == "C-MOVE"
            assert received_uids(await client.get(series_path(series))) == wanted
            gets = await metric(client, "dimse_retrievals_total", operation="C-GET")
            moves = await metric(client, "dimse_retrievals_total", operation="C-MOVE")
            refusals = await metric(client, "dimse_get_refusals_total", peer="demo")
    # the second retrieval went straight to C-MOVE: one C-GET in all, two C-MOVEs
    assert (gets, moves, refusals) == (1, 2, 1)
    assert pacs.operation_counts["C-MOVE"] == 2
    # a refused context never reaches the PACS's C-GET handler; a refusing status does, once
    assert pacs.operation_counts["C-GET"] == (0 if refuse_get == "context" else 1)
    warnings = refusal_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "PACS demo refuses C-GET" in warnings[0] and "C-MOVE" in warnings[0]


async def test_the_refusal_is_forgotten_after_capability_ttl(
    make_pacs: Any, series: list[Dataset], caplog: pytest.LogCaptureFixture
) -> None:
    pacs, port = make_pacs("context")
    with caplog.at_level(logging.WARNING, logger=CAPABILITY_LOGGER):
        # 2 s: both first retrievals fit in it on a loaded machine (0.5 s did not, in CI).
        async with open_gateway(settings_for(pacs, port, capability_ttl=2.0)) as client:
            for _ in range(2):
                assert received_uids(await client.get(series_path(series)))
            assert await metric(client, "dimse_retrievals_total", operation="C-GET") == 1
            await asyncio.sleep(2.1)
            assert received_uids(await client.get(series_path(series)))
            gets = await metric(client, "dimse_retrievals_total", operation="C-GET")
            moves = await metric(client, "dimse_retrievals_total", operation="C-MOVE")
    assert (gets, moves) == (2, 3)  # C-GET asked again once the ttl had passed
    assert len(refusal_warnings(caplog)) == 2


async def test_a_pacs_accepting_c_get_is_never_moved_from(
    make_pacs: Any, series: list[Dataset], caplog: pytest.LogCaptureFixture
) -> None:
    pacs, port = make_pacs(None)
    with caplog.at_level(logging.WARNING, logger=CAPABILITY_LOGGER):
        async with open_gateway(settings_for(pacs, port)) as client:
            for _ in range(2):
                assert len(received_uids(await client.get(series_path(series)))) == len(series)
            assert await metric(client, "dimse_get_refusals_total") == 0
    assert pacs.operation_counts["C-GET"] == 2
    assert pacs.operation_counts["C-MOVE"] == 0
    assert refusal_warnings(caplog) == []


async def test_refused_c_get_without_storage_scp_is_a_502_that_says_why(
    make_pacs: Any, series: list[Dataset]
) -> None:
    pacs, port = make_pacs("context")
    async with open_gateway(settings_for(pacs, port, scp=False)) as client:
        for _ in range(2):  # refused at first, then known to be refused: the same answer
            response = await client.get(series_path(series))
            assert response.status_code == 502, response.text[:300]
            assert response.headers["content-type"].startswith("application/dicom+json")
            comment = response.json()["00000902"]["Value"][0]
            assert "PACS demo refuses C-GET" in comment
            assert "storage SCP is off" in comment and "storage_scp_enabled" in comment
            assert "NOGET_PACS" not in comment and str(pacs.port) not in comment
    assert pacs.operation_counts["C-MOVE"] == 0


async def test_refusing_status_without_storage_scp_keeps_the_dimse_answer(
    make_pacs: Any, series: list[Dataset]
) -> None:
    """A refusing status may concern the instances rather than C-GET: without the storage SCP
    the one-instance retries run as with "get", and the PACS's status decides the answer."""
    pacs, port = make_pacs(0xA702)
    async with open_gateway(settings_for(pacs, port, scp=False)) as client:
        response = await client.get(series_path(series))
        assert response.status_code == 503, response.text[:300]
        assert response.json()["00000900"]["Value"] == [0xA702]
        assert "Retry-After" in response.headers
        assert await metric(client, "dimse_get_refusals_total") == 0


async def test_a_refusing_status_is_not_learned_when_c_move_fails_too(
    make_pacs: Any, series: list[Dataset], caplog: pytest.LogCaptureFixture
) -> None:
    """The PACS does not know the gateway as a C-MOVE destination (A801): both failures are
    reported, and C-GET is tried again next time (nothing was learned)."""
    pacs, port = make_pacs(0xC000, destination=False)
    with caplog.at_level(logging.WARNING, logger=CAPABILITY_LOGGER):
        async with open_gateway(settings_for(pacs, port)) as client:
            for _ in range(2):
                response = await client.get(series_path(series))
                assert response.status_code == 502, response.text[:300]
                comment = response.json()["00000902"]["Value"][0]
                assert "C-GET failed with status 0xC000" in comment
                assert "C-MOVE instead failed too" in comment and "0xA801" in comment
    assert pacs.operation_counts["C-GET"] == 2
    assert refusal_warnings(caplog) == []


async def test_rejected_context_and_failing_c_move_report_both(
    make_pacs: Any, series: list[Dataset]
) -> None:
    """No GET context, and the PACS does not know the gateway as a C-MOVE destination."""
    pacs, port = make_pacs("context", destination=False)
    async with open_gateway(settings_for(pacs, port)) as client:
        response = await client.get(series_path(series))
    assert response.status_code == 502, response.text[:300]
    comment = response.json()["00000902"]["Value"][0]
    assert "PACS demo refuses C-GET" in comment
    assert "C-MOVE instead failed" in comment and "0xA801" in comment
    assert response.json()["00000900"]["Value"] == [0xA801]


@pytest.mark.parametrize("ttl", [3600.0, 0.3], ids=["remembered", "asked-again"])
async def test_relational_support_is_asked_again_after_capability_ttl(
    series: list[Dataset], ttl: float
) -> None:
    """The PACS behind the address changes its mind (restarted without relational queries):
    the same client notices only once ``capability_ttl`` has passed."""
    relational = DemoPacs(series, ae_title="REL_PACS", relational_queries=True)
    port = relational.start("127.0.0.1", 0)
    clients = DimseClients(gateway_settings(peer_config(
        port, ae_title="REL_PACS", capability_ttl=ttl,
        association_idle_timeout=0)))  # no pooled association outlives the first PACS
    plain = DemoPacs(series, ae_title="REL_PACS")
    try:
        await clients.start()
        client = clients.get("demo")
        assert await client.supports_relational() is True
        relational.stop()
        plain.start("127.0.0.1", port)
        await asyncio.sleep(0.4)
        assert await client.supports_relational() is (ttl > 1)
    finally:
        await clients.aclose()
        relational.stop()
        plain.stop()

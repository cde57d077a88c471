"""C-FIND through PeerClient against real pynetdicom SCPs on loopback: streaming, C-CANCEL on
early close, unreachable and rejecting peers, silent and slow peers, failure statuses, and
association slots that queue rather than refuse."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydicom.dataset import Dataset

from app.demo.pacs import DemoPacs
from app.demo.samples import generate_many_studies
from app.dicomweb.attributes import QueryLevel
from app.dicomweb.identifiers import build_identifier
from app.dimse.client import PeerClient
from app.dimse.find import FindOutcome
from app.errors import (
    BadRequest,
    GatewayError,
    UpstreamError,
    UpstreamNotSupported,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.settings import PacsPeer

from .conftest import (
    GATEWAY_AE,
    ScriptedScp,
    eventually,
    free_port,
    peer_config,
    study_result,
)

pytestmark = pytest.mark.timeout(30)


def client_for(executor: ThreadPoolExecutor, port: int, **extra: Any) -> PeerClient:
    return PeerClient(GATEWAY_AE, PacsPeer(**peer_config(port, **extra)), executor)


def study_query() -> Dataset:
    return build_identifier(
        QueryLevel.STUDY, return_keys=[0x0020000D, 0x00100010, 0x00100020, 0x00080020]
    )


async def run_find(client: PeerClient, ident: Dataset) -> tuple[list[Dataset], FindOutcome]:
    async with client.find(ident) as stream:
        found = [ds async for ds in stream]
    return found, stream.result


# -- against the demo PACS -----------------------------------------------------------------------


async def test_matches_stream_from_the_demo_pacs(
    executor: ThreadPoolExecutor, sample_pacs: DemoPacs, samples: list[Dataset]
) -> None:
    found, outcome = await run_find(client_for(executor, sample_pacs.port), study_query())
    expected = {str(ds.StudyInstanceUID) for ds in samples}
    assert {str(ds.StudyInstanceUID) for ds in found} == expected
    assert (outcome.status, outcome.cancelled, outcome.matches) == (0, False, len(expected))


async def test_matching_keys_reach_the_pacs(
    executor: ThreadPoolExecutor, sample_pacs: DemoPacs
) -> None:
    ident = study_query()
    ident.PatientID = "DEMO-0001"
    found, _ = await run_find(client_for(executor, sample_pacs.port), ident)
    assert found and {str(ds.PatientID) for ds in found} == {"DEMO-0001"}


async def test_early_close_cancels_and_frees_the_association() -> None:
    pacs = DemoPacs(generate_many_studies(150), ae_title="MANY")
    port = pacs.start("127.0.0.1", 0)
    pool = ThreadPoolExecutor(max_workers=4)
    try:
        client = client_for(pool, port, ae_title="MANY")
        async with client.find(study_query(), maxsize=2) as stream:
            got = 0
            async for _ in stream:
                got += 1
                if got == 3:
                    break
        await stream.wait_closed(timeout=5)
        assert got == 3
        server = pacs._server
        assert server is not None
        assert await eventually(lambda: not server.active_associations, 5)
        # the association slot was given back: a second find works at once
        found, outcome = await run_find(client, build_identifier(
            QueryLevel.STUDY, return_keys=[0x0020000D], matches=()))
        assert len(found) == 150 and not outcome.cancelled
    finally:
        pacs.stop()
        pool.shutdown(wait=True)


async def test_early_close_sends_c_cancel_then_releases(
    executor: ThreadPoolExecutor, scripted_scp: Any
) -> None:
    sent = 0

    def many(event: Any, scp: ScriptedScp) -> Iterator[tuple[int, Dataset | None]]:
        nonlocal sent
        for i in range(500):
            time.sleep(0.005)
            sent += 1
            yield 0xFF00, study_result(f"1.2.3.{i}")
        yield 0x0000, None

    scp = scripted_scp(many)
    client = client_for(executor, scp.port, ae_title=scp.ae_title)
    async with client.find(study_query(), maxsize=2) as stream:
        async for ds in stream:
            if str(ds.StudyInstanceUID) == "1.2.3.2":
                break
    await stream.wait_closed(timeout=5)
    assert await eventually(lambda: scp.cancels_seen >= 1, 5), "the SCP never saw a C-CANCEL"
    assert await eventually(lambda: scp.released == 1 and scp.active == 0, 5)
    assert scp.aborted == 0  # cancelled and drained, then released: not aborted
    assert sent < 500


# -- failures ------------------------------------------------------------------------------------


async def test_unreachable_port_is_upstream_unavailable_fast(
    executor: ThreadPoolExecutor,
) -> None:
    client = client_for(executor, free_port())
    start = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as info:
        await run_find(client, study_query())
    assert time.monotonic() - start < 3
    assert info.value.http_status == 503
    assert "Retry-After" in info.value.headers


async def test_wrong_called_ae_title_is_a_clear_error(
    executor: ThreadPoolExecutor, scripted_scp: Any
) -> None:
    def nothing(event: Any, scp: ScriptedScp) -> Iterator[tuple[int, Dataset | None]]:
        yield 0x0000, None

    scp = scripted_scp(nothing, ae_title="PICKY", require_called_aet=True)
    client = client_for(executor, scp.port, ae_title="NOT_PICKY")
    with pytest.raises(UpstreamError) as info:  # permanent rejection: retrying will not help
        await run_find(client, study_query())
    assert info.value.http_status == 502
    # The client is told which PACS refused; the AE title, host and port go to the logs only.
    assert info.value.message == "PACS demo refused the association"
    assert "rejected" in info.value.detail and "NOT_PICKY" in info.value.detail
    assert scp.finds == 0


async def test_silent_pacs_is_upstream_timeout(
    executor: ThreadPoolExecutor, scripted_scp: Any
) -> None:
    def silent(event: Any, scp: ScriptedScp) -> Iterator[tuple[int, Dataset | None]]:
        scp.stop_event.wait(8)  # longer than the gateway's dimse_timeout
        yield 0x0000, None

    scp = scripted_scp(silent)
    client = client_for(executor, scp.port, ae_title=scp.ae_title, dimse_timeout=1)
    start = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        await run_find(client, study_query())
    assert time.monotonic() - start < 4
    assert info.value.http_status == 504


def trickle(event: Any, scp: ScriptedScp) -> Iterator[tuple[int, Dataset | None]]:
    """One match every 0.2 s, for 20 s: never silent long enough for a DIMSE timeout."""
    for i in range(100):
        if scp.stop_event.wait(0.2):
            return
        yield 0xFF00, study_result(f"1.2.3.{i}")
    yield 0x0000, None


async def trickle_until_deadline(client: PeerClient) -> Any:
    start = time.monotonic()
    got = 0
    with pytest.raises(UpstreamTimeout) as info:
        async with client.find(study_query()) as stream:
            async for _ in stream:
                got += 1
    assert time.monotonic() - start < 3
    assert 1 <= got < 10
    assert info.value.http_status == 504
    return stream


async def test_overall_deadline_aborts_a_trickling_pacs(
    executor: ThreadPoolExecutor, scripted_scp: Any
) -> None:
    scp = scripted_scp(trickle)
    client = client_for(executor, scp.port, ae_title=scp.ae_title, overall_timeout=1,
                        dimse_timeout=1.2)
    await trickle_until_deadline(client)
    # the association is aborted at once, not left running on the PACS
    assert await eventually(lambda: scp.aborted >= 1 and scp.active == 0, 1.0)


async def test_after_the_deadline_the_worker_and_slot_are_freed_promptly(
    executor: ThreadPoolExecutor, scripted_scp: Any
) -> None:
    scp = scripted_scp(trickle)
    # dimse_timeout far beyond the wait allowed below: only an abort that wakes the blocked
    # worker frees it in time (pynetdicom's message queue wait is not woken by abort alone).
    client = client_for(executor, scp.port, ae_title=scp.ae_title, overall_timeout=1,
                        dimse_timeout=10, max_associations=1)
    stream = await trickle_until_deadline(client)
    start = time.monotonic()
    await stream.wait_closed(timeout=3)
    assert time.monotonic() - start < 0.5


@pytest.mark.parametrize(
    ("status", "error", "http"),
    [(0xC001, UpstreamError, 502), (0xA700, UpstreamUnavailable, 503),
     (0xA900, BadRequest, 400), (0x0122, UpstreamNotSupported, 501)],
)
async def test_failure_status_maps_to_error(
    executor: ThreadPoolExecutor,
    scripted_scp: Any,
    status: int,
    error: type[GatewayError],
    http: int,
) -> None:
    def fail(event: Any, scp: ScriptedScp) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xFF00, study_result("1.2.3.1")
        yield status, None

    scp = scripted_scp(fail)
    with pytest.raises(error) as info:
        await run_find(client_for(executor, scp.port, ae_title=scp.ae_title), study_query())
    assert info.value.http_status == http
    assert info.value.dimse_status == status


async def test_unsolicited_cancel_is_a_capped_answer(
    executor: ThreadPoolExecutor, scripted_scp: Any
) -> None:
    """A PACS ending with Cancel on its own (Orthanc past LimitFindResults) keeps what it sent."""

    def capped(event: Any, scp: ScriptedScp) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xFF00, study_result("1.2.3.1")
        yield 0xFE00, None

    scp = scripted_scp(capped)
    found, outcome = await run_find(
        client_for(executor, scp.port, ae_title=scp.ae_title), study_query()
    )
    assert len(found) == 1
    assert (outcome.status, outcome.cancelled, outcome.capped) == (0xFE00, False, True)


async def test_optional_keys_not_supported_is_reported(
    executor: ThreadPoolExecutor, scripted_scp: Any
) -> None:
    def partial(event: Any, scp: ScriptedScp) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xFF01, study_result("1.2.3.1")
        yield 0x0000, None

    scp = scripted_scp(partial)
    found, outcome = await run_find(
        client_for(executor, scp.port, ae_title=scp.ae_title), study_query()
    )
    assert len(found) == 1
    assert outcome.optional_keys_unsupported


# -- association slots ---------------------------------------------------------------------------


async def test_finds_beyond_max_associations_are_queued_not_refused(
    executor: ThreadPoolExecutor, scripted_scp: Any
) -> None:
    def slow_one(event: Any, scp: ScriptedScp) -> Iterator[tuple[int, Dataset | None]]:
        time.sleep(0.15)
        yield 0xFF00, study_result("1.2.3.1")
        yield 0x0000, None

    scp = scripted_scp(slow_one)
    client = client_for(executor, scp.port, ae_title=scp.ae_title, max_associations=2)
    results = await asyncio.gather(*(run_find(client, study_query()) for _ in range(5)))
    assert [len(found) for found, _ in results] == [1] * 5
    assert scp.finds == 5
    assert scp.peak_active <= 2


async def test_relational_support_is_a_boolean(
    executor: ThreadPoolExecutor, sample_pacs: DemoPacs
) -> None:
    client = client_for(executor, sample_pacs.port)
    assert await client.supports_relational() in (True, False)
    never = client_for(executor, sample_pacs.port, relational_queries="never")
    assert await never.supports_relational() is False

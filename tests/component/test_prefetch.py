"""prefetch_on_search: a study search warms the cache with each study's first series, so the
viewer's next requests for it cause no PACS retrieval."""

from __future__ import annotations

import asyncio

from pydicom import Dataset

from app.demo.pacs import DemoPacs
from tests.component.conftest import GatewayFactory, gateway_settings, peer_config


async def _until(predicate, within: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def test_search_warms_first_series(gateway: GatewayFactory, samples: list[Dataset]) -> None:
    pacs = DemoPacs(samples, ae_title="DEMO_PACS")
    pacs.start("127.0.0.1", 0)
    try:
        settings = gateway_settings(peer_config(pacs.port), prefetch_on_search=True)
        async with gateway(settings) as client:
            target = next(d for d in samples if d.Modality == "CT")
            study = str(target.StudyInstanceUID)
            response = await client.get("/dicomweb/studies", params={"StudyInstanceUID": study})
            assert response.status_code == 200
            assert await _until(lambda: pacs.operation_counts["C-GET"] >= 1)
            series = await client.get(f"/dicomweb/studies/{study}/series")
            first = series.json()
            assert first
            # Wait until the prefetch has finished, then the first series costs no retrieval.
            await asyncio.sleep(0.5)
            gets = pacs.operation_counts["C-GET"]
            finds = pacs.operation_counts["C-FIND"]
            prefetched = [s for s in first
                          if s["0020000E"]["Value"][0] == str(_first_series(samples, study))]
            assert prefetched
            uid = prefetched[0]["0020000E"]["Value"][0]
            metadata = await client.get(f"/dicomweb/studies/{study}/series/{uid}/metadata")
            assert metadata.status_code == 200
            assert pacs.operation_counts["C-GET"] == gets
            assert pacs.operation_counts["C-FIND"] == finds
    finally:
        pacs.stop()


async def test_no_prefetch_by_default(demo_client, sample_pacs: DemoPacs) -> None:  # type: ignore[no-untyped-def]
    gets = sample_pacs.operation_counts["C-GET"]
    assert (await demo_client.get("/dicomweb/studies")).status_code == 200
    await asyncio.sleep(0.5)
    assert sample_pacs.operation_counts["C-GET"] == gets


def _first_series(samples: list[Dataset], study: str) -> str:
    """The series the PACS lists first for a study (DemoPacs orders by series number)."""
    series = sorted({(int(d.SeriesNumber), str(d.SeriesInstanceUID)) for d in samples
                     if str(d.StudyInstanceUID) == study})
    return series[0][1]

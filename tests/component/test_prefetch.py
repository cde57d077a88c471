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


def _study_with_most_series(samples: list[Dataset]) -> tuple[str, list[str]]:
    """The sample study with the most series, and its series in the PACS's order."""
    by_study: dict[str, set[tuple[int, str]]] = {}
    for d in samples:
        by_study.setdefault(str(d.StudyInstanceUID), set()).add(
            (int(d.SeriesNumber), str(d.SeriesInstanceUID)))
    study = max(by_study, key=lambda s: len(by_study[s]))
    return study, [uid for _, uid in sorted(by_study[study])]


async def test_series_query_prefetches_the_study(gateway: GatewayFactory,
                                                 samples: list[Dataset]) -> None:
    """``/studies/{s}/series`` (what a viewer asks before each series' metadata) starts filling
    the listed series; once done, the metadata and instances of every series cost the PACS
    nothing, and a second listing starts no second fill."""
    pacs = DemoPacs(samples, ae_title="DEMO_PACS")
    pacs.start("127.0.0.1", 0)
    try:
        study, series = _study_with_most_series(samples)
        assert len(series) >= 2
        async with gateway(gateway_settings(peer_config(pacs.port))) as client:
            listed = await client.get(f"/dicomweb/studies/{study}/series")
            assert listed.status_code == 200
            assert await _until(lambda: pacs.operation_counts["C-GET"] >= len(series))
            metrics = ""
            for _ in range(100):  # until every prefetch has finished
                metrics = (await client.get("/metrics")).text
                if "cache_fills_in_progress 0" in metrics:
                    break
                await asyncio.sleep(0.05)
            assert (f'cache_prefetches_total{{trigger="series_query"}} {float(len(series))}\n'
                    in metrics)
            gets, finds = pacs.operation_counts["C-GET"], pacs.operation_counts["C-FIND"]
            assert gets == len(series)  # one C-GET per series, no more
            for uid in series:
                metadata = await client.get(f"/dicomweb/studies/{study}/series/{uid}/metadata")
                assert metadata.status_code == 200 and metadata.json()
            again = await client.get(f"/dicomweb/studies/{study}/series")
            assert again.status_code == 200
            await asyncio.sleep(0.3)
            assert pacs.operation_counts["C-GET"] == gets
            # the second listing is one search; its prefetch finds every series cached
            assert pacs.operation_counts["C-FIND"] <= finds + 1
    finally:
        pacs.stop()


async def test_series_query_prefetch_is_bounded_and_can_be_off(gateway: GatewayFactory,
                                                               samples: list[Dataset]) -> None:
    pacs = DemoPacs(samples, ae_title="DEMO_PACS")
    pacs.start("127.0.0.1", 0)
    try:
        study, series = _study_with_most_series(samples)
        one = gateway_settings(peer_config(pacs.port), prefetch_study_max_series=1)
        async with gateway(one) as client:
            assert (await client.get(f"/dicomweb/studies/{study}/series")).status_code == 200
            assert await _until(lambda: pacs.operation_counts["C-GET"] >= 1)
            await asyncio.sleep(0.5)
            assert pacs.operation_counts["C-GET"] == 1
        pacs.reset_operation_counts()
        no_instances = gateway_settings(peer_config(pacs.port), prefetch_study_max_instances=0)
        off = gateway_settings(peer_config(pacs.port), prefetch_on_series_query=False)
        for settings in (no_instances, off):
            async with gateway(settings) as client:
                assert (await client.get(f"/dicomweb/studies/{study}/series")).status_code == 200
                await asyncio.sleep(0.5)
                assert pacs.operation_counts["C-GET"] == 0
    finally:
        pacs.stop()


async def test_a_study_looked_up_by_uid_is_prefetched(gateway: GatewayFactory,
                                                      samples: list[Dataset]) -> None:
    """A viewer opening a study by its UID first searches ``/studies?StudyInstanceUID=...``:
    that starts filling the study's series; a search that does not name studies does not."""
    pacs = DemoPacs(samples, ae_title="DEMO_PACS")
    pacs.start("127.0.0.1", 0)
    try:
        study, series = _study_with_most_series(samples)
        settings = gateway_settings(peer_config(pacs.port), prefetch_on_series_query=False)
        async with gateway(settings) as client:
            listed = await client.get("/dicomweb/studies", params={"PatientName": "*"})
            assert listed.status_code == 200
            await asyncio.sleep(0.5)
            assert pacs.operation_counts["C-GET"] == 0  # a list is not a study opened
            found = await client.get("/dicomweb/studies", params={"StudyInstanceUID": study})
            assert found.status_code == 200 and len(found.json()) == 1
            assert await _until(lambda: pacs.operation_counts["C-GET"] >= len(series))
            metrics = ""
            for _ in range(100):
                metrics = (await client.get("/metrics")).text
                if "cache_fills_in_progress 0" in metrics:
                    break
                await asyncio.sleep(0.05)
            assert (f'cache_prefetches_total{{trigger="study_lookup"}} {float(len(series))}\n'
                    in metrics)
            gets = pacs.operation_counts["C-GET"]
            for uid in series:
                metadata = await client.get(f"/dicomweb/studies/{study}/series/{uid}/metadata")
                assert metadata.status_code == 200
            assert pacs.operation_counts["C-GET"] == gets
        pacs.reset_operation_counts()
        off = gateway_settings(peer_config(pacs.port), prefetch_on_series_query=False,
                               prefetch_on_study_lookup=False)
        async with gateway(off) as client:
            found = await client.get("/dicomweb/studies", params={"StudyInstanceUID": study})
            assert found.status_code == 200
            await asyncio.sleep(0.5)
            assert pacs.operation_counts["C-GET"] == 0
    finally:
        pacs.stop()

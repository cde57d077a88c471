"""A warm study touches no PACS: once a study has been retrieved, its series list and every
series are in the cache, so the study, each series, their metadata and frames cost no DIMSE at
all (counted at the DemoPacs, and in the gateway's dimse_* metrics), with the in-process cache
and with a real Redis. Only a complete SERIES-level C-FIND is cached as a study's series list;
evicting a series or the study drops the list; a refill of an evicted series needs no C-FIND
(its verified summary is cached)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom.events import Event

from app.cache.store import GatewayCache
from app.demo.pacs import DemoPacs
from app.dicomweb.multipart import parse_multipart
from app.settings import Settings
from tests.component.conftest import gateway_settings, open_app, peer_config

pytestmark = pytest.mark.timeout(60)

MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
NO_TRAFFIC = {"C-FIND": 0, "C-GET": 0, "C-MOVE": 0}
ADMIN_TOKEN = "warm-study-admin-token-0123"
CANCEL = 0xFE00


class CappingPacs(DemoPacs):
    """A DemoPacs that, with ``cap_series`` set, ends a SERIES-level C-FIND with Cancel after
    the first match although nobody asked it to (a result cap, as Orthanc's
    LimitFindResults does)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cap_series = False

    def _on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        answers = super()._on_find(event)
        if not self.cap_series or str(event.identifier.QueryRetrieveLevel) != "SERIES":
            yield from answers
            return
        for status, ident in answers:
            yield status, ident
            if ident is not None:
                yield CANCEL, None
                return


@pytest.fixture(scope="module")
def pacs(samples: list[Dataset]) -> Iterator[CappingPacs]:
    """One PACS for the module (each test has a new gateway, hence a new or emptied cache)."""
    server = CappingPacs(samples, ae_title="WARM_PACS")
    server.start("127.0.0.1", 0)
    yield server
    server.stop()


@pytest.fixture
def fresh_pacs(pacs: CappingPacs) -> Iterator[CappingPacs]:
    pacs.reset_operation_counts()
    pacs.cap_series = False
    yield pacs
    pacs.cap_series = False


class Study:
    """The sample study with two 10-slice CT series."""

    def __init__(self, datasets: list[Dataset]) -> None:
        self.uid = str(datasets[0].StudyInstanceUID)
        self.series: dict[str, list[str]] = {}
        for ds in datasets:
            self.series.setdefault(str(ds.SeriesInstanceUID), []).append(str(ds.SOPInstanceUID))
        self.sops = sorted(s for sops in self.series.values() for s in sops)
        self.path = f"/dicomweb/studies/{self.uid}"

    def series_path(self, series: str) -> str:
        return f"{self.path}/series/{series}"


@pytest.fixture(scope="module")
def study(samples: list[Dataset]) -> Study:
    by_study: dict[str, list[Dataset]] = {}
    for ds in samples:
        by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    chosen = max(by_study.values(),
                 key=lambda dss: len({str(d.SeriesInstanceUID) for d in dss}))
    assert len({str(d.SeriesInstanceUID) for d in chosen}) >= 2
    return Study(chosen)


open_gateway = open_app  # (client, services) of a fresh app


def settings_for(pacs: DemoPacs, cache: dict[str, Any], **extra: Any) -> Settings:
    peer = peer_config(pacs.port, ae_title=pacs.ae_title, dimse_timeout=10, overall_timeout=20)
    return gateway_settings(peer, **cache, **extra)


def sop_uids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text[:300]
    parts = parse_multipart(response.content, response.headers["content-type"])
    return [str(dcmread(io.BytesIO(p.body), stop_before_pixels=True).SOPInstanceUID)
            for p in parts]


def dimse(pacs: DemoPacs) -> dict[str, int]:
    counts = pacs.operation_counts
    return {k: counts[k] for k in ("C-FIND", "C-GET", "C-MOVE")}


def retrievals(services: Any) -> float:
    return float(services.metrics.value("dimse_retrievals_total"))


def cache_of(services: Any) -> GatewayCache:
    cache = services.cache()
    assert cache is not None
    return cache


async def test_warm_study_series_metadata_and_frames_make_no_dimse_call(
        fresh_pacs: CappingPacs, study: Study, cache_settings: dict[str, Any]) -> None:
    async with open_gateway(settings_for(fresh_pacs, cache_settings)) as (client, services):
        cold = await client.get(study.path, headers={"Accept": MULTIPART_DICOM})
        assert sorted(sop_uids(cold)) == study.sops
        assert dimse(fresh_pacs)["C-GET"] == len(study.series)
        fresh_pacs.reset_operation_counts()
        before = retrievals(services)

        warm = await client.get(study.path, headers={"Accept": MULTIPART_DICOM})
        assert sorted(sop_uids(warm)) == study.sops
        assert dimse(fresh_pacs) == NO_TRAFFIC
        study_metadata = await client.get(f"{study.path}/metadata")
        assert study_metadata.status_code == 200
        assert sorted(o["00080018"]["Value"][0] for o in study_metadata.json()) == study.sops
        assert dimse(fresh_pacs) == NO_TRAFFIC
        for series, sops in study.series.items():
            path = study.series_path(series)
            response = await client.get(path, headers={"Accept": MULTIPART_DICOM})
            assert sorted(sop_uids(response)) == sorted(sops)
            metadata = await client.get(f"{path}/metadata")
            assert metadata.status_code == 200
            assert sorted(o["00080018"]["Value"][0] for o in metadata.json()) == sorted(sops)
            for sop in sops[:3]:
                frame = await client.get(f"{path}/instances/{sop}/frames/1",
                                         headers={"Accept": FRAMES})
                assert frame.status_code == 200, frame.text[:200]
        assert dimse(fresh_pacs) == NO_TRAFFIC
        assert retrievals(services) == before
        assert services.metrics.value("cache_hits_total", kind="study_series") >= 2


async def test_cold_study_metadata_makes_the_study_warm(
        fresh_pacs: CappingPacs, study: Study, cache_settings: dict[str, Any]) -> None:
    async with open_gateway(settings_for(fresh_pacs, cache_settings)) as (client, _):
        metadata = await client.get(f"{study.path}/metadata")
        assert metadata.status_code == 200
        assert sorted(o["00080018"]["Value"][0] for o in metadata.json()) == study.sops
        fresh_pacs.reset_operation_counts()
        warm = await client.get(study.path, headers={"Accept": MULTIPART_DICOM})
        assert sorted(sop_uids(warm)) == study.sops
        assert dimse(fresh_pacs) == NO_TRAFFIC


async def test_a_capped_series_find_is_not_cached_as_the_study_list(
        fresh_pacs: CappingPacs, study: Study, cache_settings: dict[str, Any]) -> None:
    async with open_gateway(settings_for(fresh_pacs, cache_settings)) as (client, services):
        fresh_pacs.cap_series = True
        first = await client.get(study.path, headers={"Accept": MULTIPART_DICOM})
        assert first.status_code == 200
        assert await cache_of(services).get_study_series(study.uid) is None
        fresh_pacs.cap_series = False
        fresh_pacs.reset_operation_counts()
        second = await client.get(study.path, headers={"Accept": MULTIPART_DICOM})
        assert sorted(sop_uids(second)) == study.sops
        assert dimse(fresh_pacs)["C-FIND"] >= 1  # the list was asked for again
        assert sorted(await cache_of(services).get_study_series(study.uid) or []) == sorted(
            study.series)


async def test_evicting_a_series_or_the_study_drops_the_series_list(
        fresh_pacs: CappingPacs, study: Study, cache_settings: dict[str, Any]) -> None:
    settings = settings_for(fresh_pacs, cache_settings, cache_admin_enabled=True,
                            admin_token=ADMIN_TOKEN)
    async with open_gateway(settings) as (client, services):
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        cache = cache_of(services)
        assert sorted(sop_uids(await client.get(
            study.path, headers={"Accept": MULTIPART_DICOM}))) == study.sops
        assert await cache.get_study_series(study.uid) is not None
        one = next(iter(study.series))
        evicted = await client.post("/admin/cache/evict", json={"series": one})
        assert evicted.status_code == 200 and evicted.json()["removed"] > 0
        assert await cache.get_study_series(study.uid) is None

        assert sorted(sop_uids(await client.get(
            study.path, headers={"Accept": MULTIPART_DICOM}))) == study.sops
        assert await cache.get_study_series(study.uid) is not None
        evicted = await client.post("/admin/cache/evict", json={"study": study.uid})
        assert evicted.status_code == 200
        assert await cache.get_study_series(study.uid) is None
        for series in study.series:
            assert await cache.get_series_index(series) is None
            assert await cache.get_summary(series) is None

        assert sorted(sop_uids(await client.get(
            study.path, headers={"Accept": MULTIPART_DICOM}))) == study.sops
        cleared = await client.post("/admin/cache/clear")
        assert cleared.status_code == 200
        assert await cache.get_study_series(study.uid) is None
        fresh_pacs.reset_operation_counts()
        assert sorted(sop_uids(await client.get(
            study.path, headers={"Accept": MULTIPART_DICOM}))) == study.sops
        assert dimse(fresh_pacs)["C-GET"] == len(study.series)


async def test_refilling_an_evicted_series_needs_no_c_find(
        fresh_pacs: CappingPacs, study: Study, cache_settings: dict[str, Any]) -> None:
    async with open_gateway(settings_for(fresh_pacs, cache_settings)) as (client, services):
        cache = cache_of(services)
        series, sops = next(iter(study.series.items()))
        path = study.series_path(series)
        assert sorted(sop_uids(await client.get(path, headers={"Accept": MULTIPART_DICOM}))) \
            == sorted(sops)
        cached = await cache.get_instance(series, sops[0])
        assert cached is not None
        assert await cache.get_summary(series) == (len(sops), (cached.sop_class_uid,))
        await cache.backend.delete(cache.keys.instance(series, sops[0]))  # evicted by LRU
        fresh_pacs.reset_operation_counts()
        again = await client.get(path, headers={"Accept": MULTIPART_DICOM})
        assert sorted(sop_uids(again)) == sorted(sops)
        assert dimse(fresh_pacs) == {"C-FIND": 0, "C-GET": 1, "C-MOVE": 0}

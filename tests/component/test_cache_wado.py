"""The read-through cache in front of a DemoPacs, counted at the PACS (operation_counts): a second
retrieval of a series, its metadata or its frames costs no DIMSE at all; concurrent and
overlapping requests share one C-GET (or C-MOVE); a failed retrieval caches nothing; ETags give
304 without PACS traffic; identical QIDO searches are answered from the cache for its TTL; and
with ``cache_backend=none`` every request goes to the PACS."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom.events import Event

from app.cache.store import GatewayCache
from app.demo.pacs import DemoPacs
from app.dicomweb.multipart import parse_multipart
from app.settings import Settings
from tests.component.conftest import GATEWAY_AE, free_port, gateway_settings, open_app, peer_config

pytestmark = pytest.mark.timeout(60)

MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


class FailingPacs(DemoPacs):
    """A DemoPacs that cannot deliver the instances in ``broken``: its C-GET and C-MOVE send the
    others, then end with Failure 0xA702 (Refused: Out of Resources); with ``abort_after`` it
    instead aborts the association after that many instances (a PACS dying mid-way)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.broken: set[str] = set()
        self.abort_after: int | None = None

    def _send(self, event: Event, matches: list[Dataset]) -> Iterator[Any]:
        if not self.broken and self.abort_after is None:
            yield from super()._send(event, matches)
            return
        good = [ds for ds in matches if str(ds.SOPInstanceUID) not in self.broken]
        yield len(matches)
        for n, ds in enumerate(good):
            if self.abort_after is not None and n >= self.abort_after:
                event.assoc.abort()
                return
            yield 0xFF00, ds
        if len(good) < len(matches):
            yield 0xA702, None


@pytest.fixture(scope="module")
def pacs(samples: list[Dataset]) -> Iterator[FailingPacs]:
    """One PACS for the module (the gateway, and so its cache, is new in every test)."""
    server = FailingPacs(samples, ae_title="CACHE_PACS")
    server.start("127.0.0.1", 0)
    yield server
    server.stop()


@pytest.fixture
def fresh_pacs(pacs: FailingPacs) -> Iterator[FailingPacs]:
    """The module's PACS with zeroed counters, no delay and nothing broken."""
    pacs.reset_operation_counts()
    pacs.response_delay = 0.0
    pacs.broken = set()
    pacs.abort_after = None
    yield pacs
    pacs.response_delay = 0.0
    pacs.broken = set()
    pacs.abort_after = None


class Series:
    """A series of the sample data: its study, UIDs and instances."""

    def __init__(self, datasets: list[Dataset]) -> None:
        self.study = str(datasets[0].StudyInstanceUID)
        self.uid = str(datasets[0].SeriesInstanceUID)
        self.sops = sorted(str(d.SOPInstanceUID) for d in datasets)
        self.path = f"/dicomweb/studies/{self.study}/series/{self.uid}"

    def instance(self, sop: str) -> str:
        return f"{self.path}/instances/{sop}"


@pytest.fixture(scope="module")
def ct(samples: list[Dataset]) -> Series:
    """The first 10-slice CT series of the samples."""
    by_series: dict[str, list[Dataset]] = {}
    for ds in samples:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return Series(max(by_series.values(), key=len))


@pytest.fixture(scope="module")
def small(samples: list[Dataset]) -> Series:
    """A three-instance series (failure tests retry instances one by one: keep it short)."""
    by_series: dict[str, list[Dataset]] = {}
    for ds in samples:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return Series(next(v for v in by_series.values() if len(v) == 3))


@pytest.fixture(scope="module")
def multiframe(samples: list[Dataset]) -> Series:
    """The multi-frame ultrasound instance's series."""
    (ds,) = [d for d in samples if int(d.get("NumberOfFrames", 1) or 1) > 1]
    return Series([ds])


open_gateway = open_app  # (client, services) of a fresh app


def settings_for(pacs: DemoPacs, method: str = "get", **extra: Any) -> Settings:
    peer = peer_config(pacs.port, ae_title=pacs.ae_title, retrieve_method=method,
                       dimse_timeout=10, overall_timeout=20)
    if method == "move":
        port = free_port()
        pacs.add_move_destination(GATEWAY_AE, "127.0.0.1", port)
        extra.update(storage_scp_host="127.0.0.1", storage_scp_port=port)
    # No series-query prefetch here: these tests count every operation at the PACS, and a
    # background fill started by listing series would be counted with them (test_prefetch.py
    # covers it).
    values: dict[str, Any] = {"cache_backend": "memory", "prefetch_on_series_query": False,
                              "prefetch_on_study_lookup": False}
    values.update(extra)
    settings = gateway_settings(peer, **values)
    if method == "move":
        settings = settings.model_copy(update={"storage_scp_enabled": True})
    return settings


def sop_uids(response: httpx.Response) -> list[str]:
    """The SOP Instance UIDs of a multipart/related application/dicom response, in order."""
    from io import BytesIO

    from pydicom import dcmread

    assert response.status_code == 200, response.text[:300]
    parts = parse_multipart(response.content, response.headers["content-type"])
    return [str(dcmread(BytesIO(p.body), stop_before_pixels=True).SOPInstanceUID)
            for p in parts]


def dimse(pacs: DemoPacs) -> dict[str, int]:
    counts = pacs.operation_counts
    return {k: counts[k] for k in ("C-FIND", "C-GET", "C-MOVE")}


NO_TRAFFIC = {"C-FIND": 0, "C-GET": 0, "C-MOVE": 0}


def cache_of(services: Any) -> GatewayCache:
    cache = services.cache()
    assert cache is not None
    return cache


# -- read-through ------------------------------------------------------------------------------


async def test_second_retrieval_costs_no_dimse(fresh_pacs: FailingPacs, ct: Series) -> None:
    async with open_gateway(settings_for(fresh_pacs)) as (client, _):
        first = await client.get(ct.path, headers={"Accept": MULTIPART_DICOM})
        assert sorted(sop_uids(first)) == ct.sops
        assert dimse(fresh_pacs)["C-GET"] == 1
        fresh_pacs.reset_operation_counts()

        again = await client.get(ct.path, headers={"Accept": MULTIPART_DICOM})
        assert sorted(sop_uids(again)) == ct.sops
        parts = [p.body for p in parse_multipart(again.content, again.headers["content-type"])]
        assert parts == [p.body for p in parse_multipart(first.content,
                                                         first.headers["content-type"])]
        metadata = await client.get(f"{ct.path}/metadata")
        assert metadata.status_code == 200
        assert sorted(o["00080018"]["Value"][0] for o in metadata.json()) == ct.sops
        for sop in ct.sops:
            frame = await client.get(f"{ct.instance(sop)}/frames/1", headers={"Accept": FRAMES})
            assert frame.status_code == 200, frame.text[:200]
            single = await client.get(ct.instance(sop), headers={"Accept": MULTIPART_DICOM})
            assert sop_uids(single) == [sop]
        assert dimse(fresh_pacs) == NO_TRAFFIC


async def test_second_metadata_request_is_served_from_the_metadata_cache(
        fresh_pacs: FailingPacs, ct: Series) -> None:
    async with open_gateway(settings_for(fresh_pacs)) as (client, services):
        plain = {"Accept-Encoding": "identity"}  # (an encoded answer is kept whole, apart)
        first = await client.get(f"{ct.path}/metadata", headers=plain)
        assert first.status_code == 200
        fresh_pacs.reset_operation_counts()
        again = await client.get(f"{ct.path}/metadata", headers=plain)
        assert again.json() == first.json()
        assert dimse(fresh_pacs) == NO_TRAFFIC
        assert services.metrics.value("cache_hits_total", kind="metadata") == 1


async def test_concurrent_metadata_of_a_cached_series_is_built_once(
        fresh_pacs: FailingPacs, ct: Series, monkeypatch: pytest.MonkeyPatch) -> None:
    """The series' instances are cached and its metadata is not: ten identical requests make
    each instance's metadata once between them, not ten times at once."""
    import app.services.wado as wado_service

    built: list[int] = []
    original = wado_service.metadata_json

    def counted(data: bytes, url: str) -> bytes:
        built.append(1)
        return original(data, url)

    monkeypatch.setattr(wado_service, "metadata_json", counted)
    plain = {"Accept-Encoding": "identity"}
    async with open_gateway(settings_for(fresh_pacs)) as (client, services):
        filled = await client.get(ct.path, headers={"Accept": MULTIPART_DICOM})
        assert sorted(sop_uids(filled)) == ct.sops and built == []
        fresh_pacs.reset_operation_counts()
        answers = await asyncio.gather(*(client.get(f"{ct.path}/metadata", headers=plain)
                                         for _ in range(10)))
        bodies = [a.json() for a in answers]
        assert all(a.status_code == 200 for a in answers)
        assert all(b == bodies[0] for b in bodies)
        assert sorted(o["00080018"]["Value"][0] for o in bodies[0]) == ct.sops
        assert len(built) == len(ct.sops)  # once per instance, for all ten
        assert services.metrics.value("cache_hits_total", kind="metadata") == 9
        assert dimse(fresh_pacs) == NO_TRAFFIC


@pytest.mark.parametrize("method", ["get", "move"])
async def test_concurrent_series_requests_share_one_retrieval(
        fresh_pacs: FailingPacs, ct: Series, method: str) -> None:
    fresh_pacs.response_delay = 0.02  # keep the fill running while all 20 arrive
    async with open_gateway(settings_for(fresh_pacs, method)) as (client, services):
        responses = await asyncio.gather(*(
            client.get(ct.path, headers={"Accept": MULTIPART_DICOM}) for _ in range(20)))
        for response in responses:
            assert sorted(sop_uids(response)) == ct.sops
        operation = "C-GET" if method == "get" else "C-MOVE"
        counts = dimse(fresh_pacs)
        assert counts[operation] == 1, counts
        assert counts["C-GET" if method == "move" else "C-MOVE"] == 0
        assert counts["C-FIND"] == 1  # the one inventory of the one fill
        assert services.metrics.value("dimse_retrievals_total", peer="demo",
                                      operation=operation) == 1


async def test_metadata_prefetches_the_frames(fresh_pacs: FailingPacs, ct: Series) -> None:
    async with open_gateway(settings_for(fresh_pacs)) as (client, _):
        metadata = await client.get(f"{ct.path}/metadata")
        assert metadata.status_code == 200
        frames = await asyncio.gather(*(
            client.get(f"{ct.instance(sop)}/frames/1", headers={"Accept": FRAMES})
            for sop in ct.sops))
        assert all(f.status_code == 200 for f in frames)
        assert dimse(fresh_pacs) == {"C-FIND": 1, "C-GET": 1, "C-MOVE": 0}


async def test_frames_requested_during_the_fill_wait_for_it(
        fresh_pacs: FailingPacs, ct: Series) -> None:
    fresh_pacs.response_delay = 0.06  # ten sub-operations: over half a second of fill
    async with open_gateway(settings_for(fresh_pacs)) as (client, services):
        metadata = asyncio.create_task(client.get(f"{ct.path}/metadata"))
        for _ in range(200):
            if dimse(fresh_pacs)["C-GET"] == 1:
                break
            await asyncio.sleep(0.01)
        assert dimse(fresh_pacs)["C-GET"] == 1
        assert services.flights.running == 1  # the fill is under way
        frames = await asyncio.gather(*(
            client.get(f"{ct.instance(sop)}/frames/1", headers={"Accept": FRAMES})
            for sop in reversed(ct.sops)))
        assert all(f.status_code == 200 for f in frames), [f.status_code for f in frames]
        assert (await metadata).status_code == 200
        assert dimse(fresh_pacs) == {"C-FIND": 1, "C-GET": 1, "C-MOVE": 0}


async def test_multiframe_frames_from_the_cache(fresh_pacs: FailingPacs,
                                                multiframe: Series) -> None:
    async with open_gateway(settings_for(fresh_pacs)) as (client, _):
        url = f"{multiframe.instance(multiframe.sops[0])}/frames"
        first = await client.get(f"{url}/1,3,5", headers={"Accept": FRAMES})
        assert first.status_code == 200
        fresh_pacs.reset_operation_counts()
        again = await client.get(f"{url}/1,3,5", headers={"Accept": FRAMES})
        other = await client.get(f"{url}/2", headers={"Accept": FRAMES})
        assert other.status_code == 200
        assert [p.body for p in parse_multipart(again.content, again.headers["content-type"])] == [
            p.body for p in parse_multipart(first.content, first.headers["content-type"])]
        assert dimse(fresh_pacs) == NO_TRAFFIC


# -- failures cache nothing --------------------------------------------------------------------


async def _assert_nothing_cached(services: Any, series: Series) -> None:
    cache = cache_of(services)
    assert await cache.get_series_index(series.uid) is None
    assert await cache.backend.exists(
        [cache.keys.instance(series.uid, sop) for sop in series.sops]) == 0
    assert await cache.backend.lock_holder(cache.keys.lock(series.uid)) is None


async def test_pacs_failure_leaves_nothing_in_the_cache(fresh_pacs: FailingPacs,
                                                        small: Series) -> None:
    fresh_pacs.broken = set(small.sops)
    async with open_gateway(settings_for(fresh_pacs)) as (client, services):
        response = await client.get(small.path, headers={"Accept": MULTIPART_DICOM})
        assert response.status_code in (502, 503), response.status_code
        await _assert_nothing_cached(services, small)
        fresh_pacs.broken = set()
        fresh_pacs.reset_operation_counts()
        retry = await client.get(small.path, headers={"Accept": MULTIPART_DICOM})
        assert sorted(sop_uids(retry)) == small.sops  # the failure was not remembered
        assert dimse(fresh_pacs)["C-GET"] == 1


def _assert_failed_or_truncated(response: httpx.Response) -> None:
    """A retrieval that failed after the headers went out must end without the closing
    delimiter (PS3.18 8.6.1.2), so the client can tell; before that, an error status."""
    if response.status_code == 200:
        assert not response.content.rstrip().endswith(b"--"), "truncation must be visible"
    else:
        assert response.status_code in (502, 503, 504), response.status_code


async def test_partial_retrieval_is_never_served_as_complete(fresh_pacs: FailingPacs,
                                                             small: Series) -> None:
    fresh_pacs.broken = set(small.sops[1:])
    async with open_gateway(settings_for(fresh_pacs)) as (client, services):
        _assert_failed_or_truncated(
            await client.get(small.path, headers={"Accept": MULTIPART_DICOM}))
        assert await cache_of(services).complete_series(small.uid) is None
        fresh_pacs.broken = set()
        fresh_pacs.reset_operation_counts()
        retry = await client.get(small.path, headers={"Accept": MULTIPART_DICOM})
        assert sorted(sop_uids(retry)) == small.sops
        assert dimse(fresh_pacs)["C-GET"] == 1  # refetched, not served short from the cache
        assert "etag" in (await client.get(f"{small.path}/metadata")).headers


async def test_failure_after_some_instances_leaves_nothing_in_the_cache(
        fresh_pacs: FailingPacs, small: Series) -> None:
    """A C-GET ending in Failure (0xA702) after delivering some instances, the one-by-one
    retries failing too: the response is cut short and the cache keeps nothing of it."""
    fresh_pacs.broken = set(small.sops[1:])
    async with open_gateway(settings_for(fresh_pacs)) as (client, services):
        _assert_failed_or_truncated(
            await client.get(small.path, headers={"Accept": MULTIPART_DICOM}))
        await _assert_nothing_cached(services, small)
        assert "etag" not in (await client.get(f"{small.path}/metadata")).headers


async def test_pacs_aborting_mid_retrieval_leaves_nothing_in_the_cache(
        fresh_pacs: FailingPacs, ct: Series) -> None:
    fresh_pacs.abort_after = 4
    async with open_gateway(settings_for(fresh_pacs)) as (client, services):
        _assert_failed_or_truncated(
            await client.get(ct.path, headers={"Accept": MULTIPART_DICOM}))
        await _assert_nothing_cached(services, ct)
        fresh_pacs.abort_after = None
        fresh_pacs.reset_operation_counts()
        retry = await client.get(ct.path, headers={"Accept": MULTIPART_DICOM})
        assert sorted(sop_uids(retry)) == ct.sops
        assert dimse(fresh_pacs)["C-GET"] == 1


async def test_unknown_series_is_404_and_not_cached(fresh_pacs: FailingPacs, ct: Series) -> None:
    async with open_gateway(settings_for(fresh_pacs)) as (client, services):
        path = f"/dicomweb/studies/{ct.study}/series/1.2.3.999"
        assert (await client.get(path)).status_code == 404
        assert await cache_of(services).get_series_index("1.2.3.999") is None
        assert (await client.get(path)).status_code == 404
        assert dimse(fresh_pacs)["C-FIND"] == 2  # a miss is asked again, not remembered


# -- object cap ----------------------------------------------------------------------------------


async def test_objects_over_the_cap_are_served_but_not_cached(fresh_pacs: FailingPacs,
                                                              small: Series) -> None:
    ct = small
    async with open_gateway(settings_for(fresh_pacs, cache_max_object_bytes=1024)) as (
            client, services):
        first = await client.get(ct.path, headers={"Accept": MULTIPART_DICOM})
        assert sorted(sop_uids(first)) == ct.sops
        assert await cache_of(services).complete_series(ct.uid) is None
        fresh_pacs.reset_operation_counts()
        again = await client.get(ct.path, headers={"Accept": MULTIPART_DICOM})
        assert sorted(sop_uids(again)) == ct.sops  # complete, from the PACS again
        assert dimse(fresh_pacs)["C-GET"] >= 1


async def test_objects_over_the_cap_cost_one_retrieval(fresh_pacs: FailingPacs,
                                                       small: Series) -> None:
    ct = small
    async with open_gateway(settings_for(fresh_pacs, cache_max_object_bytes=1024)) as (
            client, _):
        first = await client.get(ct.path, headers={"Accept": MULTIPART_DICOM})
        assert sorted(sop_uids(first)) == ct.sops
        assert dimse(fresh_pacs)["C-GET"] == 1


async def test_evicted_instance_means_a_refetch(fresh_pacs: FailingPacs, ct: Series) -> None:
    async with open_gateway(settings_for(fresh_pacs)) as (client, services):
        sop_uids(await client.get(ct.path, headers={"Accept": MULTIPART_DICOM}))
        cache = cache_of(services)
        assert await cache.backend.delete(cache.keys.instance(ct.uid, ct.sops[4])) == 1
        fresh_pacs.reset_operation_counts()
        again = await client.get(ct.path, headers={"Accept": MULTIPART_DICOM})
        assert sorted(sop_uids(again)) == ct.sops
        assert dimse(fresh_pacs)["C-GET"] == 1


# -- HTTP caching --------------------------------------------------------------------------------


async def test_instance_and_frames_etag_gives_304_without_pacs(
        fresh_pacs: FailingPacs, ct: Series) -> None:
    async with open_gateway(settings_for(fresh_pacs)) as (client, _):
        sop = ct.sops[0]
        for url, accept in ((ct.instance(sop), MULTIPART_DICOM),
                            (f"{ct.instance(sop)}/frames/1", FRAMES),
                            (f"{ct.instance(sop)}/metadata", "application/dicom+json")):
            first = await client.get(url, headers={"Accept": accept})
            assert first.status_code == 200, (url, first.status_code)
            etag = first.headers.get("etag")
            assert etag and etag.startswith('"'), url
            assert "immutable" in first.headers["cache-control"]
            fresh_pacs.reset_operation_counts()
            unchanged = await client.get(url, headers={"Accept": accept,
                                                       "If-None-Match": etag})
            assert unchanged.status_code == 304, url
            assert unchanged.content == b""
            assert unchanged.headers["etag"] == etag
            assert dimse(fresh_pacs) == NO_TRAFFIC
            other = await client.get(url, headers={"Accept": accept,
                                                   "If-None-Match": '"something-else"'})
            assert other.status_code == 200


async def test_representations_have_distinct_etags(fresh_pacs: FailingPacs, ct: Series) -> None:
    async with open_gateway(settings_for(fresh_pacs)) as (client, _):
        url = ct.instance(ct.sops[0])
        as_stored = await client.get(
            url, headers={"Accept": f"{MULTIPART_DICOM}; transfer-syntax=*"})
        default = await client.get(url, headers={"Accept": MULTIPART_DICOM})
        assert as_stored.status_code == default.status_code == 200
        assert as_stored.headers["etag"] != default.headers["etag"]
        assert as_stored.headers["etag"] != (await client.get(f"{url}/metadata")).headers["etag"]


async def test_series_metadata_etag_once_the_series_is_cached(
        fresh_pacs: FailingPacs, ct: Series) -> None:
    async with open_gateway(settings_for(fresh_pacs)) as (client, _):
        first = await client.get(f"{ct.path}/metadata")
        assert first.status_code == 200
        assert "cache-control" in first.headers
        second = await client.get(f"{ct.path}/metadata")
        etag = second.headers.get("etag")
        assert etag, "a series the cache holds complete has an ETag"
        assert "must-revalidate" in second.headers["cache-control"]
        fresh_pacs.reset_operation_counts()
        unchanged = await client.get(f"{ct.path}/metadata", headers={"If-None-Match": etag})
        assert unchanged.status_code == 304
        assert dimse(fresh_pacs) == NO_TRAFFIC
        series = await client.get(ct.path, headers={"Accept": MULTIPART_DICOM})
        assert series.headers["etag"] != etag  # another representation of the series


# -- QIDO ----------------------------------------------------------------------------------------


async def test_identical_search_is_answered_from_the_cache(fresh_pacs: FailingPacs,
                                                           ct: Series) -> None:
    async with open_gateway(settings_for(fresh_pacs, qido_cache_ttl=2.0)) as (client, _):
        url = f"/dicomweb/studies/{ct.study}/series"
        first = await client.get(url, params={"Modality": "CT"})
        assert first.status_code == 200
        finds = dimse(fresh_pacs)["C-FIND"]
        assert finds >= 1
        again = await client.get(url, params={"Modality": "CT"})
        assert again.json() == first.json()
        assert dimse(fresh_pacs)["C-FIND"] == finds
        other = await client.get(url, params={"Modality": "MR"})
        assert other.status_code in (200, 204)
        assert dimse(fresh_pacs)["C-FIND"] > finds  # a different search is not a hit
        finds = dimse(fresh_pacs)["C-FIND"]
        await asyncio.sleep(2.1)  # past qido_cache_ttl (2 s: a loaded machine stays within)
        await client.get(url, params={"Modality": "CT"})
        assert dimse(fresh_pacs)["C-FIND"] > finds


async def test_cached_search_uses_the_requests_base_url(fresh_pacs: FailingPacs,
                                                        ct: Series) -> None:
    async with open_gateway(settings_for(fresh_pacs)) as (client, _):
        url = f"/dicomweb/studies/{ct.study}/series"
        await client.get(url)
        fresh_pacs.reset_operation_counts()
        proxied = await client.get(url, headers={"X-Forwarded-Host": "viewer.example",
                                                 "X-Forwarded-Proto": "https"})
        assert dimse(fresh_pacs)["C-FIND"] == 0
        retrieve_urls = [o["00081190"]["Value"][0] for o in proxied.json()]
        assert retrieve_urls and all(u.startswith("https://viewer.example/") for u in
                                     retrieve_urls), retrieve_urls


# -- no cache ------------------------------------------------------------------------------------


async def test_without_a_cache_every_request_goes_to_the_pacs(fresh_pacs: FailingPacs,
                                                              small: Series) -> None:
    async with open_gateway(settings_for(fresh_pacs, cache_backend="none")) as (client, services):
        assert services.cache() is None
        for _ in range(2):
            assert sorted(sop_uids(await client.get(
                small.path, headers={"Accept": MULTIPART_DICOM}))) == small.sops
            assert (await client.get(f"{small.path}/metadata")).status_code == 200
            assert (await client.get(
                f"/dicomweb/studies/{small.study}/series")).status_code == 200
        counts = dimse(fresh_pacs)
        assert counts["C-GET"] == 4
        assert counts["C-FIND"] >= 6
        ready = await client.get("/readyz")
        assert ready.json()["cache"] == {"backend": "none", "status": "off"}


# -- a holder that died, conditional corner cases, base URLs ---------------------------------


async def test_series_locked_by_a_dead_holder_is_taken_over(fresh_pacs: FailingPacs,
                                                            small: Series) -> None:
    """A fill lock left by a crashed process (never renewed, no events) delays requests by
    about its expiry, then one of them retrieves the series."""
    async with open_gateway(settings_for(fresh_pacs, cache_lock_ttl=0.6)) as (client, services):
        cache = cache_of(services)
        assert await cache.backend.acquire_lock(cache.keys.lock(small.uid), 0.6)
        started = asyncio.get_running_loop().time()
        responses = await asyncio.gather(*(
            client.get(small.path, headers={"Accept": MULTIPART_DICOM}) for _ in range(5)))
        elapsed = asyncio.get_running_loop().time() - started
        assert all(sorted(sop_uids(r)) == small.sops for r in responses)
        assert dimse(fresh_pacs)["C-GET"] == 1
        assert elapsed < 5


async def test_if_none_match_star_on_a_missing_instance_is_404(fresh_pacs: FailingPacs,
                                                               ct: Series) -> None:
    """RFC 9110 13.1.2: ``*`` is false when there is no current representation, so a missing
    instance is a 404, never a 304 (instance ETags need no lookup, ``*`` would)."""
    async with open_gateway(settings_for(fresh_pacs)) as (client, _):
        missing = f"{ct.path}/instances/1.2.3.4.5.6.7.8.9"
        response = await client.get(missing, headers={"If-None-Match": "*"})
        assert response.status_code == 404


async def test_cached_metadata_uses_the_requests_base_url(fresh_pacs: FailingPacs,
                                                          small: Series) -> None:
    async with open_gateway(settings_for(fresh_pacs)) as (client, _):
        first = await client.get(f"{small.path}/metadata")
        assert first.status_code == 200
        fresh_pacs.reset_operation_counts()
        proxied = await client.get(f"{small.path}/metadata",
                                   headers={"X-Forwarded-Host": "viewer.example",
                                            "X-Forwarded-Proto": "https"})
        assert dimse(fresh_pacs) == NO_TRAFFIC
        text = proxied.text
        assert "http://gw.test" not in text
        assert "https://viewer.example/dicomweb/studies/" in text


async def test_warm_series_metadata_is_compressed_once(fresh_pacs: FailingPacs,
                                                       ct: Series) -> None:
    """A warm series' metadata is encoded once per base URL and coding, then sent as stored:
    the same JSON as unencoded, its coded ETag and 304, and each client's own URLs."""
    async with open_gateway(settings_for(fresh_pacs)) as (client, services):
        url = f"{ct.path}/metadata"
        plain = await client.get(url, headers={"Accept-Encoding": "identity"})
        assert plain.status_code == 200 and "content-encoding" not in plain.headers
        expected = plain.json()
        gets = dimse(fresh_pacs)["C-GET"]

        def counted(kind: str) -> int:
            text = services.metrics.render()
            match = re.search(rf'cache_{kind}_total{{kind="encoded_metadata"}} (\d+)', text)
            return int(match.group(1)) if match else 0

        first = await client.get(url, headers={"Accept-Encoding": "gzip"})
        again = await client.get(url, headers={"Accept-Encoding": "gzip"})
        for response in (first, again):
            assert response.status_code == 200
            assert response.headers["content-encoding"] == "gzip"
            assert "Accept-Encoding" in response.headers["vary"]
            assert response.json() == expected
        assert first.headers["etag"] == again.headers["etag"]
        assert first.headers["etag"].endswith('-gzip"')
        assert counted("misses") == 1 and counted("hits") == 1
        assert dimse(fresh_pacs)["C-GET"] == gets  # warm: no retrieval

        unchanged = await client.get(url, headers={"Accept-Encoding": "gzip",
                                                   "If-None-Match": first.headers["etag"]})
        assert unchanged.status_code == 304
        assert unchanged.headers["etag"] == first.headers["etag"]

        proxied = await client.get(url, headers={
            "Accept-Encoding": "gzip", "X-Forwarded-Host": "viewer.example",
            "X-Forwarded-Proto": "https"})
        text = proxied.text
        assert "https://viewer.example/" in text and "http://gw.test/" not in text
        assert counted("misses") == 2  # its own stored body

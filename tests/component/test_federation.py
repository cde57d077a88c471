"""Issue #12 item 3, federation: with ``federate`` set, ``/dicomweb/...`` answers from two demo
PACS at once (tests/support/federated_studies.py: overlapping and disjoint studies). Searches are
merged, de-duplicated (RetrieveAETitle naming both), paged stably, and survive one PACS failing
or timing out with a 299 warning; retrievals go to a PACS that holds the study, remembered or
asked, with fail-over; the named routes are unchanged."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from app.demo.pacs import DemoPacs
from app.dicomweb.multipart import parse_multipart
from app.settings import Settings
from tests.component.conftest import free_port, gateway_settings, open_app, peer_config
from tests.support.federated_studies import FederatedStudies, federated_studies

pytestmark = pytest.mark.timeout(90)
EAST_AE, WEST_AE = "EAST_PACS", "WEST_PACS"
DICOM = {"Accept": 'multipart/related; type="application/dicom"'}


@pytest.fixture(scope="module")
def studies() -> FederatedStudies:
    return federated_studies()


@pytest.fixture(scope="module")
def east(studies: FederatedStudies) -> Iterator[DemoPacs]:
    with DemoPacs(studies.east, ae_title=EAST_AE) as pacs:
        yield pacs


@pytest.fixture(scope="module")
def west(studies: FederatedStudies) -> Iterator[DemoPacs]:
    # Like dcmqrscp, west leaves ModalitiesInStudy and the counts empty: the gateway computes them.
    with DemoPacs(studies.west, ae_title=WEST_AE, omit_counts=True) as pacs:
        yield pacs


def peers(*pairs: tuple[str, DemoPacs | int, str], **extra: Any) -> list[dict[str, Any]]:
    """PacsPeer mappings for (name, PACS or a port, AE title)."""
    return [peer_config(p if isinstance(p, int) else p.port, ae_title=ae, name=name, **extra)
            for name, p, ae in pairs]


def federated(east: DemoPacs, west: DemoPacs, **extra: Any) -> Settings:
    values: dict[str, Any] = {"federate": True, "cache_backend": "none", **extra}
    return gateway_settings(*peers(("east", east, EAST_AE), ("west", west, WEST_AE)), **values)


def uids(response: httpx.Response, tag: str = "0020000D") -> list[str]:
    assert response.status_code == 200, response.text[:300]
    return [r[tag]["Value"][0] for r in response.json()]


def by_uid(response: httpx.Response) -> dict[str, dict[str, Any]]:
    assert response.status_code == 200, response.text[:300]
    return {r["0020000D"]["Value"][0]: r for r in response.json()}


def values(result: dict[str, Any], tag: str) -> list[Any]:
    return list(result.get(tag, {}).get("Value", []))


def warnings(response: httpx.Response) -> list[str]:
    return [w for w in response.headers.get_list("warning") if w.startswith("299 ")]


def received_sops(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text[:300]
    parts = parse_multipart(response.content, response.headers["content-type"])
    return {str(dcmread(BytesIO(part.body)).SOPInstanceUID) for part in parts}


async def metric(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    text = (await client.get("/metrics")).text
    total = 0.0
    for match in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE):
        if all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


# -- QIDO-RS -----------------------------------------------------------------------------------


async def test_studies_are_merged_once_each_with_the_ae_titles_of_their_pacs(
        east: DemoPacs, west: DemoPacs, studies: FederatedStudies) -> None:
    async with open_app(federated(east, west)) as (client, _):
        response = await client.get("/dicomweb/studies")
    found = uids(response)
    assert found == sorted(studies.study_uids)  # each once, sorted by StudyInstanceUID
    results = by_uid(response)
    uid = studies.study_uids
    for i in (0, 3, 4):
        assert values(results[uid[i]], "00080054") == [EAST_AE, WEST_AE]
    for i in (1, 2, 5):
        assert values(results[uid[i]], "00080054") == [EAST_AE]
    for i in (6, 7):
        assert values(results[uid[i]], "00080054") == [WEST_AE]
    assert not warnings(response)


async def test_a_study_held_differently_gets_the_union_of_modalities_and_the_larger_counts(
        east: DemoPacs, west: DemoPacs, studies: FederatedStudies) -> None:
    async with open_app(federated(east, west)) as (client, _):
        response = await client.get("/dicomweb/studies")
    results = by_uid(response)
    study0, study4 = results[studies.study_uids[0]], results[studies.study_uids[4]]
    # Study 0: east has both series (20 instances), west one (10, computed by the gateway).
    assert values(study0, "00201206") == [2]
    assert values(study0, "00201208") == [20]
    # Study 4: east has 1 CT series (3), west that series and an OT series (4, computed).
    assert values(study4, "00080061") == ["CT", "OT"]
    assert values(study4, "00201206") == [2]
    assert values(study4, "00201208") == [4]


async def test_dicom_xml_results_carry_retrieve_ae_title_too(
        east: DemoPacs, west: DemoPacs, studies: FederatedStudies) -> None:
    async with open_app(federated(east, west)) as (client, _):
        response = await client.get(
            "/dicomweb/studies", params={"StudyInstanceUID": studies.study_uids[0]},
            headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
    assert response.status_code == 200, response.text[:300]
    (part,) = parse_multipart(response.content, response.headers["content-type"])
    xml = part.body.decode()
    attribute = xml[xml.index('tag="00080054"'):]
    attribute = attribute[:attribute.index("</DicomAttribute>")]
    assert f">{EAST_AE}<" in attribute and f">{WEST_AE}<" in attribute


async def test_paging_walks_the_merged_list_and_gives_the_same_page_again(
        east: DemoPacs, west: DemoPacs, studies: FederatedStudies) -> None:
    async with open_app(federated(east, west)) as (client, _):
        pages = [uids(await client.get("/dicomweb/studies", params={"limit": 3, "offset": o}))
                 for o in (0, 3, 6)]
        again = uids(await client.get("/dicomweb/studies", params={"limit": 3, "offset": 3}))
        first = await client.get("/dicomweb/studies", params={"limit": 3})
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [u for p in pages for u in p] == sorted(studies.study_uids)
    assert again == pages[1]
    assert any("additional results" in w for w in warnings(first))


async def test_series_of_a_study_on_both_pacs_are_merged(
        east: DemoPacs, west: DemoPacs, studies: FederatedStudies) -> None:
    study4 = studies.study_uids[4]
    async with open_app(federated(east, west)) as (client, _):
        response = await client.get(f"/dicomweb/studies/{study4}/series")
    assert response.status_code == 200, response.text[:300]
    series = {r["0020000E"]["Value"][0]: r for r in response.json()}
    assert len(series) == 2
    titles = sorted(tuple(values(r, "00080054")) for r in series.values())
    assert titles == [(EAST_AE, WEST_AE), (WEST_AE,)]


async def test_a_pacs_that_is_down_is_named_in_a_warning_and_the_others_answer(
        east: DemoPacs, studies: FederatedStudies) -> None:
    settings = gateway_settings(*peers(("east", east, EAST_AE), ("gone", free_port(), "GONE")),
                                federate=True, cache_backend="none")
    async with open_app(settings) as (client, _):
        response = await client.get("/dicomweb/studies")
        failures = await metric(client, "federation_search_failures_total", peer="gone")
    assert sorted(uids(response)) == sorted(studies.study_uids[i] for i in range(6))
    assert any("PACS gone failed" in w for w in warnings(response)), warnings(response)
    assert failures == 1


async def test_a_pacs_that_answers_too_slowly_is_named_in_a_warning(
        east: DemoPacs, studies: FederatedStudies) -> None:
    # The answering PACS has 1.5 s (a first search also opens its association); the slow one
    # answers only after 3 s.
    with DemoPacs(studies.west, ae_title="SLOW_PACS", response_delay=3.0) as slow:
        settings = gateway_settings(*peers(("east", east, EAST_AE), ("slow", slow, "SLOW_PACS")),
                                    federate=True, federate_search_timeout=1.5,
                                    cache_backend="none")
        async with open_app(settings) as (client, _):
            response = await client.get("/dicomweb/studies")
    assert len(uids(response)) == 6
    assert any("PACS slow did not answer within 1.5 s" in w for w in warnings(response))


async def test_when_every_pacs_fails_the_search_fails_as_usual() -> None:
    settings = gateway_settings(*peers(("a", free_port(), "A"), ("b", free_port(), "B")),
                                federate=True, cache_backend="none")
    async with open_app(settings) as (client, _):
        response = await client.get("/dicomweb/studies")
    assert response.status_code == 503, response.text[:300]


async def test_when_every_pacs_times_out_the_search_is_504(studies: FederatedStudies) -> None:
    with DemoPacs(studies.west, ae_title="SLOW_PACS", response_delay=1.0) as slow:
        settings = gateway_settings(*peers(("slow", slow, "SLOW_PACS")), federate=True,
                                    federate_search_timeout=0.3, cache_backend="none")
        async with open_app(settings) as (client, _):
            response = await client.get("/dicomweb/studies")
    assert response.status_code == 504, response.text[:300]
    assert "within 0.3 s" in response.text


# -- WADO-RS -----------------------------------------------------------------------------------


async def test_a_study_only_on_the_second_pacs_is_found_by_asking_and_retrieved(
        east: DemoPacs, west: DemoPacs, studies: FederatedStudies) -> None:
    study6 = studies.study_uids[6]
    east.reset_operation_counts()
    async with open_app(federated(east, west)) as (client, _):
        response = await client.get(f"/dicomweb/studies/{study6}", headers=DICOM)
        metadata = await client.get(f"/dicomweb/studies/{study6}/metadata")
    assert received_sops(response) == studies.on_west(6)
    assert metadata.status_code == 200
    assert all(m["0020000D"]["Value"] == [study6] for m in metadata.json())
    assert east.operation_counts["C-GET"] == 0  # asked once (C-FIND), never retrieved from
    assert east.operation_counts["C-FIND"] >= 1


async def test_a_searched_study_is_retrieved_without_asking_again(
        east: DemoPacs, west: DemoPacs, studies: FederatedStudies) -> None:
    study7 = studies.study_uids[7]
    async with open_app(federated(east, west)) as (client, services):
        assert study7 in uids(await client.get("/dicomweb/studies"))
        assert await services.locations.known(study7) == ("west",)
        east.reset_operation_counts()
        response = await client.get(f"/dicomweb/studies/{study7}", headers=DICOM)
    assert received_sops(response) == studies.on_west(7)
    assert east.operation_counts["C-FIND"] == east.operation_counts["C-GET"] == 0


async def test_a_study_on_no_pacs_is_404(east: DemoPacs, west: DemoPacs) -> None:
    async with open_app(federated(east, west)) as (client, _):
        response = await client.get("/dicomweb/studies/1.2.3.4.5.6.7/metadata")
    assert response.status_code == 404, response.text[:300]


async def test_frames_rendered_and_instance_metadata_of_a_federated_study(
        east: DemoPacs, west: DemoPacs, studies: FederatedStudies) -> None:
    ct = next(ds for ds in studies.west if str(ds.StudyInstanceUID) == studies.study_uids[3])
    path = (f"/dicomweb/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
            f"/instances/{ct.SOPInstanceUID}")
    async with open_app(federated(east, west)) as (client, _):
        frames = await client.get(f"{path}/frames/1", headers={
            "Accept": 'multipart/related; type="application/octet-stream"'})
        rendered = await client.get(f"{path}/rendered", headers={"Accept": "image/png"})
        meta = await client.get(f"{path}/metadata")
        archive = await client.get(f"/dicomweb/studies/{ct.StudyInstanceUID}",
                                   headers={"Accept": "application/zip"})
    assert frames.status_code == 200, frames.text[:300]
    assert rendered.status_code == 200 and rendered.content.startswith(b"\x89PNG")
    assert meta.status_code == 200 and meta.json()[0]["00080018"]["Value"] == [
        str(ct.SOPInstanceUID)]
    assert archive.status_code == 200 and archive.content.startswith(b"PK")


async def test_retrieval_fails_over_when_the_remembered_pacs_refuses_c_get(
        west: DemoPacs, studies: FederatedStudies) -> None:
    study3 = studies.study_uids[3]
    with DemoPacs(studies.east, ae_title="REFUSER", refuse_get=0xC000) as refuser:
        settings = gateway_settings(
            *peers(("refuser", refuser, "REFUSER"), ("west", west, WEST_AE),
                   retrieve_method="get"),
            federate=True, cache_backend="none")
        async with open_app(settings) as (client, services):
            assert study3 in uids(await client.get("/dicomweb/studies"))
            assert await services.locations.known(study3) == ("refuser", "west")
            response = await client.get(f"/dicomweb/studies/{study3}", headers=DICOM)
            failovers = await metric(client, "federation_failovers_total", peer="refuser")
        assert refuser.operation_counts["C-GET"] >= 1
    assert received_sops(response) == studies.on_west(3)
    assert failovers == 1


async def test_retrieval_fails_over_when_the_remembered_pacs_is_gone(
        west: DemoPacs, studies: FederatedStudies) -> None:
    study3 = studies.study_uids[3]
    doomed = DemoPacs(studies.east, ae_title="DOOMED")
    doomed.start("127.0.0.1", 0)
    try:
        settings = gateway_settings(
            *peers(("doomed", doomed, "DOOMED"), ("west", west, WEST_AE)),
            federate=True, cache_backend="none")
        async with open_app(settings) as (client, services):
            assert study3 in uids(await client.get("/dicomweb/studies"))
            doomed.stop()
            response = await client.get(f"/dicomweb/studies/{study3}/metadata")
            failovers = await metric(client, "federation_failovers_total", peer="doomed")
    finally:
        doomed.stop()
    assert response.status_code == 200, response.text[:300]
    assert {m["00080018"]["Value"][0] for m in response.json()} == studies.on_west(3)
    assert failovers == 1


async def test_where_a_study_is_travels_through_redis_to_another_replica(
        east: DemoPacs, west: DemoPacs, studies: FederatedStudies, redis_url: str) -> None:
    study6 = studies.study_uids[6]
    settings = federated(east, west).model_copy(update={"cache_backend": "redis",
                                                        "redis_url": redis_url})
    async with open_app(settings) as (first, _):
        assert study6 in uids(await first.get("/dicomweb/studies"))
    east.reset_operation_counts()
    async with open_app(settings) as (second, services):
        assert len(services.locations) == 0  # nothing in this replica's own map
        response = await second.get(f"/dicomweb/studies/{study6}", headers=DICOM)
    assert received_sops(response) == studies.on_west(6)
    assert east.operation_counts["C-FIND"] == 0  # known from Redis: east was not asked


async def test_a_viewer_opening_a_study_prefetches_it_from_the_pacs_that_holds_it(
        east: DemoPacs, west: DemoPacs, studies: FederatedStudies) -> None:
    """A search naming one StudyInstanceUID (OHIF opening a study) warms that study's series
    in the background through the federation: here into west's cache, the PACS holding it."""
    study7 = studies.study_uids[7]
    series = str(next(ds.SeriesInstanceUID for ds in studies.west
                      if str(ds.StudyInstanceUID) == study7))
    async with open_app(federated(east, west, cache_backend="memory")) as (client, services):
        assert uids(await client.get("/dicomweb/studies",
                                     params={"StudyInstanceUID": study7})) == [study7]
        west_cache = services.cache("west")
        for _ in range(250):
            if await west_cache.complete_series(series) is not None:
                break
            await asyncio.sleep(0.02)
        assert await west_cache.complete_series(series) is not None
        assert await services.cache("east").complete_series(series) is None


# -- unchanged without federation --------------------------------------------------------------


async def test_named_routes_answer_from_their_own_pacs_only(
        east: DemoPacs, west: DemoPacs, studies: FederatedStudies) -> None:
    async with open_app(federated(east, west)) as (client, _):
        named = await client.get("/pacs/west/dicomweb/studies")
        missing = await client.get(f"/pacs/east/dicomweb/studies/{studies.study_uids[6]}",
                                   headers=DICOM)
    assert sorted(uids(named)) == sorted(studies.study_uids[i] for i in (0, 3, 4, 6, 7))
    assert all("00080054" not in r for r in named.json())
    assert missing.status_code == 404


async def test_without_federate_the_root_is_the_default_pacs(
        east: DemoPacs, west: DemoPacs, studies: FederatedStudies) -> None:
    settings = gateway_settings(*peers(("east", east, EAST_AE), ("west", west, WEST_AE)),
                                cache_backend="none")
    async with open_app(settings) as (client, services):
        response = await client.get("/dicomweb/studies")
        assert services.federated is None
    assert sorted(uids(response)) == sorted(studies.study_uids[i] for i in range(6))
    assert all("00080054" not in r for r in response.json())


async def test_federate_names_a_subset_in_order(
        east: DemoPacs, west: DemoPacs, studies: FederatedStudies) -> None:
    settings = gateway_settings(*peers(("east", east, EAST_AE), ("west", west, WEST_AE)),
                                federate=["west"], cache_backend="none")
    async with open_app(settings) as (client, _):
        response = await client.get("/dicomweb/studies")
    assert sorted(uids(response)) == sorted(studies.study_uids[i] for i in (0, 3, 4, 6, 7))
    assert all(values(r, "00080054") == [WEST_AE] for r in response.json())


async def test_a_series_only_on_the_second_pacs_of_a_study_both_hold(
        east: DemoPacs, west: DemoPacs, studies: FederatedStudies) -> None:
    """East holds study 4 but not its OT series: its 404 hands the series to west, and east
    stays remembered for the study (a series missing is not the study missing)."""
    extra = next(ds for ds in studies.west if ds.SeriesNumber == 99)
    study4 = str(extra.StudyInstanceUID)
    async with open_app(federated(east, west)) as (client, services):
        assert study4 in uids(await client.get("/dicomweb/studies"))
        response = await client.get(
            f"/dicomweb/studies/{study4}/series/{extra.SeriesInstanceUID}", headers=DICOM)
        whole = await client.get(f"/dicomweb/studies/{study4}", headers=DICOM)
        assert await services.locations.known(study4) == ("east", "west")
        failovers = await metric(client, "federation_failovers_total", peer="east",
                                 status="404")
    assert received_sops(response) == {str(extra.SOPInstanceUID)}
    assert received_sops(whole) == studies.on_east(4)  # the study from the first PACS only
    assert failovers == 1

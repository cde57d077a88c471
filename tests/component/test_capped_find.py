"""Issue #12 item 2, capped archives: a PACS that ends a STUDY-level C-FIND with Cancel after
``find_limit`` matches (as Orthanc does past LimitFindResults) is searched again by StudyDate
ranges, and a day still over the limit by StudyTime ranges, until every part is under the cap;
the parts are merged, de-duplicated and paged. Studies without a StudyDate match no range
(PS3.4 C.2.2.2.5): those the capped answer gave are kept, and the answer says more may exist.

The demo PACS answers in StudyDate/StudyTime order, studies without a date first: that is
what decides which studies a capped answer holds here.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from app.demo.pacs import DemoPacs
from app.demo.samples import generate_many_studies
from app.services.capped import EMPTY_DATES_WARNING, INCOMPLETE_WARNING
from tests.component.conftest import GatewayFactory, gateway_settings, peer_config
from tests.support.dated_studies import HEAVY_DAY, dated_studies

pytestmark = pytest.mark.timeout(60)
LIMIT = 5


@pytest.fixture(scope="module")
def studies() -> list[Dataset]:
    return dated_studies()


@pytest.fixture(scope="module")
def capped_pacs(studies: list[Dataset]) -> Iterator[DemoPacs]:
    pacs = DemoPacs(studies, ae_title="CAPPED_PACS", find_limit=LIMIT)
    pacs.start("127.0.0.1", 0)
    yield pacs
    pacs.stop()


def settings_for(pacs: DemoPacs, **peer: Any) -> Any:
    return gateway_settings(peer_config(pacs.port, ae_title=pacs.ae_title, **peer),
                            cache_backend="none")


def study_uids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text[:300]
    return [r["0020000D"]["Value"][0] for r in response.json()]


def warnings(response: httpx.Response) -> list[str]:
    return response.headers.get_list("warning")


def has_warning(response: httpx.Response, text: str) -> bool:
    return any(w.startswith("299 ") and text in w for w in warnings(response))


def uids_of(studies: list[Dataset], keep: Any = lambda ds: True) -> set[str]:
    return {str(ds.StudyInstanceUID) for ds in studies if keep(ds)}


async def metric(client: httpx.AsyncClient, name: str) -> float:
    text = (await client.get("/metrics")).text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}\{{[^}}]*\}} (\S+)$", text,
                                                      re.MULTILINE))


async def test_a_universal_search_finds_every_study_once(
    gateway: GatewayFactory, capped_pacs: DemoPacs, studies: list[Dataset]
) -> None:
    async with gateway(settings_for(capped_pacs)) as client:
        response = await client.get("/dicomweb/studies")
        found = study_uids(response)
        assert await metric(client, "qido_capped_subqueries_total") > 2
    assert len(found) == len(set(found)) == len(studies)
    assert set(found) == uids_of(studies)
    # the capped answer's studies without a date are kept, and the answer says more may exist
    assert uids_of(studies, lambda ds: "StudyDate" not in ds) <= set(found)
    assert has_warning(response, "cannot match studies without a StudyDate")
    assert not has_warning(response, "may be incomplete")


async def test_a_date_range_split_under_the_cap_is_complete_without_warning(
    gateway: GatewayFactory, capped_pacs: DemoPacs, studies: list[Dataset]
) -> None:
    expected = uids_of(studies, lambda ds: "20150101" <= str(ds.get("StudyDate", "")) <=
                       "20201231")
    assert len(expected) > LIMIT
    async with gateway(settings_for(capped_pacs)) as client:
        response = await client.get("/dicomweb/studies",
                                    params={"StudyDate": "20150101-20201231"})
    found = study_uids(response)
    assert sorted(found) == sorted(expected)
    assert warnings(response) == []


async def test_a_day_over_the_cap_is_split_by_study_time(
    gateway: GatewayFactory, capped_pacs: DemoPacs, studies: list[Dataset]
) -> None:
    expected = uids_of(studies, lambda ds: ds.get("StudyDate") == HEAVY_DAY)
    assert len(expected) > LIMIT
    async with gateway(settings_for(capped_pacs)) as client:
        response = await client.get("/dicomweb/studies", params={"StudyDate": HEAVY_DAY})
    assert sorted(study_uids(response)) == sorted(expected)
    # a time range cannot match a study of that day without a StudyTime: said, not hidden
    assert has_warning(response, "without a StudyTime")


async def test_a_day_over_the_cap_with_a_time_key_stays_incomplete(
    gateway: GatewayFactory, capped_pacs: DemoPacs
) -> None:
    async with gateway(settings_for(capped_pacs)) as client:
        response = await client.get("/dicomweb/studies",
                                    params={"StudyDate": HEAVY_DAY, "StudyTime": "000000-235959"})
    assert len(study_uids(response)) == LIMIT
    assert has_warning(response, INCOMPLETE_WARNING)


async def test_pages_of_a_split_answer_are_stable_and_disjoint(
    gateway: GatewayFactory, capped_pacs: DemoPacs, studies: list[Dataset]
) -> None:
    async with gateway(settings_for(capped_pacs)) as client:
        whole = study_uids(await client.get("/dicomweb/studies"))
        pages = []
        for offset in range(0, len(studies) + 6, 6):
            response = await client.get("/dicomweb/studies",
                                        params={"limit": "6", "offset": str(offset)})
            pages.extend(study_uids(response) if response.status_code == 200 else [])
        again = study_uids(await client.get("/dicomweb/studies"))
    assert pages == whole == again


async def test_staged_series_search_reads_every_capped_study(
    gateway: GatewayFactory, capped_pacs: DemoPacs, studies: list[Dataset]
) -> None:
    """/series without relational queries lists the studies first (a capped C-FIND)."""
    async with gateway(settings_for(capped_pacs, relational_queries="never")) as client:
        response = await client.get("/dicomweb/series")
    assert response.status_code == 200, response.text[:300]
    series = {r["0020000E"]["Value"][0] for r in response.json()}
    assert series == {str(ds.SeriesInstanceUID) for ds in studies}


async def test_the_budget_bounds_the_sub_queries_and_says_so(
    gateway: GatewayFactory, capped_pacs: DemoPacs, studies: list[Dataset]
) -> None:
    async with gateway(settings_for(capped_pacs, capped_find_max_queries=2)) as client:
        response = await client.get("/dicomweb/studies")
        assert await metric(client, "qido_capped_subqueries_total") == 2
        assert await metric(client, "qido_capped_incomplete_total") == 1
    found = study_uids(response)
    assert LIMIT < len(found) < len(studies)
    assert len(found) == len(set(found))
    assert has_warning(response, INCOMPLETE_WARNING)


async def test_zero_sub_queries_keeps_the_capped_answer(
    gateway: GatewayFactory, capped_pacs: DemoPacs
) -> None:
    async with gateway(settings_for(capped_pacs, capped_find_max_queries=0)) as client:
        response = await client.get("/dicomweb/studies")
    assert len(study_uids(response)) == LIMIT
    assert has_warning(response, INCOMPLETE_WARNING)


async def test_more_undated_studies_than_the_cap_are_reported_missing(
    gateway: GatewayFactory, studies: list[Dataset]
) -> None:
    """Seven studies without a date (the capped answer holds five of them) and the dated
    ones: every dated study is found, and the warning tells that undated ones may be missing
    (two are)."""
    undated = [copy.deepcopy(ds) for ds in generate_many_studies(7, seed=99)]
    for ds in undated:
        del ds.StudyDate
    dated = [ds for ds in studies if "StudyDate" in ds]
    with DemoPacs([*undated, *dated], ae_title="CAPPED_PACS", find_limit=LIMIT) as pacs:
        async with gateway(settings_for(pacs)) as client:
            response = await client.get("/dicomweb/studies")
    found = set(study_uids(response))
    assert uids_of(dated) <= found
    assert len(found & uids_of(undated)) == LIMIT
    assert has_warning(response, EMPTY_DATES_WARNING[:60])

"""Issue #12 item 2 against a real capped archive: an Orthanc with ``LimitFindResults`` = 5
holding 28 studies over several dates (three without a StudyDate, eight on one day). The
gateway completes its capped answers with StudyDate/StudyTime range queries: every dated study
is found once, paging is stable, and what cannot be known complete says so with 299."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import Dataset

from tests.peers import OrthancServer, find_dicomweb_plugin, require_binary, skip_or_fail
from tests.support.dated_studies import HEAVY_DAY, dated_studies
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings

LIMIT = 5


@pytest.fixture(scope="module")
def studies() -> list[Dataset]:
    return dated_studies()


@pytest.fixture(scope="module")
def capped_orthanc(tmp_path_factory: pytest.TempPathFactory,
                   studies: list[Dataset]) -> Iterator[OrthancServer]:
    require_binary("Orthanc")
    if find_dicomweb_plugin() is None:
        skip_or_fail("the Orthanc DICOMweb plugin is not installed (run scripts/install-deps)")
    server = OrthancServer(Path(tmp_path_factory.mktemp("orthanc-capped")), ae_title="CAPPED",
                           extra_config={"LimitFindResults": LIMIT})
    server.start()
    try:
        server.load(studies)
        yield server
    finally:
        server.stop()


@pytest.fixture
def http(capped_orthanc: OrthancServer) -> Iterator[httpx.Client]:
    peer = peer_settings("capped", "CAPPED", capped_orthanc.host, capped_orthanc.dicom_port)
    with GatewayServer(gateway_settings(peer, cache_backend="none")) as server, \
            server.client() as client:
        yield client


def uids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text[:300]
    return [r["0020000D"]["Value"][0] for r in response.json()]


def uids_of(studies: list[Dataset], keep: object = None) -> set[str]:
    return {str(ds.StudyInstanceUID) for ds in studies
            if keep is None or keep(ds)}  # type: ignore[operator]


def warned(response: httpx.Response, text: str) -> bool:
    return any(w.startswith("299 ") and text in w for w in response.headers.get_list("warning"))


def test_orthanc_caps_a_plain_c_find(capped_orthanc: OrthancServer) -> None:
    """The premise: Orthanc itself answers at most LIMIT studies to one C-FIND."""
    peer = peer_settings("capped", "CAPPED", capped_orthanc.host, capped_orthanc.dicom_port,
                         capped_find_max_queries=0)
    with GatewayServer(gateway_settings(peer, cache_backend="none")) as server, \
            server.client() as client:
        response = client.get("/studies")
    assert len(uids(response)) == LIMIT
    assert warned(response, "may be incomplete")


def test_every_dated_study_is_found_once(http: httpx.Client, studies: list[Dataset]) -> None:
    response = http.get("/studies")
    found = uids(response)
    assert len(found) == len(set(found))
    assert uids_of(studies, lambda ds: "StudyDate" in ds) <= set(found)
    # Those without a date come only from the capped answer: Orthanc's holds the studies
    # stored first, and they were. Kept, not lost to the date ranges; but the gateway cannot
    # know that there are no more of them, and says so.
    assert set(found) == uids_of(studies)
    assert warned(response, "cannot match studies without a StudyDate")


def test_a_date_range_over_the_cap_is_complete(http: httpx.Client,
                                               studies: list[Dataset]) -> None:
    expected = uids_of(studies, lambda ds: "20150101" <= str(ds.get("StudyDate", "")) <=
                       "20201231")
    assert len(expected) > LIMIT
    response = http.get("/studies", params={"StudyDate": "20150101-20201231"})
    assert sorted(uids(response)) == sorted(expected)
    assert response.headers.get_list("warning") == []


def test_a_day_over_the_cap_is_split_by_time(http: httpx.Client,
                                             studies: list[Dataset]) -> None:
    expected = uids_of(studies, lambda ds: ds.get("StudyDate") == HEAVY_DAY)
    response = http.get("/studies", params={"StudyDate": HEAVY_DAY})
    assert sorted(uids(response)) == sorted(expected)


def test_pages_are_disjoint_and_stable(http: httpx.Client, studies: list[Dataset]) -> None:
    whole = uids(http.get("/studies"))
    pages: list[str] = []
    for offset in range(0, len(studies) + 7, 7):
        response = http.get("/studies", params={"limit": "7", "offset": str(offset)})
        if response.status_code == 200:
            pages.extend(uids(response))
    assert pages == whole == uids(http.get("/studies"))

"""Computed counts for a page of QIDO-RS results (app.services.counts), against demo PACS that
leave NumberOf*Related* and ModalitiesInStudy empty as DCMTK dcmqrscp does: the values equal
those of a PACS that gives them, and a 101-study page costs a constant number of C-FINDs
(counted at the PACS), not one per study."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset

from app.demo.pacs import DemoPacs
from app.demo.samples import generate_many_studies, generate_sample_studies

from .conftest import GatewayFactory, gateway_settings, peer_config

pytestmark = pytest.mark.timeout(60)

OHIF_STUDY_LIST = {"limit": "101", "offset": "0", "fuzzymatching": "false",
                   "includefield": "00081030,00080060"}
STUDY_COUNTS = ("00080061", "00201206", "00201208")


@pytest.fixture(scope="module")
def page_data() -> list[Dataset]:
    """95 one-instance studies (dated 2000-2009) and the sample studies (several series and
    instances each, dated later): OHIF's first page of 101 holds both kinds."""
    return generate_sample_studies() + generate_many_studies(95, seed=7)


@pytest.fixture(scope="module")
def pacs_of(page_data: list[Dataset]) -> Iterator[Callable[..., DemoPacs]]:
    """``pacs_of(kind, small=False)``: a running demo PACS holding the page data (or, small,
    only the sample studies). Kinds: "reference" answers the counts itself (the expected
    values); "countless" leaves them empty like dcmqrscp; "strict" is countless and refuses UID
    lists above the query level (A900); "relational" is countless and agrees to relational
    queries."""
    options: dict[str, dict[str, bool]] = {
        "reference": {},
        "countless": {"omit_counts": True},
        "strict": {"omit_counts": True, "strict_unique_keys": True},
        "relational": {"omit_counts": True, "relational_queries": True},
    }
    running: dict[tuple[str, bool], DemoPacs] = {}

    def get(kind: str, small: bool = False) -> DemoPacs:
        if (kind, small) not in running:
            data = generate_sample_studies() if small else page_data
            pacs = DemoPacs(data, ae_title="COUNTS_PACS", **options[kind])
            pacs.start("127.0.0.1", 0)
            running[(kind, small)] = pacs
        return running[(kind, small)]

    yield get
    for pacs in running.values():
        pacs.stop()


def _settings(pacs: DemoPacs, **peer: Any) -> Any:
    peer = {"overall_timeout": 60, **peer}
    return gateway_settings(peer_config(pacs.port, ae_title=pacs.ae_title, **peer),
                            cache_backend="none")


def _normalised(body: list[dict[str, Any]], drop: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Results with ModalitiesInStudy sorted (its order is the PACS's choice) and ``drop``
    removed."""
    out = []
    for obj in body:
        obj = {k: v for k, v in obj.items() if k not in drop}
        if "Value" in obj.get("00080061", {}):
            obj["00080061"] = {**obj["00080061"], "Value": sorted(obj["00080061"]["Value"])}
        out.append(obj)
    return out


async def _get(gateway: GatewayFactory, pacs: DemoPacs, path: str,
               params: dict[str, str] | None = None, **peer: Any) -> list[dict[str, Any]]:
    async with gateway(_settings(pacs, **peer)) as client:
        r = await client.get(f"/dicomweb{path}", params=params)
    assert r.status_code == 200, (path, params, r.text)
    body: list[dict[str, Any]] = r.json()
    return body


def _series_on_page(body: list[dict[str, Any]], data: list[Dataset]) -> int:
    page = {obj["0020000D"]["Value"][0] for obj in body}
    return len({str(d.SeriesInstanceUID) for d in data if str(d.StudyInstanceUID) in page})


@pytest.mark.parametrize("kind", ["countless", "relational"])
async def test_ohif_study_list_counts_equal_a_pacs_that_gives_them(
    gateway: GatewayFactory, pacs_of: Callable[..., DemoPacs], kind: str,
) -> None:
    expected = await _get(gateway, pacs_of("reference"), "/studies", OHIF_STUDY_LIST)
    got = await _get(gateway, pacs_of(kind), "/studies", OHIF_STUDY_LIST)
    assert len(got) == 101
    assert _normalised(got) == _normalised(expected)
    assert any(obj["00201208"]["Value"][0] > 1 for obj in got)  # the samples are on the page
    assert any(obj["00201206"]["Value"][0] > 1 for obj in got)


async def test_a_101_study_page_costs_constant_c_finds(
    gateway: GatewayFactory, pacs_of: Callable[..., DemoPacs], page_data: list[Dataset],
) -> None:
    """One STUDY-level C-FIND, then one SERIES- and one IMAGE-level C-FIND per chunk of UIDs:
    with chunks larger than the page, three C-FINDs whether the page holds 10 or 101 studies."""
    pacs = pacs_of("countless")
    for limit in ("10", "101"):
        pacs.reset_operation_counts()
        await _get(gateway, pacs, "/studies", {**OHIF_STUDY_LIST, "limit": limit},
                   max_uids_per_query=512)
        assert pacs.operation_counts["C-FIND"] == 3, limit

    pacs.reset_operation_counts()
    body = await _get(gateway, pacs, "/studies", OHIF_STUDY_LIST)
    series = _series_on_page(body, page_data)
    assert pacs.operation_counts["C-FIND"] == 1 + math.ceil(101 / 64) + math.ceil(series / 64)

    # One UID per query is the per-study path: a C-FIND per study and per series (a shorter
    # page: the demo PACS takes a tenth of a second per C-FIND).
    short = {**OHIF_STUDY_LIST, "limit": "20", "offset": "83"}
    batched = await _get(gateway, pacs, "/studies", short)
    pacs.reset_operation_counts()
    one_by_one = await _get(gateway, pacs, "/studies", short, max_uids_per_query=1)
    assert len(one_by_one) == 20
    assert pacs.operation_counts["C-FIND"] == 1 + 20 + _series_on_page(one_by_one, page_data)
    assert one_by_one == batched


async def test_counts_are_only_computed_when_asked_for(
    gateway: GatewayFactory, pacs_of: Callable[..., DemoPacs],
) -> None:
    pacs = pacs_of("countless")
    pacs.reset_operation_counts()
    await _get(gateway, pacs, "/studies", OHIF_STUDY_LIST, compute_missing_counts=False)
    assert pacs.operation_counts["C-FIND"] == 1


async def test_a_pacs_refusing_uid_lists_is_asked_per_study(
    gateway: GatewayFactory, pacs_of: Callable[..., DemoPacs], page_data: list[Dataset],
    caplog: pytest.LogCaptureFixture,
) -> None:
    page = {**OHIF_STUDY_LIST, "limit": "20", "offset": "83"}  # samples and one-instance ones
    expected = await _get(gateway, pacs_of("reference"), "/studies", page)
    strict = pacs_of("strict")
    async with gateway(_settings(strict)) as client:
        with caplog.at_level(logging.WARNING, logger="app.services.counts"):
            first = await client.get("/dicomweb/studies", params=page)
        assert first.status_code == 200
        assert _normalised(first.json()) == _normalised(expected)
        refusals = [r for r in caplog.records if "PS3.4 C.4.1.2.1" in r.getMessage()]
        assert refusals and all(r.levelno == logging.WARNING for r in refusals)
        # Remembered: the next page goes straight to one study (and series) per C-FIND.
        strict.reset_operation_counts()
        again = await client.get("/dicomweb/studies", params=page)
    assert again.json() == first.json()
    series = _series_on_page(first.json(), page_data)
    assert len(first.json()) == 20
    assert strict.operation_counts["C-FIND"] == 1 + 20 + series


@pytest.mark.parametrize("kind", ["countless", "relational", "strict"])
async def test_series_and_matching_paths_equal_the_reference(
    gateway: GatewayFactory, pacs_of: Callable[..., DemoPacs], kind: str,
) -> None:
    """Series counts, staged and relational resources, ModalitiesInStudy matching and lower-level
    keys, on the sample studies (study-level counts are not computed for series or instance
    results, so they are left out of those comparisons)."""
    reference, pacs = pacs_of("reference", small=True), pacs_of(kind, small=True)
    study = str(next(d for d in generate_sample_studies() if d.Modality == "CT").StudyInstanceUID)
    cases: list[tuple[str, dict[str, str], tuple[str, ...]]] = [
        ("/studies", {}, ()),
        (f"/studies/{study}/series", {}, ()),
        ("/series", {"Modality": "MR"}, STUDY_COUNTS),
        (f"/studies/{study}/instances", {}, STUDY_COUNTS + ("00201209",)),
        ("/studies", {"ModalitiesInStudy": "CT"}, ()),
        ("/studies", {"ModalitiesInStudy": "MR", "limit": "1", "offset": "1"}, ()),
        ("/studies", {"Modality": "CT"}, ()),
    ]
    if kind == "strict":  # the cases where lists are refused
        cases = cases[:2]
    for path, params, drop in cases:
        expected = await _get(gateway, reference, path, params)
        got = await _get(gateway, pacs, path, params)
        assert _normalised(got, drop) == _normalised(expected, drop), (path, params)
    series = await _get(gateway, pacs, f"/studies/{study}/series")
    assert len(series) > 1 and all(obj["00201209"]["Value"][0] >= 1 for obj in series)


@pytest.mark.parametrize("params", [{}, {"Modality": "CT"}, {"limit": "3", "offset": "2"},
                                    {"limit": "2"}], ids=["all", "matching", "page", "first"])
async def test_staged_relational_searches_keep_their_order_at_any_concurrency(
    gateway: GatewayFactory, pacs_of: Callable[..., DemoPacs], params: dict[str, str],
) -> None:
    """``/series`` on a PACS without relational queries is a C-FIND per study; with several at
    once (``staged_find_concurrency``) the answer, its order and its paging are the same as
    one after the other, and leaving early (a page) cancels the ones still running. (The eight
    sample studies: small enough for both engines, more parents than four at a time.)"""
    pacs = pacs_of("countless", small=True)
    one = await _get(gateway, pacs, "/series", params, staged_find_concurrency=1)
    for concurrency in (4, 16):
        many = await _get(gateway, pacs, "/series", params,
                          staged_find_concurrency=concurrency)
        assert many == one, concurrency
    assert len(one) == int(params.get("limit", len(one))) and len(one) >= 1
    if not params:
        assert len({obj["0020000D"]["Value"][0] for obj in one}) == 8  # every parent

"""CountsComputer fills the ModalitiesInStudy and NumberOf*Related* values a PACS left empty,
for a whole page at once: one SERIES-level C-FIND listing the page's studies, one IMAGE-level
C-FIND listing the series without a count, per chunk of max_uids_per_query; a PACS that refuses
UID lists is asked one UID at a time from then on."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pydicom.dataset import Dataset

from app.dicomweb.attributes import QueryLevel
from app.dicomweb.tags import (
    MODALITIES_IN_STUDY,
    SERIES_RELATED_INSTANCES,
    STUDY_RELATED_INSTANCES,
    STUDY_RELATED_SERIES,
)
from app.dimse.find import FindOutcome
from app.dimse.status import find_failure
from app.errors import UpstreamUnavailable
from app.services.counts import CountsComputer
from app.settings import PacsPeer
from tests.support.fake_client import (
    MR_IMAGE,
    Archive,
    Call,
    FakeClient,
    Script,
    failing,
    series_of,
)

STUDY_KEYS = frozenset({MODALITIES_IN_STUDY, STUDY_RELATED_SERIES, STUDY_RELATED_INSTANCES})

# Three studies of two series each: a CT series of 2 and an MR series of 3 instances.
INSTANCES = [stored for n in (1, 2, 3) for stored in
             series_of(f"1.{n}", f"1.{n}.1", 2)
             + series_of(f"1.{n}", f"1.{n}.2", 3, sop_class=MR_IMAGE, modality="MR")]


def computer(client: FakeClient) -> tuple[CountsComputer, list[FindOutcome]]:
    notes: list[FindOutcome] = []
    return CountsComputer(client, notes.append), notes  # type: ignore[arg-type]


def client(archive: Archive, **peer: Any) -> FakeClient:
    return FakeClient(PacsPeer(name="pacs", ae_title="PACS", **peer), on_find=archive.find)


def studies(*uids: str) -> list[Dataset]:
    out = []
    for uid in uids:
        ds = Dataset()
        ds.StudyInstanceUID = uid
        out.append(ds)
    return out


def study_values(ds: Dataset) -> tuple[list[str], int, int]:
    modalities = ds.ModalitiesInStudy
    return (list(modalities) if ds["ModalitiesInStudy"].VM > 1 else [modalities],
            int(ds.NumberOfStudyRelatedSeries), int(ds.NumberOfStudyRelatedInstances))


async def test_a_page_of_studies_costs_one_series_and_one_image_find() -> None:
    fake = client(Archive(INSTANCES, counts=False))
    counts, notes = computer(fake)
    page = studies("1.1", "1.2", "1.3")
    await counts.complete(page, QueryLevel.STUDY, STUDY_KEYS, {})
    assert [study_values(ds) for ds in page] == [(["CT", "MR"], 2, 5)] * 3
    [series_find] = fake.sent("C-FIND", "SERIES")
    assert series_find.uids(0x0020000D) == ["1.1", "1.2", "1.3"]
    [image_find] = fake.sent("C-FIND", "IMAGE")
    assert len(image_find.uids(0x0020000E)) == 6
    assert len(notes) == 2  # each outcome noted for the search's warnings


async def test_series_counts_given_by_the_pacs_need_no_image_find() -> None:
    fake = client(Archive(INSTANCES))  # NumberOfSeriesRelatedInstances answered
    counts, _ = computer(fake)
    page = studies("1.1", "1.2")
    await counts.complete(page, QueryLevel.STUDY, STUDY_KEYS, {})
    assert [study_values(ds) for ds in page] == [(["CT", "MR"], 2, 5)] * 2
    assert fake.sent("C-FIND", "IMAGE") == []


async def test_uid_lists_are_cut_at_max_uids_per_query() -> None:
    fake = client(Archive(INSTANCES, counts=False), max_uids_per_query=2)
    counts, _ = computer(fake)
    page = studies("1.1", "1.2", "1.3")
    await counts.complete(page, QueryLevel.STUDY, STUDY_KEYS, {})
    assert sorted(len(c.uids(0x0020000D)) for c in fake.sent("C-FIND", "SERIES")) == [1, 2]
    assert [len(c.uids(0x0020000E)) for c in fake.sent("C-FIND", "IMAGE")] == [2, 2, 2]
    assert [study_values(ds) for ds in page] == [(["CT", "MR"], 2, 5)] * 3


async def test_a_pacs_that_refuses_lists_is_asked_one_uid_at_a_time_from_then_on(
        caplog: pytest.LogCaptureFixture) -> None:
    archive = Archive(INSTANCES, counts=False)

    def refuse_lists(call: Call) -> Script:
        listed = call.uids(0x0020000D) if call.level == "SERIES" else call.uids(0x0020000E)
        if len(listed) > 1:
            return failing(find_failure(0xA900))
        return archive.find(call)

    fake = FakeClient(PacsPeer(name="pacs", ae_title="PACS"), on_find=refuse_lists)
    counts, _ = computer(fake)
    page = studies("1.1", "1.2")
    with caplog.at_level(logging.WARNING, "app.services.counts"):
        await counts.complete(page, QueryLevel.STUDY, STUDY_KEYS, {})
    assert [study_values(ds) for ds in page] == [(["CT", "MR"], 2, 5)] * 2
    assert counts.batch_size == 1
    assert "computing counts one UID at a time from now on" in caplog.text
    before = len(fake.calls)
    await counts.complete(studies("1.3"), QueryLevel.STUDY, STUDY_KEYS, {})
    assert all(len(c.uids(0x0020000D)) <= 1 and len(c.uids(0x0020000E)) <= 1
               for c in fake.calls[before:])


async def test_a_failure_of_a_single_uid_query_propagates() -> None:
    fake = FakeClient(PacsPeer(name="pacs", ae_title="PACS"),
                      on_find=lambda call: failing(find_failure(0xA700)))
    counts, _ = computer(fake)
    with pytest.raises(UpstreamUnavailable, match="0xA700"):
        await counts.complete(studies("1.1"), QueryLevel.STUDY, STUDY_KEYS, {})


async def test_values_the_pacs_gave_are_kept_and_cost_nothing() -> None:
    fake = client(Archive(INSTANCES, counts=False))
    counts, _ = computer(fake)
    [ds] = studies("1.1")
    ds.ModalitiesInStudy = ["OT"]
    ds.NumberOfStudyRelatedSeries = 9
    ds.NumberOfStudyRelatedInstances = 99
    await counts.complete([ds], QueryLevel.STUDY, STUDY_KEYS, {})
    assert fake.calls == [] and study_values(ds) == (["OT"], 9, 99)


async def test_series_rows_are_remembered_for_the_rest_of_the_search() -> None:
    fake = client(Archive(INSTANCES))
    counts, _ = computer(fake)
    memo: dict[str, Any] = {}
    await counts.complete(studies("1.1"), QueryLevel.STUDY, STUDY_KEYS, memo)
    await counts.complete(studies("1.1"), QueryLevel.STUDY, STUDY_KEYS, memo)
    assert len(fake.sent("C-FIND", "SERIES")) == 1


async def test_series_without_an_instance_count_are_counted() -> None:
    fake = client(Archive(INSTANCES, counts=False))
    counts, _ = computer(fake)
    page = []
    for study, series in (("1.1", "1.1.1"), ("1.2", "1.2.2")):
        ds = Dataset()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        page.append(ds)
    await counts.complete(page, QueryLevel.SERIES, frozenset({SERIES_RELATED_INSTANCES}), {})
    assert [int(ds.NumberOfSeriesRelatedInstances) for ds in page] == [2, 3]
    assert len(fake.sent("C-FIND", "IMAGE")) == 1

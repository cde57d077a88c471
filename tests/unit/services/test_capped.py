"""CappedFind completes a STUDY-level C-FIND the PACS capped, against a fake archive that caps
every answer at a few matches (as Orthanc does past LimitFindResults): StudyDate ranges halved
while capped, StudyTime ranges within a single day, de-duplicated, within the per-PACS budget,
and a warning whenever the answer may still be incomplete."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydicom.dataset import Dataset

from app.dicomweb.attributes import QueryLevel
from app.dicomweb.identifiers import build_identifier
from app.dimse.find import FindOutcome
from app.metrics import Metrics
from app.services.capped import EMPTY_DATES_WARNING, INCOMPLETE_WARNING, CappedFind
from app.settings import PacsPeer
from tests.support.fake_client import Call, FakeClient, Script

STUDY_DATE, STUDY_TIME, STUDY_UID = 0x00080020, 0x00080030, 0x0020000D
CAP = 4


def _in(value: str, low: str, high: str) -> bool:
    return (not low or value >= low) and (not high or value <= high)


class CappingArchive:
    """Studies (uid, date, time) answered by StudyDate and StudyTime range matching, at most
    ``cap`` per C-FIND (the answer then says capped, as a Cancel status does)."""

    def __init__(self, studies: list[tuple[str, str, str]], cap: int = CAP) -> None:
        self.studies = studies
        self.cap = cap
        self.queries: list[tuple[str, str]] = []

    def find(self, call: Call) -> Script:
        date = str(call.identifier.get(STUDY_DATE).value or "")
        time_element = call.identifier.get(STUDY_TIME)
        time = str(time_element.value or "") if time_element is not None else ""
        self.queries.append((date, time))
        d_low, d_high = (date.split("-", 1) + [""])[:2] if "-" in date else (date, date)
        t_low, t_high = (time.split("-", 1) + [""])[:2] if "-" in time else (time, time)
        matching = [s for s in self.studies if _in(s[1], d_low, d_high)
                    and (not time or _in(s[2], t_low, t_high))]
        answers = []
        for uid, day, at in matching[:self.cap]:
            ds = Dataset()
            ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = uid, day, at
            answers.append(ds)
        capped = len(matching) > self.cap
        return Script(answers, FindOutcome(0xFE00 if capped else 0x0000, False, len(answers),
                                           False, False, capped))


def setup(archive: CappingArchive, **peer: Any) -> tuple[CappedFind, Metrics, list[str]]:
    metrics, notes = Metrics(), []
    client = FakeClient(PacsPeer(name="pacs", ae_title="PACS", **peer), on_find=archive.find)
    capped = CappedFind(client, metrics, notes.append, lambda outcome: None,  # type: ignore[arg-type]
                        today=lambda: dt.date(2024, 12, 31))
    return capped, metrics, notes


def query(date: str, time: str | None = None) -> Dataset:
    ident = build_identifier(QueryLevel.STUDY, return_keys=[STUDY_UID, STUDY_DATE])
    ident.StudyDate = date
    if time is not None:
        ident.StudyTime = time
    return ident


def studies_over_a_year(count: int) -> list[tuple[str, str, str]]:
    start = dt.date(2024, 1, 1)
    return [(f"1.2.{n}", (start + dt.timedelta(days=n * 7 % 366)).strftime("%Y%m%d"), "120000")
            for n in range(count)]


async def complete(capped: CappedFind, archive: CappingArchive, date: str,
                   time: str | None = None) -> set[str]:
    """What the capped query returned plus what CappedFind adds, each UID once."""
    first = archive.find(Call("C-FIND", query(date, time)))
    seen = {str(ds.StudyInstanceUID) for ds in first.items}
    added = [str(ds.StudyInstanceUID) async for ds in capped.remaining(query(date, time), seen)]
    assert len(added) == len(set(added)) and not set(added) & {
        str(ds.StudyInstanceUID) for ds in first.items}
    return {str(ds.StudyInstanceUID) for ds in first.items} | set(added)


async def test_a_capped_range_is_completed_by_halving_it() -> None:
    archive = CappingArchive(studies_over_a_year(40))
    capped, metrics, notes = setup(archive)
    found = await complete(capped, archive, "20240101-20241231")
    assert found == {s[0] for s in archive.studies}
    assert notes == []
    subqueries = archive.queries[1:]
    assert subqueries and all(d and not t for d, t in subqueries)
    assert metrics.value("qido_capped_subqueries_total", peer="pacs") == len(subqueries)
    assert metrics.value("qido_capped_incomplete_total") == 0


async def test_a_capped_single_day_is_split_by_study_time() -> None:
    archive = CappingArchive([(f"1.3.{n}", "20240601", f"{n:02d}0000") for n in range(12)])
    capped, _, notes = setup(archive)
    found = await complete(capped, archive, "20240601")
    assert found == {s[0] for s in archive.studies}
    assert any(t for _, t in archive.queries[1:])  # StudyTime ranges were used
    assert EMPTY_DATES_WARNING in notes  # studies without a StudyTime cannot be found so


async def test_the_budget_bounds_the_work_and_says_so() -> None:
    archive = CappingArchive(studies_over_a_year(40))
    capped, metrics, notes = setup(archive, capped_find_max_queries=2)
    found = await complete(capped, archive, "20240101-20241231")
    assert len(archive.queries) - 1 == 2
    assert len(found) < 40
    assert notes == [INCOMPLETE_WARNING]
    assert metrics.value("qido_capped_incomplete_total", peer="pacs") == 1


async def test_a_single_day_with_study_time_in_the_query_is_not_split_further() -> None:
    archive = CappingArchive([(f"1.4.{n}", "20240601", "101500") for n in range(8)])
    capped, _, notes = setup(archive)
    await complete(capped, archive, "20240601", time="100000-110000")
    assert len(archive.queries) == 1 and notes == [INCOMPLETE_WARNING]


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
async def test_a_study_date_that_is_no_range_is_left_incomplete() -> None:
    archive = CappingArchive(studies_over_a_year(10))
    capped, _, notes = setup(archive)
    added = [ds async for ds in capped.remaining(query("2024*"), set())]
    assert added == [] and archive.queries == [] and notes == [INCOMPLETE_WARNING]


def test_a_zero_query_budget_turns_completion_off() -> None:
    assert not setup(CappingArchive([]), capped_find_max_queries=0)[0].enabled
    assert setup(CappingArchive([]))[0].enabled

"""WorklistPrefetcher's pure parts: request validation and the progress figures (rate, ETA)."""

from __future__ import annotations

import pytest

from app.errors import BadRequest
from app.services.worklist_prefetch import PrefetchProgress, PrefetchRequest


def test_a_query_request_with_defaults() -> None:
    request = PrefetchRequest.of({"StudyDate": "today", "ModalitiesInStudy": "CT"}, None)
    assert request.query == (("StudyDate", "today"), ("ModalitiesInStudy", "CT"))
    assert (request.max_studies, request.max_bytes, request.concurrency) == (50, None, 1)


def test_a_study_list_keeps_its_order() -> None:
    request = PrefetchRequest.of(None, ["1.2.3", "1.2.4"], max_studies=1, concurrency=3,
                                 max_bytes=10)
    assert request.studies == ("1.2.3", "1.2.4")
    assert (request.max_studies, request.max_bytes, request.concurrency) == (1, 10, 3)


@pytest.mark.parametrize(("query", "studies", "limits", "message"), [
    (None, None, {}, "either"),
    ({}, ["1.2.3"], {}, "either"),
    (None, [], {}, "empty"),
    (None, ["1.2.x"], {}, "not a valid DICOM UID"),
    ({"Nonsense": "1"}, None, {}, "unknown parameters Nonsense"),
    ({"StudyDate": "tomorrow"}, None, {}, "StudyDate"),
    ({"StudyDate": True}, None, {}, "string value"),
    ({"ModalitiesInStudy": ["CT", "MR"]}, None, {}, "more than once"),  # as QIDO-RS says
    ({}, None, {"max_studies": 0}, "max_studies"),
    ({}, None, {"max_studies": 10_001}, "max_studies"),
    ({}, None, {"concurrency": 0}, "concurrency"),
    ({}, None, {"concurrency": 9}, "concurrency"),
    ({}, None, {"max_bytes": -1}, "max_bytes"),
])
def test_bad_requests(query: object, studies: object, limits: dict[str, int],
                      message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        PrefetchRequest.of(query, studies, **limits)  # type: ignore[arg-type]


def test_eta_from_the_time_per_series() -> None:
    progress = PrefetchProgress(run=1, state="running", started=100.0, series_total=10,
                                series_done=2)
    # 2 series in 10 s: 8 left take 40 s.
    progress.elapsed = lambda: 10.0  # type: ignore[method-assign]
    assert progress.eta() == 40.0


def test_eta_bounded_by_the_byte_budget() -> None:
    progress = PrefetchProgress(run=1, state="running", series_total=100, series_done=1,
                                bytes_filled=1000, limits={"max_bytes": 2000})
    progress.elapsed = lambda: 10.0  # type: ignore[method-assign]
    assert progress.rate() == 100.0
    assert progress.eta() == 10.0  # 1000 bytes left at 100 B/s, sooner than 990 s


def test_no_eta_before_the_first_series_nor_after_the_end() -> None:
    assert PrefetchProgress(run=1, state="running", series_total=3).eta() is None
    done = PrefetchProgress(run=1, state="done", series_total=3, series_done=3)
    assert done.eta() is None
    assert done.as_json()["series"]["done"] == 3

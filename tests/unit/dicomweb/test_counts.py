"""The pure half of batched computed counts: identifiers, chunks, tallies (app.dicomweb.counts)."""

from __future__ import annotations

from pydicom.dataset import Dataset

from app.dicomweb.attributes import REQUIRED_RETURN_KEYS, QueryLevel
from app.dicomweb.counts import (
    SeriesRow,
    chunked,
    fill_missing,
    image_identifier,
    series_identifier,
    series_row,
    study_counts,
    wanted_keys,
)
from app.dicomweb.search import AttributePath
from app.dicomweb.tags import (
    MODALITIES_IN_STUDY,
    SERIES_RELATED_INSTANCES,
    STUDY_RELATED_INSTANCES,
    STUDY_RELATED_SERIES,
)


def test_chunks_drop_duplicates_and_keep_order() -> None:
    assert chunked(["a", "b", "a", "c", "d"], 2) == [("a", "b"), ("c", "d")]
    assert chunked(["a"], 64) == [("a",)]
    assert chunked([], 64) == []


def test_series_identifier_lists_the_studies() -> None:
    ident = series_identifier(("1.2.3", "1.2.4"))
    assert ident.QueryRetrieveLevel == "SERIES"
    assert list(ident.StudyInstanceUID) == ["1.2.3", "1.2.4"]
    assert ident.SeriesInstanceUID in (None, "") and "Modality" in ident
    assert "NumberOfSeriesRelatedInstances" in ident
    assert series_identifier(("1.2.3",)).StudyInstanceUID == "1.2.3"  # the per-study query


def test_image_identifier_lists_series_and_their_studies_and_returns_uids_only() -> None:
    ident = image_identifier([("1.2.3", "1.2.3.1"), ("1.2.3", "1.2.3.2"), ("1.2.4", "1.2.4.1")])
    assert ident.QueryRetrieveLevel == "IMAGE"
    assert list(ident.StudyInstanceUID) == ["1.2.3", "1.2.4"]
    assert list(ident.SeriesInstanceUID) == ["1.2.3.1", "1.2.3.2", "1.2.4.1"]
    assert {e.keyword for e in ident} == {"QueryRetrieveLevel", "StudyInstanceUID",
                                         "SeriesInstanceUID", "SOPInstanceUID"}


def test_wanted_keys_are_the_computable_return_keys() -> None:
    study = wanted_keys(QueryLevel.STUDY, REQUIRED_RETURN_KEYS[QueryLevel.STUDY])
    assert study == {MODALITIES_IN_STUDY, STUDY_RELATED_SERIES, STUDY_RELATED_INSTANCES}
    assert wanted_keys(QueryLevel.STUDY, [AttributePath((MODALITIES_IN_STUDY,))]) == {
        MODALITIES_IN_STUDY}
    assert wanted_keys(QueryLevel.SERIES, REQUIRED_RETURN_KEYS[QueryLevel.SERIES]) == {
        SERIES_RELATED_INSTANCES}
    assert wanted_keys(QueryLevel.IMAGE, REQUIRED_RETURN_KEYS[QueryLevel.IMAGE]) == set()


def test_series_row_reads_an_answer_and_leaves_missing_counts_none() -> None:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2", "1.2.1", "CT"
    ds.NumberOfSeriesRelatedInstances = None
    assert series_row(ds) == SeriesRow("1.2", "1.2.1", "CT", None)
    ds.NumberOfSeriesRelatedInstances = 7
    assert series_row(ds).instances == 7


def test_study_counts_sum_given_and_counted_instances() -> None:
    rows = [SeriesRow("1", "1.1", "MR", 3), SeriesRow("1", "1.2", "CT", None),
            SeriesRow("1", "1.3", "", None)]
    assert study_counts(rows, {"1.2": 5}) == {
        MODALITIES_IN_STUDY: ["CT", "MR"], STUDY_RELATED_SERIES: 3, STUDY_RELATED_INSTANCES: 8}


def test_fill_missing_keeps_values_the_pacs_gave() -> None:
    ds = Dataset()
    ds.NumberOfStudyRelatedSeries = 9
    ds.ModalitiesInStudy = None
    fill_missing(ds, {MODALITIES_IN_STUDY: ["CT"], STUDY_RELATED_SERIES: 1,
                      STUDY_RELATED_INSTANCES: 4}, (MODALITIES_IN_STUDY, STUDY_RELATED_SERIES))
    assert ds.ModalitiesInStudy == "CT" and ds.NumberOfStudyRelatedSeries == 9
    assert "NumberOfStudyRelatedInstances" not in ds

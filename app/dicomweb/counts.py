"""Computed counts for a page of QIDO-RS results: the C-FIND identifiers that ask a PACS for the
series and instances of many studies at once (UID list matching, PS3.4 C.2.2.2.2), and the
tallies that turn their answers into ModalitiesInStudy and NumberOf*Related* values. No I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from app.dicomweb.attributes import (
    COMPUTED_SERIES_KEYS,
    COMPUTED_STUDY_KEYS,
    QueryLevel,
)
from app.dicomweb.identifiers import build_identifier
from app.dicomweb.search import AttributePath
from app.dicomweb.tags import (
    MODALITIES_IN_STUDY,
    MODALITY,
    SERIES_INSTANCE_UID,
    SERIES_RELATED_INSTANCES,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    STUDY_RELATED_INSTANCES,
    STUDY_RELATED_SERIES,
)

# What the SERIES-level answer gives: ModalitiesInStudy and NumberOfStudyRelatedSeries directly,
# NumberOfStudyRelatedInstances only with per-series counts (else an IMAGE-level C-FIND too).
NEEDS_SERIES_QUERY = frozenset({MODALITIES_IN_STUDY, STUDY_RELATED_SERIES, STUDY_RELATED_INSTANCES})


@dataclass(frozen=True, slots=True)
class SeriesRow:
    """One series of a study as a SERIES-level C-FIND answered it."""

    study_uid: str
    series_uid: str
    modality: str
    instances: int | None


def has_value(ds: Dataset, tag: int) -> bool:
    """Whether ``ds`` carries a non-empty value for ``tag``."""
    element = ds.get(tag)
    return element is not None and element.value not in (None, "", b"") and element.VM > 0


def wanted_keys(level: QueryLevel, return_keys: Iterable[AttributePath | int]) -> frozenset[int]:
    """The computable attributes among a request's return keys at ``level`` (only those are
    worth extra C-FINDs)."""
    computable = {
        QueryLevel.STUDY: COMPUTED_STUDY_KEYS,
        QueryLevel.SERIES: COMPUTED_SERIES_KEYS,
    }.get(level, ())
    tags = {k if isinstance(k, int) else k.tag for k in return_keys
            if isinstance(k, int) or len(k.tags) == 1}
    return frozenset(t for t in computable if t in tags)


def missing_keys(ds: Dataset, wanted: Iterable[int]) -> frozenset[int]:
    """The wanted attributes ``ds`` has no value for."""
    return frozenset(t for t in wanted if not has_value(ds, t))


def chunked(values: Sequence[str], size: int) -> list[tuple[str, ...]]:
    """``values`` without duplicates, in order, cut into tuples of at most ``size``."""
    unique = list(dict.fromkeys(values))
    step = max(1, size)
    return [tuple(unique[i:i + step]) for i in range(0, len(unique), step)]


def series_identifier(study_uids: tuple[str, ...]) -> Dataset:
    """SERIES-level identifier listing every series of ``study_uids`` with its Modality and
    NumberOfSeriesRelatedInstances (a UID list when there are several studies)."""
    return build_identifier(
        QueryLevel.SERIES,
        unique_keys={STUDY_INSTANCE_UID: study_uids},
        return_keys=[SERIES_INSTANCE_UID, MODALITY, SERIES_RELATED_INSTANCES],
    )


def image_identifier(pairs: Sequence[tuple[str, str]]) -> Dataset:
    """IMAGE-level identifier listing the instances of the (study, series) ``pairs``: only the
    three UIDs come back, enough to count instances per series."""
    studies = tuple(dict.fromkeys(s for s, _ in pairs if s)) or ("",)
    series = tuple(dict.fromkeys(s for _, s in pairs))
    return build_identifier(
        QueryLevel.IMAGE,
        unique_keys={STUDY_INSTANCE_UID: studies, SERIES_INSTANCE_UID: series},
        return_keys=[SOP_INSTANCE_UID],
    )


def _text(ds: Dataset, tag: int) -> str:
    element = ds.get(tag)
    if element is None or element.value is None:
        return ""
    return str(element.value).strip()


def series_row(ds: Dataset) -> SeriesRow:
    """A SERIES-level answer as a SeriesRow (count None when the PACS left it empty)."""
    instances: int | None = None
    if has_value(ds, SERIES_RELATED_INSTANCES):
        instances = int(ds[SERIES_RELATED_INSTANCES].value)
    modality = _text(ds, MODALITY) if has_value(ds, MODALITY) else ""
    return SeriesRow(_text(ds, STUDY_INSTANCE_UID), _text(ds, SERIES_INSTANCE_UID), modality,
                     instances)


def instance_series(ds: Dataset) -> str:
    """The SeriesInstanceUID an IMAGE-level answer belongs to ("" when the PACS left it out)."""
    return _text(ds, SERIES_INSTANCE_UID)


def study_counts(rows: Sequence[SeriesRow], image_counts: Mapping[str, int]) -> dict[int, object]:
    """ModalitiesInStudy, NumberOfStudyRelatedSeries and -Instances of one study from its
    series (instances counted from ``image_counts`` where a series has no count)."""
    total = sum(r.instances if r.instances is not None else image_counts.get(r.series_uid, 0)
                for r in rows)
    return {
        MODALITIES_IN_STUDY: sorted({r.modality for r in rows if r.modality}),
        STUDY_RELATED_SERIES: len(rows),
        STUDY_RELATED_INSTANCES: total,
    }


def fill_missing(ds: Dataset, values: Mapping[int, object], wanted: Iterable[int]) -> None:
    """Set each wanted attribute ``ds`` has no value for from ``values``."""
    keywords = {
        MODALITIES_IN_STUDY: "ModalitiesInStudy",
        STUDY_RELATED_SERIES: "NumberOfStudyRelatedSeries",
        STUDY_RELATED_INSTANCES: "NumberOfStudyRelatedInstances",
        SERIES_RELATED_INSTANCES: "NumberOfSeriesRelatedInstances",
    }
    for tag in wanted:
        if tag in values and not has_value(ds, tag):
            setattr(ds, keywords[tag], values[tag])

"""The demo PACS's Query/Retrieve information model (PS3.4 C.6) over in-memory datasets.

Groups instances into patient, study, series and image entities, answers C-FIND identifiers
with hierarchical matching and selects the instances a C-GET or C-MOVE has to send.
No networking here, so it is tested directly.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from app.demo.matching import answer_element, has_non_ascii, is_universal, match_element

__all__ = [
    "IdentifierError",
    "Level",
    "QueryEntity",
    "QueryIndex",
    "answer",
    "level_of",
]


class Level(enum.IntEnum):
    """Query/Retrieve levels (0008,0052), ordered from the top of the hierarchy."""

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3


class IdentifierError(ValueError):
    """The identifier does not fit the information model (answered with status 0xA900)."""


def _tags(*keywords: str) -> frozenset[BaseTag]:
    tags = {tag_for_keyword(k) for k in keywords}
    if None in tags:
        raise KeyError(f"unknown keyword among {keywords}")
    return frozenset(Tag(t) for t in tags if t is not None)


_PATIENT_TAGS = _tags(
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "EthnicGroup",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientBreedDescription",
    "ResponsiblePerson",
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
)
_STUDY_TAGS = _tags(
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyID",
    "StudyInstanceUID",
    "ReferringPhysicianName",
    "StudyDescription",
    "ProcedureCodeSequence",
    "NameOfPhysiciansReadingStudy",
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "Occupation",
    "AdditionalPatientHistory",
    "OtherStudyNumbers",
    "ModalitiesInStudy",
    "SOPClassesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
_SERIES_TAGS = _tags(
    "Modality",
    "SeriesNumber",
    "SeriesInstanceUID",
    "SeriesDescription",
    "SeriesDate",
    "SeriesTime",
    "BodyPartExamined",
    "Laterality",
    "ProtocolName",
    "OperatorsName",
    "PerformingPhysicianName",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepID",
    "RequestAttributesSequence",
    "Manufacturer",
    "InstitutionName",
    "StationName",
    "ManufacturerModelName",
    "NumberOfSeriesRelatedInstances",
)
_QUERY_RETRIEVE_LEVEL = Tag(0x0008, 0x0052)
_SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
_RETRIEVE_AE_TITLE = Tag(0x0008, 0x0054)
_INSTANCE_AVAILABILITY = Tag(0x0008, 0x0056)
_NOT_MATCHED = frozenset({_QUERY_RETRIEVE_LEVEL, _SPECIFIC_CHARACTER_SET})

_UNIQUE_KEYS: Mapping[Level, BaseTag] = {
    Level.PATIENT: Tag("PatientID"),
    Level.STUDY: Tag("StudyInstanceUID"),
    Level.SERIES: Tag("SeriesInstanceUID"),
    Level.IMAGE: Tag("SOPInstanceUID"),
}


def level_of(tag: BaseTag) -> Level:
    """The level an attribute belongs to; anything not listed is an IMAGE-level attribute."""
    if tag in _PATIENT_TAGS:
        return Level.PATIENT
    if tag in _STUDY_TAGS:
        return Level.STUDY
    if tag in _SERIES_TAGS:
        return Level.SERIES
    return Level.IMAGE


_PATIENT_ID = Tag("PatientID")
_STUDY_UID = Tag("StudyInstanceUID")
_SERIES_UID = Tag("SeriesInstanceUID")
_SOP_INSTANCE_UID = Tag("SOPInstanceUID")
_SOP_CLASS_UID = Tag("SOPClassUID")
_MODALITY = Tag("Modality")

# Attributes the SCP derives from the stored instances, with the level they belong to.
_COMPUTED: Mapping[BaseTag, Level] = {
    Tag("NumberOfPatientRelatedStudies"): Level.PATIENT,
    Tag("NumberOfPatientRelatedSeries"): Level.PATIENT,
    Tag("NumberOfPatientRelatedInstances"): Level.PATIENT,
    Tag("NumberOfStudyRelatedSeries"): Level.STUDY,
    Tag("NumberOfStudyRelatedInstances"): Level.STUDY,
    Tag("ModalitiesInStudy"): Level.STUDY,
    Tag("SOPClassesInStudy"): Level.STUDY,
    Tag("NumberOfSeriesRelatedInstances"): Level.SERIES,
    _RETRIEVE_AE_TITLE: Level.PATIENT,
    _INSTANCE_AVAILABILITY: Level.PATIENT,
}

# What DCMTK dcmqrscp leaves empty (the "omit_counts" behaviour).
_OMITTED_COUNTS = frozenset(
    Tag(k)
    for k in (
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "ModalitiesInStudy",
        "NumberOfSeriesRelatedInstances",
    )
)

# What the "omit_sop_class" behaviour leaves out of C-FIND answers (DCMTK dcmqrscp does).
_OMITTED_CLASSES = frozenset({_SOP_CLASS_UID, Tag("SOPClassesInStudy")})


def _text(ds: Dataset, tag: BaseTag) -> str:
    elem = ds.get(tag)
    return "" if elem is None or elem.value is None else str(elem.value)


def _number(ds: Dataset, tag: BaseTag) -> int:
    elem = ds.get(tag)
    try:
        return int(elem.value) if elem is not None else 2**31
    except (TypeError, ValueError):
        return 2**31


def _instance_order(ds: Dataset) -> tuple[str, str, str, int, str, int, str]:
    """Stable order: study date/time/UID, series number/UID, instance number/UID."""
    return (
        _text(ds, Tag("StudyDate")),
        _text(ds, Tag("StudyTime")),
        _text(ds, _STUDY_UID),
        _number(ds, Tag("SeriesNumber")),
        _text(ds, _SERIES_UID),
        _number(ds, Tag("InstanceNumber")),
        _text(ds, _SOP_INSTANCE_UID),
    )


def _group(instances: Iterable[Dataset], tag: BaseTag) -> dict[str, list[Dataset]]:
    groups: dict[str, list[Dataset]] = {}
    for ds in instances:
        groups.setdefault(_text(ds, tag), []).append(ds)
    return groups


def _distinct(instances: Iterable[Dataset], tag: BaseTag) -> list[str]:
    return list(dict.fromkeys(v for v in (_text(ds, tag) for ds in instances) if v))


class QueryEntity:
    """One patient, study, series or image: its instances, and the index for derived values."""

    def __init__(self, level: Level, instances: list[Dataset], index: QueryIndex) -> None:
        self.level = level
        self.instances = instances
        self._index = index

    def element(self, tag: BaseTag) -> DataElement | None:
        """The entity's element for ``tag`` at its level or above, or None."""
        if tag in self._index.omitted:
            return None
        computed_level = _COMPUTED.get(tag)
        if computed_level is not None:
            if computed_level > self.level:
                return None
            return self._index.computed(tag, self.instances[0])
        if level_of(tag) > self.level:
            return None
        first = self.instances[0]
        return first[tag] if tag in first else None

    @property
    def character_set(self) -> str | list[str] | None:
        """The Specific Character Set of the entity's data (None for the default repertoire)."""
        value = self.instances[0].get("SpecificCharacterSet")
        return value or None


class QueryIndex:
    """A snapshot of the PACS's instances, organised for hierarchical C-FIND/C-GET/C-MOVE."""

    def __init__(
        self,
        instances: Iterable[Dataset],
        *,
        retrieve_ae_title: str = "",
        omit_counts: bool = False,
        strict_unique_keys: bool = False,
        omit_sop_class: bool = False,
    ) -> None:
        """``omit_counts``: leave NumberOf*Related* and ModalitiesInStudy empty, as DCMTK
        dcmqrscp does; ``omit_sop_class``: leave SOPClassUID and SOPClassesInStudy empty (and
        ignore them as matching keys), as dcmqrscp does; ``strict_unique_keys``: refuse a UID
        list in the unique key of a level above the query level (baseline hierarchical query,
        PS3.4 C.4.1.2.1)."""
        self._instances = sorted(instances, key=_instance_order)
        self._retrieve_ae_title = retrieve_ae_title
        self._omit_counts = omit_counts
        self.omitted: frozenset[BaseTag] = _OMITTED_CLASSES if omit_sop_class else frozenset()
        self._strict_unique_keys = strict_unique_keys
        self._patients = _group(self._instances, _PATIENT_ID)
        self._studies = _group(self._instances, _STUDY_UID)
        self._series = _group(self._instances, _SERIES_UID)
        self._cache: dict[tuple[BaseTag, str], DataElement] = {}

    def computed(self, tag: BaseTag, first: Dataset) -> DataElement | None:
        """A derived attribute (related counts, ModalitiesInStudy...) of ``first``'s entity."""
        if tag == _RETRIEVE_AE_TITLE:
            return DataElement(tag, "AE", self._retrieve_ae_title or None)
        if tag == _INSTANCE_AVAILABILITY:
            return DataElement(tag, "CS", "ONLINE")
        level = _COMPUTED[tag]
        if self._omit_counts and tag in _OMITTED_COUNTS:
            return None
        owner = {Level.PATIENT: _PATIENT_ID, Level.STUDY: _STUDY_UID}.get(level, _SERIES_UID)
        key = (tag, _text(first, owner))
        if key not in self._cache:
            self._cache[key] = self._derive(tag, level, key[1])
        return self._cache[key]

    def _derive(self, tag: BaseTag, level: Level, owner: str) -> DataElement:
        group = {Level.PATIENT: self._patients, Level.STUDY: self._studies}.get(
            level, self._series
        )[owner]
        keyword = keyword_for_tag(tag)
        if keyword == "ModalitiesInStudy":
            return DataElement(tag, "CS", _distinct(group, _MODALITY))
        if keyword == "SOPClassesInStudy":
            return DataElement(tag, "UI", _distinct(group, _SOP_CLASS_UID))
        if keyword.endswith("RelatedStudies"):
            count = len(_distinct(group, _STUDY_UID))
        elif keyword.endswith("RelatedSeries"):
            count = len(_distinct(group, _SERIES_UID))
        else:
            count = len(group)
        return DataElement(tag, "IS", count)

    def entities(self, level: Level) -> Iterator[QueryEntity]:
        """Every entity at ``level`` in a stable order (patients by PatientID)."""
        if level is Level.PATIENT:
            groups: Iterable[list[Dataset]] = (self._patients[k] for k in sorted(self._patients))
        elif level is Level.STUDY:
            groups = self._studies.values()
        elif level is Level.SERIES:
            groups = self._series.values()
        else:
            groups = ([ds] for ds in self._instances)
        return (QueryEntity(level, g, self) for g in groups)

    def find(self, level: Level, identifier: Dataset) -> Iterator[QueryEntity]:
        """Entities matching every non-universal key at ``level`` or above (PS3.4 C.4.1.3.1).

        Lazy, so a C-FIND SCP can send the first match (and notice a C-CANCEL) early.
        """
        if self._strict_unique_keys:
            for upper in (lvl for lvl in Level if lvl < level):
                unique = identifier.get(_UNIQUE_KEYS[upper])
                if unique is not None and unique.VM > 1:
                    raise IdentifierError(
                        f"a list of {unique.keyword} values above the query level"
                    )
        keys = [
            elem
            for elem in identifier
            if elem.tag not in _NOT_MATCHED
            and not (self._omit_counts and elem.tag in _OMITTED_COUNTS)  # unsupported: ignored
            and elem.tag not in self.omitted
            and level_of(elem.tag) <= level
            and not is_universal(elem)
        ]
        return (
            entity
            for entity in self.entities(level)
            if all(match_element(key, entity.element(key.tag)) for key in keys)
        )

    def retrieve(self, level: Level, identifier: Dataset) -> list[Dataset]:
        """Instances a C-GET/C-MOVE at ``level`` sends; the level's unique key is required."""
        unique = identifier.get(_UNIQUE_KEYS[level])
        if unique is None or is_universal(unique):
            keyword = unique.keyword if unique is not None else _UNIQUE_KEYS[level]
            raise IdentifierError(f"{level.name} retrieve without a value for {keyword}")
        return [ds for entity in self.find(level, identifier) for ds in entity.instances]


def answer(entity: QueryEntity, identifier: Dataset, level: Level) -> Dataset:
    """The C-FIND response identifier: the requested keys only, in the data's character set."""
    response = Dataset()
    for key in identifier:
        if key.tag in _NOT_MATCHED:
            continue
        response.add(answer_element(key, entity.element(key.tag)))
    response.QueryRetrieveLevel = level.name
    if has_non_ascii(response):
        response.SpecificCharacterSet = entity.character_set or "ISO_IR 192"
    return response

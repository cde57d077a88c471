"""Tables of which attributes belong to which Query/Retrieve level and which a QIDO-RS response
must carry (PS3.18 10.6.3.3, PS3.4 C.6.1.1), kept as data so they are tested as tables."""

from __future__ import annotations

from enum import StrEnum

from pydicom.datadict import tag_for_keyword

from app.dicomweb.tags import SERIES_INSTANCE_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID


class QueryLevel(StrEnum):
    """QueryRetrieveLevel (0008,0052) values used by Study Root queries; never "INSTANCE"."""

    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        """0 for STUDY, 1 for SERIES, 2 for IMAGE, so levels compare by depth."""
        return _DEPTH[self]


_DEPTH = {QueryLevel.STUDY: 0, QueryLevel.SERIES: 1, QueryLevel.IMAGE: 2}


def _tags(*keywords: str) -> tuple[int, ...]:
    out = []
    for kw in keywords:
        tag = tag_for_keyword(kw)
        if tag is None:  # pragma: no cover - a typo in this table
            raise KeyError(kw)
        out.append(tag)
    return tuple(out)


UNIQUE_KEY: dict[QueryLevel, int] = {
    QueryLevel.STUDY: STUDY_INSTANCE_UID,
    QueryLevel.SERIES: SERIES_INSTANCE_UID,
    QueryLevel.IMAGE: SOP_INSTANCE_UID,
}

# Attributes of the Patient and Study IEs (Study Root: patient attributes live at STUDY level).
STUDY_LEVEL: frozenset[int] = frozenset(
    _tags(
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientSex",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "EthnicGroup",
        "PatientComments",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "Occupation",
        "AdditionalPatientHistory",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
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
        "PhysiciansOfRecord",
        "AdmittingDiagnosesDescription",
        "ModalitiesInStudy",
        "SOPClassesInStudy",
        "AnatomicRegionsInStudyCodeSequence",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "OtherStudyNumbers",
        "StudyStatusID",
        "ReferencedStudySequence",
        "ReferencedPatientSequence",
    )
)

# Attributes of the Series IE (General Series, equipment and the request attributes).
SERIES_LEVEL: frozenset[int] = frozenset(
    _tags(
        "Modality",
        "SeriesInstanceUID",
        "SeriesNumber",
        "SeriesDescription",
        "SeriesDate",
        "SeriesTime",
        "BodyPartExamined",
        "Laterality",
        "ProtocolName",
        "PerformingPhysicianName",
        "OperatorsName",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "PerformedProcedureStepID",
        "PerformedProcedureStepDescription",
        "RequestAttributesSequence",
        "NumberOfSeriesRelatedInstances",
        "Manufacturer",
        "InstitutionName",
        "InstitutionalDepartmentName",
        "StationName",
        "ManufacturerModelName",
        "PatientPosition",
        "FrameOfReferenceUID",
        "SeriesType",
    )
)

# Attributes that may appear at any level and are never used to choose the stage of a query.
ANY_LEVEL: frozenset[int] = frozenset(
    _tags(
        "SpecificCharacterSet",
        "TimezoneOffsetFromUTC",
        "InstanceAvailability",
        "RetrieveAETitle",
        "QueryRetrieveLevel",
        "RetrieveURL",
    )
)


def level_of(tag: int) -> QueryLevel:
    """The Q/R level an attribute belongs to; anything unknown is an instance attribute."""
    if tag in STUDY_LEVEL:
        return QueryLevel.STUDY
    if tag in SERIES_LEVEL:
        return QueryLevel.SERIES
    return QueryLevel.IMAGE


# Return keys every response at a level must carry (PS3.18 Tables 10.6.3-3/4/5), plus the
# attributes viewers display in their lists (StudyDescription, SeriesDescription, dates).
REQUIRED_RETURN_KEYS: dict[QueryLevel, tuple[int, ...]] = {
    QueryLevel.STUDY: _tags(
        "SpecificCharacterSet",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyID",
        "StudyInstanceUID",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    QueryLevel.SERIES: _tags(
        "SpecificCharacterSet",
        "Modality",
        "SeriesNumber",
        "SeriesInstanceUID",
        "SeriesDescription",
        "SeriesDate",
        "SeriesTime",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "NumberOfSeriesRelatedInstances",
    ),
    QueryLevel.IMAGE: _tags(
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
    ),
}

# Extra return keys for includefield=all: the level's commonly supported optional keys.
ALL_RETURN_KEYS: dict[QueryLevel, tuple[int, ...]] = {
    QueryLevel.STUDY: _tags(
        "IssuerOfPatientID",
        "PatientBirthTime",
        "OtherPatientNames",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "NameOfPhysiciansReadingStudy",
        "PhysiciansOfRecord",
        "AdmittingDiagnosesDescription",
        "SOPClassesInStudy",
        "InstanceAvailability",
        "TimezoneOffsetFromUTC",
    ),
    QueryLevel.SERIES: _tags(
        "BodyPartExamined",
        "Laterality",
        "ProtocolName",
        "PerformingPhysicianName",
        "OperatorsName",
        "Manufacturer",
        "InstitutionName",
        "StationName",
        "ManufacturerModelName",
        "InstanceAvailability",
        "TimezoneOffsetFromUTC",
    ),
    QueryLevel.IMAGE: _tags(
        "ContentDate",
        "ContentTime",
        "AcquisitionNumber",
        "ImageType",
        "PhotometricInterpretation",
        "SamplesPerPixel",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "SliceLocation",
        "InstanceAvailability",
        "TimezoneOffsetFromUTC",
    ),
}

# Attributes the gateway computes when the PACS leaves them empty (PS3.4 C.6.1.1 optional keys).
COMPUTED_STUDY_KEYS: tuple[int, ...] = _tags(
    "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"
)
COMPUTED_SERIES_KEYS: tuple[int, ...] = _tags("NumberOfSeriesRelatedInstances")

# Never forwarded to the client: DIMSE bookkeeping (PS3.18 10.6.3.3 lists what a result carries).
DROPPED_FROM_RESULTS: frozenset[int] = frozenset(
    _tags("QueryRetrieveLevel", "RetrieveAETitle", "SpecificCharacterSet")
)

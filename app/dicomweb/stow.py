"""STOW-RS (PS3.18 10.5) as pure code: what each part of a request must be (a Part-10 instance
whose File Meta and data set agree, of the study the URL names), the Store Instances Response
Module (PS3.18 Annex I) and the HTTP status that goes with it (PS3.18 Table 10.5.3-1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence

from app.dicomweb.integrity import (
    NOT_WALKABLE,
    FileMeta,
    Malformed,
    read_file_meta,
    read_unprefixed_file_meta,
    top_level_text,
    walk_part10,
)
from app.dicomweb.mediatypes import DICOM
from app.dicomweb.multipart import parse_content_type
from app.dicomweb.refs import is_valid_uid
from app.dicomweb.tags import (
    SERIES_INSTANCE_UID,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
)
from app.dicomweb.urls import instance_url, study_url

# Failure Reason (0008,1197) values (PS3.18 Table I.2-2, PS3.7 Annex C).
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


@dataclass(frozen=True, slots=True)
class IncomingInstance:
    """A request part that passed inspection: its Part-10 bytes, where the data set starts in
    them, and the UIDs the store and its response need."""

    data: bytes
    dataset_offset: int
    transfer_syntax: str
    sop_class: str
    sop_instance: str
    study: str
    series: str
    prefixed: bool = True  # False: no preamble and "DICM" (tolerated, see inspect_part)


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """An instance the PACS stored; ``warning`` is the C-STORE warning status, if any."""

    sop_class: str
    sop_instance: str
    study: str
    series: str
    warning: int | None = None


@dataclass(frozen=True, slots=True)
class FailedInstance:
    """A part that was not stored: the UIDs when they could be read, the Failure Reason, what
    happened in words (for the Warning header and the log) and whether the part itself was
    malformed (bad syntax, PS3.18 Table 10.5.3-1's 400) rather than refused."""

    sop_class: str | None
    sop_instance: str | None
    reason: int
    explanation: str
    bad_syntax: bool = False


class RejectedPart(Exception):
    """A part that cannot be stored as it is; ``failure`` says why."""

    def __init__(self, failure: FailedInstance) -> None:
        super().__init__(failure.explanation)
        self.failure = failure


def is_dicom_part(content_type: str | None) -> bool:
    """Whether a part's Content-Type is application/dicom (parameters aside), or absent (the
    multipart's own ``type`` then says what the part is: RFC 2387 3.1)."""
    return content_type is None or parse_content_type(content_type)[0] == DICOM


def file_meta(data: bytes) -> FileMeta | None:
    """A part's File Meta, with or without the preamble and "DICM" prefix."""
    return read_file_meta(data) or read_unprefixed_file_meta(data)


def part_uids(data: bytes) -> tuple[str | None, str | None]:
    """(SOP Class UID, SOP Instance UID) of a part as far as they can be read, for a failure
    report: from the data set where it can be walked, else from the File Meta."""
    meta = file_meta(data)
    if meta is None:
        return None, None
    found: list[str | None] = []
    for tag in (SOP_CLASS_UID, SOP_INSTANCE_UID):
        try:
            found.append(top_level_text(data, meta.transfer_syntax, tag, meta.dataset_start))
        except Malformed:
            found.append(None)
    return found[0] or meta.sop_class, found[1] or meta.sop_instance


def _refuse(data: bytes, reason: int, explanation: str, *, bad_syntax: bool = False,
            uids: tuple[str | None, str | None] | None = None) -> RejectedPart:
    sop_class, sop_instance = uids if uids is not None else part_uids(data)
    return RejectedPart(FailedInstance(sop_class, sop_instance, reason, explanation, bad_syntax))


def _dataset_uids(data: bytes, meta: FileMeta) -> dict[int, str | None]:
    """The top-level UIDs of the data set; Malformed if its structure is broken."""
    tags = (SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID)
    syntax, start = meta.transfer_syntax, meta.dataset_start
    if syntax not in NOT_WALKABLE:
        walk_part10(data, syntax, start)  # every element, item and fragment fits
        return {tag: top_level_text(data, syntax, tag, start) for tag in tags}
    try:  # Deflated or Big Endian: pydicom reads what the walker does not
        ds = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=list(tags),
                     force=True)
    except (InvalidDicomError, ValueError, EOFError, OSError, KeyError, TypeError) as exc:
        raise Malformed(str(exc)) from None
    return {tag: (str(ds[tag].value) if tag in ds and ds[tag].value else None) for tag in tags}


def inspect_part(data: bytes, content_type: str | None, study_uid: str | None
                 ) -> IncomingInstance:
    """The instance a STOW-RS part holds, checked before it goes anywhere near the PACS: a
    Part-10 file (PS3.10 7.1) with a File Meta group naming a transfer syntax, a data set that
    is well formed and has SOP Class, SOP Instance, Study and Series Instance UIDs, File Meta
    and data set agreeing on the SOP UIDs, and the study ``study_uid`` when the request URL
    names one (PS3.18 10.5.1). RejectedPart with the Failure Reason otherwise.

    A File Meta group without the preamble and "DICM" prefix before it is tolerated, though
    PS3.10 7.1 requires them: pydicom writes an in-memory data set that way, so that is what
    dicomweb-client sends (``prefixed`` is then False; the File Meta is rebuilt for the PACS
    wherever one is needed)."""
    if not is_dicom_part(content_type):
        raise _refuse(data, CANNOT_UNDERSTAND, f"a part of type {content_type!r} is not "
                      "application/dicom", bad_syntax=True)
    meta = read_file_meta(data)
    prefixed = meta is not None
    meta = meta or read_unprefixed_file_meta(data)
    if meta is None:
        raise _refuse(data, CANNOT_UNDERSTAND, "a part is not a DICOM Part-10 file (preamble, "
                      "DICM prefix and File Meta Information with a Transfer Syntax UID)",
                      bad_syntax=True, uids=(None, None))
    syntax = meta.transfer_syntax
    if not is_valid_uid(syntax):
        raise _refuse(data, CANNOT_UNDERSTAND, f"Transfer Syntax UID {syntax!r} is not a UID",
                      bad_syntax=True)
    try:
        uids = _dataset_uids(data, meta)
    except Malformed as exc:
        raise _refuse(data, CANNOT_UNDERSTAND, f"the data set is malformed: {exc}",
                      bad_syntax=True, uids=(meta.sop_class, meta.sop_instance)) from None
    sop_class, sop_instance = uids[SOP_CLASS_UID], uids[SOP_INSTANCE_UID]
    found = (sop_class or meta.sop_class, sop_instance or meta.sop_instance)
    if not sop_class or not sop_instance or not is_valid_uid(sop_class) \
            or not is_valid_uid(sop_instance):
        raise _refuse(data, CANNOT_UNDERSTAND, "the data set has no valid SOP Class UID and "
                      "SOP Instance UID", bad_syntax=True, uids=found)
    if (meta.sop_class or sop_class) != sop_class or (meta.sop_instance or sop_instance) \
            != sop_instance:
        raise _refuse(data, DOES_NOT_MATCH, f"instance {sop_instance}: the File Meta names "
                      "another SOP Class or Instance UID than the data set", uids=found)
    study, series = uids[STUDY_INSTANCE_UID], uids[SERIES_INSTANCE_UID]
    if not study or not series or not is_valid_uid(study) or not is_valid_uid(series):
        raise _refuse(data, DOES_NOT_MATCH, f"instance {sop_instance} has no valid Study and "
                      "Series Instance UIDs", uids=found)
    if study_uid is not None and study != study_uid:
        raise _refuse(data, DOES_NOT_MATCH, f"instance {sop_instance} belongs to study {study}, "
                      f"not to the study {study_uid} the request names", uids=found)
    return IncomingInstance(data, meta.dataset_start, syntax, sop_class, sop_instance, study,
                            series, prefixed)


# -- the response ------------------------------------------------------------------------------


def store_response(stored: Sequence[StoredInstance], failed: Sequence[FailedInstance],
                   base_url: str, study_uid: str | None) -> Dataset:
    """The Store Instances Response Module (PS3.18 Table I.1-1): the study's RetrieveURL (type
    2: empty when the request named no study and the stored instances are of several or
    none), a ReferencedSOPSequence item per stored instance with its RetrieveURL and
    WarningReason, a FailedSOPSequence item per failed instance with its FailureReason, and an
    OtherFailuresSequence item for each failed part whose UIDs could not be read."""
    ds = Dataset()
    studies = {item.study for item in stored}
    study = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
    ds.RetrieveURL = study_url(base_url, study) if study else None
    if stored:
        ds.ReferencedSOPSequence = DicomSequence([_referenced(i, base_url) for i in stored])
    known = [f for f in failed if f.sop_class and f.sop_instance]
    unknown = [f for f in failed if not (f.sop_class and f.sop_instance)]
    if known:
        ds.FailedSOPSequence = DicomSequence([_failed(f) for f in known])
    if unknown:
        items = []
        for failure in unknown:
            item = Dataset()
            item.FailureReason = failure.reason
            items.append(item)
        ds.OtherFailuresSequence = DicomSequence(items)
    return ds


def _referenced(instance: StoredInstance, base_url: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = instance.sop_class
    item.ReferencedSOPInstanceUID = instance.sop_instance
    item.RetrieveURL = instance_url(base_url, instance.study, instance.series,
                                    instance.sop_instance)
    if instance.warning is not None:
        item.WarningReason = instance.warning
    return item


def _failed(failure: FailedInstance) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = failure.sop_class
    item.ReferencedSOPInstanceUID = failure.sop_instance
    item.FailureReason = failure.reason
    return item


def store_status(stored: Sequence[StoredInstance], failed: Sequence[FailedInstance]) -> int:
    """The HTTP status of a store (PS3.18 Table 10.5.3-1): 200 when every instance was stored
    without warning; 202 when some were stored and others failed or were stored with warnings;
    400 when none was stored and every part was malformed (or there was none); 409 when none
    was stored for any other reason (refusals, a study mismatch, or a mixture)."""
    if stored:
        if failed or any(item.warning is not None for item in stored):
            return 202
        return 200
    if all(failure.bad_syntax for failure in failed):
        return 400
    return 409


__all__ = [
    "CANNOT_UNDERSTAND",
    "DOES_NOT_MATCH",
    "OUT_OF_RESOURCES",
    "PROCESSING_FAILURE",
    "SOP_CLASS_NOT_SUPPORTED",
    "TRANSFER_SYNTAX_NOT_SUPPORTED",
    "FailedInstance",
    "IncomingInstance",
    "RejectedPart",
    "StoredInstance",
    "file_meta",
    "inspect_part",
    "is_dicom_part",
    "part_uids",
    "store_response",
    "store_status",
]

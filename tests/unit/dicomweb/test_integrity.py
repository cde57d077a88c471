"""The structural walk that admits instances into the cache: every well-formed instance gives its
SOP Instance UID, every truncation or corruption is caught, and what it cannot walk is left to
pydicom."""

from __future__ import annotations

import io

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from app.demo.samples import generate_sample_studies
from app.dicomweb.integrity import Malformed, top_level_text, walk_part10


def part10(ds: Dataset, syntax: str) -> bytes:
    """``ds`` written as a Part-10 file in ``syntax``."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def nested(undefined_lengths: bool) -> Dataset:
    """An instance with a sequence inside a sequence, before and after the SOP Instance UID."""
    inner = Dataset()
    inner.CodeValue = "T-D1100"
    inner.CodingSchemeDesignator = "SRT"
    item = Dataset()
    item.CodeMeaning = "Head"
    item.ConceptCodeSequence = Sequence([inner])
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4.5.6.7"
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds.PatientName = "Walk^Test"
    ds.AnatomicRegionSequence = Sequence([item])
    for seq in (ds.ReferencedImageSequence, ds.AnatomicRegionSequence,
                item.ConceptCodeSequence):
        seq.is_undefined_length = undefined_lengths
    for element in ds.iterall():
        if element.VR == "SQ":
            for child in element.value:
                child.is_undefined_length_sequence_item = undefined_lengths
    return ds


def test_every_sample_instance_walks_to_its_uid() -> None:
    walked = 0
    for ds in generate_sample_studies():
        data = io.BytesIO()
        ds.save_as(data, enforce_file_format=True)
        uid = walk_part10(data.getvalue(), str(ds.file_meta.TransferSyntaxUID))
        if uid is not None:
            walked += 1
            assert uid == ds.SOPInstanceUID
    assert walked >= 30


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("undefined", [True, False])
def test_nested_sequences_in_both_encodings(syntax: str, undefined: bool) -> None:
    data = part10(nested(undefined), syntax)
    assert walk_part10(data, syntax) == "1.2.3.4.5.6.7"


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("inside", [b"1.2.3.4.5.6.7", b"T-D1100", b"Head", b"Walk^Test",
                                    b"\xfe\xff\x00\xe0", b"\xfe\xff\r\xe0"])
def test_a_cut_inside_a_value_or_header_is_caught(syntax: str, inside: bytes) -> None:
    """Cutting anywhere inside an element, an item header or a delimiter is caught (a cut
    exactly between two top-level elements leaves a shorter valid data set: completeness of
    the whole is the DIMSE layer's last-fragment flag)."""
    data = part10(nested(True), syntax)
    start = data.index(inside, 132)
    for cut in range(start + 1, start + len(inside)):
        with pytest.raises(Malformed):
            walk_part10(data[:cut], syntax)


def test_encapsulated_pixel_data_walks_and_truncation_is_caught() -> None:
    ds = nested(False)
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = 8
    ds.PixelData = encapsulate([b"\x00" * 64, b"\x01" * 32])
    data = part10(ds, RLELossless)
    assert walk_part10(data, RLELossless) == "1.2.3.4.5.6.7"
    for cut in (len(data) - 8, len(data) - 40, len(data) - 100):
        with pytest.raises(Malformed):
            walk_part10(data[:cut], RLELossless)


def test_trailing_garbage_and_missing_preamble_are_malformed() -> None:
    data = part10(nested(False), ExplicitVRLittleEndian)
    with pytest.raises(Malformed):
        walk_part10(data + b"\x08\x00", ExplicitVRLittleEndian)
    with pytest.raises(Malformed):
        walk_part10(data[128:], ExplicitVRLittleEndian)


def test_big_endian_is_left_to_pydicom() -> None:
    assert walk_part10(b"", ExplicitVRBigEndian) is None


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_top_level_text_stops_at_the_wanted_element(syntax: str) -> None:
    ds = nested(True)
    ds.SeriesInstanceUID = "1.2.3.4.5.6.8"
    data = part10(ds, syntax)
    assert top_level_text(data, syntax, 0x0020000E) == "1.2.3.4.5.6.8"
    assert top_level_text(data, syntax, 0x00080018) == "1.2.3.4.5.6.7"
    assert top_level_text(data, syntax, 0x0020000D) is None  # absent: passed without a value
    # Only what comes before the element must be whole: a cut after it does not matter.
    cut = data.index(b"1.2.3.4.5.6.8") + 20
    assert top_level_text(data[:cut], syntax, 0x0020000E) == "1.2.3.4.5.6.8"
    assert top_level_text(b"", ExplicitVRBigEndian, 0x0020000E) is None

"""The sample data generators: deterministic, valid Part-10, and the promised content."""

from __future__ import annotations

import itertools
import pathlib
from collections import Counter

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from app.demo.samples import (
    IMPLEMENTATION_CLASS_UID,
    generate_ct_series,
    generate_many_studies,
    generate_sample_studies,
    write_part10,
)

SAMPLES = generate_sample_studies()


def _round_trip(ds: Dataset, path: pathlib.Path) -> Dataset:
    write_part10(ds, path)
    return pydicom.dcmread(path)


def test_every_sample_round_trips_through_part10(tmp_path: pathlib.Path) -> None:
    total = 0
    for index, ds in enumerate(SAMPLES):
        path = tmp_path / f"{index}.dcm"
        back = _round_trip(ds, path)
        total += path.stat().st_size
        assert path.read_bytes()[128:132] == b"DICM"
        assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert back.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert back.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert str(back.PatientName) == str(ds.PatientName)
        assert np.array_equal(back.pixel_array, ds.pixel_array)
        assert back.pixel_array.std() > 0, "pixel data must be a pattern, not a constant"
    assert total < 5 * 1024 * 1024


def test_samples_are_deterministic_per_seed() -> None:
    again = generate_sample_studies()
    other = generate_sample_studies(seed=7)
    assert [d.SOPInstanceUID for d in again] == [d.SOPInstanceUID for d in SAMPLES]
    assert [d.PixelData for d in again] == [d.PixelData for d in SAMPLES]
    assert not {d.SOPInstanceUID for d in other} & {d.SOPInstanceUID for d in SAMPLES}
    assert not {d.StudyInstanceUID for d in other} & {d.StudyInstanceUID for d in SAMPLES}


def test_uids_are_unique_and_valid() -> None:
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        for ds in SAMPLES:
            uid = ds[keyword].value
            assert uid.is_valid, uid
    assert len({ds.SOPInstanceUID for ds in SAMPLES}) == len(SAMPLES)
    series_of_study = {
        (ds.StudyInstanceUID, ds.SeriesNumber): ds.SeriesInstanceUID for ds in SAMPLES
    }
    assert len(set(series_of_study.values())) == len(series_of_study)


def test_patients_studies_and_modalities() -> None:
    patients = {ds.PatientID: str(ds.PatientName) for ds in SAMPLES}
    assert len(patients) == 6
    assert len({ds.StudyInstanceUID for ds in SAMPLES}) == 8
    assert len({ds.StudyDate[:4] for ds in SAMPLES}) >= 5
    assert sum(name.startswith("Doe") for name in patients.values()) == 2
    assert {ds.Modality for ds in SAMPLES} >= {"CT", "MR", "CR", "OT", "US"}
    for ds in SAMPLES:
        for keyword in (
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "StudyID",
            "PatientSex",
            "PatientBirthDate",
            "ReferringPhysicianName",
            "StudyDescription",
            "SeriesDescription",
            "BodyPartExamined",
            "SeriesNumber",
            "InstanceNumber",
        ):
            assert ds.get(keyword) not in (None, ""), keyword


@pytest.mark.parametrize(
    ("name", "charset"),
    [
        ("Müller^Jürgen", "ISO_IR 100"),
        ("Wang^XiaoDong=王^小東", "ISO_IR 192"),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"]),
    ],
)
def test_non_ascii_names_keep_their_character_set(
    tmp_path: pathlib.Path, name: str, charset: str | list[str]
) -> None:
    ds = next(d for d in SAMPLES if str(d.PatientName) == name)
    back = _round_trip(ds, tmp_path / "x.dcm")
    assert back.SpecificCharacterSet == charset
    assert str(back.PatientName) == name


def test_ascii_patients_have_no_character_set() -> None:
    for ds in SAMPLES:
        if str(ds.PatientName).isascii():
            assert "SpecificCharacterSet" not in ds


def test_ct_study_has_two_series_of_ten_slices_with_geometry() -> None:
    ct = [ds for ds in SAMPLES if ds.Modality == "CT" and ds.PatientName == "Doe^John"]
    per_series = Counter(ds.SeriesInstanceUID for ds in ct)
    assert sorted(per_series.values()) == [10, 10]
    for ds in ct:
        assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelRepresentation) == (64, 64, 16, 1)
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        for keyword in (
            "RescaleSlope",
            "RescaleIntercept",
            "WindowCenter",
            "WindowWidth",
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "PixelSpacing",
            "SliceThickness",
            "FrameOfReferenceUID",
        ):
            assert keyword in ds, keyword
    positions = sorted(float(ds.ImagePositionPatient[2]) for ds in ct if ds.SeriesNumber == 1)
    assert np.allclose(np.diff(positions), 5.0)
    # One series stores negative values (intercept 0): signed pixel data really is signed.
    assert min(int(ds.pixel_array.min()) for ds in ct) < 0


def test_other_modalities() -> None:
    mr = [ds for ds in SAMPLES if ds.Modality == "MR"]
    assert mr and all(ds.PixelRepresentation == 0 and ds.BitsAllocated == 16 for ds in mr)
    cr = [ds for ds in SAMPLES if ds.Modality == "CR"]
    assert cr and all(ds.PhotometricInterpretation == "MONOCHROME1" for ds in cr)
    rgb = [ds for ds in SAMPLES if ds.get("PhotometricInterpretation") == "RGB"]
    assert len(rgb) == 1 and rgb[0].pixel_array.shape == (48, 48, 3)
    multi = [ds for ds in SAMPLES if int(ds.get("NumberOfFrames", 1)) > 1]
    assert len(multi) == 1 and multi[0].NumberOfFrames == 5
    assert multi[0].pixel_array.shape == (5, 48, 48)


def test_many_studies(tmp_path: pathlib.Path) -> None:
    many = generate_many_studies(600)
    assert len(many) == 600
    assert len({ds.StudyInstanceUID for ds in many}) == 600
    assert len({ds.PatientID for ds in many}) == 600
    assert len({ds.StudyDate for ds in many}) > 100
    assert str(many[0].PatientName) == "Paging^Patient0000"
    assert sum(str(ds.PatientName).startswith("Paging^Patient00") for ds in many) == 100
    back = _round_trip(many[-1], tmp_path / "last.dcm")
    assert back.pixel_array.shape == (8, 8)
    assert [d.StudyInstanceUID for d in generate_many_studies(3)] == [
        d.StudyInstanceUID for d in many[:3]
    ]


def test_ct_series_is_a_lazy_generator(tmp_path: pathlib.Path) -> None:
    series = generate_ct_series(300, rows=32, columns=32)
    first_three = list(itertools.islice(series, 3))
    assert len({ds.SeriesInstanceUID for ds in first_three}) == 1
    assert [ds.InstanceNumber for ds in first_three] == [1, 2, 3]
    assert sum(1 for _ in series) == 297
    big = next(generate_ct_series(2))
    assert (big.Rows, big.Columns) == (512, 512)
    back = _round_trip(big, tmp_path / "big.dcm")
    assert back.pixel_array.shape == (512, 512)

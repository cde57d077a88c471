"""The compressed demo study: syntaxes, determinism and pixel round trips."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from app.demo.compressed import (
    COMPRESSED_PATIENT_ID,
    SampleSpec,
    compressed_sample_arrays,
    generate_compressed_samples,
    jpeg_ls_available,
)
from app.demo.samples import generate_sample_studies


def _part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def pairs() -> list[tuple[SampleSpec, Dataset]]:
    """Each spec with its instance after a write/read cycle (what a PACS would serve)."""
    specs = compressed_sample_arrays()
    return [
        (spec, dcmread(io.BytesIO(_part10(ds))))
        for spec, ds in zip(specs, generate_compressed_samples(), strict=True)
    ]


def test_series_layout(pairs: list[tuple[SampleSpec, Dataset]]) -> None:
    syntaxes = Counter(str(ds.file_meta.TransferSyntaxUID) for _, ds in pairs)
    assert syntaxes[RLELossless] == 6  # 5 CT slices + 1 multi-frame cine
    assert syntaxes[JPEG2000Lossless] == 3
    assert syntaxes[JPEGBaseline8Bit] == 2
    assert syntaxes[JPEGLSLossless] == (2 if jpeg_ls_available() else 0)
    assert len({ds.StudyInstanceUID for _, ds in pairs}) == 1
    assert len({ds.SeriesInstanceUID for _, ds in pairs}) == (5 if jpeg_ls_available() else 4)
    assert len({ds.SOPInstanceUID for _, ds in pairs}) == len(pairs)
    assert {str(ds.PatientName) for _, ds in pairs} == {"Compressed^Carla"}
    assert {ds.PatientID for _, ds in pairs} == {COMPRESSED_PATIENT_ID}
    cine = next(ds for spec, ds in pairs if spec.key == "rle-cine")
    assert cine.NumberOfFrames == 4


def test_file_meta_matches_each_instance(pairs: list[tuple[SampleSpec, Dataset]]) -> None:
    for spec, ds in pairs:
        assert ds.file_meta.TransferSyntaxUID == spec.transfer_syntax
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds["PixelData"].is_undefined_length  # encapsulated (PS3.5 A.4)


def test_lossless_round_trips_are_exact(pairs: list[tuple[SampleSpec, Dataset]]) -> None:
    for spec, ds in pairs:
        if spec.lossless:
            np.testing.assert_array_equal(ds.pixel_array, spec.pixels, err_msg=spec.key)


def test_jpeg_baseline_is_close_and_flagged_lossy(pairs: list[tuple[SampleSpec, Dataset]]) -> None:
    lossy = [(spec, ds) for spec, ds in pairs if not spec.lossless]
    assert {spec.key for spec, _ in lossy} == {"jpeg-rgb", "jpeg-gray"}
    for spec, ds in lossy:
        assert ds.LossyImageCompression == "01"
        assert ds.LossyImageCompressionMethod == "ISO_10918_1"
        decoded = ds.pixel_array.astype(int)  # pydicom converts YBR_FULL_422 to RGB
        assert decoded.shape == spec.pixels.shape
        assert np.abs(decoded - spec.pixels.astype(int)).max() <= 8
    colour = next(ds for spec, ds in lossy if spec.key == "jpeg-rgb")
    assert colour.PhotometricInterpretation == "YBR_FULL_422"
    assert colour.SamplesPerPixel == 3


def test_deterministic_and_seeded() -> None:
    first = [_part10(ds) for ds in generate_compressed_samples()]
    second = [_part10(ds) for ds in generate_compressed_samples()]
    assert first == second
    other = generate_compressed_samples(seed=4)
    assert other[0].SOPInstanceUID != dcmread(io.BytesIO(first[0])).SOPInstanceUID


def test_does_not_collide_with_the_main_samples() -> None:
    main = generate_sample_studies()
    compressed = generate_compressed_samples()
    assert not {ds.SOPInstanceUID for ds in main} & {ds.SOPInstanceUID for ds in compressed}
    assert not {ds.StudyInstanceUID for ds in main} & {ds.StudyInstanceUID for ds in compressed}
    assert COMPRESSED_PATIENT_ID not in {ds.PatientID for ds in main}

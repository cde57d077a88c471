"""Part-10 transcoding, wire re-encoding and frame extraction (PS3.18 8.7.3, PS3.5 8, A.4)."""

from __future__ import annotations

import copy
import io
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, get_frame
from pydicom.pixels import get_decoder, get_encoder, pack_bits
from pydicom.uid import UID

from app.demo.compressed import compressed_sample_arrays, generate_compressed_samples
from app.demo.samples import generate_sample_studies
from app.dicomweb.pixels import (
    Frame,
    FrameOutOfRange,
    TranscodeError,
    dataset_transfer_syntax,
    frame_count,
    get_frames,
    part10_transfer_syntax,
    read_part10,
    to_wire,
    transcode_part10,
)
from app.dicomweb.transfer_syntax import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG2000,
    JPEG2000_LOSSLESS,
    JPEG_BASELINE_8BIT,
    RLE_LOSSLESS,
)

UID_KEYWORDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def part10_in(ds: Dataset, ts: str) -> bytes:
    """``ds`` (Explicit VR LE) written in another native syntax, via the code under test."""
    return transcode_part10(part10(ds), ts)


@pytest.fixture(scope="module")
def samples() -> dict[str, Dataset]:
    studies = generate_sample_studies()
    by_modality: dict[str, Dataset] = {}
    for ds in studies:
        by_modality.setdefault(str(ds.Modality), ds)
    return by_modality  # CT (int16), CR, MR (uint16), OT (RGB), US (5 frames, 8-bit)


@pytest.fixture(scope="module")
def compressed() -> dict[str, tuple[Dataset, np.ndarray]]:
    specs = compressed_sample_arrays()
    return {
        spec.key: (ds, spec.pixels)
        for spec, ds in zip(specs, generate_compressed_samples(), strict=True)
    }


def all_uids(ds: Dataset) -> list[tuple[int, str]]:
    """Every UI value at any depth (File Meta excluded), in walk order."""
    out: list[tuple[int, str]] = []
    for elem in ds.iterall():
        if elem.VR == "UI":
            out.append((int(elem.tag), str(elem.value)))
    return out


def assert_same_uids(before: Dataset, after: Dataset) -> None:
    assert all_uids(after) == all_uids(before)
    for keyword in UID_KEYWORDS:
        assert after[keyword].value == before[keyword].value, keyword
    assert after.file_meta.MediaStorageSOPInstanceUID == before.SOPInstanceUID
    assert after.file_meta.MediaStorageSOPClassUID == before.SOPClassUID


# -- transcode_part10 ---------------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["CT", "MR", "OT", "US", "CR"])
@pytest.mark.parametrize(
    "target",
    [
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        RLE_LOSSLESS,
        JPEG2000_LOSSLESS,
    ],
)
def test_transcode_round_trip_keeps_pixels_and_uids(
    samples: dict[str, Dataset], modality: str, target: str
) -> None:
    original = samples[modality]
    out = transcode_part10(part10(original), target)
    encoded = dcmread(io.BytesIO(out))
    assert encoded.file_meta.TransferSyntaxUID == target
    assert_same_uids(original, encoded)
    np.testing.assert_array_equal(encoded.pixel_array, original.pixel_array)
    back = dcmread(io.BytesIO(transcode_part10(out, EXPLICIT_VR_LITTLE_ENDIAN)))
    assert back.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
    assert_same_uids(original, back)
    np.testing.assert_array_equal(back.pixel_array, original.pixel_array)
    assert back.PatientName == original.PatientName
    if "ImagePositionPatient" in original:
        assert back.ImagePositionPatient == original.ImagePositionPatient


def test_big_endian_keeps_numbers_and_nested_values(samples: dict[str, Dataset]) -> None:
    original = samples["CT"]
    big = transcode_part10(part10(original), EXPLICIT_VR_BIG_ENDIAN)
    assert dcmread(io.BytesIO(big)).original_encoding == (False, False)
    back = dcmread(io.BytesIO(transcode_part10(big, EXPLICIT_VR_LITTLE_ENDIAN)))
    assert back.Rows == original.Rows and back.BitsAllocated == 16
    assert back.RequestAttributesSequence[0].RequestedProcedureID == (
        original.RequestAttributesSequence[0].RequestedProcedureID
    )
    assert back.PixelData == original.PixelData


def test_same_syntax_passes_through_untouched(samples: dict[str, Dataset]) -> None:
    data = part10(samples["CT"])
    assert transcode_part10(data, EXPLICIT_VR_LITTLE_ENDIAN) is data


@pytest.mark.parametrize("key", ["rle-ct-0", "j2k-mr-1", "rle-cine", "jpeg-gray", "jpeg-rgb"])
def test_decompress_keeps_uids(compressed: dict[str, tuple[Dataset, np.ndarray]], key: str) -> None:
    ds, pixels = compressed[key]
    out = dcmread(io.BytesIO(transcode_part10(part10(ds), EXPLICIT_VR_LITTLE_ENDIAN)))
    assert out.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
    assert_same_uids(ds, out)
    assert not out["PixelData"].is_undefined_length
    if key.startswith("jpeg"):
        assert out.LossyImageCompression == "01"
        diff = np.abs(out.pixel_array.astype(int) - pixels.astype(int))
        assert diff.max() <= 8
    else:
        np.testing.assert_array_equal(out.pixel_array, pixels)


def test_compressed_to_other_compressed(compressed: dict[str, tuple[Dataset, np.ndarray]]) -> None:
    ds, pixels = compressed["rle-ct-2"]
    out = dcmread(io.BytesIO(transcode_part10(part10(ds), JPEG2000_LOSSLESS)))
    assert out.file_meta.TransferSyntaxUID == JPEG2000_LOSSLESS
    assert_same_uids(ds, out)
    np.testing.assert_array_equal(out.pixel_array, pixels)


def test_lossy_to_lossless_compressed_is_refused(
    compressed: dict[str, tuple[Dataset, np.ndarray]],
) -> None:
    ds, _ = compressed["jpeg-gray"]
    with pytest.raises(TranscodeError, match="lossy"):
        transcode_part10(part10(ds), RLE_LOSSLESS)


def test_lossless_to_lossy_needs_permission(samples: dict[str, Dataset]) -> None:
    data = part10(samples["MR"])
    with pytest.raises(TranscodeError, match="lossy"):
        transcode_part10(data, JPEG2000)
    out = dcmread(io.BytesIO(transcode_part10(data, JPEG2000, allow_lossy=True)))
    assert out.file_meta.TransferSyntaxUID == JPEG2000
    assert out.LossyImageCompression == "01"
    assert_same_uids(samples["MR"], out)


def test_no_encoder_is_a_transcode_error(samples: dict[str, Dataset]) -> None:
    with pytest.raises(TranscodeError, match="no encoder"):
        transcode_part10(part10(samples["OT"]), JPEG_BASELINE_8BIT)


def test_encoder_profile_mismatch_is_a_transcode_error() -> None:
    ds = _native_dataset(np.zeros((2, 2, 2), dtype=np.uint32), frames=2)
    ds.SamplesPerPixel = 1
    with pytest.raises(TranscodeError):
        transcode_part10(part10(ds), JPEG2000_LOSSLESS)


# -- read_part10 / to_wire -----------------------------------------------------------------------


def test_to_wire_reencodes_implicit_and_big_endian(samples: dict[str, Dataset]) -> None:
    original = samples["US"]
    for stored in (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN):
        data, ts = to_wire(part10_in(original, stored))
        assert ts == EXPLICIT_VR_LITTLE_ENDIAN
        assert part10_transfer_syntax(data) == EXPLICIT_VR_LITTLE_ENDIAN
        out = dcmread(io.BytesIO(data))
        assert_same_uids(original, out)
        np.testing.assert_array_equal(out.pixel_array, original.pixel_array)


def test_to_wire_passes_other_syntaxes(
    samples: dict[str, Dataset], compressed: dict[str, tuple[Dataset, np.ndarray]]
) -> None:
    explicit = part10(samples["CT"])
    assert to_wire(explicit) == (explicit, EXPLICIT_VR_LITTLE_ENDIAN)
    assert to_wire(explicit)[0] is explicit
    deflated = part10_in(samples["CT"], DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    assert to_wire(deflated) == (deflated, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    rle = part10(compressed["rle-ct-0"][0])
    assert to_wire(rle) == (rle, RLE_LOSSLESS)


def test_read_part10_without_preamble_or_meta(samples: dict[str, Dataset]) -> None:
    ds = copy.deepcopy(samples["CR"])
    del ds.file_meta
    raw = io.BytesIO()
    ds.save_as(raw, implicit_vr=True, little_endian=True)  # bare dataset, no DICM header
    assert part10_transfer_syntax(raw.getvalue()) is None
    parsed = read_part10(raw.getvalue())
    assert parsed.SOPInstanceUID == ds.SOPInstanceUID
    assert dataset_transfer_syntax(parsed) == IMPLICIT_VR_LITTLE_ENDIAN
    data, ts = to_wire(raw.getvalue())
    assert ts == EXPLICIT_VR_LITTLE_ENDIAN
    np.testing.assert_array_equal(dcmread(io.BytesIO(data)).pixel_array, ds.pixel_array)


def test_frame_count() -> None:
    ds = Dataset()
    assert frame_count(ds) == 1
    ds.NumberOfFrames = 7
    assert frame_count(ds) == 7
    ds.NumberOfFrames = ""
    assert frame_count(ds) == 1


# -- get_frames: native --------------------------------------------------------------------------


def _native_dataset(
    pixels: np.ndarray,
    *,
    frames: int | None = None,
    bits_allocated: int | None = None,
    photometric: str = "MONOCHROME2",
    planar: int | None = None,
    pixel_bytes: bytes | None = None,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4.5.6")
    ds.SOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    ds.SOPInstanceUID = UID("1.2.3.4.5.6")
    ds.StudyInstanceUID = UID("1.2.3.4")
    ds.SeriesInstanceUID = UID("1.2.3.4.5")
    samples = 3 if photometric in ("RGB", "YBR_FULL") else 1
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = planar or 0
    if frames is not None:
        ds.NumberOfFrames = frames
    shape = pixels.shape[1:] if frames is not None else pixels.shape
    if samples == 3 and (planar or 0) == 1:
        ds.Rows, ds.Columns = int(shape[1]), int(shape[2])
    else:
        ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    bits = bits_allocated or pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    data = (
        pixel_bytes
        if pixel_bytes is not None
        else pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    )
    if len(data) % 2:
        data += b"\x00"
    ds.add_new(0x7FE00010, "OB" if bits <= 8 else "OW", data)
    return ds


def test_native_multiframe_frames_in_requested_order(samples: dict[str, Dataset]) -> None:
    ds = samples["US"]
    cube = ds.pixel_array
    frames = get_frames(ds, [3, 1], transfer_syntax=None)
    assert [f.number for f in frames] == [3, 1]
    assert frames[0] == Frame(
        3, cube[2].tobytes(), "application/octet-stream", EXPLICIT_VR_LITTLE_ENDIAN
    )
    assert frames[1].data == cube[0].tobytes()
    star = get_frames(ds, [5], transfer_syntax="*")
    assert star[0].data == cube[4].tobytes()
    explicit = get_frames(ds, [2], transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN)
    assert explicit[0].data == cube[1].tobytes()


@pytest.mark.parametrize("numbers", [[0], [6], [1, 6], [-1]])
def test_out_of_range_frame_names_the_frame(
    samples: dict[str, Dataset], numbers: list[int]
) -> None:
    bad = next(n for n in numbers if not 1 <= n <= 5)
    with pytest.raises(FrameOutOfRange, match=f"frame {bad} "):
        get_frames(samples["US"], numbers, transfer_syntax=None)


def test_no_frame_requested(samples: dict[str, Dataset]) -> None:
    with pytest.raises(FrameOutOfRange):
        get_frames(samples["US"], [], transfer_syntax=None)
    assert issubclass(FrameOutOfRange, ValueError)


def test_single_frame_16_bit_signed(samples: dict[str, Dataset]) -> None:
    ds = samples["CT"]
    (frame,) = get_frames(ds, [1], transfer_syntax=None)
    assert frame.data == ds.pixel_array.astype("<i2").tobytes()
    with pytest.raises(FrameOutOfRange):
        get_frames(ds, [2], transfer_syntax=None)


def test_32_bit_frames() -> None:
    cube = (np.arange(3 * 4 * 5, dtype=np.uint32) * 70001).reshape(3, 4, 5)
    ds = _native_dataset(cube, frames=3)
    (frame,) = get_frames(ds, [2], transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN)
    assert frame.data == cube[1].astype("<u4").tobytes()
    assert len(frame.data) == 4 * 5 * 4


def test_rgb_planar_configuration_1_keeps_stored_layout() -> None:
    planes = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)  # frames, planes, r, c
    ds = _native_dataset(planes, frames=2, photometric="RGB", planar=1)
    (frame,) = get_frames(ds, [2], transfer_syntax=None)
    assert frame.data == planes[1].tobytes()
    assert ds.pixel_array[1][..., 0].tobytes() == planes[1][0].tobytes()


def test_one_bit_frames_not_byte_aligned() -> None:
    # 3x3 frames are 9 bits each: frame 2 starts at bit 9, frame 3 at bit 18 (PS3.5 8.1.1).
    rng = np.random.default_rng(5)
    cube = rng.integers(0, 2, size=(3, 3, 3), dtype=np.uint8)
    packed = pack_bits(cube, pad=False)
    assert len(packed) == 4
    ds = _native_dataset(cube, frames=3, bits_allocated=1, pixel_bytes=packed)
    np.testing.assert_array_equal(ds.pixel_array, cube)
    for number in (1, 2, 3):
        (frame,) = get_frames(ds, [number], transfer_syntax=None)
        assert frame.data == np.packbits(cube[number - 1].ravel(), bitorder="little").tobytes()
        assert len(frame.data) == 2


def test_big_endian_stored_frames_come_out_little_endian(samples: dict[str, Dataset]) -> None:
    original = samples["MR"]
    big = dcmread(io.BytesIO(part10_in(original, EXPLICIT_VR_BIG_ENDIAN)))
    assert dataset_transfer_syntax(big) == EXPLICIT_VR_BIG_ENDIAN
    (frame,) = get_frames(big, [1], transfer_syntax=None)
    assert frame.transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN
    assert frame.data == original.pixel_array.astype("<u2").tobytes()


def test_implicit_stored_frames(samples: dict[str, Dataset]) -> None:
    original = samples["US"]
    implicit = dcmread(io.BytesIO(part10_in(original, IMPLICIT_VR_LITTLE_ENDIAN)))
    (frame,) = get_frames(implicit, [4], transfer_syntax=IMPLICIT_VR_LITTLE_ENDIAN)
    assert frame.transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN  # never Implicit on the web
    assert frame.data == original.pixel_array[3].tobytes()


def test_truncated_native_pixel_data() -> None:
    cube = np.zeros((3, 4, 4), dtype=np.uint8)
    ds = _native_dataset(cube, frames=3, pixel_bytes=cube.tobytes()[:40])
    assert get_frames(ds, [2], transfer_syntax=None)[0].data == bytes(16)
    with pytest.raises(TranscodeError, match="frame 3"):
        get_frames(ds, [3], transfer_syntax=None)


def test_no_pixel_data_is_a_transcode_error() -> None:
    ds = _native_dataset(np.zeros((2, 2), dtype=np.uint8))
    del ds.PixelData
    with pytest.raises(TranscodeError):
        get_frames(ds, [1], transfer_syntax=None)


# -- get_frames: encapsulated --------------------------------------------------------------------


def test_rle_multiframe_as_stored(compressed: dict[str, tuple[Dataset, np.ndarray]]) -> None:
    ds, cube = compressed["rle-cine"]
    frames = get_frames(ds, [2, 4], transfer_syntax="*")
    for frame, number in zip(frames, (2, 4), strict=True):
        assert frame.media_type == "image/dicom-rle"
        assert frame.transfer_syntax == RLE_LOSSLESS
        assert frame.data == get_frame(ds.PixelData, number - 1, number_of_frames=4)
        decoded, _ = get_decoder(RLE_LOSSLESS).as_array(encapsulate([frame.data]), **_options(ds))
        np.testing.assert_array_equal(decoded, cube[number - 1])


def test_rle_multiframe_decoded_to_native(
    compressed: dict[str, tuple[Dataset, np.ndarray]],
) -> None:
    ds, cube = compressed["rle-cine"]
    frames = get_frames(ds, [1, 3], transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN)
    assert [f.media_type for f in frames] == ["application/octet-stream"] * 2
    assert frames[0].data == cube[0].tobytes()
    assert frames[1].data == cube[2].tobytes()


@pytest.mark.parametrize("key", ["rle-ct-3", "j2k-mr-0"])
def test_single_frame_compressed_decoded(
    compressed: dict[str, tuple[Dataset, np.ndarray]], key: str
) -> None:
    ds, pixels = compressed[key]
    (frame,) = get_frames(ds, [1], transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN)
    dtype = "<i2" if pixels.dtype.kind == "i" else "<u2"
    assert frame.data == pixels.astype(dtype).tobytes()


def test_jpeg_baseline_colour_frame(compressed: dict[str, tuple[Dataset, np.ndarray]]) -> None:
    ds, rgb = compressed["jpeg-rgb"]
    (stored,) = get_frames(ds, [1], transfer_syntax=None)
    assert stored.media_type == "image/jpeg"
    assert stored.data[:2] == b"\xff\xd8"  # JPEG SOI marker
    (native,) = get_frames(ds, [1], transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN)
    decoded = np.frombuffer(native.data, dtype=np.uint8).reshape(rgb.shape)  # interleaved RGB
    assert np.abs(decoded.astype(int) - rgb.astype(int)).max() <= 8


def _rle_frames(cube: np.ndarray) -> list[bytes]:
    encoder = get_encoder(RLE_LOSSLESS)
    return [
        encoder.encode(
            frame,
            rows=cube.shape[1],
            columns=cube.shape[2],
            samples_per_pixel=1,
            bits_allocated=8,
            bits_stored=8,
            pixel_representation=0,
            photometric_interpretation="MONOCHROME2",
            number_of_frames=1,
        )
        for frame in cube
    ]


def _encapsulated_dataset(cube: np.ndarray, pixel_data: bytes) -> Dataset:
    ds = _native_dataset(cube, frames=cube.shape[0])
    ds.file_meta.TransferSyntaxUID = UID(RLE_LOSSLESS)
    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


@pytest.mark.parametrize("has_bot", [True, False])
def test_several_fragments_per_frame(has_bot: bool) -> None:
    cube = (np.arange(3 * 8 * 8, dtype=np.uint16) % 251).astype(np.uint8).reshape(3, 8, 8)
    encoded = _rle_frames(cube)
    ds = _encapsulated_dataset(cube, encapsulate(encoded, fragments_per_frame=1, has_bot=has_bot))
    # Same data split into several fragments per frame; the BOT then locates frames.
    split = _encapsulated_dataset(cube, encapsulate(encoded, fragments_per_frame=2, has_bot=True))
    for dataset in (ds, split):
        frames = get_frames(dataset, [3, 2], transfer_syntax=None)
        assert [f.data for f in frames] == [encoded[2], encoded[1]]
        native = get_frames(dataset, [2], transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN)
        assert native[0].data == cube[1].tobytes()


@pytest.mark.parametrize("numbers", [[3], [1, 3]])
def test_missing_encapsulated_frame(numbers: list[int]) -> None:
    cube = np.zeros((3, 4, 4), dtype=np.uint8)
    encoded = _rle_frames(cube)[:2]  # NumberOfFrames says 3, only two are there
    ds = _encapsulated_dataset(cube, encapsulate(encoded, has_bot=False))
    with pytest.raises(TranscodeError, match="frame"):
        get_frames(ds, numbers, transfer_syntax=None)


def test_extended_offset_table() -> None:
    cube = (np.arange(4 * 6 * 6, dtype=np.uint16) * 3 % 256).astype(np.uint8).reshape(4, 6, 6)
    encoded = _rle_frames(cube)
    pixel_data, offsets, lengths = encapsulate_extended(encoded)
    ds = _encapsulated_dataset(cube, pixel_data)
    ds.ExtendedOffsetTable = offsets
    ds.ExtendedOffsetTableLengths = lengths
    frames = get_frames(ds, [4, 1], transfer_syntax="*")
    assert [f.data for f in frames] == [encoded[3], encoded[0]]


def test_transcode_frame_to_another_compressed_syntax(
    compressed: dict[str, tuple[Dataset, np.ndarray]],
) -> None:
    ds, cube = compressed["rle-cine"]
    (frame,) = get_frames(ds, [3], transfer_syntax=JPEG2000_LOSSLESS)
    assert frame.media_type == "image/jp2"
    assert frame.transfer_syntax == JPEG2000_LOSSLESS
    decoded, _ = get_decoder(JPEG2000_LOSSLESS).as_array(encapsulate([frame.data]), **_options(ds))
    np.testing.assert_array_equal(decoded, cube[2])


def test_native_frame_compressed_on_request(samples: dict[str, Dataset]) -> None:
    ds = samples["CT"]
    (frame,) = get_frames(ds, [1], transfer_syntax=RLE_LOSSLESS)
    assert frame.media_type == "image/dicom-rle"
    decoded, _ = get_decoder(RLE_LOSSLESS).as_array(encapsulate([frame.data]), **_options(ds))
    np.testing.assert_array_equal(decoded, ds.pixel_array)


def test_frame_transcoding_refusals(compressed: dict[str, tuple[Dataset, np.ndarray]]) -> None:
    jpeg, _ = compressed["jpeg-gray"]
    with pytest.raises(TranscodeError, match="lossy"):
        get_frames(jpeg, [1], transfer_syntax=RLE_LOSSLESS)
    rle, _ = compressed["rle-ct-0"]
    with pytest.raises(TranscodeError, match="no encoder"):
        get_frames(rle, [1], transfer_syntax=JPEG_BASELINE_8BIT)
    with pytest.raises(TranscodeError, match="lossy"):
        get_frames(rle, [1], transfer_syntax=JPEG2000)


def test_video_is_one_part() -> None:
    ds = _native_dataset(np.zeros((2, 4, 4), dtype=np.uint8), frames=2)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.102")
    ds.PixelData = encapsulate([b"\x00\x00\x00\x18ftypmp42", b"moov-and-mdat"], has_bot=False)
    ds["PixelData"].is_undefined_length = True
    (frame,) = get_frames(ds, [2], transfer_syntax=None)
    assert frame.number == 1
    assert frame.media_type == "video/mp4"
    assert frame.data.startswith(b"\x00\x00\x00\x18ftypmp42moov-and-mdat")  # both fragments
    with pytest.raises(TranscodeError):
        get_frames(ds, [1], transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN)


def _options(ds: Dataset) -> dict[str, Any]:
    return {
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "samples_per_pixel": int(ds.SamplesPerPixel),
        "bits_allocated": int(ds.BitsAllocated),
        "bits_stored": int(ds.BitsStored),
        "pixel_representation": int(ds.PixelRepresentation),
        "photometric_interpretation": str(ds.PhotometricInterpretation),
        "number_of_frames": 1,
    }

"""A deterministic demo study whose series are stored compressed (RLE, JPEG 2000, JPEG Baseline,
JPEG-LS), so transcoding and frame retrieval are exercised end to end.

Pixel arrays come from ``compressed_sample_arrays`` so tests can compare decoded pixels with the
originals: exactly for the lossless syntaxes, approximately for JPEG Baseline.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    UltrasoundMultiFrameImageStorage,
)

from app.demo.samples import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    sample_uid,
)

__all__ = [
    "COMPRESSED_PATIENT_ID",
    "SampleSpec",
    "compressed_sample_arrays",
    "generate_compressed_samples",
    "jpeg_ls_available",
]

COMPRESSED_PATIENT_ID = "DEMO-0100"
_PATIENT_NAME = "Compressed^Carla"


@dataclass(frozen=True)
class SampleSpec:
    """What one generated instance should contain: its key and its original pixels."""

    key: str  # stable name, e.g. "rle-ct-0"
    series: int  # SeriesNumber
    transfer_syntax: UID
    pixels: np.ndarray  # (rows, cols), (rows, cols, 3) or (frames, rows, cols)
    lossless: bool


def jpeg_ls_available() -> bool:
    """True when a JPEG-LS encoder plugin (pyjpegls) is installed."""
    from pydicom.pixels import get_encoder

    return bool(get_encoder(JPEGLSLossless).is_available)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    scale = 2.0 / max(size - 1, 1)
    return y * scale - 1.0, x * scale - 1.0


def _ct_pixels(seed: int, index: int, size: int = 64) -> np.ndarray:
    """Signed 16-bit CT values (HU + 0 intercept): air, body, a moving bone, some texture."""
    y, x = _grid(size)
    r2 = x * x + (y * 1.15) ** 2
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    hu[r2 < 0.8**2] = 30.0 + 20.0 * x[r2 < 0.8**2]
    angle = (index + seed) / 3.0
    hu[(x - 0.4 * np.cos(angle)) ** 2 + (y - 0.4 * np.sin(angle)) ** 2 < 0.1**2] = 900.0
    hu += ((np.arange(size * size).reshape(size, size) * (7 + index)) % 11) - 5.0
    return np.round(hu).astype(np.int16)


def _mr_pixels(index: int, size: int = 64) -> np.ndarray:
    """Unsigned 16-bit MR (12 bits stored): rings whose frequency changes with the slice."""
    y, x = _grid(size)
    r = np.sqrt(x * x + y * y)
    rings = 0.5 + 0.5 * np.cos(r * (9.0 + 3.0 * index))
    return np.where(r < 0.95, 300.0 + 3500.0 * rings, 0.0).astype(np.uint16)


def _rgb_pixels(size: int = 48) -> np.ndarray:
    """Smooth RGB gradients (JPEG-friendly, so the lossy error stays small)."""
    y, x = _grid(size)
    red = 127.5 + 127.5 * x
    green = 127.5 + 127.5 * y
    blue = 127.5 - 63.0 * (x + y)
    return np.clip(np.stack([red, green, blue], axis=-1), 0, 255).astype(np.uint8)


def _gray_pixels(size: int = 48) -> np.ndarray:
    y, x = _grid(size)
    return np.clip(128.0 + 100.0 * np.sin(2.0 * x) * np.cos(1.5 * y), 0, 255).astype(np.uint8)


def _cine_pixels(frames: int = 4, size: int = 32) -> np.ndarray:
    """8-bit multi-frame: a bright bar moving across a speckle background."""
    y, x = _grid(size)
    cube = np.empty((frames, size, size), dtype=np.uint8)
    for frame in range(frames):
        centre = -0.75 + 1.5 * frame / max(frames - 1, 1)
        speckle = 30.0 + 40.0 * (np.sin(13.0 * x * y + frame) > 0)
        cube[frame] = np.where(np.abs(x - centre) < 0.15, 220.0, speckle).astype(np.uint8)
    return cube


def compressed_sample_arrays(seed: int = 3) -> list[SampleSpec]:
    """The instances ``generate_compressed_samples`` makes, in order, with original pixels."""
    specs = [SampleSpec(f"rle-ct-{i}", 1, RLELossless, _ct_pixels(seed, i), True) for i in range(5)]
    specs += [SampleSpec(f"j2k-mr-{i}", 2, JPEG2000Lossless, _mr_pixels(i), True) for i in range(3)]
    specs += [
        SampleSpec("jpeg-rgb", 3, JPEGBaseline8Bit, _rgb_pixels(), False),
        SampleSpec("jpeg-gray", 3, JPEGBaseline8Bit, _gray_pixels(), False),
        SampleSpec("rle-cine", 4, RLELossless, _cine_pixels(), True),
    ]
    if jpeg_ls_available():
        specs += [
            SampleSpec(f"jls-ct-{i}", 5, JPEGLSLossless, _ct_pixels(seed + 1, i), True)
            for i in range(2)
        ]
    return specs


_SERIES = {
    1: ("CT", "RLE Lossless axial", CTImageStorage),
    2: ("MR", "JPEG 2000 Lossless T2", MRImageStorage),
    3: ("OT", "JPEG Baseline captures", SecondaryCaptureImageStorage),
    4: ("US", "RLE multi-frame cine", UltrasoundMultiFrameImageStorage),
    5: ("CT", "JPEG-LS Lossless axial", CTImageStorage),
}


def generate_compressed_samples(seed: int = 3) -> list[Dataset]:
    """One study for patient Compressed^Carla (DEMO-0100) with one series per compression.

    Series 1: CT 64x64 int16, 5 slices, RLE Lossless. Series 2: MR 64x64 uint16 (12 stored),
    3 slices, JPEG 2000 Lossless. Series 3: JPEG Baseline 8-bit captures, one YBR_FULL_422
    colour and one MONOCHROME2. Series 4: 4-frame 8-bit US cine, RLE Lossless. Series 5 (only
    when pyjpegls is installed): CT, 2 slices, JPEG-LS Lossless. Same seed, same bytes.
    """
    study_uid = sample_uid(seed, "compressed-study")
    out: list[Dataset] = []
    numbers: dict[int, int] = {}
    for spec in compressed_sample_arrays(seed):
        numbers[spec.series] = numbers.get(spec.series, 0) + 1
        ds = _instance(seed, study_uid, spec, numbers[spec.series])
        if spec.transfer_syntax == JPEGBaseline8Bit:
            _set_jpeg_baseline(ds, spec.pixels)
        else:
            _set_native(ds, spec.pixels, frames=spec.pixels.ndim == 3 and spec.series == 4)
            ds.compress(spec.transfer_syntax, generate_instance_uid=False)
        out.append(ds)
    return out


def _instance(seed: int, study_uid: UID, spec: SampleSpec, number: int) -> Dataset:
    modality, description, sop_class = _SERIES[spec.series]
    series_uid = sample_uid(seed, "compressed-series", study_uid, spec.series)
    sop_instance = sample_uid(seed, "compressed-instance", spec.key)
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # replaced when the pixels are compressed
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20250704"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = f"CMP{seed:04d}"
    ds.Modality = modality
    ds.Manufacturer = "dicomweb-gateway demo"
    ds.ReferringPhysicianName = "Welby^Marcus"
    ds.StudyDescription = "Compressed transfer syntaxes"
    ds.SeriesDescription = description
    ds.PatientName = _PATIENT_NAME
    ds.PatientID = COMPRESSED_PATIENT_ID
    ds.PatientBirthDate = "19830317"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "C0001"
    ds.SeriesNumber = spec.series
    ds.InstanceNumber = number
    ds.PatientOrientation = ""
    if modality in ("CT", "MR"):
        ds.FrameOfReferenceUID = sample_uid(seed, "compressed-for", study_uid)
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-120.0, -120.0, -20.0 + 5.0 * number]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [240.0 / 64, 240.0 / 64]
        ds.SliceThickness = 5.0
    if modality == "CT":
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
    if modality == "OT":
        ds.ConversionType = "WSD"
    if modality == "US":
        ds.FrameTime = 50.0
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
    return ds


def _set_native(ds: Dataset, pixels: np.ndarray, *, frames: bool) -> None:
    """Image Pixel module (PS3.3 C.7.6.3) plus native little-endian Pixel Data."""
    bits = pixels.dtype.itemsize * 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = int(pixels.shape[-2]), int(pixels.shape[-1])
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if ds.Modality == "MR" else bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    little = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)
    ds.add_new(0x7FE00010, "OW" if bits > 8 else "OB", little.tobytes())


def _set_jpeg_baseline(ds: Dataset, pixels: np.ndarray) -> None:
    """Encode with Pillow (ISO 10918-1 baseline) and encapsulate (PS3.5 A.4, 8.2.1).

    Colour is written as YCbCr with 4:2:2 subsampling, which DICOM calls YBR_FULL_422.
    """
    from PIL import Image

    colour = pixels.ndim == 3
    image = Image.fromarray(pixels, mode="RGB" if colour else "L")
    buffer = io.BytesIO()
    # subsampling=1 is 4:2:2 (horizontal only), the only subsampling YBR_FULL_422 allows.
    image.save(buffer, format="JPEG", quality=95, subsampling=1 if colour else 0)
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "YBR_FULL_422" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ratio = pixels.size / max(len(buffer.getvalue()), 1)
    ds.LossyImageCompressionRatio = f"{ratio:.2f}"[:16]
    ds.add_new(0x7FE00010, "OB", encapsulate([buffer.getvalue()]))
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit

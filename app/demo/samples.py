"""Deterministic sample DICOM instances for the demo PACS, tests and benchmarks.

Pure pydicom + numpy: every call with the same seed produces the same UIDs and pixels, so tests
can load the same studies into the in-process demo PACS, Orthanc and dcmqrscp and compare results.
"""

from __future__ import annotations

import datetime as dt
import pathlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "generate_ct_series",
    "generate_many_studies",
    "generate_sample_studies",
    "sample_uid",
    "sop_classes",
    "write_part10",
]

_UID_NAMESPACE = "dicomweb-gateway-demo"

IMPLEMENTATION_CLASS_UID: UID = generate_uid(
    prefix=PYDICOM_ROOT_UID, entropy_srcs=[_UID_NAMESPACE, "implementation-class"]
)
"""(0002,0012) written into the File Meta Information of every generated instance."""

IMPLEMENTATION_VERSION_NAME = "DWGW_DEMO_01"
"""(0002,0013), at most 16 characters."""


def sample_uid(seed: int, *parts: object) -> UID:
    """Return a UID derived only from ``seed`` and ``parts`` (same inputs, same UID)."""
    return generate_uid(
        prefix=PYDICOM_ROOT_UID,
        entropy_srcs=[_UID_NAMESPACE, str(seed), *(str(p) for p in parts)],
    )


@dataclass(frozen=True)
class _Patient:
    """Patient module values (PS3.3 C.7.1.1) plus the character set they need."""

    name: str
    patient_id: str
    birth_date: str
    sex: str
    character_set: str | list[str] | None = None


@dataclass(frozen=True)
class _Study:
    """General Study module values (PS3.3 C.7.2.1) shared by every instance of one study."""

    patient: _Patient
    uid: UID
    date: str
    time: str
    accession: str
    study_id: str
    description: str
    referring: str


@dataclass(frozen=True)
class _Series:
    """General Series module values (PS3.3 C.7.3.1) shared by every instance of one series."""

    study: _Study
    uid: UID
    number: int
    modality: str
    description: str
    body_part: str
    frame_of_reference: UID | None = None


_PATIENTS: tuple[_Patient, ...] = (
    _Patient("Doe^John", "DEMO-0001", "19650412", "M"),
    _Patient("Doe^Jane", "DEMO-0002", "19700823", "F"),
    _Patient("Smith^Anna", "DEMO-0003", "19881130", "F"),
    _Patient("Müller^Jürgen", "DEMO-0004", "19520219", "M", "ISO_IR 100"),
    _Patient("Wang^XiaoDong=王^小東", "DEMO-0005", "19791005", "M", "ISO_IR 192"),
    _Patient(
        "Yamada^Tarou=山田^太郎=やまだ^たろう", "DEMO-0006", "19600101", "M", ["", "ISO 2022 IR 87"]
    ),
)


def _file_meta(sop_class: UID, sop_instance: UID) -> FileMetaDataset:
    """File Meta Information (PS3.10 7.1) for Explicit VR Little Endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _instance(series: _Series, sop_class: UID, sop_instance: UID, number: int) -> Dataset:
    """An instance with the Patient, Study, Series, Equipment and SOP Common modules filled."""
    study = series.study
    patient = study.patient
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_instance)
    if patient.character_set is not None:
        ds.SpecificCharacterSet = patient.character_set
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.InstanceCreationDate = study.date
    ds.InstanceCreationTime = study.time
    ds.StudyDate = study.date
    ds.SeriesDate = study.date
    ds.ContentDate = study.date
    ds.StudyTime = study.time
    ds.SeriesTime = study.time
    ds.ContentTime = study.time
    ds.AccessionNumber = study.accession
    ds.Modality = series.modality
    ds.Manufacturer = "dicomweb-gateway demo"
    ds.InstitutionName = "Demo Hospital"
    ds.ReferringPhysicianName = study.referring
    ds.StudyDescription = study.description
    ds.SeriesDescription = series.description
    ds.ManufacturerModelName = "Synthetic"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.BodyPartExamined = series.body_part
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = "1.0"
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series.uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series.number
    ds.InstanceNumber = number
    request = Dataset()  # Request Attributes Sequence (PS3.3 C.7.3.1), a QIDO series key
    request.RequestedProcedureID = f"RP-{study.study_id}"
    request.ScheduledProcedureStepID = f"SPS-{study.study_id}-{series.number}"
    ds.RequestAttributesSequence = [request]
    if series.frame_of_reference is not None:
        ds.FrameOfReferenceUID = series.frame_of_reference
        ds.PositionReferenceIndicator = ""
    return ds


def _set_pixels(
    ds: Dataset,
    pixels: np.ndarray,
    *,
    photometric: str,
    bits_stored: int | None = None,
    frames: int | None = None,
) -> None:
    """Set the Image Pixel module (PS3.3 C.7.6.3) from a native little-endian array."""
    samples = 3 if photometric == "RGB" else 1
    bits_allocated = pixels.dtype.itemsize * 8
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.Rows = int(pixels.shape[-2] if samples == 1 else pixels.shape[-3])
    ds.Columns = int(pixels.shape[-1] if samples == 1 else pixels.shape[-2])
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    little = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)
    ds.add_new(0x7FE00010, "OW" if bits_allocated > 8 else "OB", little.tobytes())


def _grid(rows: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates in [-1, 1] (y down, x right)."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    return (2.0 * y / max(rows - 1, 1) - 1.0, 2.0 * x / max(columns - 1, 1) - 1.0)


def _ct_phantom_hu(rows: int, columns: int, position: float) -> np.ndarray:
    """A body-like phantom in Hounsfield units whose 'bone' moves with slice position."""
    y, x = _grid(rows, columns)
    r2 = x * x + (y * 1.2) ** 2
    hu = np.full((rows, columns), -1000.0, dtype=np.float32)
    hu[r2 < 0.85**2] = -100.0  # fat
    hu[r2 < 0.75**2] = 40.0  # soft tissue
    hu += np.where(r2 < 0.75**2, 30.0 * x, 0.0)  # a gentle left-right gradient
    bx, by = 0.35 * np.cos(position / 8.0), 0.35 * np.sin(position / 8.0)
    hu[(x - bx) ** 2 + (y - by) ** 2 < 0.12**2] = 700.0  # bone
    hu[(x + 0.3) ** 2 + (y + 0.1) ** 2 < 0.15**2] = -800.0  # lung
    return hu


def _ct_slice(
    series: _Series,
    seed: int,
    index: int,
    *,
    rows: int,
    columns: int,
    thickness: float,
    intercept: float,
    slope: float,
    kernel: str,
) -> Dataset:
    """One axial CT slice (CT Image IOD, PS3.3 A.3) with its geometry and pixel data."""
    uid = sample_uid(seed, "ct", series.uid, index)
    ds = _instance(series, CTImageStorage, uid, index + 1)
    z = -100.0 + index * thickness
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientPosition = "HFS"
    ds.ScanOptions = "HELICAL"
    ds.SliceThickness = thickness
    ds.KVP = 120
    ds.ConvolutionKernel = kernel
    ds.AcquisitionNumber = 1
    spacing = 350.0 / columns
    ds.ImagePositionPatient = [-175.0, -175.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = z
    ds.PixelSpacing = [spacing, spacing]
    hu = _ct_phantom_hu(rows, columns, z)
    stored = np.round((hu - intercept) / slope).astype(np.int16)
    _set_pixels(ds, stored, photometric="MONOCHROME2", bits_stored=16)
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = slope
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.WindowCenterWidthExplanation = "SOFT TISSUE"
    return ds


def _mr_slice(series: _Series, seed: int, index: int, size: int = 64) -> Dataset:
    """One MR slice (MR Image IOD, PS3.3 A.4): concentric rings, 16-bit unsigned (12 stored)."""
    uid = sample_uid(seed, "mr", series.uid, index)
    ds = _instance(series, MRImageStorage, uid, index + 1)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = 500
    ds.EchoTime = 15
    ds.EchoTrainLength = 1
    ds.MagneticFieldStrength = 1.5
    ds.SliceThickness = 5.0
    ds.SpacingBetweenSlices = 6.0
    ds.AcquisitionNumber = 1
    ds.PatientPosition = "HFS"
    ds.ImagePositionPatient = [-120.0, -120.0, -20.0 + 6.0 * index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = -20.0 + 6.0 * index
    ds.PixelSpacing = [240.0 / size, 240.0 / size]
    y, x = _grid(size, size)
    r = np.sqrt(x * x + y * y)
    rings = 0.5 + 0.5 * np.cos(r * (10.0 + 2.0 * index))
    pixels = np.where(r < 0.95, 400.0 + 3000.0 * rings, 0.0).astype(np.uint16)
    _set_pixels(ds, pixels, photometric="MONOCHROME2", bits_stored=12)
    ds.WindowCenter = 1900
    ds.WindowWidth = 3800
    return ds


def _cr_image(series: _Series, seed: int, rows: int = 96, columns: int = 80) -> Dataset:
    """A single CR (CR Image IOD, PS3.3 A.2), MONOCHROME1: high values display dark."""
    ds = _instance(series, ComputedRadiographyImageStorage, sample_uid(seed, "cr", series.uid), 1)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.PixelSpacing = [0.5, 0.5]
    y, x = _grid(rows, columns)
    lungs = ((x + 0.45) ** 2 / 0.12 + y**2 / 0.5 < 1) | ((x - 0.45) ** 2 / 0.12 + y**2 / 0.5 < 1)
    pixels = 3000.0 - 1200.0 * (y + 1.0)  # exposure gradient, top to bottom
    pixels = np.where(lungs, pixels - 1500.0, pixels)
    pixels[np.abs(x) < 0.06] = 3800.0  # spine: high value, dark in MONOCHROME1
    _set_pixels(
        ds, np.clip(pixels, 0, 4095).astype(np.uint16), photometric="MONOCHROME1", bits_stored=12
    )
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    return ds


def _rgb_secondary_capture(series: _Series, seed: int, size: int = 48) -> Dataset:
    """An RGB Secondary Capture (PS3.3 A.8.1): eight vertical colour bars over a gradient."""
    uid = sample_uid(seed, "sc-rgb", series.uid)
    ds = _instance(series, SecondaryCaptureImageStorage, uid, 1)
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = ""
    bars = np.array(
        [
            [255, 255, 255],
            [255, 255, 0],
            [0, 255, 255],
            [0, 255, 0],
            [255, 0, 255],
            [255, 0, 0],
            [0, 0, 255],
            [0, 0, 0],
        ],
        dtype=np.float32,
    )
    column_bar = (np.arange(size) * 8) // size
    shade = np.linspace(1.0, 0.5, size, dtype=np.float32)[:, None, None]
    rgb = (bars[column_bar][None, :, :] * shade).astype(np.uint8)
    _set_pixels(ds, rgb, photometric="RGB")
    return ds


def _us_multiframe(series: _Series, seed: int, frames: int = 5, size: int = 48) -> Dataset:
    """A multi-frame US (PS3.3 A.7): a bright bar sweeping across the frames, 8-bit."""
    uid = sample_uid(seed, "us-mf", series.uid)
    ds = _instance(series, UltrasoundMultiFrameImageStorage, uid, 1)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
    ds.PatientOrientation = ""
    ds.FrameTime = 40.0
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.CineRate = 25
    y, x = _grid(size, size)
    cube = np.empty((frames, size, size), dtype=np.uint8)
    for frame in range(frames):
        centre = -0.8 + 1.6 * frame / max(frames - 1, 1)
        speckle = 40.0 + 30.0 * (np.sin(17.0 * x * y + frame) > 0)
        cube[frame] = np.where(np.abs(x - centre) < 0.12, 230.0, speckle).astype(np.uint8)
    _set_pixels(ds, cube, photometric="MONOCHROME2", frames=frames)
    return ds


def _study(
    seed: int, index: int, patient: _Patient, date: str, time: str, description: str
) -> _Study:
    return _Study(
        patient=patient,
        uid=sample_uid(seed, "study", index),
        date=date,
        time=time,
        accession=f"ACC{seed % 100:02d}{index:04d}",
        study_id=f"S{index:04d}",
        description=description,
        referring="Welby^Marcus" if index % 2 else "Kildare^James",
    )


def _series(
    study: _Study, number: int, modality: str, description: str, body_part: str, *, geometry: bool
) -> _Series:
    return _Series(
        study=study,
        uid=sample_uid(0, "series", study.uid, number),
        number=number,
        modality=modality,
        description=description,
        body_part=body_part,
        frame_of_reference=sample_uid(0, "for", study.uid) if geometry else None,
    )


def generate_sample_studies(seed: int = 0) -> list[Dataset]:
    """Six patients, eight studies of CT, MR, CR, RGB SC and multi-frame US (about 0.3 MB).

    Non-ASCII names carry their own Specific Character Set (ISO_IR 100, ISO_IR 192,
    ISO 2022 IR 87), so character-set handling can be tested end to end.
    """
    john, jane, anna, mueller, wang, yamada = _PATIENTS
    out: list[Dataset] = []

    ct_study = _study(seed, 1, john, "20190314", "093015", "CT Chest Abdomen")
    axial = _series(ct_study, 1, "CT", "Axial 5mm soft tissue", "CHEST", geometry=True)
    bone = _series(ct_study, 2, "CT", "Axial 5mm bone", "CHEST", geometry=True)
    for i in range(10):
        out.append(
            _ct_slice(
                axial,
                seed,
                i,
                rows=64,
                columns=64,
                thickness=5.0,
                intercept=-1024.0,
                slope=1.0,
                kernel="STANDARD",
            )
        )
    for i in range(10):
        out.append(
            _ct_slice(
                bone,
                seed,
                i,
                rows=64,
                columns=64,
                thickness=5.0,
                intercept=0.0,
                slope=1.0,
                kernel="BONE",
            )
        )

    cr_john = _study(seed, 2, john, "20240109", "141500", "Chest PA")
    out.append(_cr_image(_series(cr_john, 1, "CR", "PA", "CHEST", geometry=False), seed))

    mr_jane = _study(seed, 3, jane, "20200602", "080000", "MR Brain")
    t1 = _series(mr_jane, 1, "MR", "T1 axial", "HEAD", geometry=True)
    out.extend(_mr_slice(t1, seed, i) for i in range(4))

    mr_anna = _study(seed, 4, anna, "20231120", "163045", "MR Knee")
    pd = _series(mr_anna, 1, "MR", "PD axial", "KNEE", geometry=True)
    out.extend(_mr_slice(pd, seed, i) for i in range(3))

    ct_anna = _study(seed, 5, anna, "20180227", "110500", "CT Head")
    head = _series(ct_anna, 1, "CT", "Axial 3mm", "HEAD", geometry=True)
    for i in range(3):
        out.append(
            _ct_slice(
                head,
                seed,
                i,
                rows=64,
                columns=64,
                thickness=3.0,
                intercept=-1024.0,
                slope=1.0,
                kernel="STANDARD",
            )
        )

    cr_mueller = _study(seed, 6, mueller, "20210830", "101010", "Thorax p.a.")
    out.append(
        _cr_image(_series(cr_mueller, 1, "CR", "Thorax p.a.", "CHEST", geometry=False), seed)
    )

    sc_wang = _study(seed, 7, wang, "20220505", "153000", "Screen capture")
    out.append(
        _rgb_secondary_capture(
            _series(sc_wang, 1, "OT", "Colour bars", "ABDOMEN", geometry=False), seed
        )
    )

    us_yamada = _study(seed, 8, yamada, "20171201", "090000", "US Abdomen")
    out.append(
        _us_multiframe(_series(us_yamada, 1, "US", "Cine loop", "ABDOMEN", geometry=False), seed)
    )
    return out


def generate_many_studies(count: int, seed: int = 1) -> list[Dataset]:
    """``count`` studies of one 8x8 Secondary Capture each, to test paging over many results."""
    first = dt.date(2000, 1, 1)
    out: list[Dataset] = []
    for index in range(count):
        date = (first + dt.timedelta(days=(index * 37) % 9000)).strftime("%Y%m%d")
        time = f"{(index * 7) % 24:02d}{(index * 13) % 60:02d}00"
        patient = _Patient(
            f"Paging^Patient{index:04d}",
            f"PAGE-{seed}-{index:05d}",
            "19800101",
            "MF"[index % 2],
        )
        study = _Study(
            patient=patient,
            uid=sample_uid(seed, "paging-study", index),
            date=date,
            time=time,
            accession=f"PG{index:06d}",
            study_id=f"P{index:05d}",
            description=f"Paging study {index}",
            referring="Welby^Marcus",
        )
        series = _Series(
            study, sample_uid(seed, "paging-series", index), 1, "OT", "Tiny capture", "CHEST"
        )
        ds = _instance(
            series, SecondaryCaptureImageStorage, sample_uid(seed, "paging-instance", index), 1
        )
        ds.ConversionType = "WSD"
        ds.PatientOrientation = ""
        pixels = ((np.arange(64, dtype=np.uint16) * 4 + index) % 256).astype(np.uint8)
        _set_pixels(ds, pixels.reshape(8, 8), photometric="MONOCHROME2")
        out.append(ds)
    return out


def generate_ct_series(
    slices: int, rows: int = 512, columns: int = 512, seed: int = 2
) -> Iterator[Dataset]:
    """Yield one CT study/series of ``slices`` slices (a generator: memory stays flat)."""
    patient = _Patient("Bench^Mark", f"BENCH-{seed}", "19750505", "O")
    study = _Study(
        patient=patient,
        uid=sample_uid(seed, "bench-study", slices, rows, columns),
        date="20250101",
        time="120000",
        accession=f"BENCH{seed:04d}",
        study_id="B0001",
        description=f"Benchmark CT {slices} slices",
        referring="Welby^Marcus",
    )
    series = _Series(
        study,
        sample_uid(seed, "bench-series", study.uid),
        1,
        "CT",
        f"Axial {rows}x{columns}",
        "CHEST",
        sample_uid(seed, "bench-for", study.uid),
    )
    for index in range(slices):
        yield _ct_slice(
            series,
            seed,
            index,
            rows=rows,
            columns=columns,
            thickness=1.0,
            intercept=-1024.0,
            slope=1.0,
            kernel="STANDARD",
        )


def write_part10(ds: Dataset, path: pathlib.Path) -> None:
    """Write ``ds`` as a DICOM Part-10 file (preamble, DICM prefix and File Meta Information)."""
    ds.save_as(path, enforce_file_format=True)


def sop_classes(datasets: Sequence[Dataset]) -> list[UID]:
    """Distinct SOP Class UIDs in ``datasets``, in first-seen order (for proposing contexts)."""
    seen: dict[UID, None] = {}
    for ds in datasets:
        seen.setdefault(UID(ds.SOPClassUID), None)
    return list(seen)

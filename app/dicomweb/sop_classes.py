"""Storage SOP classes proposed for C-GET when the PACS does not say which classes a resource
holds (e.g. DCMTK dcmqrscp does not return SOPClassUID in C-FIND answers)."""

from __future__ import annotations

import pydicom.uid as uid

_NAMES = (
    "CTImageStorage",
    "EnhancedCTImageStorage",
    "MRImageStorage",
    "EnhancedMRImageStorage",
    "ComputedRadiographyImageStorage",
    "DigitalXRayImageStorageForPresentation",
    "DigitalXRayImageStorageForProcessing",
    "DigitalMammographyXRayImageStorageForPresentation",
    "UltrasoundImageStorage",
    "UltrasoundMultiFrameImageStorage",
    "SecondaryCaptureImageStorage",
    "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
    "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
    "MultiFrameTrueColorSecondaryCaptureImageStorage",
    "NuclearMedicineImageStorage",
    "PositronEmissionTomographyImageStorage",
    "XRayAngiographicImageStorage",
    "XRayRadiofluoroscopicImageStorage",
    "BasicTextSRStorage",
    "EnhancedSRStorage",
    "ComprehensiveSRStorage",
    "KeyObjectSelectionDocumentStorage",
    "GrayscaleSoftcopyPresentationStateStorage",
    "SegmentationStorage",
    "RTImageStorage",
    "RTDoseStorage",
    "RTStructureSetStorage",
    "RTPlanStorage",
    "EncapsulatedPDFStorage",
    "VLPhotographicImageStorage",
    "DigitalIntraOralXRayImageStorageForPresentation",
    "BreastTomosynthesisImageStorage",
    "XRay3DAngiographicImageStorage",
    "EnhancedPETImageStorage",
    "OphthalmicPhotography8BitImageStorage",
    "VLWholeSlideMicroscopyImageStorage",
    "RawDataStorage",
    "MammographyCADSRStorage",
    "XRayRadiationDoseSRStorage",
    "Comprehensive3DSRStorage",
)

COMMON_STORAGE_SOP_CLASSES: tuple[str, ...] = tuple(str(getattr(uid, n)) for n in _NAMES)

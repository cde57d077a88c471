"""SOP classes: the verification and query/retrieve classes the gateway and its demo PACS use,
and the storage classes proposed for C-GET when the PACS does not say which classes a resource
holds (e.g. DCMTK dcmqrscp does not return SOPClassUID in C-FIND answers)."""

from __future__ import annotations

import pydicom.uid as uid
from pydicom.uid import UID

# Verification (PS3.4 A.4) and Query/Retrieve (PS3.4 C.6.1.3, C.6.2.3) SOP classes, under the
# names pynetdicom.sop_class gives them: it builds those names at run time, which static type
# checkers cannot see.
Verification = UID("1.2.840.10008.1.1")
PatientRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.1.1")
PatientRootQueryRetrieveInformationModelMove = UID("1.2.840.10008.5.1.4.1.2.1.2")
PatientRootQueryRetrieveInformationModelGet = UID("1.2.840.10008.5.1.4.1.2.1.3")
StudyRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.2.1")
StudyRootQueryRetrieveInformationModelMove = UID("1.2.840.10008.5.1.4.1.2.2.2")
StudyRootQueryRetrieveInformationModelGet = UID("1.2.840.10008.5.1.4.1.2.2.3")

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

_BY_MODALITY: dict[str, tuple[str, ...]] = {
    "CT": ("CTImageStorage", "EnhancedCTImageStorage", "SecondaryCaptureImageStorage"),
    "MR": ("MRImageStorage", "EnhancedMRImageStorage", "SecondaryCaptureImageStorage"),
    "CR": ("ComputedRadiographyImageStorage", "DigitalXRayImageStorageForPresentation"),
    "DX": ("DigitalXRayImageStorageForPresentation", "DigitalXRayImageStorageForProcessing",
           "ComputedRadiographyImageStorage"),
    "MG": ("DigitalMammographyXRayImageStorageForPresentation",
           "BreastTomosynthesisImageStorage", "DigitalXRayImageStorageForPresentation"),
    "US": ("UltrasoundImageStorage", "UltrasoundMultiFrameImageStorage",
           "SecondaryCaptureImageStorage"),
    "NM": ("NuclearMedicineImageStorage",),
    "PT": ("PositronEmissionTomographyImageStorage", "EnhancedPETImageStorage"),
    "XA": ("XRayAngiographicImageStorage", "XRay3DAngiographicImageStorage"),
    "RF": ("XRayRadiofluoroscopicImageStorage",),
    "SR": ("BasicTextSRStorage", "EnhancedSRStorage", "ComprehensiveSRStorage",
           "XRayRadiationDoseSRStorage", "MammographyCADSRStorage", "Comprehensive3DSRStorage"),
    "KO": ("KeyObjectSelectionDocumentStorage",),
    "PR": ("GrayscaleSoftcopyPresentationStateStorage",),
    "SEG": ("SegmentationStorage",),
    "RTIMAGE": ("RTImageStorage",), "RTDOSE": ("RTDoseStorage",),
    "RTSTRUCT": ("RTStructureSetStorage",), "RTPLAN": ("RTPlanStorage",),
    "DOC": ("EncapsulatedPDFStorage",), "XC": ("VLPhotographicImageStorage",),
    "IO": ("DigitalIntraOralXRayImageStorageForPresentation",),
    "OP": ("OphthalmicPhotography8BitImageStorage",),
    "SM": ("VLWholeSlideMicroscopyImageStorage",),
    "OT": ("SecondaryCaptureImageStorage", "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
           "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
           "MultiFrameTrueColorSecondaryCaptureImageStorage", "RawDataStorage"),
}


def sop_classes_for_modality(modality: str) -> tuple[str, ...]:
    """The storage classes a series of this Modality usually holds (empty when unknown)."""
    return tuple(str(getattr(uid, n)) for n in _BY_MODALITY.get(modality.strip().upper(), ()))

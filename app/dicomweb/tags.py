"""Data element tags (PS3.6) the gateway reads or writes by number, each named once here.

Names follow the PS3.6 keyword (``SOP_INSTANCE_UID`` for SOPInstanceUID); the NumberOf*Related*
counts drop the ``NUMBER_OF_`` prefix.
"""

from __future__ import annotations

# File Meta Information (PS3.10 7.1)
MEDIA_STORAGE_SOP_CLASS_UID = 0x00020002
TRANSFER_SYNTAX_UID = 0x00020010

SPECIFIC_CHARACTER_SET = 0x00080005
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_DATE = 0x00080020
STUDY_TIME = 0x00080030
MODALITY = 0x00080060
MODALITIES_IN_STUDY = 0x00080061
SOP_CLASSES_IN_STUDY = 0x00080062
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
STUDY_RELATED_SERIES = 0x00201206  # NumberOfStudyRelatedSeries
STUDY_RELATED_INSTANCES = 0x00201208  # NumberOfStudyRelatedInstances
SERIES_RELATED_INSTANCES = 0x00201209  # NumberOfSeriesRelatedInstances

FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
PIXEL_DATA = 0x7FE00010
PIXEL_DATA_TAGS: frozenset[int] = frozenset({PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_FLOAT_PIXEL_DATA})
"""The three pixel data elements (PS3.3 C.7.6.3): bulk data wherever they stand."""

"""DICOMweb gateway: QIDO-RS and WADO-RS over a DIMSE-only PACS."""

__version__ = "0.1.0"

"""URLs of DICOMweb resources under a service base URL (for RetrieveURL, Content-Location)."""

from __future__ import annotations


def study_url(base: str, study: str) -> str:
    """The Study resource URL."""
    return f"{base}/studies/{study}"


def series_url(base: str, study: str, series: str) -> str:
    """The Series resource URL."""
    return f"{base}/studies/{study}/series/{series}"


def instance_url(base: str, study: str, series: str, instance: str) -> str:
    """The Instance resource URL."""
    return f"{base}/studies/{study}/series/{series}/instances/{instance}"

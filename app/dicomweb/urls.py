"""URLs of DICOMweb resources under a service base URL (for RetrieveURL, Content-Location)."""

from __future__ import annotations

import json
import secrets

#: Prefix of the tokens that stand for a base URL in cached DICOM JSON (see ``fill_base_url``).
BASE_TOKEN_PREFIX = "urn:dwg:base:"


def new_base_token() -> str:
    """A fresh, unguessable stand-in for the base URL: no stored data can contain it."""
    return BASE_TOKEN_PREFIX + secrets.token_hex(16)


def fill_base_url(raw: bytes, token: str, base_url: str) -> bytes:
    """DICOM JSON minted under ``token`` with ``base_url`` in its place.

    The token only ever begins a JSON string (a URL minted under it), and the base URL goes in
    JSON-escaped, so the result is valid JSON whatever the base URL holds."""
    escaped = json.dumps(base_url, ensure_ascii=True)[1:-1]
    return raw.replace(b'"' + token.encode("ascii"), b'"' + escaped.encode("ascii"))


def study_url(base: str, study: str) -> str:
    """The Study resource URL."""
    return f"{base}/studies/{study}"


def series_url(base: str, study: str, series: str) -> str:
    """The Series resource URL."""
    return f"{base}/studies/{study}/series/{series}"


def instance_url(base: str, study: str, series: str, instance: str) -> str:
    """The Instance resource URL."""
    return f"{base}/studies/{study}/series/{series}/instances/{instance}"

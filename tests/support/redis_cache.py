"""What the tests of the Redis cache share: gateway settings for a Redis (or Redis Cluster)
cache, optionally with the cache admin API on, and a WADO-RS multipart answer read as its
sorted SOP Instance UIDs."""

from __future__ import annotations

import io
from typing import Any

import httpx
from pydicom import dcmread

from app.dicomweb.multipart import parse_multipart

ADMIN_TOKEN = "integration-admin-token-0123"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def redis_cache_settings(url: str, *, cluster: bool = False, admin: bool = False,
                         **extra: Any) -> dict[str, Any]:
    """Settings values for a gateway caching in the Redis at ``url`` (a Cluster when
    ``cluster``), with the admin API on under ``ADMIN_TOKEN`` when ``admin``."""
    values: dict[str, Any] = {"cache_backend": "redis", "redis_url": url}
    if cluster:
        values["redis_cluster"] = True
    if admin:
        values.update(cache_admin_enabled=True, admin_token=ADMIN_TOKEN)
    values.update(extra)
    return values


def sop_uids(response: httpx.Response) -> list[str]:
    """The SOP Instance UIDs of a 200 multipart/related answer of application/dicom parts,
    sorted."""
    assert response.status_code == 200, response.text[:300]
    parts = parse_multipart(response.content, response.headers["content-type"])
    return sorted(str(dcmread(io.BytesIO(p.body), stop_before_pixels=True).SOPInstanceUID)
                  for p in parts)

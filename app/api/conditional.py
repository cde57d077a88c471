"""HTTP caching for immutable SOP instances: ETags, Cache-Control and If-None-Match -> 304."""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import Response

IMMUTABLE = "private, max-age=31536000, immutable"
REVALIDATE = "private, max-age=60, must-revalidate"


def etag_for(*parts: str) -> str:
    """A strong ETag from the parts that identify a representation."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    return f'"{digest}"'


def not_modified(request: Request, etag: str, cache_control: str) -> Response | None:
    """A 304 when If-None-Match names ``etag``, else None (RFC 9110 13.1.2). ``*`` is not
    honoured here: it would answer 304 for an instance before knowing that it exists."""
    header = request.headers.get("if-none-match")
    if not header:
        return None
    candidates = {c.strip().removeprefix("W/") for c in header.split(",")}
    if etag in candidates:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache_control})
    return None


def caching_headers(etag: str | None, cache_control: str) -> dict[str, str]:
    """ETag (when known) and Cache-Control for a response."""
    headers = {"Cache-Control": cache_control}
    if etag:
        headers["ETag"] = etag
    return headers

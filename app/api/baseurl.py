"""The public base URL of a DICOMweb service, as clients behind proxies see it.

Order: the configured ``public_base_url``; else RFC 7239 ``Forwarded``; else ``X-Forwarded-Proto``
/ ``X-Forwarded-Host`` / ``X-Forwarded-Prefix`` (when trusted); else the request's own URL.
"""

from __future__ import annotations

import re

from starlette.requests import Request

_FORWARDED_PAIR = re.compile(r'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)')


def _first_forwarded(header: str) -> dict[str, str]:
    """The parameters of the first (client-most) element of a Forwarded header."""
    first = header.split(",")[0]
    out: dict[str, str] = {}
    for key, value in _FORWARDED_PAIR.findall(first):
        out[key.lower()] = value.strip('"')
    return out


def origin_of(request: Request, *, public_base_url: str | None, trust_forwarded: bool) -> str:
    """scheme://host[:port][/prefix] under which this gateway is reached, no trailing slash."""
    if public_base_url:
        return public_base_url.rstrip("/")
    scheme = request.url.scheme
    host = request.headers.get("host") or request.url.netloc
    prefix = request.scope.get("root_path", "")
    if trust_forwarded:
        forwarded = request.headers.get("forwarded")
        if forwarded:
            params = _first_forwarded(forwarded)
            scheme = params.get("proto", scheme)
            host = params.get("host", host)
        else:
            proto = request.headers.get("x-forwarded-proto")
            fhost = request.headers.get("x-forwarded-host")
            if proto:
                scheme = proto.split(",")[0].strip()
            if fhost:
                host = fhost.split(",")[0].strip()
            port = request.headers.get("x-forwarded-port")
            if port and fhost and ":" not in host:
                default = {"http": "80", "https": "443"}.get(scheme)
                if port.strip() != default:
                    host = f"{host}:{port.strip()}"
        fprefix = request.headers.get("x-forwarded-prefix")
        if fprefix:
            prefix = "/" + fprefix.split(",")[0].strip().strip("/")
    return f"{scheme}://{host}{prefix.rstrip('/')}"

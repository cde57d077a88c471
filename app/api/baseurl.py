"""The public base URL of a DICOMweb service, as clients behind proxies see it.

Order: the configured ``public_base_url``; else RFC 7239 ``Forwarded``; else ``X-Forwarded-Proto``
/ ``X-Forwarded-Host`` / ``X-Forwarded-Prefix`` (when trusted); else the request's own URL.
"""

from __future__ import annotations

import re

from starlette.requests import Request

_FORWARDED_PAIR = re.compile(r'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*(;|,|$)')
_SCHEME = re.compile(r"^https?$", re.IGNORECASE)
# RFC 3986 host (reg-name, IPv4 or [IPv6]) with an optional port: nothing that could smuggle a
# path, query or user info into the URLs built from it.
_HOST = re.compile(r"^(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")
_PATH = re.compile(r"^[A-Za-z0-9._~!$&'()*+;=:@%/-]+$")  # RFC 3986 path characters only


def _first_forwarded(header: str) -> dict[str, str]:
    """The parameters of the first (client-most) element of a Forwarded header (RFC 7239 4);
    quoted values may contain commas and semicolons."""
    out: dict[str, str] = {}
    for key, value, separator in _FORWARDED_PAIR.findall(header):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out.setdefault(key.lower(), value)
        if separator == ",":
            break
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
            if _SCHEME.match(params.get("proto", "")):
                scheme = params["proto"].lower()
            if _HOST.match(params.get("host", "")):
                host = params["host"]
        else:
            proto = (request.headers.get("x-forwarded-proto") or "").split(",")[0].strip()
            fhost = (request.headers.get("x-forwarded-host") or "").split(",")[0].strip()
            if not _HOST.match(fhost):
                fhost = ""
            if _SCHEME.match(proto):
                scheme = proto.lower()
            if fhost:
                host = fhost
            port = request.headers.get("x-forwarded-port")
            if port and port.strip().isdigit() and fhost and not re.search(r":\d+$", host):
                default = {"http": "80", "https": "443"}.get(scheme)
                if port.strip() != default:
                    host = f"{host}:{port.strip()}"
        fprefix = (request.headers.get("x-forwarded-prefix") or "").split(",")[0].strip()
        if fprefix and _PATH.match(fprefix):
            prefix = "/" + fprefix.strip("/")
    return f"{scheme}://{host}{prefix.rstrip('/')}"

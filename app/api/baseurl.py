"""The public base URL of a DICOMweb service, as clients behind proxies see it, and the check
that the host a request names may be used at all.

Order: the configured ``public_base_url``; else RFC 7239 ``Forwarded``; else ``X-Forwarded-Proto``
/ ``X-Forwarded-Host`` / ``X-Forwarded-Prefix`` (when trusted); else the request's own URL.

Every host a request names (``Host``, and when trusted the forwarded host) must be an RFC 3986
``host[:port]``: a reg-name of unreserved characters, an IPv4 address or a bracketed IPv6
address, and a port of digits. A forwarded scheme must be http or https, a forwarded prefix a
plain path. Anything else is a 400 (``BadRequest``), never silently passed into a URL; with
``allowed_hosts`` configured, a host not listed is a 400 too. The URLs built from the result are
therefore free of quotes, backslashes, spaces and control characters.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Sequence

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.problems import problem
from app.errors import BadRequest
from app.settings import Settings

log = logging.getLogger(__name__)

_FORWARDED_PAIR = re.compile(r'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*(;|,|$)')
_SCHEMES = ("http", "https")
_PORT = re.compile(r"[0-9]{1,5}")
# RFC 3986 3.2.2 host: IP-literal (IPv6 only; IPvFuture is refused) or a reg-name restricted to
# unreserved characters (no pct-encoding, no sub-delims: no DNS name needs them), 3.2.3 port.
_AUTHORITY = re.compile(r"^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9._~-]{1,253})(?::([0-9]{1,5}))?$")
# RFC 3986 3.3 path-absolute characters (pchar and "/"), percent-escapes well formed.
_PATH = re.compile(r"^(?:[A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-Fa-f]{2})+$")


def parse_authority(text: str, what: str) -> str:
    """``host[:port]`` validated and normalised (lower case), else BadRequest naming ``what``."""
    match = _AUTHORITY.match(text)
    port = match.group(2) if match else None
    if match is None or (port is not None and int(port) > 65535):
        raise BadRequest(f"{what} {text[:100]!r} is not a valid host[:port] (RFC 3986 3.2.2)")
    host = match.group(1)
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise BadRequest(f"{what} {text[:100]!r}: not a valid IPv6 address") from None
    return text.lower()


def host_allowed(authority: str, allowed: Sequence[str]) -> bool:
    """Whether a normalised ``host[:port]`` matches ``allowed`` (empty: any host).

    A pattern without a port matches any port; ``*.example.org`` matches every name below
    example.org (not example.org itself); ``*`` matches everything."""
    if not allowed:
        return True
    host, port = _split(authority)
    for pattern in allowed:
        if pattern == "*":
            return True
        p_host, p_port = _split(pattern)
        if p_port is not None and p_port != port:
            continue
        if p_host.startswith("*."):
            if host.endswith(p_host[1:]) and len(host) > len(p_host) - 1:
                return True
        elif p_host == host:
            return True
    return False


def _split(authority: str) -> tuple[str, str | None]:
    """(host, port or None) of a ``host[:port]`` (IPv6 in brackets)."""
    if authority.startswith("["):
        end = authority.index("]")
        rest = authority[end + 1:]
        return authority[:end + 1], rest[1:] if rest.startswith(":") else None
    host, _, port = authority.partition(":")
    return host, port or None


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


def _scheme(value: str, what: str) -> str:
    if value.lower() not in _SCHEMES:
        raise BadRequest(f"{what} {value[:20]!r}: only http and https are accepted")
    return value.lower()


def _first(request: Request, name: str) -> str:
    """The first element of a comma-separated (proxy-chain) header, stripped."""
    return (request.headers.get(name) or "").split(",")[0].strip()


def _request_host(request: Request) -> str:
    """The Host header (one only), or the server address for an HTTP/1.0 request without it."""
    hosts = request.headers.getlist("host")
    if len(hosts) > 1:
        raise BadRequest("more than one Host header")
    if hosts:
        return parse_authority(hosts[0], "Host")
    server = request.scope.get("server")
    if not server:
        raise BadRequest("the request names no host (Host header missing)")
    address, port = server
    address = f"[{address}]" if ":" in str(address) else str(address)
    return parse_authority(f"{address}:{port}" if port else address, "server address")


def origin_of(request: Request, *, public_base_url: str | None, trust_forwarded: bool,
              allowed_hosts: Sequence[str] = ()) -> str:
    """scheme://host[:port][/prefix] under which this gateway is reached, no trailing slash;
    BadRequest for a malformed host, scheme or prefix, or a host ``allowed_hosts`` lacks."""
    scheme = request.url.scheme
    host = _request_host(request)
    prefix = request.scope.get("root_path", "")
    if trust_forwarded:
        forwarded = request.headers.get("forwarded")
        if forwarded:
            params = _first_forwarded(forwarded)
            if params.get("proto"):
                scheme = _scheme(params["proto"], "Forwarded proto")
            if params.get("host"):
                host = parse_authority(params["host"], "Forwarded host")
        else:
            proto, fhost = _first(request, "x-forwarded-proto"), _first(request, "x-forwarded-host")
            port = _first(request, "x-forwarded-port")
            if proto:
                scheme = _scheme(proto, "X-Forwarded-Proto")
            if fhost:
                host = parse_authority(fhost, "X-Forwarded-Host")
            if port:
                if not _PORT.fullmatch(port) or not 0 < int(port) <= 65535:
                    raise BadRequest(f"X-Forwarded-Port {port[:20]!r} is not a port number")
                if fhost and _split(host)[1] is None and port != {"http": "80",
                                                                  "https": "443"}.get(scheme):
                    host = f"{host}:{int(port)}"
        fprefix = _first(request, "x-forwarded-prefix")
        if fprefix:
            if not _PATH.match(fprefix) or any(s in (".", "..") for s in fprefix.split("/")):
                raise BadRequest(f"X-Forwarded-Prefix {fprefix[:100]!r} is not a plain path")
            prefix = "/" + fprefix.strip("/")
    if not host_allowed(host, allowed_hosts):
        raise BadRequest(f"host {host!r} is not one of the allowed hosts")
    if public_base_url:
        return public_base_url.rstrip("/")
    return f"{scheme}://{host}{prefix.rstrip('/')}"


def request_origin(request: Request, settings: Settings) -> str:
    """``origin_of`` with the gateway's settings."""
    return origin_of(request, public_base_url=settings.public_base_url,
                     trust_forwarded=settings.trust_forwarded_headers,
                     allowed_hosts=settings.allowed_hosts)


class TrustedHostMiddleware:
    """Answers 400 (DICOM JSON body) to any HTTP request whose host, forwarded scheme or prefix
    fails ``origin_of``, before any route runs: no handler ever sees an untrusted host."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                request_origin(Request(scope), self.settings)
            except BadRequest as exc:
                log.info("%s %s -> 400: %s", scope.get("method"), scope.get("path"), exc.message)
                await problem(400, exc.message)(scope, receive, send)
                return
        await self.app(scope, receive, send)

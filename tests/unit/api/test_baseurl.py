"""The public base URL behind proxies: configured URL, RFC 7239 Forwarded, X-Forwarded-*,
and untrusted mode."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from app.api.baseurl import origin_of


def request(
    headers: dict[str, str] | None = None,
    *,
    scheme: str = "http",
    host: str = "gw.internal:8000",
    root_path: str = "",
) -> Request:
    raw = [(b"host", host.encode())] if host else []
    raw += [(k.lower().encode(), v.encode("latin-1")) for k, v in (headers or {}).items()]
    scope = {
        "type": "http",
        "method": "GET",
        "scheme": scheme,
        "server": ("10.0.0.5", 8000),
        "path": "/dicomweb/studies",
        "root_path": root_path,
        "query_string": b"",
        "headers": raw,
    }
    return Request(scope)


def origin(
    headers: dict[str, str] | None = None,
    *,
    trust: bool = True,
    public: str | None = None,
    **kw: str,
) -> str:
    return origin_of(request(headers, **kw), public_base_url=public, trust_forwarded=trust)


def test_plain_request_uses_host_header() -> None:
    assert origin() == "http://gw.internal:8000"


def test_root_path_is_kept() -> None:
    assert origin(root_path="/gw") == "http://gw.internal:8000/gw"


def test_configured_public_base_url_wins_over_everything() -> None:
    headers = {"Forwarded": "proto=https;host=evil.example", "X-Forwarded-Host": "x.example"}
    assert origin(headers, public="https://pacs.example.org/dw/") == "https://pacs.example.org/dw"


@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        ("proto=https;host=gw.example.org", "https://gw.example.org"),
        ('for=192.0.2.60;proto=https;host="gw.example.org:8443"', "https://gw.example.org:8443"),
        (
            'for="[2001:db8:cafe::17]:4711";proto=https;host=gw.example.org',
            "https://gw.example.org",
        ),
        ("Proto=HTTPS;Host=gw.example.org", "https://gw.example.org"),
        ("proto=https", "https://gw.internal:8000"),
        ("host=gw.example.org", "http://gw.example.org"),
        # several elements: the first (client-most) one counts
        ("proto=https;host=first.example, proto=http;host=second.example", "https://first.example"),
        ("for=1.2.3.4;host=first.example,for=5.6.7.8;host=second.example", "http://first.example"),
        # a quoted value may hold commas and semicolons (RFC 7239 4)
        ('for="_a,b;c";proto=https;host=gw.example.org', "https://gw.example.org"),
        ('proto = https ; host = "gw.example.org"', "https://gw.example.org"),
    ],
)
def test_forwarded_header(forwarded: str, expected: str) -> None:
    assert origin({"Forwarded": forwarded}) == expected


def test_forwarded_wins_over_x_forwarded() -> None:
    headers = {
        "Forwarded": "proto=https;host=a.example",
        "X-Forwarded-Host": "b.example",
        "X-Forwarded-Proto": "http",
    }
    assert origin(headers) == "https://a.example"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Forwarded-Proto": "https"}, "https://gw.internal:8000"),
        ({"X-Forwarded-Host": "gw.example.org"}, "http://gw.example.org"),
        (
            {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example.org"},
            "https://gw.example.org",
        ),
        (
            {"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "a.example, b.example"},
            "https://a.example",
        ),
        (
            {
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "gw.example.org",
                "X-Forwarded-Port": "8443",
            },
            "https://gw.example.org:8443",
        ),
        (
            {
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "gw.example.org",
                "X-Forwarded-Port": "443",
            },
            "https://gw.example.org",
        ),
        (
            {"X-Forwarded-Host": "gw.example.org:8080", "X-Forwarded-Port": "8080"},
            "http://gw.example.org:8080",
        ),
        (
            {"X-Forwarded-Host": "[2001:db8::1]", "X-Forwarded-Port": "8080"},
            "http://[2001:db8::1]:8080",
        ),
        (
            {"X-Forwarded-Host": "gw.example.org", "X-Forwarded-Prefix": "/proxy/"},
            "http://gw.example.org/proxy",
        ),
        ({"X-Forwarded-Prefix": "proxy"}, "http://gw.internal:8000/proxy"),
        ({"X-Forwarded-Prefix": "/"}, "http://gw.internal:8000"),
    ],
)
def test_x_forwarded_headers(headers: dict[str, str], expected: str) -> None:
    assert origin(headers) == expected


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-Proto": "javascript"},
        {"X-Forwarded-Host": "evil.example/path?x="},
        {"X-Forwarded-Host": "user@evil.example"},
        {"X-Forwarded-Host": "evil example"},
        {"Forwarded": "proto=ftp;host=evil.example/x"},
        {"X-Forwarded-Port": "abc", "X-Forwarded-Host": "gw.internal:8000"},
        {"X-Forwarded-Prefix": "/a b"},
    ],
)
def test_malformed_forwarded_values_are_ignored(headers: dict[str, str]) -> None:
    assert origin(headers) == "http://gw.internal:8000"


def test_untrusted_mode_ignores_every_forwarded_header() -> None:
    headers = {
        "Forwarded": "proto=https;host=a.example",
        "X-Forwarded-Host": "b.example",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Prefix": "/p",
    }
    assert origin(headers, trust=False) == "http://gw.internal:8000"
    assert (
        origin({"X-Forwarded-Host": "b.example"}, trust=False, root_path="/gw")
        == "http://gw.internal:8000/gw"
    )


def test_request_scheme_is_used_without_headers() -> None:
    assert origin(scheme="https", host="gw.example.org") == "https://gw.example.org"

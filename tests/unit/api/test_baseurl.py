"""The public base URL behind proxies: configured URL, RFC 7239 Forwarded, X-Forwarded-*,
untrusted mode; host validation and allowed_hosts."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from app.api.baseurl import host_allowed, origin_of, parse_authority
from app.errors import BadRequest


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
    allowed: tuple[str, ...] = (),
    **kw: str,
) -> str:
    return origin_of(request(headers, **kw), public_base_url=public, trust_forwarded=trust,
                     allowed_hosts=allowed)


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
        {"X-Forwarded-Host": "evil.example\\"},
        {"Forwarded": "proto=ftp;host=evil.example"},
        {"Forwarded": "host=evil.example/x"},
        {"Forwarded": 'host="a\\"b"'},
        {"X-Forwarded-Port": "abc", "X-Forwarded-Host": "gw.internal:8000"},
        {"X-Forwarded-Port": "70000"},
        {"X-Forwarded-Prefix": "/a b"},
        {"X-Forwarded-Prefix": "/a/../b"},
        {"X-Forwarded-Prefix": "/a%zz"},
    ],
)
def test_malformed_forwarded_values_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(BadRequest):
        origin(headers)


@pytest.mark.parametrize("host", ["attacker.example\\", 'x"y', "a b", "a/b", "a@b", "a:", "a:x",
                                  "a:65536", "[::1", "[zz::1]", "[v1.x]", "a,b", "%41.example",
                                  "\u00e9.example", "a\tb"])
def test_malformed_host_header_is_refused(host: str) -> None:
    with pytest.raises(BadRequest):
        origin(host=host)


@pytest.mark.parametrize(("host", "normalised"), [
    ("GW.Example.org", "gw.example.org"), ("gw.example.org:8443", "gw.example.org:8443"),
    ("10.0.0.1:80", "10.0.0.1:80"), ("[2001:DB8::1]:8080", "[2001:db8::1]:8080"),
    ("localhost", "localhost"), ("my_host~1", "my_host~1")])
def test_valid_hosts(host: str, normalised: str) -> None:
    assert parse_authority(host, "Host") == normalised
    assert origin(host=host) == f"http://{normalised}"


@pytest.mark.parametrize(("authority", "allowed", "expected"), [
    ("gw.example.org", (), True),
    ("gw.example.org", ("gw.example.org",), True),
    ("gw.example.org:8443", ("gw.example.org",), True),
    ("gw.example.org:8443", ("gw.example.org:443",), False),
    ("a.gw.example.org", ("*.example.org",), True),
    ("example.org", ("*.example.org",), False),
    ("badexample.org", ("*.example.org",), False),
    ("anything:1", ("*",), True),
    ("[::1]:8080", ("[::1]",), True),
    ("[::1]:8080", ("[::1]:8081",), False),
    ("evil.example", ("gw.example.org", "*.example.org"), False),
])
def test_host_allowed(authority: str, allowed: tuple[str, ...], expected: bool) -> None:
    assert host_allowed(authority, allowed) is expected


def test_allowed_hosts_apply_to_the_forwarded_host_and_with_a_public_base_url() -> None:
    allowed = ("gw.example.org",)
    assert origin({"X-Forwarded-Host": "gw.example.org"}, allowed=allowed,
                  host="internal:8000") == "http://gw.example.org"
    with pytest.raises(BadRequest):
        origin({"X-Forwarded-Host": "evil.example"}, allowed=allowed)
    with pytest.raises(BadRequest):
        origin(host="evil.example", allowed=allowed, public="https://gw.example.org")
    assert origin(host="gw.example.org", allowed=allowed,
                  public="https://pub.example/dw") == "https://pub.example/dw"


def test_request_without_host_uses_the_server_address() -> None:
    assert origin(host="") == "http://10.0.0.5:8000"


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

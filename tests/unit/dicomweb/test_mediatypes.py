"""Unit tests for app.dicomweb.mediatypes: Accept parsing and negotiation tables."""

from __future__ import annotations

import pytest

from app.dicomweb.mediatypes import (
    QIDO_OFFERS,
    MediaRange,
    Negotiated,
    Offer,
    accept_ranges,
    negotiate,
    parse_accept,
    split_outside_quotes,
    unquote,
)
from app.dicomweb.multipart import parse_content_type
from app.errors import NotAcceptable

JSON = "application/dicom+json"
PLAIN_JSON = "application/json"
XML_MULTIPART = 'multipart/related; type="application/dicom+xml"'

# -- quoted-string (RFC 9110 5.6.4), shared by Accept and Content-Type parsing ----------------

# (as sent, the value it stands for): a backslash escapes any character inside quotes.
QUOTED_STRINGS = [
    ("token", "token"),
    ("  token  ", "token"),
    ('"a/b"', "a/b"),
    ('""', ""),
    (r'"a\"b"', 'a"b'),  # escaped quote
    (r'"a\\b"', "a\\b"),  # escaped backslash
    (r'"a\\\"b"', 'a\\"b'),  # escaped backslash, then escaped quote
    (r'"a\bc"', "abc"),  # any other escaped character stands for itself
    (r'"a;b,c"', "a;b,c"),  # separators inside quotes are text
    ('"', '"'),  # a lone quote is not a quoted-string
]


@pytest.mark.parametrize(("sent", "value"), QUOTED_STRINGS)
def test_unquote_follows_rfc_9110_quoted_pairs(sent: str, value: str) -> None:
    assert unquote(sent) == value


# A lone quote opens a quoted-string that runs to the end of the header: no parameter follows.
SHARED = [(sent, value) for sent, value in QUOTED_STRINGS if value.strip() and sent != '"']


@pytest.mark.parametrize(("sent", "value"), SHARED)
def test_accept_and_content_type_unescape_parameters_alike(sent: str, value: str) -> None:
    [accept] = parse_accept(f"multipart/related; type={sent}; q=0.5")
    _, content_type = parse_content_type(f"multipart/related; type={sent}; boundary=b")
    assert accept.part_type == content_type["type"] == value


def test_split_outside_quotes_skips_escaped_quotes() -> None:
    assert split_outside_quotes(r'a; b="x\";y"; c', ";") == ["a", r' b="x\";y"', " c"]
    assert split_outside_quotes("a,b", ";") == ["a,b"]


# -- parse_accept ------------------------------------------------------------------------------


def test_absent_or_empty_accept_is_empty() -> None:
    assert parse_accept(None) == []
    assert parse_accept("") == []
    assert parse_accept("  ,  ") == []


def test_unquoted_params_as_sent_by_ohif() -> None:
    [r] = parse_accept("multipart/related; type=application/octet-stream; transfer-syntax=*")
    assert (r.type, r.subtype) == ("multipart", "related")
    assert dict(r.params) == {"type": "application/octet-stream", "transfer-syntax": "*"}
    assert r.part_type == "application/octet-stream"
    assert r.transfer_syntax == "*"
    assert r.q == 1.0


def test_quoted_params_whitespace_and_case() -> None:
    [r] = parse_accept(
        '  Multipart/Related ;TYPE="image/jpeg" ; Transfer-Syntax = "1.2.840.10008.1.2.4.50" '
    )
    assert r.media_type == "multipart/related"
    assert dict(r.params) == {"type": "image/jpeg", "transfer-syntax": "1.2.840.10008.1.2.4.50"}


def test_quoted_comma_does_not_split_ranges() -> None:
    ranges = parse_accept('multipart/related; type="a/b,c"; q=0.5, text/plain')
    assert [(r.media_type, r.part_type, r.q) for r in ranges] == [
        ("text/plain", None, 1.0),
        ("multipart/related", "a/b,c", 0.5),
    ]


def test_sorted_by_q_then_specificity_then_order() -> None:
    header = (
        "*/*;q=0.1, application/*;q=0.5, application/dicom+json;q=0.5, "
        'multipart/related; type="application/dicom+xml"; q=0.5, text/html, image/png'
    )
    assert [(r.media_type, r.q) for r in parse_accept(header)] == [
        ("text/html", 1.0),
        ("image/png", 1.0),
        ("multipart/related", 0.5),
        ("application/dicom+json", 0.5),
        ("application/*", 0.5),
        ("*/*", 0.1),
    ]


@pytest.mark.parametrize(
    ("header", "q"),
    [
        ("text/plain;q=0.25", 0.25),
        ("text/plain; q=0", 0.0),
        ("text/plain;q=abc", 1.0),  # invalid q counts as 1 (documented choice)
        ("text/plain;q=1.5", 1.0),
        ("text/plain;q=-1", 1.0),
        ("text/plain;q=nan", 1.0),
        ('text/plain;q="0.5"', 0.5),
    ],
)
def test_q_values(header: str, q: float) -> None:
    [r] = parse_accept(header)
    assert r.q == q
    assert "q" not in r.params


def test_params_after_q_are_kept() -> None:
    [r] = parse_accept('multipart/related; q=0.8; type="application/dicom"; transfer-syntax=*')
    assert r.q == 0.8
    assert r.part_type == "application/dicom"
    assert r.transfer_syntax == "*"


def test_malformed_entries_are_dropped_and_bare_star_is_any() -> None:
    ranges = parse_accept("garbage, */json, text/, *; q=.2")
    assert [(r.media_type, r.q) for r in ranges] == [("*/*", 0.2)]


def test_specificity() -> None:
    def spec(header: str) -> int:
        return parse_accept(header)[0].specificity

    assert spec("*/*") == 0
    assert spec("application/*") == 1
    assert spec("application/dicom+json") == 2
    assert spec('multipart/related; type="application/dicom"') == 3
    assert spec('multipart/related; type="application/dicom"; transfer-syntax=*') == 3
    assert spec('multipart/related; type="application/dicom"; transfer-syntax=1.2.3') == 4


@pytest.mark.parametrize(
    ("header", "args", "expected"),
    [
        ("*/*", ("application/dicom+json",), True),
        ("application/*", ("application/dicom+json",), True),
        ("application/*", ("multipart/related", "application/dicom"), False),
        ("multipart/*", ("multipart/related", "application/dicom"), True),
        ("multipart/related", ("multipart/related", "application/dicom"), True),
        (
            "multipart/related; type=application/dicom",
            ("multipart/related", "application/dicom"),
            True,
        ),
        ("multipart/related; type=application/dicom", ("multipart/related", "image/jpeg"), False),
        ("multipart/related; type=image/*", ("multipart/related", "image/jpeg"), True),
        ("application/dicom+json; type=whatever", ("application/dicom+json",), True),
        ("multipart/related; transfer-syntax=*", ("multipart/related", "a/b", "1.2.3"), True),
        ("multipart/related; transfer-syntax=1.2.3", ("multipart/related", "a/b", "1.2.3"), True),
        ("multipart/related; transfer-syntax=1.2.4", ("multipart/related", "a/b", "1.2.3"), False),
        ("multipart/related; transfer-syntax=1.2.4", ("multipart/related", "a/b", None), True),
        ("image/jpeg", ("application/dicom+json",), False),
    ],
)
def test_media_range_matches(header: str, args: tuple, expected: bool) -> None:
    [r] = parse_accept(header)
    assert r.matches(*args) is expected


# -- negotiate: the QIDO table -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("*/*", JSON),
        ("*", JSON),
        ("application/*", JSON),
        ("application/dicom+json", JSON),
        ("Application/DICOM+JSON", JSON),
        ("application/json", PLAIN_JSON),
        ('multipart/related; type="application/dicom+xml"', XML_MULTIPART),
        ("multipart/related; type=application/dicom+xml", XML_MULTIPART),
        ('multipart/related; type="Application/Dicom+XML"', XML_MULTIPART),
        ("multipart/related", XML_MULTIPART),
        ("multipart/*", XML_MULTIPART),
        (
            "application/dicom+json;q=0.5, multipart/related; type=application/dicom+xml",
            XML_MULTIPART,
        ),
        ("multipart/related; type=application/dicom+xml;q=0.4, application/dicom+json;q=0.5", JSON),
        # equal q: the range listed first wins among explicit ones
        ("application/dicom+json, multipart/related; type=application/dicom+xml", JSON),
        ("multipart/related; type=application/dicom+xml, application/dicom+json", XML_MULTIPART),
        ("application/json, application/dicom+json", PLAIN_JSON),
        # an explicit range beats a wildcard of equal q
        ("*/*, multipart/related; type=application/dicom+xml", XML_MULTIPART),
        # q=0 exclusions: the most specific matching range decides
        ("*/*, application/dicom+json;q=0", PLAIN_JSON),
        ("*/*;q=0.1, application/dicom+json;q=0, application/json;q=0", XML_MULTIPART),
        ("multipart/related; type=application/dicom+xml; q=0, multipart/*", None),
        ("application/dicom+json;q=0", None),
        # browsers
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", JSON),
        ("application/dicom+json; q=abc", JSON),
        # nothing we can produce
        ("image/jpeg", None),
        ("application/dicom+xml", None),
        ('multipart/related; type="application/dicom"', None),
        ("text/*", None),
    ],
)
def test_qido_table(header: str, expected: str | None) -> None:
    result = negotiate(parse_accept(header), QIDO_OFFERS)
    if expected is None:
        assert result is None
    else:
        assert result is not None
        assert result.offer.content_type == expected
        assert result.defaulted is False
        assert result.q > 0


@pytest.mark.parametrize("header", [None, "", "garbage"])
def test_qido_without_usable_accept_defaults_to_json(header: str | None) -> None:
    assert negotiate(parse_accept(header), QIDO_OFFERS) == Negotiated(
        offer=Offer(JSON), transfer_syntax=None, q=1.0, defaulted=True
    )


@pytest.mark.parametrize("header", ["nope", "garbage, also garbage", "*/json", "text",
                                    "application/", 'nope; type="x"'])
def test_accept_without_any_media_range_is_406(header: str) -> None:
    """PS3.18 8.7.3.3: 406 or the default; the gateway chooses 406 (docs/conformance.md)."""
    with pytest.raises(NotAcceptable) as info:
        accept_ranges(header)
    assert info.value.http_status == 406


@pytest.mark.parametrize("header", [
    None, "", "  ", ",", "nope, */*", "*",
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
])
def test_accept_with_a_media_range_or_none_at_all_is_fine(header: str | None) -> None:
    assert accept_ranges(header) == parse_accept(header)


def test_negotiate_without_offers() -> None:
    assert negotiate(parse_accept("*/*"), ()) is None
    assert negotiate([], ()) is None


# -- negotiate: transfer syntax (a WADO-like table) --------------------------------------------

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
FRAME_OFFERS = (
    Offer("multipart/related", "application/octet-stream", EXPLICIT_LE),
    Offer("multipart/related", "image/jpeg", JPEG_BASELINE),
)


@pytest.mark.parametrize(
    ("header", "part_type", "requested", "q"),
    [
        (
            "multipart/related; type=application/octet-stream; transfer-syntax=*",
            "application/octet-stream",
            "*",
            1.0,
        ),
        (
            f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}',
            "image/jpeg",
            JPEG_BASELINE,
            1.0,
        ),
        (
            'multipart/related; type="application/octet-stream"',
            "application/octet-stream",
            None,
            1.0,
        ),
        (
            f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}; q=0.9, '
            'multipart/related; type="application/octet-stream"; transfer-syntax=*; q=0.5',
            "image/jpeg",
            JPEG_BASELINE,
            0.9,
        ),
        ("multipart/related; transfer-syntax=*", "application/octet-stream", "*", 1.0),
        ("*/*", "application/octet-stream", None, 1.0),
        (
            'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.70',
            None,
            None,
            0,
        ),
        (
            f"multipart/related; type=application/octet-stream; transfer-syntax={JPEG_BASELINE}",
            None,
            None,
            0,
        ),
    ],
)
def test_transfer_syntax_negotiation(
    header: str, part_type: str | None, requested: str | None, q: float
) -> None:
    result = negotiate(parse_accept(header), FRAME_OFFERS)
    if part_type is None:
        assert result is None
        return
    assert result is not None
    assert result.offer.part_type == part_type
    assert result.transfer_syntax == requested
    assert result.q == q


def test_media_range_is_hashable_and_offer_content_type() -> None:
    [r] = parse_accept("application/dicom+json")
    assert hash(r) == hash(MediaRange("application", "dicom+json", {}, 1.0, 0))
    assert Offer("application/dicom+json").content_type == "application/dicom+json"
    assert (
        Offer("multipart/related", "application/dicom", EXPLICIT_LE).content_type
        == 'multipart/related; type="application/dicom"'
    )

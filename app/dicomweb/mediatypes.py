"""Accept header parsing and table-driven media type negotiation (PS3.18 8.7; RFC 9110 12.5.1).

Lenient at the boundary: unquoted ``type=``/``transfer-syntax=`` values (OHIF sends them),
stray whitespace, a bare ``*``, and invalid q-values are accepted. Offers live in tables such as
``QIDO_OFFERS`` and are tested as tables.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from app.errors import NotAcceptable

__all__ = [
    "AS_STORED",
    "DICOM",
    "DICOM_JSON",
    "DICOM_XML",
    "MULTIPART_RELATED",
    "OCTET_STREAM",
    "ZIP",
    "QIDO_OFFERS",
    "accept_ranges",
    "MediaRange",
    "Negotiated",
    "Offer",
    "negotiate",
    "parse_accept",
    "split_outside_quotes",
    "unquote",
]

logger = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
MULTIPART_RELATED = "multipart/related"
OCTET_STREAM = "application/octet-stream"
ZIP = "application/zip"
#: ``transfer-syntax=*``: any syntax; for a retrieval, each instance as it is stored
#: (PS3.18 8.7.3.5.2).
AS_STORED = "*"


def split_outside_quotes(text: str, separator: str) -> list[str]:
    """Split ``text`` on ``separator`` where it is not inside a quoted string (RFC 9110 5.6.4:
    within quotes a backslash escapes the next character, so ``\\"`` does not end them). The
    pieces keep their quotes and escapes: ``unquote`` each value."""
    out: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            out.append("".join(current))
            current = []
            continue
        current.append(char)
    out.append("".join(current))
    return out


_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def unquote(value: str) -> str:
    """A parameter value without surrounding white space and, when it is a quoted-string,
    without its quotes and with each quoted-pair replaced by the character it escapes
    (RFC 9110 5.6.4: a backslash escapes any character). A token is returned as it is."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return _QUOTED_PAIR.sub(r"\1", value[1:-1])
    return value


def _type_matches(pattern: str, media_type: str) -> bool:
    """``pattern`` (``*/*``, ``type/*`` or ``type/subtype``, any case) matches ``media_type``."""
    pattern, media_type = pattern.lower(), media_type.lower()
    if pattern in ("*", "*/*"):
        return True
    p_type, _, p_sub = pattern.partition("/")
    m_type, _, m_sub = media_type.partition("/")
    return p_type == m_type and (p_sub == "*" or p_sub == m_sub)


@dataclass(frozen=True)
class Offer:
    """One representation the server can produce.

    ``media_type`` is the response's type (``multipart/related`` for multipart ones);
    ``part_type`` the type of each part; ``transfer_syntax`` the syntax produced, or None when
    the syntax is not constrained by this offer (or does not apply, as for JSON).
    """

    media_type: str
    part_type: str | None = None
    transfer_syntax: str | None = None

    @property
    def content_type(self) -> str:
        """The offer as a media type string (without a multipart boundary)."""
        if self.part_type is None:
            return self.media_type
        return f'{self.media_type}; type="{self.part_type}"'


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: ``type/subtype`` with parameters and a quality value.

    Parameter names are lower-case and values unquoted; ``q`` is not among the parameters.
    ``position`` is the entry's index in the header, used to keep ties in client order.
    """

    type: str
    subtype: str
    params: Mapping[str, str] = field(default_factory=dict, hash=False)
    q: float = 1.0
    position: int = 0

    @property
    def media_type(self) -> str:
        """``type/subtype``."""
        return f"{self.type}/{self.subtype}"

    @property
    def part_type(self) -> str | None:
        """The ``type`` parameter (for multipart ranges), if given."""
        return self.params.get("type") or None

    @property
    def transfer_syntax(self) -> str | None:
        """The ``transfer-syntax`` parameter, if given (``*`` means any)."""
        return self.params.get("transfer-syntax") or None

    @property
    def specificity(self) -> int:
        """0 for ``*/*``, 1 for ``type/*``, 2 for ``type/subtype``, +1 each for a ``type``
        parameter and a specific ``transfer-syntax`` (RFC 9110 12.5.1 precedence)."""
        if self.type == "*":
            return 0
        if self.subtype == "*":
            return 1
        specific_syntax = self.transfer_syntax not in (None, AS_STORED)
        return 2 + (self.part_type is not None) + specific_syntax

    def matches(
        self,
        media_type: str,
        part_type: str | None = None,
        transfer_syntax: str | None = None,
    ) -> bool:
        """True when this range accepts the given representation.

        The ``type`` parameter, when given, must match ``part_type`` (it may itself be a
        wildcard such as ``application/*``). The ``transfer-syntax`` parameter, when given,
        must equal ``transfer_syntax`` or be ``*``; a representation whose syntax is None is
        not constrained by it.
        """
        if not _type_matches(self.media_type, media_type):
            return False
        wanted_part = self.part_type
        if wanted_part is not None and part_type is not None:
            if not _type_matches(wanted_part, part_type):
                return False
        # A type parameter on a single-part type means nothing: ignored (PS3.18 8.7.8).
        wanted_syntax = self.transfer_syntax
        if wanted_syntax not in (None, AS_STORED) and transfer_syntax is not None:
            return wanted_syntax == transfer_syntax
        return True

    def matches_offer(self, offer: Offer) -> bool:
        """``matches`` applied to an ``Offer``."""
        return self.matches(offer.media_type, offer.part_type, offer.transfer_syntax)


@dataclass(frozen=True)
class Negotiated:
    """The outcome of negotiation: the chosen offer, the syntax asked for, and its quality.

    ``transfer_syntax`` is what the client requested for this offer (a UID, ``*`` or None);
    ``defaulted`` is True when there was no usable Accept and the first offer was taken, so the
    caller can decide whether to answer 406 instead (PS3.18 8.7.5).
    """

    offer: Offer
    transfer_syntax: str | None = None
    q: float = 1.0
    defaulted: bool = False


def _parse_q(raw: str, entry: str) -> float:
    """Parse a q-value; an invalid or out-of-range one counts as 1 (and is logged)."""
    try:
        q = float(raw.strip().strip('"'))
    except ValueError:
        q = float("nan")
    if not 0.0 <= q <= 1.0:  # also false for NaN
        logger.warning(
            "invalid q-value in Accept entry %r; treated as q=1 (RFC 9110 12.4.2)", entry
        )
        return 1.0
    return q


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an Accept header (or ``accept`` query parameter) into ranges, best first.

    Entries without a ``/`` are dropped, except a bare ``*``, read as ``*/*``. Parameters are
    kept whether they come before or after ``q``. An invalid q counts as 1. Ranges with q=0 are
    kept (they mark types as not acceptable). The result is sorted by q, then specificity, then
    header order. None or an empty header gives ``[]``.
    """
    if header is None or not header.strip():
        return []
    ranges: list[MediaRange] = []
    for position, entry in enumerate(split_outside_quotes(header, ",")):
        pieces = split_outside_quotes(entry, ";")
        media = pieces[0].strip().lower()
        if media == "*":
            media = "*/*"
        type_, slash, subtype = media.partition("/")
        if not slash or not type_ or not subtype or " " in media:
            if entry.strip():
                logger.debug("ignoring malformed Accept entry %r", entry)
            continue
        if type_ == "*" and subtype != "*":
            continue
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            name, eq, value = piece.partition("=")
            name = name.strip().lower()
            if not eq or not name:
                continue
            if name == "q":
                q = _parse_q(value, entry)
            else:
                params[name] = unquote(value).strip()  # lenient: " a/b " is a/b
        ranges.append(MediaRange(type_, subtype, params, q, position))
    ranges.sort(key=lambda r: (-r.q, -r.specificity, r.position))
    return ranges


def accept_ranges(header: str | None) -> list[MediaRange]:
    """``parse_accept``, except that a header naming no well-formed media range at all
    (``Accept: nope``) raises NotAcceptable: PS3.18 8.7.3.3 lets a server answer 406 or use the
    default; the gateway answers 406, as for any other type it cannot produce. Malformed entries
    next to a valid one (``nope, */*``) are still ignored, and a missing or empty header is not
    an error (the default representation)."""
    ranges = parse_accept(header)
    if not ranges and header is not None and any(
            entry.strip() for entry in split_outside_quotes(header, ",")):
        raise NotAcceptable(f"Accept {header[:100]!r} names no media type (type/subtype)")
    return ranges


def negotiate(accept: Sequence[MediaRange], offers: Sequence[Offer]) -> Negotiated | None:
    """Pick the offer the client prefers, or None when nothing is acceptable (406).

    For each offer the most specific matching range gives its quality (RFC 9110 12.5.1), so
    ``*/*, application/dicom+json;q=0`` excludes JSON. Among acceptable offers the highest q
    wins, then an explicit (non-wildcard) range, then the range listed first, then table order.
    An empty ``accept`` (no Accept header) yields the first offer with ``defaulted=True``.
    """
    if not offers:
        return None
    if not accept:
        return Negotiated(offer=offers[0], defaulted=True)
    best: tuple[tuple[float, int, int, int], Negotiated] | None = None
    for index, offer in enumerate(offers):
        matching = [r for r in accept if r.matches_offer(offer)]
        if not matching:
            continue
        decisive = max(matching, key=lambda r: (r.specificity, -r.position))
        if decisive.q <= 0.0:
            continue
        rank = (decisive.q, 1 if decisive.specificity >= 2 else 0, -decisive.position, -index)
        if best is None or rank > best[0]:
            best = (rank, Negotiated(offer, decisive.transfer_syntax, decisive.q))
    return best[1] if best is not None else None


#: QIDO-RS response representations (PS3.18 10.6.3.2, Table 8.7.3-2): DICOM JSON is the
#: default; plain ``application/json`` is accepted as an alias for clients that ask for it;
#: the Native DICOM Model comes as one XML part per result.
QIDO_OFFERS: tuple[Offer, ...] = (
    Offer(DICOM_JSON),
    Offer("application/json"),
    Offer(MULTIPART_RELATED, DICOM_XML),
)


EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


def instance_offers(syntaxes: Sequence[str]) -> tuple[Offer, ...]:
    """WADO-RS instance representations: multipart application/dicom in each syntax the gateway
    can produce, Explicit VR Little Endian first (the default, PS3.18 8.7.3.5.2)."""
    ordered = [EXPLICIT_VR_LE] + [ts for ts in syntaxes if ts != EXPLICIT_VR_LE]
    return tuple(Offer(MULTIPART_RELATED, DICOM, ts) for ts in ordered)


def zip_offers(syntaxes: Sequence[str]) -> tuple[Offer, ...]:
    """WADO-RS instances as one ZIP archive of Part-10 files (Supplement 211), in each syntax
    the gateway can produce, Explicit VR Little Endian first as for multipart. The part type is
    application/dicom: a ``type`` parameter naming anything else (metadata in a ZIP) does not
    match, and neither does a ``transfer-syntax`` the gateway cannot produce."""
    ordered = [EXPLICIT_VR_LE] + [ts for ts in syntaxes if ts != EXPLICIT_VR_LE]
    return tuple(Offer(ZIP, DICOM, ts) for ts in ordered)


def frame_offers(frame_media: Mapping[str, str]) -> tuple[Offer, ...]:
    """WADO-RS frame and bulk-data representations: uncompressed octet-stream first, then each
    compressed syntax as its own image media type (PS3.18 Table 8.7.3-5)."""
    offers = [Offer(MULTIPART_RELATED, OCTET_STREAM, EXPLICIT_VR_LE)]
    compressed = [(media, ts) for ts, media in frame_media.items() if media != OCTET_STREAM]
    # A media type without transfer-syntax means its default syntax (Table 8.7.3-5): list it
    # first so it wins among the offers of that type.
    compressed.sort(key=lambda mt: (mt[0], mt[1] != FRAME_DEFAULT_SYNTAX.get(mt[0]), mt[1]))
    offers += [Offer(MULTIPART_RELATED, media, ts) for media, ts in compressed]
    return tuple(offers)


#: The default transfer syntax of each compressed frame media type (PS3.18 Table 8.7.3-5).
FRAME_DEFAULT_SYNTAX: dict[str, str] = {
    "image/jpeg": "1.2.840.10008.1.2.4.70",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
}


#: WADO-RS metadata representations (PS3.18 Table 8.7.3-2).
METADATA_OFFERS: tuple[Offer, ...] = (
    Offer(DICOM_JSON),
    Offer("application/json"),
    Offer(MULTIPART_RELATED, DICOM_XML),
)

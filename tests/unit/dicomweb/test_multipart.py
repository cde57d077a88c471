"""Unit tests for app.dicomweb.multipart, including agreement with dicomweb-client's parser."""

from __future__ import annotations

import io
import re

import pytest
import requests
from dicomweb_client.web import DICOMwebClient

from app.dicomweb.multipart import (
    MultipartError,
    MultipartParser,
    Part,
    PartData,
    PartEnd,
    PartHeaders,
    PartStart,
    closing_delimiter,
    encode_multipart,
    encode_part,
    multipart_boundary,
    multipart_content_type,
    new_boundary,
    parse_content_type,
    parse_multipart,
    part_header,
    part_trailer,
)

BOUNDARY = "b0undary-123"
CT = multipart_content_type("application/dicom", BOUNDARY)


def _stream(parts: list[tuple[bytes, str, str | None]], boundary: str = BOUNDARY) -> bytes:
    """Frame parts the way a streaming response does: header, body, trailer ... closing."""
    out = b""
    for body, ctype, location in parts:
        out += part_header(
            ctype, content_location=location, content_length=len(body), boundary=boundary
        )
        out += body + part_trailer()
    return out + closing_delimiter(boundary)


def _dicomweb_client_parts(body: bytes, content_type: str, chunk_size: int = 0) -> list[bytes]:
    """Decode ``body`` with dicomweb-client's own multipart decoder (no network)."""
    response = requests.Response()
    response.status_code = 200
    response.headers["content-type"] = content_type
    if chunk_size:
        response.raw = io.BytesIO(body)
        client = DICOMwebClient(url="http://127.0.0.1:9", chunk_size=chunk_size)
        return list(client._decode_multipart_message(response, stream=True))
    response._content = body
    response._content_consumed = True
    client = DICOMwebClient(url="http://127.0.0.1:9")
    return list(client._decode_multipart_message(response, stream=False))


# -- writer ------------------------------------------------------------------------------------


def test_new_boundary_is_random_and_valid() -> None:
    boundaries = {new_boundary() for _ in range(50)}
    assert len(boundaries) == 50
    for b in boundaries:
        assert 1 <= len(b) <= 70
        assert re.fullmatch(r"[0-9A-Za-z'()+_,\-./:=?]+", b)


def test_multipart_content_type_quotes_type() -> None:
    assert CT == 'multipart/related; type="application/dicom"; boundary=b0undary-123'
    ct = multipart_content_type(
        "application/octet-stream", "abc", {"transfer-syntax": "1.2.840.10008.1.2.1"}
    )
    assert ct == (
        'multipart/related; type="application/octet-stream"; '
        "transfer-syntax=1.2.840.10008.1.2.1; boundary=abc"
    )
    assert parse_content_type(ct) == (
        "multipart/related",
        {
            "type": "application/octet-stream",
            "transfer-syntax": "1.2.840.10008.1.2.1",
            "boundary": "abc",
        },
    )


@pytest.mark.parametrize("bad", ["", "a" * 71, "has space at end ", "semi;colon", 'q"uote'])
def test_invalid_boundaries_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        multipart_content_type("application/dicom", bad)


def test_part_header_exact_bytes() -> None:
    header = part_header(
        "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
        content_location="http://gw/studies/1/series/2/instances/3",
        content_length=4,
        boundary="xyz",
    )
    assert header == (
        b"--xyz\r\n"
        b"Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"Content-Location: http://gw/studies/1/series/2/instances/3\r\n"
        b"Content-Length: 4\r\n"
        b"\r\n"
    )
    assert part_header("application/dicom+xml", boundary="xyz") == (
        b"--xyz\r\nContent-Type: application/dicom+xml\r\n\r\n"
    )
    assert part_trailer() == b"\r\n"
    assert closing_delimiter("xyz") == b"--xyz--\r\n"


def test_header_injection_is_refused() -> None:
    with pytest.raises(ValueError):
        part_header("application/dicom", content_location="x\r\nEvil: 1", boundary="b")
    with pytest.raises(ValueError):
        part_header("application/dicom", content_location="http://gw/é", boundary="b")


def test_encode_part_and_encode_multipart() -> None:
    part = encode_part(b"abc", "application/octet-stream", boundary="b", content_location="/x")
    assert part == (
        b"--b\r\nContent-Type: application/octet-stream\r\nContent-Location: /x\r\n"
        b"Content-Length: 3\r\n\r\nabc\r\n"
    )
    body = encode_multipart([(b"1", "text/plain"), (b"22", "text/plain")], "b")
    assert body.endswith(b"\r\n--b--\r\n")
    assert [p.body for p in parse_multipart(body, "multipart/related; boundary=b")] == [
        b"1",
        b"22",
    ]


# -- parser ------------------------------------------------------------------------------------


def test_parse_our_own_stream() -> None:
    bodies = [
        (b"DICM\x00\r\n--not-the-boundary\r\n", "application/dicom", "http://gw/a"),
        (b"", "application/dicom", None),
        (bytes(range(256)) * 10, "application/octet-stream", "http://gw/b"),
    ]
    parts = parse_multipart(_stream(bodies), CT)
    assert [p.body for p in parts] == [b for b, _, _ in bodies]
    assert [p.content_type for p in parts] == [c for _, c, _ in bodies]
    assert parts[0].content_location == "http://gw/a"
    assert parts[1].content_location is None
    assert parts[0].headers["content-length"] == str(len(bodies[0][0]))
    assert parts[0].headers["CONTENT-TYPE"] == "application/dicom"
    assert list(parts[0].headers) == ["Content-Type", "Content-Location", "Content-Length"]


def test_parse_tolerates_preamble_epilogue_and_quoted_boundary() -> None:
    body = (
        b"this is a preamble\r\n--q b\r\nContent-Type: text/plain\r\n\r\nhello"
        b"\r\n--q b--\r\nepilogue"
    )
    parts = parse_multipart(body, 'multipart/related; type="text/plain"; boundary="q b"')
    assert parts == [Part(headers=PartHeaders([("Content-Type", "text/plain")]), body=b"hello")]


def test_content_length_lets_body_contain_the_delimiter() -> None:
    payload = b"x\r\n--" + BOUNDARY.encode() + b"\r\ny"
    body = (
        part_header("application/dicom", content_length=len(payload), boundary=BOUNDARY)
        + payload
        + part_trailer()
        + closing_delimiter(BOUNDARY)
    )
    assert [p.body for p in parse_multipart(body, CT)] == [payload]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"--b\r\nContent-Type: a/b\r\n\r\nxyz", "multipart/related; boundary=b"),  # truncated
        (b"--b\r\nContent-Type: a/b\r\n\r\nxyz\r\n--b", "multipart/related; boundary=b"),
        (b"--b\r\nContent-Type: a/b\r\nxyz\r\n--b--", "multipart/related; boundary=b"),
        (b"--b\r\nContent-Length: 9\r\n\r\nxyz\r\n--b--", "multipart/related; boundary=b"),
        (b"--b\r\nContent-Length: x\r\n\r\nxyz\r\n--b--", "multipart/related; boundary=b"),
        (b"--b\r\nno colon here\r\n\r\nxyz\r\n--b--", "multipart/related; boundary=b"),
        (b"--bb\r\n\r\nxyz\r\n--bb--", "multipart/related; boundary=b"),
        (b"nothing here", "multipart/related; boundary=b"),
        (b"--b--", "multipart/related"),
        (b"--b--", "application/dicom; boundary=b"),
    ],
)
def test_malformed_bodies_raise(body: bytes, content_type: str) -> None:
    with pytest.raises(MultipartError):
        parse_multipart(body, content_type)


def test_empty_multipart_has_no_parts() -> None:
    assert parse_multipart(b"--b--\r\n", "multipart/related; boundary=b") == []


# -- agreement with dicomweb-client ------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [0, 7, 4096])
def test_dicomweb_client_decodes_our_stream(chunk_size: int) -> None:
    boundary = new_boundary()
    bodies = [
        (b"\x00" * 300 + b"DICM" + b"\r\n" * 5, "application/dicom", "http://gw/1"),
        (b"second\r\n\r\npart", "application/dicom", None),
        (b"\xff" * 1000, "application/dicom", "http://gw/3"),
    ]
    body = _stream(bodies, boundary)
    ct = multipart_content_type("application/dicom", boundary)
    theirs = _dicomweb_client_parts(body, ct, chunk_size)
    ours = [p.body for p in parse_multipart(body, ct)]
    assert theirs == ours == [b for b, _, _ in bodies]


def test_we_decode_dicomweb_client_encoding() -> None:
    ct = 'multipart/related; type="application/dicom"; boundary=xyz123'
    bodies = [b"first instance", b"", b"\r\nthird\r\n"]
    body = DICOMwebClient._encode_multipart_message(bodies, ct)
    parts = parse_multipart(body, ct)
    assert [p.body for p in parts] == bodies
    assert all(p.content_type == "application/dicom" for p in parts)


# -- incremental parsing -----------------------------------------------------------------------


def _feed_in_pieces(body: bytes, content_type: str, piece: int) -> list[Part]:
    """Parts from feeding ``body`` ``piece`` bytes at a time."""
    parser = MultipartParser(content_type)
    parts: list[Part] = []
    headers = PartHeaders()
    chunks: list[bytes] = []
    for start in range(0, len(body), piece):
        for event in parser.feed(body[start:start + piece]):
            if isinstance(event, PartStart):
                headers, chunks = event.headers, []
            elif isinstance(event, PartData):
                chunks.append(event.data)
            else:
                assert isinstance(event, PartEnd)
                parts.append(Part(headers=headers, body=b"".join(chunks)))
    parser.close()
    assert parser.finished
    return parts


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 13, 64, 4096])
def test_feeding_in_pieces_gives_the_same_parts(piece: int) -> None:
    bodies = [
        (b"DICM\x00\r\n--" + BOUNDARY.encode() + b"x\r\n", "application/dicom", "http://gw/a"),
        (b"", "application/dicom", None),
        (bytes(range(256)) * 10, "application/octet-stream", "http://gw/b"),
    ]
    with_length = _stream(bodies)
    assert _feed_in_pieces(with_length, CT, piece) == parse_multipart(with_length, CT)
    # without Content-Length the delimiter search must span the pieces
    without_length = DICOMwebClient._encode_multipart_message(
        [b"first\r\n-", b"", b"\r\n--" + BOUNDARY.encode()[:-1] + b"\r\n"], CT)
    assert [p.body for p in _feed_in_pieces(without_length, CT, piece)] == [
        b"first\r\n-", b"", b"\r\n--" + BOUNDARY.encode()[:-1] + b"\r\n"]
    preamble = b"preamble\r\n--" + BOUNDARY.encode() + b"\r\n\r\nbody\r\n--" + BOUNDARY.encode()
    assert [p.body for p in _feed_in_pieces(preamble + b"--\r\nepilogue", CT, piece)] == [b"body"]


def test_body_bytes_are_handed_on_without_waiting_for_the_part_to_end() -> None:
    """What keeps a STOW-RS request's memory bounded: a part without Content-Length is handed
    on as it arrives, the parser keeping back less than a delimiter."""
    parser = MultipartParser(CT)
    events = parser.feed(b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n")
    assert [type(e) for e in events] == [PartStart]
    delimiter = len(b"\r\n--" + BOUNDARY.encode())
    handed = 0
    for _ in range(100):
        handed += sum(len(e.data) for e in parser.feed(b"x" * 10_000) if isinstance(e, PartData))
        assert 10_000 * (_ + 1) - handed < delimiter
    events = parser.feed(b"\r\n--" + BOUNDARY.encode() + b"--\r\n")
    assert sum(len(e.data) for e in events if isinstance(e, PartData)) == 1_000_000 - handed
    assert isinstance(events[-1], PartEnd) and parser.finished


def test_a_content_length_part_is_handed_on_piece_by_piece() -> None:
    parser = MultipartParser(CT)
    parser.feed(part_header("application/dicom", content_length=6, boundary=BOUNDARY))
    assert parser.feed(b"abc") == [PartData(b"abc")]
    assert parser.feed(b"def\r\n--" + BOUNDARY.encode()) == [PartData(b"def"), PartEnd()]


@pytest.mark.parametrize(
    ("pieces", "message"),
    [
        ([b"--b\r\nContent-Type: a/b\r\n\r\nxyz"], "truncated"),
        ([b"--b\r\nContent-Type: a/b\r\n"], "not terminated"),
        ([b"--b\r\n\r\nxyz\r\n--b"], "truncated after a delimiter"),
        ([b"no boundary at all"], "without a boundary"),
        ([b"--b\r\nContent-Length: 2\r\n\r\nxyz\r\n--b--"], "Content-Length"),
        ([b"--bb\r\n"], "not followed by CRLF"),
    ],
)
def test_malformed_streams_raise_when_found(pieces: list[bytes], message: str) -> None:
    parser = MultipartParser("multipart/related; boundary=b")
    with pytest.raises(MultipartError, match=message):
        for piece in pieces:
            parser.feed(piece)
        parser.close()
    with pytest.raises(MultipartError):  # a failed parser stays failed
        parser.feed(b"--b--")


def test_endless_part_headers_are_refused() -> None:
    parser = MultipartParser("multipart/related; boundary=b", max_header_bytes=100)
    parser.feed(b"--b\r\nX-Long: ")
    with pytest.raises(MultipartError, match="longer than 100"):
        parser.feed(b"y" * 200)


def test_a_delimiter_split_across_pieces_is_found() -> None:
    parser = MultipartParser("multipart/related; boundary=b")
    events = parser.feed(b"--b\r\n\r\nabc\r") + parser.feed(b"\n-") + parser.feed(b"-b--")
    assert b"".join(e.data for e in events if isinstance(e, PartData)) == b"abc"
    assert isinstance(events[-1], PartEnd) and parser.finished


def test_multipart_boundary() -> None:
    value = 'multipart/related; type="application/dicom"; boundary="a b"'
    assert multipart_boundary(value) == "a b"
    for bad in ("multipart/related", "application/dicom; boundary=b",
                "multipart/related; boundary=" + "x" * 71):
        with pytest.raises(MultipartError):
            multipart_boundary(bad)

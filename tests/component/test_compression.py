"""Content-Encoding of DICOM JSON and XML responses over a real socket, from the demo PACS: the
bytes on the wire are gzip or brotli as Accept-Encoding asks (q-values honoured, identity as
fallback), decode to exactly the identity body, say Vary: Accept-Encoding, carry an ETag of
their own; multipart instances and frames are never encoded."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from typing import Any

import brotli
import httpx
import pytest
from pydicom import Dataset

from app.api.compression import choose_coding
from app.demo.pacs import DemoPacs
from tests.component.test_wado_cut_short import DyingPacs, _big_series
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings

JSON = {"Accept": "application/dicom+json"}


@pytest.fixture(scope="module")
def server(sample_pacs: DemoPacs) -> Iterator[GatewayServer]:
    peer = peer_settings("demo", "DEMO_PACS", "127.0.0.1", sample_pacs.port, dimse_timeout=5,
                         overall_timeout=20)
    with GatewayServer(gateway_settings(peer)) as gateway:
        yield gateway


@pytest.fixture
def http(server: GatewayServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def _raw(http: httpx.Client, path: str, headers: dict[str, str],
         **params: Any) -> tuple[httpx.Response, bytes]:
    """The response and its body exactly as sent (not decoded by httpx)."""
    with http.stream("GET", path, headers=headers, params=params) as response:
        body = b"".join(response.iter_raw())
    return response, body


def _series(samples: list[Dataset]) -> tuple[str, str]:
    ct = next(ds for ds in samples if ds.Modality == "CT")
    return str(ct.StudyInstanceUID), str(ct.SeriesInstanceUID)


@pytest.mark.parametrize(("accept_encoding", "coding"), [
    ("gzip", "gzip"),
    ("br", "br"),
    ("gzip, br", "br"),  # equal q: the server's preference
    ("br;q=0.1, gzip;q=0.9", "gzip"),
    ("gzip;q=0, br;q=0.5", "br"),
    ("*", "br"),
    ("gzip;q=0.5, identity", None),  # identity preferred
    ("identity", None),
    ("*;q=0", None),  # nothing acceptable: identity all the same
    ("deflate", None),  # not offered
])
def test_qido_json_is_encoded_as_negotiated(http: httpx.Client, accept_encoding: str,
                                            coding: str | None) -> None:
    plain, identity = _raw(http, "/studies", {**JSON, "Accept-Encoding": "identity"})
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    assert len(identity) > 1024  # large enough to be encoded
    response, body = _raw(http, "/studies", {**JSON, "Accept-Encoding": accept_encoding})
    assert response.status_code == 200
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.headers.get("content-encoding") == coding
    assert int(response.headers["content-length"]) == len(body)
    if coding == "gzip":
        assert body[:2] == b"\x1f\x8b"
        body = gzip.decompress(body)
    elif coding == "br":
        body = brotli.decompress(body)
    assert json.loads(body) == json.loads(identity)
    if coding is not None:
        assert len(body) > 3 * int(response.headers["content-length"])  # it did compress


def test_streamed_metadata_is_gzip_and_decodes_to_the_same_json(
        http: httpx.Client, samples: list[Dataset]) -> None:
    study, series = _series(samples)
    path = f"/studies/{study}/series/{series}/metadata"
    # Encoded first, while the series is cold: streamed and encoded as it goes (a warm
    # series' metadata is encoded once and sent as stored, see test_cache_wado).
    response, body = _raw(http, path, {**JSON, "Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert "content-length" not in response.headers
    plain, identity = _raw(http, path, {**JSON, "Accept-Encoding": "identity"})
    assert plain.status_code == 200
    assert body[:2] == b"\x1f\x8b"
    assert json.loads(gzip.decompress(body)) == json.loads(identity)
    # httpx decodes it transparently, as any client that sent Accept-Encoding does
    decoded = http.get(path, headers={**JSON, "Accept-Encoding": "gzip"})
    assert decoded.json() == json.loads(identity)


def test_etags_differ_per_encoding_and_304_keeps_them(http: httpx.Client,
                                                      samples: list[Dataset]) -> None:
    ds = next(d for d in samples if d.Modality == "CT")
    path = (f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/metadata")
    plain = http.get(path, headers={**JSON, "Accept-Encoding": "identity"})
    coded = http.get(path, headers={**JSON, "Accept-Encoding": "gzip"})
    assert plain.status_code == coded.status_code == 200
    assert coded.headers["content-encoding"] == "gzip"
    identity_tag, gzip_tag = plain.headers["etag"], coded.headers["etag"]
    assert gzip_tag == identity_tag[:-1] + '-gzip"'
    again = http.get(path, headers={**JSON, "Accept-Encoding": "gzip",
                                    "If-None-Match": gzip_tag})
    assert again.status_code == 304
    assert again.headers["etag"] == gzip_tag
    assert again.headers["vary"] == "Accept-Encoding"
    # The identity tag still validates the identity representation...
    assert http.get(path, headers={**JSON, "Accept-Encoding": "identity",
                                   "If-None-Match": identity_tag}).status_code == 304
    # ...but a gzip tag does not validate what a client that now refuses gzip would get.
    refused = http.get(path, headers={**JSON, "Accept-Encoding": "identity",
                                      "If-None-Match": gzip_tag})
    assert refused.status_code == 200 and "content-encoding" not in refused.headers


def test_qido_xml_multipart_is_encoded(http: httpx.Client) -> None:
    xml = {"Accept": 'multipart/related; type="application/dicom+xml"'}
    _, identity = _raw(http, "/studies", {**xml, "Accept-Encoding": "identity"})
    response, body = _raw(http, "/studies", {**xml, "Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    decoded = gzip.decompress(body)
    assert len(decoded) == len(identity)  # same parts; only the random boundary differs
    assert decoded.count(b"<NativeDicomModel") == identity.count(b"<NativeDicomModel") > 0


@pytest.mark.parametrize("kind", ["instances", "frames", "zip"])
def test_pixel_data_is_never_encoded(http: httpx.Client, samples: list[Dataset],
                                     kind: str) -> None:
    ds = next(d for d in samples if d.Modality == "CT")
    series = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    path, accept = {
        "instances": (series, 'multipart/related; type="application/dicom"'),
        "frames": (f"{series}/instances/{ds.SOPInstanceUID}/frames/1",
                   'multipart/related; type="application/octet-stream"'),
        "zip": (series, "application/zip"),
    }[kind]
    response, _ = _raw(http, path, {"Accept": accept, "Accept-Encoding": "gzip, br"})
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert "Accept-Encoding" not in response.headers.get("vary", "")


def test_small_bodies_and_errors_stay_identity(http: httpx.Client) -> None:
    response, body = _raw(http, "/studies", {**JSON, "Accept-Encoding": "gzip"},
                          PatientID="no-such-patient")
    assert response.status_code == 204 and body == b""
    error, body = _raw(http, "/studies/1.02", {**JSON, "Accept-Encoding": "gzip"})
    assert error.status_code == 400 and "content-encoding" not in error.headers
    assert json.loads(body)["00000902"]


def test_compression_can_be_turned_off(sample_pacs: DemoPacs) -> None:
    peer = peer_settings("demo", "DEMO_PACS", "127.0.0.1", sample_pacs.port)
    with GatewayServer(gateway_settings(peer, compress_responses=False)) as gateway, \
            gateway.client() as client:
        response, body = _raw(client, "/studies", {**JSON, "Accept-Encoding": "gzip"})
    assert response.status_code == 200 and "content-encoding" not in response.headers
    assert json.loads(body)


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("", None), ("x-gzip", "gzip"), ("GZIP;q=1.5", None), ("gzip;q=abc", None),
    ("br;q=0, *", "gzip"), ("gzip;q=1, identity;q=1", "gzip"),
])
def test_choose_coding_table(header: str | None, expected: str | None) -> None:
    assert choose_coding(header, ("br", "gzip")) == expected


def test_metadata_cut_short_is_an_unfinished_gzip_stream(samples: list[Dataset]) -> None:
    """The PACS aborts after the first instance: what was sent decodes, but the gzip stream
    has no end, so a client decoding it sees the truncation too."""
    pacs = DyingPacs(samples, ae_title="DYING_PACS")
    pacs.start("127.0.0.1", 0)
    study, series, _ = _big_series(samples)
    peer = peer_settings("dying", "DYING_PACS", "127.0.0.1", pacs.port, dimse_timeout=5,
                         overall_timeout=20)
    received = b""
    try:
        with GatewayServer(gateway_settings(peer, cache_backend="none")) as gateway, \
                gateway.client() as client:
            with pytest.raises(httpx.RemoteProtocolError), client.stream(
                    "GET", f"/studies/{study}/series/{series}/metadata",
                    headers={**JSON, "Accept-Encoding": "gzip"}) as response:
                assert response.headers["content-encoding"] == "gzip"
                for chunk in response.iter_raw():
                    received += chunk
    finally:
        pacs.stop()
    assert received[:2] == b"\x1f\x8b"
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    decoder.decompress(received)
    assert not decoder.eof

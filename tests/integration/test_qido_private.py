"""Private attributes in QIDO-RS against a real Orthanc that holds some (issue #10, item 14):
matching and return keys are sent with their Private Creator, and answered."""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import Dataset

from tests.peers import OrthancServer, find_dicomweb_plugin, require_binary, skip_or_fail
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings

CREATOR = "Lunit"
SCORE = 0x00091001  # (0009,xx01) in the block of creator "Lunit": unknown to pydicom, so UN


def _with_private(ds: Dataset, score: str) -> Dataset:
    out = copy.deepcopy(ds)
    block = out.private_block(0x0009, CREATOR, create=True)
    block.add_new(0x01, "DS", score)
    return out


@pytest.fixture(scope="module")
def private_orthanc(
    tmp_path_factory: pytest.TempPathFactory, sample_datasets: list[Dataset]
) -> Iterator[tuple[OrthancServer, dict[str, str]]]:
    """An Orthanc of its own with two studies whose instances carry (0009,1001) of "Lunit"."""
    require_binary("Orthanc")
    if find_dicomweb_plugin() is None:
        skip_or_fail("the Orthanc DICOMweb plugin is not installed (run scripts/install-deps)")
    studies = sorted({str(d.StudyInstanceUID) for d in sample_datasets})[:2]
    scores = dict(zip(studies, ("98.41", "12.5"), strict=True))
    data = [
        _with_private(d, scores[str(d.StudyInstanceUID)])
        for d in sample_datasets
        if str(d.StudyInstanceUID) in scores
    ]
    server = OrthancServer(Path(tmp_path_factory.mktemp("orthanc-private")))
    server.start()
    try:
        server.load(data)
        yield server, scores
    finally:
        server.stop()


@pytest.fixture(scope="module")
def http(private_orthanc: tuple[OrthancServer, dict[str, str]]) -> Iterator[httpx.Client]:
    server, _ = private_orthanc
    peer = peer_settings("orthanc", server.ae_title, server.host, server.dicom_port)
    with GatewayServer(gateway_settings(peer)) as gateway, gateway.client() as client:
        yield client


def _score(result: dict) -> str:
    """The (0009,1001) value of a result: Orthanc returns it as UN (InlineBinary) or DS."""
    element = result["00091001"]
    if "InlineBinary" in element:
        return base64.b64decode(element["InlineBinary"]).decode().strip("\x00 ")
    return str(element["Value"][0])


def test_private_return_key_is_answered(
    http: httpx.Client, private_orthanc: tuple[OrthancServer, dict[str, str]]
) -> None:
    _, scores = private_orthanc
    r = http.get("/studies", params={"00090010": CREATOR, "includefield": "00091001"})
    assert r.status_code == 200, r.text
    results = r.json()
    got = {res["0020000D"]["Value"][0]: _score(res) for res in results}
    assert {uid: float(v) for uid, v in got.items()} == {
        uid: float(v) for uid, v in scores.items()
    }
    assert all(res["00090010"] == {"vr": "LO", "Value": [CREATOR]} for res in results)


@pytest.mark.parametrize("value", ["98.41", "12.5"])
def test_private_matching_key_is_answered(
    http: httpx.Client, private_orthanc: tuple[OrthancServer, dict[str, str]], value: str
) -> None:
    # Orthanc does not match a UN key (it returns both studies); the gateway re-checks the
    # returned value as text (conformance 2.3).
    _, scores = private_orthanc
    r = http.get("/studies", params={"00090010": CREATOR, "00091001": value})
    assert r.status_code == 200, r.text
    assert [res["0020000D"]["Value"][0] for res in r.json()] == [
        uid for uid, score in scores.items() if score == value
    ]


def test_private_matching_key_without_a_match_is_204(http: httpx.Client) -> None:
    r = http.get("/studies", params={"00090010": CREATOR, "00091001": "1.5"})
    assert r.status_code == 204


@pytest.mark.parametrize("params", [{"00091001": "98.41"}, {"includefield": "00091001"}])
def test_private_key_without_its_creator_is_400(http: httpx.Client, params: dict) -> None:
    r = http.get("/studies", params=params)
    assert r.status_code == 400
    assert "00090010" in r.json()["00000902"]["Value"][0]


def test_private_attributes_in_xml(http: httpx.Client) -> None:
    r = http.get(
        "/studies",
        params={"00090010": CREATOR, "includefield": "00091001"},
        headers={"Accept": 'multipart/related; type="application/dicom+xml"'},
    )
    assert r.status_code == 200, r.text
    # PS3.19 A.1: the block byte of a private tag is 00, the creator an XML attribute.
    assert b'tag="00090001"' in r.content and b'privateCreator="Lunit"' in r.content

"""The audit trail (issue #11 item 3): one PS3.15 A.5-shaped event per search, retrieval, admin
call and refusal, written as JSON lines when the response has ended (bytes counted as sent,
a cut-short body recorded as incomplete), and sent as RFC 5424 syslog to a real UDP and TCP
listener; no patient data beyond UIDs unless ``audit_include_phi`` asks for it."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from app.demo.pacs import DemoPacs
from tests.support.token_issuer import AUDIENCE, RunningIssuer, TokenIssuer

from .conftest import gateway_settings, open_app, peer_config
from .test_wado_cut_short import DyingPacs, _big_series

pytestmark = pytest.mark.timeout(60)

DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
ADMIN_TOKEN = "s3cret-admin-token-0123456789"


@pytest.fixture(scope="module")
def issuer() -> Iterator[TokenIssuer]:
    with RunningIssuer(("RS256",)) as running:
        yield running


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _settings(pacs_port: int, log: Path, **extra: Any) -> Any:
    return gateway_settings(peer_config(pacs_port), audit_log=str(log), **extra)


async def test_search_retrieval_and_admin_events(sample_pacs: DemoPacs, samples: list[Dataset],
                                                 tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    study, series = str(samples[0].StudyInstanceUID), str(samples[0].SeriesInstanceUID)
    settings = _settings(sample_pacs.port, log, cache_admin_enabled=True,
                         admin_token=ADMIN_TOKEN)
    async with open_app(settings) as (client, _):
        r = await client.get("/dicomweb/studies?PatientName=Doe*&StudyDate=20170101-",
                             headers={"Accept": DICOM_JSON})
        assert r.status_code == 200 and "Doe" in r.text
        r = await client.get(f"/dicomweb/studies/{study}/series/{series}",
                             headers={"Accept": MULTIPART_DICOM})
        assert r.status_code == 200
        retrieved = len(r.content)
        r = await client.get("/admin/cache/stats",
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 200
        assert (await client.get("/admin/cache/stats")).status_code == 401
        for path in ("/healthz", "/readyz", "/metrics"):  # probes leave no event
            assert (await client.get(path)).status_code == 200
    events = _events(log)
    assert [e["Gateway"]["action"] for e in events] == ["search", "retrieve", "admin", "admin"]
    search, retrieve, admin, refused = events

    assert search["EventIdentification"]["EventID"] == {
        "csd-code": "110112", "codeSystemName": "DCM", "originalText": "Query"}
    assert search["EventIdentification"]["EventActionCode"] == "E"
    assert search["EventIdentification"]["EventOutcomeIndicator"] == "0"
    assert search["Gateway"]["query_keys"] == ["PatientName", "StudyDate"]
    query = search["ParticipantObjectIdentification"][0]
    assert query["ParticipantObjectID"] == "1.2.840.10008.5.1.4.1.2.2.1"
    assert base64.b64decode(query["ParticipantObjectQuery"]) == b"PatientName&StudyDate"
    requestor = search["ActiveParticipant"][0]
    assert requestor["UserIsRequestor"] is True and requestor["UserID"] == "127.0.0.1"
    assert search["AuditSourceIdentification"]["AuditSourceID"] == "TEST_GW"

    assert retrieve["EventIdentification"]["EventID"]["csd-code"] == "110104"
    assert retrieve["EventIdentification"]["EventActionCode"] == "R"
    assert retrieve["Gateway"]["bytes"] == retrieved > 10_000
    assert retrieve["Gateway"]["complete"] is True and retrieve["Gateway"]["status"] == 200
    assert retrieve["Gateway"]["pacs"] == "demo"
    obj = retrieve["ParticipantObjectIdentification"][0]
    assert obj["ParticipantObjectID"] == study
    assert obj["ParticipantObjectIDTypeCode"]["csd-code"] == "110180"
    assert obj["ParticipantObjectDescription"]["SeriesInstanceUID"] == [series]

    assert admin["EventIdentification"]["EventID"]["csd-code"] == "110100"
    assert admin["ActiveParticipant"][0]["UserID"] == "admin-token"
    assert refused["Gateway"]["status"] == 401
    assert refused["EventIdentification"]["EventID"]["csd-code"] == "110114"
    assert refused["EventIdentification"]["EventOutcomeIndicator"] == "4"

    text = log.read_text(encoding="utf-8")
    for name in ("Doe", "John", "Kildare", "PatientName=", "20170101"):
        assert name not in text, name  # patient data and query values stay out


async def test_phi_only_when_asked(sample_pacs: DemoPacs, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    async with open_app(_settings(sample_pacs.port, log, audit_include_phi=True)) as (client, _):
        r = await client.get("/dicomweb/studies?PatientName=Doe*", headers={"Accept": DICOM_JSON})
        assert r.status_code == 200
    (event,) = _events(log)
    assert event["Gateway"]["query"] == "PatientName=Doe*"
    query = event["ParticipantObjectIdentification"][0]["ParticipantObjectQuery"]
    assert base64.b64decode(query) == b"PatientName=Doe*"


async def test_refusals_with_authorization(sample_pacs: DemoPacs, issuer: TokenIssuer,
                                           tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    settings = _settings(sample_pacs.port, log, auth_enabled=True, auth_issuer=issuer.url,
                         auth_audience=[AUDIENCE])
    async with open_app(settings) as (client, _):
        assert (await client.get("/dicomweb/studies")).status_code == 401
        expired = issuer.token(exp=1, iat=0, nbf=0)
        r = await client.get("/dicomweb/series", headers={"Authorization": f"Bearer {expired}"})
        assert r.status_code == 401
        weak = issuer.token(scope="openid dicomweb.search", sub="alice")
        r = await client.get("/dicomweb/studies/1.2.3/metadata",
                             headers={"Authorization": f"Bearer {weak}"})
        assert r.status_code == 403
        r = await client.get("/dicomweb/studies", headers={"Authorization": f"Bearer {weak}"})
        assert r.status_code == 200
    missing, invalid, forbidden, allowed = _events(log)
    assert missing["EventIdentification"]["EventID"]["csd-code"] == "110114"
    assert missing["EventIdentification"]["EventTypeCode"][0]["originalText"] == "Login"
    assert missing["ActiveParticipant"][0]["UserID"] == "127.0.0.1"
    assert "expired" in invalid["Gateway"]["refusal"]
    assert forbidden["EventIdentification"]["EventID"]["csd-code"] == "110113"
    assert forbidden["EventIdentification"]["EventOutcomeIndicator"] == "4"
    assert forbidden["ActiveParticipant"][0]["UserID"] == "alice"
    assert forbidden["ActiveParticipant"][0]["AlternativeUserID"] == "token"
    assert forbidden["Gateway"]["studies"] == ["1.2.3"]
    assert "retrieve" in forbidden["Gateway"]["refusal"]
    assert allowed["Gateway"]["subject"] == "alice" and allowed["Gateway"]["status"] == 200


@pytest.fixture(scope="module")
def dying_pacs(samples: list[Dataset]) -> Iterator[DyingPacs]:
    server = DyingPacs(samples, ae_title="DYING_PACS")
    server.start("127.0.0.1", 0)
    yield server
    server.stop()


async def test_a_retrieval_cut_short_is_recorded_incomplete(
        dying_pacs: DyingPacs, samples: list[Dataset], tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    study, series, _ = _big_series(samples)
    settings = gateway_settings(peer_config(dying_pacs.port, ae_title="DYING_PACS"),
                                cache_backend="none", audit_log=str(log))
    async with open_app(settings) as (client, _):
        r = await client.get(f"/dicomweb/studies/{study}/series/{series}",
                             headers={"Accept": MULTIPART_DICOM})
        assert r.status_code == 200 and not r.content.endswith(b"--\r\n")
    (event,) = _events(log)
    assert event["Gateway"]["complete"] is False
    assert event["Gateway"]["bytes"] == len(r.content) > 0
    assert event["EventIdentification"]["EventOutcomeIndicator"] == "8"
    assert "cut short" in event["EventIdentification"]["EventOutcomeDescription"]


class _TcpCollector:
    """A TCP syslog receiver (RFC 6587 octet counting) on 127.0.0.1."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.data = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            while chunk := conn.recv(65536):
                self.data += chunk

    def frames(self) -> list[bytes]:
        out, data = [], self.data
        while data:
            length, _, rest = data.partition(b" ")
            out.append(rest[:int(length)])
            data = rest[int(length):]
        return out


def _parse_rfc5424(frame: bytes) -> tuple[int, list[bytes], dict[str, Any]]:
    header, bom, body = frame.partition(b"\xef\xbb\xbf")
    assert bom, "MSG is UTF-8 with its BOM"
    pri = int(header[1:header.index(b">")])
    fields = header[header.index(b">") + 1:].split(b" ")
    return pri, fields, json.loads(body)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_syslog(sample_pacs: DemoPacs, tmp_path: Path, transport: str) -> None:
    udp = tcp = None
    if transport == "udp":
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(5)
        port = udp.getsockname()[1]
    else:
        tcp = _TcpCollector()
        port = tcp.port
    settings = gateway_settings(peer_config(sample_pacs.port), audit_syslog=f"127.0.0.1:{port}",
                                audit_syslog_transport=transport)
    async with open_app(settings) as (client, _):
        assert (await client.get("/dicomweb/series?Modality=CT")).status_code == 200
        assert (await client.get("/dicomweb/studies/1.2.3/metadata")).status_code == 404
    if udp is not None:
        frames = [udp.recv(65536), udp.recv(65536)]
        udp.close()
    else:
        assert tcp is not None
        tcp.thread.join(5)
        frames = tcp.frames()
    (pri1, fields, search), (pri2, _, failed) = (_parse_rfc5424(f) for f in frames)
    assert fields[0] == b"1" and fields[3] == b"dicomweb-gateway" and fields[5] == b"DICOM-AUDIT"
    assert pri1 == 13 * 8 + 5 and pri2 == 13 * 8 + 4  # log audit; notice, warning on failure
    assert search["EventIdentification"]["EventID"]["originalText"] == "Query"
    assert failed["Gateway"]["status"] == 404
    assert failed["EventIdentification"]["EventOutcomeIndicator"] == "4"


async def test_the_pacs_status_is_recorded(scripted_scp: Any, tmp_path: Path) -> None:
    """A C-FIND the PACS fails with C001: the event's outcome names the DIMSE status."""

    def failing(event: Any, scp: Any) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xC001, None

    scp = scripted_scp(failing)
    log = tmp_path / "audit.jsonl"
    settings = gateway_settings(peer_config(scp.port, ae_title=scp.ae_title),
                                audit_log=str(log), qido_cache_ttl=0)
    async with open_app(settings) as (client, _):
        r = await client.get("/dicomweb/studies?StudyDate=20200101")
        assert r.status_code == 502
    (event,) = _events(log)
    assert event["Gateway"]["dimse_status"] == "C001"
    assert event["EventIdentification"]["EventOutcomeIndicator"] == "8"
    assert "DIMSE status C001H" in event["EventIdentification"]["EventOutcomeDescription"]

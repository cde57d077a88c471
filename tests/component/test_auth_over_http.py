"""Authorization and the audit trail through a real HTTP server: the gateway under uvicorn on
127.0.0.1, a real OIDC issuer, dicomweb-client sending the bearer token as a real client would,
and a ZIP download whose audited bytes are those the client received."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from requests import HTTPError

from app.demo.pacs import DemoPacs
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings
from tests.support.token_issuer import AUDIENCE, RunningIssuer, TokenIssuer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def issuer() -> Iterator[TokenIssuer]:
    with RunningIssuer() as running:
        yield running


def test_dicomweb_client_and_a_zip_download(sample_pacs: DemoPacs, samples: list[Dataset],
                                           issuer: TokenIssuer, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    settings = gateway_settings(
        peer_settings("demo", "DEMO_PACS", "127.0.0.1", sample_pacs.port),
        auth_enabled=True, auth_issuer=issuer.url, auth_audience=[AUDIENCE],
        audit_log=str(log))
    study = str(samples[0].StudyInstanceUID)
    token = issuer.token("ES256", sub="viewer-7")
    with GatewayServer(settings) as server:
        client = DICOMwebClient(server.dicomweb, headers={"Authorization": f"Bearer {token}"})
        studies = client.search_for_studies(search_filters={"PatientName": "Doe*"})
        assert studies and all("Doe" in s["00100010"]["Value"][0]["Alphabetic"]
                               for s in studies)
        anonymous = DICOMwebClient(server.dicomweb)
        with pytest.raises(HTTPError) as refused:
            anonymous.search_for_studies()
        assert refused.value.response.status_code == 401
        assert refused.value.response.headers["WWW-Authenticate"].startswith("Bearer realm=")
        with httpx.Client(base_url=server.dicomweb, timeout=30) as http:
            r = http.get(f"/studies/{study}", params={"accept": "application/zip"},
                         headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
        assert names
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["Gateway"]["status"] for e in events] == [200, 401, 200]
    search, refusal, download = events
    assert search["Gateway"]["subject"] == "viewer-7"
    assert search["Gateway"]["query_keys"] == sorted(search["Gateway"]["query_keys"])
    assert "PatientName" in search["Gateway"]["query_keys"]
    assert refusal["EventIdentification"]["EventID"]["originalText"] == "User Authentication"
    assert download["Gateway"]["bytes"] == len(r.content)  # identity: the wire bytes
    assert download["Gateway"]["complete"] is True
    assert download["ParticipantObjectIdentification"][0]["ParticipantObjectID"] == study
    assert "Doe" not in log.read_text()

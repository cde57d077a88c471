"""DICOM TLS (PS3.15 Annex B) between the gateway and a real PACS, on both DIMSE engines.

The TLS peer is **Orthanc** (Debian's 1.10, DCMTK 3.6.7 with OpenSSL): its whole DICOM port
speaks TLS (``DicomTlsEnabled``) and it requires a client certificate issued by the test CA
(``DicomTlsRemoteCertificateRequired``). Debian's dcmqrscp is built without TLS (no ``+tls``
option), so it is not a TLS peer here. The PKI is made in the test run (tests/support/certs.py):
Orthanc's certificate names ``localhost`` only, not 127.0.0.1, so hostname verification is
exercised through ``server_name``. C-MOVE deliveries come back over TLS as well: Orthanc sends
to the gateway's Storage SCP with ``UseDicomTls`` and must present its certificate there.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import Dataset

from app.dicomweb.multipart import parse_multipart
from app.dimse.client import DimseClients
from app.settings import PacsPeer
from tests.peers import OrthancServer, free_port, require_binary
from tests.peers.fixtures import GATEWAY_AE
from tests.support.certs import TestCA
from tests.support.gateway_server import GatewayServer, gateway_settings

pytestmark = pytest.mark.timeout(120)
ENGINES = ["asyncio", "pynetdicom"]
DICOM = 'multipart/related; type="application/dicom"'


class Pki:
    """The test CA, the certificates it issued, and a CA nobody trusts."""

    def __init__(self, directory: Path) -> None:
        self.ca = TestCA(directory / "ca")
        self.orthanc = self.ca.issue("orthanc", dns=("localhost",), client=True)
        self.gateway = self.ca.issue("gateway", client=True)
        self.scp = self.ca.issue("gateway-scp", dns=("localhost",), ips=("127.0.0.1",))
        self.other_ca = TestCA(directory / "other", name="Other CA")
        self.impostor = self.other_ca.issue("impostor", client=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def scp_port() -> int:
    """The port of the gateway's (TLS) Storage SCP, known to Orthanc as a C-MOVE destination."""
    return free_port()


@pytest.fixture(scope="module")
def tls_orthanc(tmp_path_factory: pytest.TempPathFactory, pki: Pki, scp_port: int,
                sample_datasets: list[Dataset]) -> Iterator[OrthancServer]:
    """Orthanc with DICOM TLS only, client certificates required, holding the samples."""
    require_binary("Orthanc")
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-tls"), ae_title="ORTHANC_TLS",
                           extra_config={
                               "DicomTlsEnabled": True,
                               "DicomTlsCertificate": str(pki.orthanc.cert_file),
                               "DicomTlsPrivateKey": str(pki.orthanc.key_file),
                               "DicomTlsTrustedCertificates": str(pki.ca.cert_file),
                               "DicomTlsRemoteCertificateRequired": True,
                               "DicomModalities": {"gateway": {
                                   "AET": GATEWAY_AE, "Host": "127.0.0.1", "Port": scp_port,
                                   "UseDicomTls": True}},
                           })
    server.start()
    try:
        server.load(sample_datasets)
        yield server
    finally:
        server.stop()


def tls_peer(orthanc: OrthancServer, pki: Pki, **tls: Any) -> PacsPeer:
    """The TLS Orthanc as a peer; ``tls`` overrides the working defaults (CA, our client
    certificate, server_name localhost)."""
    values: dict[str, Any] = {"ca_file": str(pki.ca.cert_file),
                              "cert_file": str(pki.gateway.cert_file),
                              "key_file": str(pki.gateway.key_file),
                              "server_name": "localhost"}
    values.update(tls)
    values = {k: v for k, v in values.items() if v is not None}
    return PacsPeer(name="secure", ae_title=orthanc.ae_title, host="127.0.0.1",
                    port=orthanc.dicom_port, connect_timeout=5, acse_timeout=5, tls=values)


def _gateway(peer: PacsPeer, engine: str, **overrides: Any) -> GatewayServer:
    settings = gateway_settings(peer, ae_title=GATEWAY_AE, dimse_engine=engine,
                                readyz_details=True, qido_cache_ttl=0, **overrides)
    return GatewayServer(settings)


def _readiness(gateway: GatewayServer) -> dict[str, Any]:
    """The /readyz answer for the one PACS (C-ECHO over the configured transport)."""
    response = httpx.get(f"{gateway.url}/readyz", timeout=30)
    body: dict[str, Any] = response.json()
    return {**body["pacs"]["secure"], "http": response.status_code}


def _series(samples: list[Dataset]) -> tuple[str, str, set[str]]:
    by_series: dict[tuple[str, str], set[str]] = defaultdict(set)
    for ds in samples:
        by_series[(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))].add(
            str(ds.SOPInstanceUID))
    (study, series), uids = max(by_series.items(), key=lambda kv: len(kv[1]))
    return study, series, uids


def _retrieved_uids(response: httpx.Response) -> set[str]:
    from io import BytesIO

    from pydicom import dcmread

    assert response.status_code == 200, response.text[:500]
    parts = parse_multipart(response.content, response.headers["content-type"])
    return {str(dcmread(BytesIO(p.body)).SOPInstanceUID) for p in parts}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("method", ["get", "move"])
def test_qido_and_wado_over_dicom_tls(engine: str, method: str, tls_orthanc: OrthancServer,
                                      pki: Pki, scp_port: int,
                                      sample_datasets: list[Dataset]) -> None:
    """Searches and retrievals go over TLS (the PACS speaks nothing else); with C-MOVE the
    instances come back to the gateway's Storage SCP over TLS, client certificate required."""
    peer = tls_peer(tls_orthanc, pki).model_copy(update={"retrieve_method": method})
    scp: dict[str, Any] = {}
    if method == "move":
        scp = {"storage_scp_enabled": True, "storage_scp_host": "127.0.0.1",
               "storage_scp_port": scp_port,
               "storage_scp_tls_cert_file": str(pki.scp.cert_file),
               "storage_scp_tls_key_file": str(pki.scp.key_file),
               "storage_scp_tls_ca_file": str(pki.ca.cert_file)}
    study, series, uids = _series(sample_datasets)
    with _gateway(peer, engine, **scp) as gateway, gateway.client() as http:
        found = http.get("/studies", params={"StudyInstanceUID": study})
        assert found.status_code == 200, found.text[:300]
        assert [s["0020000D"]["Value"][0] for s in found.json()] == [study]
        studies = http.get("/studies")
        assert len(studies.json()) == len({str(d.StudyInstanceUID) for d in sample_datasets})
        got = http.get(f"/studies/{study}/series/{series}", headers={"Accept": DICOM})
        assert _retrieved_uids(got) == uids
        metadata = http.get(f"/studies/{study}/series/{series}/metadata")
        assert metadata.status_code == 200 and len(metadata.json()) == len(uids)
        assert _readiness(gateway)["http"] == 200


@pytest.mark.parametrize("engine", ENGINES)
def test_c_echo_over_dicom_tls(engine: str, tls_orthanc: OrthancServer, pki: Pki) -> None:
    """``dicomweb-gateway echo``'s path: C-ECHO over TLS on each engine."""
    settings = gateway_settings(tls_peer(tls_orthanc, pki), dimse_engine=engine)

    async def echo() -> float:
        clients = DimseClients(settings)
        try:
            return await clients.get("secure").echo()
        finally:
            await clients.aclose()

    assert asyncio.run(echo()) > 0


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("tls", "reason"), [
    # Orthanc (DCMTK) sends its CA along: a chain that ends in a CA we do not trust.
    ({"ca_file": "other"}, "certificate verification failed: self-signed certificate in "
                           "certificate chain"),
    ({"server_name": None}, "certificate verification failed: IP address mismatch, "
                            "certificate is not valid for '127.0.0.1'"),
    ({"pinned_sha256": ["ab" * 32]}, "is not one of pinned_sha256"),
    ({"ca_file": None, "pinned_sha256": ["ab" * 32]}, "is not one of pinned_sha256"),
    ({"cert_file": None, "key_file": None}, "the PACS requires a client certificate"),
    ({"cert_file": "impostor", "key_file": "impostor"}, "the PACS ended the TLS handshake"),
], ids=["wrong-ca", "hostname", "pin-and-ca", "pin-only", "no-client-cert", "untrusted-client"])
def test_refused_tls_is_a_503_that_says_why(engine: str, tls: dict[str, Any], reason: str,
                                            tls_orthanc: OrthancServer, pki: Pki) -> None:
    """Each verification failure is a prompt 503 (not a 500, not a hang); the reason is in
    the detail (/readyz with readyz_details, and the log)."""
    files = {"other": str(pki.other_ca.cert_file)}
    values = {k: files.get(v, v) if isinstance(v, str) else v for k, v in tls.items()}
    if values.get("cert_file") == "impostor":
        values = {"cert_file": str(pki.impostor.cert_file),
                  "key_file": str(pki.impostor.key_file)}
    peer = tls_peer(tls_orthanc, pki, **values)
    with _gateway(peer, engine) as gateway, gateway.client(timeout=20) as http:
        response = http.get("/studies")
        assert response.status_code == 503, response.text[:300]
        assert "PACS secure is unavailable" in response.text
        ready = _readiness(gateway)
        assert ready["http"] == 503
        assert "DICOM TLS" in ready["detail"] and reason in ready["detail"], ready


@pytest.mark.parametrize("engine", ENGINES)
def test_pinned_certificate_alone_is_enough(engine: str, tls_orthanc: OrthancServer,
                                            pki: Pki) -> None:
    """A pin without a CA (a self-signed PACS certificate): the pin is the whole check, the
    host name does not matter; a second pin (rotation) may be listed."""
    peer = tls_peer(tls_orthanc, pki, ca_file=None, server_name=None,
                    pinned_sha256=["00" * 32, ":".join(
                        pki.orthanc.sha256[i:i + 2] for i in range(0, 64, 2)).upper()])
    with _gateway(peer, engine) as gateway, gateway.client() as http:
        assert http.get("/studies").status_code == 200
        assert _readiness(gateway)["http"] == 200


@pytest.mark.parametrize("engine", ENGINES)
def test_plain_dicom_to_the_tls_port_is_a_503(engine: str, tls_orthanc: OrthancServer) -> None:
    """A PACS configured without ``tls`` whose port speaks TLS: 503, promptly."""
    peer = PacsPeer(name="secure", ae_title=tls_orthanc.ae_title, host="127.0.0.1",
                    port=tls_orthanc.dicom_port, connect_timeout=5, acse_timeout=5)
    with _gateway(peer, engine) as gateway, gateway.client(timeout=20) as http:
        assert http.get("/studies").status_code == 503


def test_an_unreadable_tls_file_fails_at_start(tls_orthanc: OrthancServer, pki: Pki,
                                               tmp_path: Path) -> None:
    """A missing client key is a configuration error naming the setting, before any PACS
    traffic (DimseClients is what the app's lifespan and ``echo`` build first)."""
    from app.settings import ConfigurationError

    peer = tls_peer(tls_orthanc, pki, key_file=str(tmp_path / "missing.key"))
    with pytest.raises(ConfigurationError, match=r"pacs\.secure\.tls\.cert_file"):
        DimseClients(gateway_settings(peer))

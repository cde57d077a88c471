"""HTTPS served by the gateway itself (issue #11 item 2): `dicomweb-gateway demo` started with
a certificate made in the test run answers over TLS only, builds https base URLs, and a plain
HTTP request to its port fails at once; with ``https_client_ca_file`` (mutual TLS) a client
without a certificate of that CA gets no answer at all.

The HTTP clients verify the gateway's certificate against the test CA (tests/support/certs.py).
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.demo.pacs import DemoPacs
from tests.support.certs import Issued, TestCA
from tests.support.gateway_server import GatewayServer, gateway_settings

from .conftest import free_port, peer_config

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
KEY_PASSWORD = "correct horse battery staple"


@dataclass
class Pki:
    ca: TestCA
    server: Issued
    client: Issued
    stranger: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("https-pki")
    ca = TestCA(directory / "ca")
    server = ca.issue("gateway", dns=("localhost",), ips=("127.0.0.1",),
                      password=KEY_PASSWORD.encode())
    client = ca.issue("viewer", server=False, client=True)
    stranger = TestCA(directory / "other", name="Other CA").issue("stranger", server=False,
                                                                 client=True)
    return Pki(ca, server, client, stranger)


def _trusting(pki: Pki, client: Issued | None = None) -> ssl.SSLContext:
    """A client context that trusts the test CA (and presents ``client``)."""
    context = ssl.create_default_context(cafile=str(pki.ca.cert_file))
    if client is not None:
        context.load_cert_chain(str(client.cert_file), str(client.key_file))
    return context


@dataclass
class Demo:
    port: int
    announced: str

    @property
    def root(self) -> str:
        return f"https://127.0.0.1:{self.port}/dicomweb"


@pytest.fixture(scope="module")
def demo(pki: Pki) -> Iterator[Demo]:
    """`python -m app.cli demo` with HTTPS settings from the environment (an encrypted key)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DWG_")}
    env.update(PYTHONPATH=str(ROOT), DWG_HTTPS_CERT_FILE=str(pki.server.cert_file),
               DWG_HTTPS_KEY_FILE=str(pki.server.key_file), DWG_HTTPS_KEY_PASSWORD=KEY_PASSWORD)
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "demo", "--port", str(port)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        announced = [process.stdout.readline() for _ in range(2)][1].strip()
        started = Demo(port, announced)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{started.root}/studies", verify=_trusting(pki), timeout=10)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield started
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_demo_serves_https_and_says_so(demo: Demo, pki: Pki) -> None:
    assert demo.announced == f"DICOMweb root: https://127.0.0.1:{demo.port}/dicomweb"
    with httpx.Client(verify=_trusting(pki), timeout=20) as client:
        response = client.get(f"{demo.root}/studies")
        assert response.status_code == 200 and response.json()
        assert response.extensions["http_version"] == b"HTTP/1.1"
        stream = response.extensions["network_stream"]
        assert stream.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")


def test_base_urls_say_https(demo: Demo, pki: Pki) -> None:
    """RetrieveURL (0008,1190) and BulkDataURIs are built from the request: https here."""
    with httpx.Client(verify=_trusting(pki), timeout=20) as client:
        studies = client.get(f"{demo.root}/studies").json()
        urls = [s["00081190"]["Value"][0] for s in studies]
        assert urls and all(u.startswith(f"https://127.0.0.1:{demo.port}/dicomweb/studies/")
                            for u in urls), urls[:2]
        series = client.get(f"{demo.root}/series").json()
        assert series[0]["00081190"]["Value"][0].startswith("https://")


def test_plain_http_to_the_https_port_fails_cleanly(demo: Demo, pki: Pki) -> None:
    """No answer over plain HTTP (the TLS handshake fails), at once, and the server goes on."""
    started = time.monotonic()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{demo.port}/dicomweb/studies", timeout=10)
    assert time.monotonic() - started < 5
    response = httpx.get(f"{demo.root}/studies", verify=_trusting(pki), timeout=20)
    assert response.status_code == 200


def test_a_client_that_does_not_trust_the_ca_refuses(demo: Demo) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{demo.root}/studies", verify=True, timeout=10)


@pytest.fixture
def mutual(pki: Pki, sample_pacs: DemoPacs) -> Iterator[GatewayServer]:
    """A gateway (in this process, as `serve` configures uvicorn) requiring client certs."""
    settings = gateway_settings(peer_config(sample_pacs.port),
                                https_cert_file=str(pki.server.cert_file),
                                https_key_file=str(pki.server.key_file),
                                https_key_password=KEY_PASSWORD,
                                https_client_ca_file=str(pki.ca.cert_file))
    with GatewayServer(settings) as server:
        yield server


def test_mutual_tls_wants_a_certificate_of_the_client_ca(mutual: GatewayServer,
                                                         pki: Pki) -> None:
    url = f"{mutual.dicomweb}/studies"
    assert url.startswith("https://")
    ok = httpx.get(url, verify=_trusting(pki, pki.client), timeout=20)
    assert ok.status_code == 200 and ok.json()
    for client in (None, pki.stranger):
        with pytest.raises(httpx.TransportError):
            httpx.get(url, verify=_trusting(pki, client), timeout=10)
    assert httpx.get(url, verify=_trusting(pki, pki.client), timeout=20).status_code == 200

"""Issue #12 item 1 against real archives: ``retrieve_method = "auto"`` (the default) in front of
a DCMTK dcmqrscp started with ``--disable-get`` (it rejects the Query/Retrieve GET presentation
contexts) retrieves by C-MOVE to the gateway's storage SCP, learning so once; in front of Orthanc
(which accepts C-GET) it keeps to C-GET. The gateway's /metrics say which operations ran."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import httpx
import pytest
from pydicom import Dataset, dcmread

from app.dicomweb.multipart import parse_multipart
from tests.peers import DcmqrscpServer, OrthancServer, free_port, require_binary
from tests.peers.compressed_fixtures import OptionedDcmqrscp
from tests.peers.fixtures import GATEWAY_AE
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings


@pytest.fixture(scope="module")
def storage_port() -> int:
    """The port of the gateway's storage SCP, known to the dcmqrscp below."""
    return free_port()


@pytest.fixture(scope="module")
def getless_dcmqrscp(tmp_path_factory: pytest.TempPathFactory, sample_datasets: list[Dataset],
                     storage_port: int) -> Iterator[DcmqrscpServer]:
    """A dcmqrscp without C-GET, holding the sample studies."""
    require_binary("dcmqrscp")
    require_binary("dcmqridx")
    server = OptionedDcmqrscp(tmp_path_factory.mktemp("dcmqrscp-noget"),
                              options=("--disable-get",), ae_titles=("NOGET_QR",),
                              move_destinations={"gateway": (GATEWAY_AE, storage_port)})
    server.load(sample_datasets)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def metric(server: GatewayServer, name: str, **labels: str) -> float:
    """One counter from the gateway's /metrics (0 when absent)."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    return 0.0


def first_series(datasets: list[Dataset]) -> tuple[str, list[str]]:
    """The WADO-RS path of the first sample series and its SOP Instance UIDs."""
    ds = datasets[0]
    uids = sorted(str(d.SOPInstanceUID) for d in datasets
                  if d.SeriesInstanceUID == ds.SeriesInstanceUID)
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}", uids


def retrieved(http: httpx.Client, path: str) -> list[str]:
    response = http.get(path, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 200, response.text[:300]
    parts = parse_multipart(response.content, response.headers["content-type"])
    return sorted(str(dcmread(io.BytesIO(p.body)).SOPInstanceUID) for p in parts)


def test_dcmqrscp_without_c_get_is_retrieved_by_c_move_learned_once(
    getless_dcmqrscp: DcmqrscpServer, sample_datasets: list[Dataset], storage_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path, uids = first_series(sample_datasets)
    peer = peer_settings("noget", getless_dcmqrscp.ae_title, getless_dcmqrscp.host,
                         getless_dcmqrscp.port)
    assert peer.retrieve_method == "auto"
    settings = gateway_settings(peer, ae_title=GATEWAY_AE, cache_backend="none",
                                storage_scp_enabled=True, storage_scp_host="127.0.0.1",
                                storage_scp_port=storage_port)
    with caplog.at_level(logging.WARNING, logger="app.services.capabilities"):
        with GatewayServer(settings) as server, server.client() as http:
            assert retrieved(http, path) == uids
            assert retrieved(http, path) == uids
            counts = (metric(server, "dimse_retrievals_total", operation="C-GET"),
                      metric(server, "dimse_retrievals_total", operation="C-MOVE"),
                      metric(server, "dimse_get_refusals_total", peer="noget"))
    assert counts == (1, 2, 1)  # the second retrieval did not try C-GET
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and r.name == "app.services.capabilities"]
    assert len(warnings) == 1 and "PACS noget refuses C-GET" in warnings[0], warnings


def test_dcmqrscp_without_c_get_and_no_storage_scp_is_a_clear_502(
    getless_dcmqrscp: DcmqrscpServer, sample_datasets: list[Dataset],
) -> None:
    path, _ = first_series(sample_datasets)
    peer = peer_settings("noget", getless_dcmqrscp.ae_title, getless_dcmqrscp.host,
                         getless_dcmqrscp.port)
    settings = gateway_settings(peer, ae_title=GATEWAY_AE, cache_backend="none")
    with GatewayServer(settings) as server, server.client() as http:
        response = http.get(path)
    assert response.status_code == 502, response.text[:300]
    comment = response.json()["00000902"]["Value"][0]
    assert "PACS noget refuses C-GET" in comment and "storage SCP is off" in comment


def test_orthanc_accepting_c_get_keeps_c_get(
    orthanc: OrthancServer, sample_datasets: list[Dataset], gateway_storage_port: int,
) -> None:
    path, uids = first_series(sample_datasets)
    peer = peer_settings("orthanc", orthanc.ae_title, orthanc.host, orthanc.dicom_port)
    settings = gateway_settings(peer, ae_title=GATEWAY_AE, cache_backend="none",
                                storage_scp_enabled=True, storage_scp_host="127.0.0.1",
                                storage_scp_port=gateway_storage_port)
    with GatewayServer(settings) as server, server.client() as http:
        assert retrieved(http, path) == uids
        assert retrieved(http, path) == uids
        counts = (metric(server, "dimse_retrievals_total", operation="C-GET"),
                  metric(server, "dimse_retrievals_total", operation="C-MOVE"),
                  metric(server, "dimse_get_refusals_total"))
    assert counts == (2, 0, 0)

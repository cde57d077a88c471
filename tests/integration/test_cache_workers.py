"""Two uvicorn workers sharing one throwaway Redis run ONE retrieval for 20 concurrent requests
of a series, with C-GET and with C-MOVE (one storage SCP port, SO_REUSEPORT, shared by both
workers; sub-operations reaching the wrong worker are relayed through Redis).

Counting: /metrics is per worker and a request cannot choose its worker, so retrievals are
counted where they arrive, at DemoPacs SCPs served from this test process (operation_counts
are exact and global; the gateway is a separate process talking DIMSE to them over TCP). The
workers' own metrics are scraped on fresh connections until both have answered, which shows
both served requests and adds up to the same single retrieval. Real Orthanc behind the same
gateway is checked with C-MOVE, where the relay matters most."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom import Dataset, dcmread

from app.demo.pacs import DemoPacs
from app.dicomweb.multipart import parse_multipart
from tests.peers import OrthancServer, RedisServer, require_binary
from tests.peers.fixtures import GATEWAY_AE
from tests.support.gateway_process import GatewayProcess

pytestmark = pytest.mark.timeout(90)
REQUESTS = 20


@pytest.fixture(scope="module")
def series(sample_datasets: list[Dataset]) -> list[Dataset]:
    """The largest sample series (10 CT slices)."""
    by_series: dict[str, list[Dataset]] = {}
    for ds in sample_datasets:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return max(by_series.values(), key=len)


@pytest.fixture(scope="module")
def demo_pacs(sample_datasets: list[Dataset], gateway_storage_port: int
              ) -> Iterator[dict[str, DemoPacs]]:
    """One DemoPacs per retrieve method, in this process, slow enough (20 ms per
    sub-operation) that every request arrives while the one retrieval runs."""
    servers = {method: DemoPacs(sample_datasets, ae_title=f"WORKERS_{method.upper()}",
                                response_delay=0.02) for method in ("get", "move")}
    for server in servers.values():
        server.start("127.0.0.1", 0)
        server.add_move_destination(GATEWAY_AE, "127.0.0.1", gateway_storage_port)
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, demo_pacs: dict[str, DemoPacs],
            orthanc: OrthancServer, gateway_storage_port: int) -> Iterator[GatewayProcess]:
    """The gateway with two workers on one Redis, in front of both DemoPacs and Orthanc."""
    require_binary("redis-server")
    peers: list[dict[str, Any]] = [
        {"name": method, "ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port,
         "retrieve_method": method} for method, pacs in demo_pacs.items()]
    peers.append({"name": "orthanc", "ae_title": orthanc.ae_title, "host": orthanc.host,
                  "port": orthanc.dicom_port, "retrieve_method": "move"})
    with RedisServer(tmp_path_factory.mktemp("redis-workers")) as redis_server:
        settings = {
            "ae_title": GATEWAY_AE, "pacs": peers, "cache_backend": "redis",
            "redis_url": redis_server.url, "storage_scp_enabled": True,
            "storage_scp_host": "127.0.0.1", "storage_scp_port": gateway_storage_port,
            "storage_scp_reuse_port": True, "log_level": "WARNING",
        }
        process = GatewayProcess(tmp_path_factory.mktemp("gateway-workers"), settings,
                                 workers=2)
        with process:
            yield process


async def _concurrent_series(gateway: GatewayProcess, peer: str, first: Dataset
                             ) -> list[httpx.Response]:
    url = (f"{gateway.url}/pacs/{peer}/dicomweb/studies/{first.StudyInstanceUID}"
           f"/series/{first.SeriesInstanceUID}")
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        async with asyncio.timeout(80):
            return await asyncio.gather(*(
                client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'})
                for _ in range(REQUESTS)))


def _sops(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text[:300]
    parts = parse_multipart(response.content, response.headers["content-type"])
    return sorted(str(dcmread(io.BytesIO(p.body), stop_before_pixels=True).SOPInstanceUID)
                  for p in parts)


def _counter(text: str, line_start: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(line_start))


def _per_worker_metrics(gateway: GatewayProcess) -> list[str]:
    """Each worker's /metrics (cache and DIMSE lines), scraped on fresh connections until both
    workers have answered: once the requests are done a worker's counters are fixed, and the
    two workers' texts differ (only one of them ran each retrieval)."""
    seen: set[str] = set()
    for _ in range(100):
        text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
        seen.add("\n".join(line for line in text.splitlines()
                           if line.startswith(("cache_hits_total", "cache_misses_total",
                                               "dimse_retrievals_total"))))
        if len(seen) == 2:
            break
    return sorted(seen)


def _run(gateway: GatewayProcess, peer: str, series: list[Dataset]) -> list[str]:
    """20 concurrent requests; every answer is the whole series; the workers' metrics."""
    try:
        responses = asyncio.run(_concurrent_series(gateway, peer, series[0]))
        expected = sorted(str(d.SOPInstanceUID) for d in series)
        assert all(_sops(r) == expected for r in responses)
        workers = _per_worker_metrics(gateway)
    except BaseException:
        print(gateway.log_text()[-4000:])
        raise
    assert len(workers) == 2, f"only one worker answered /metrics: {workers}"
    for text in workers:
        assert _counter(text, 'cache_misses_total{kind="series"}') + _counter(
            text, 'cache_hits_total{kind="series"}') > 0, f"a worker served nothing: {text}"
    return workers


def test_two_workers_one_c_get(gateway: GatewayProcess, demo_pacs: dict[str, DemoPacs],
                               series: list[Dataset]) -> None:
    workers = _run(gateway, "get", series)
    counts = demo_pacs["get"].operation_counts
    assert (counts["C-GET"], counts["C-MOVE"]) == (1, 0), counts
    assert sum(_counter(t, 'dimse_retrievals_total{operation="C-GET",peer="get"}')
               for t in workers) == 1


def test_two_workers_one_c_move(gateway: GatewayProcess, demo_pacs: dict[str, DemoPacs],
                                series: list[Dataset]) -> None:
    workers = _run(gateway, "move", series)
    counts = demo_pacs["move"].operation_counts
    assert (counts["C-MOVE"], counts["C-GET"]) == (1, 0), counts
    assert sum(_counter(t, 'dimse_retrievals_total{operation="C-MOVE",peer="move"}')
               for t in workers) == 1


def test_two_workers_one_c_move_from_orthanc(gateway: GatewayProcess,
                                             series: list[Dataset]) -> None:
    """Orthanc sends the sub-operations to whichever worker the kernel picks; every request
    still gets the whole series, and the workers' metrics add up to one C-MOVE."""
    workers = _run(gateway, "orthanc", series)
    assert sum(_counter(t, 'dimse_retrievals_total{operation="C-MOVE",peer="orthanc"}')
               for t in workers) == 1

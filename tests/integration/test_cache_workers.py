"""Two uvicorn workers sharing one throwaway Redis run ONE retrieval for 20 concurrent requests
of a series, with C-GET and with C-MOVE (one storage SCP port shared by both workers).

Counting: /metrics is per worker and a worker cannot be addressed, so the retrievals are
counted where they arrive: at a DemoPacs served from this test process (its operation_counts
are exact and global), with the gateway as a separate process talking DIMSE to it over TCP.
Real Orthanc behind the same setup is checked for complete answers."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import Dataset, dcmread

from app.demo.pacs import DemoPacs
from app.dicomweb.multipart import parse_multipart
from tests.peers import OrthancServer, RedisServer, free_port, require_binary
from tests.peers.fixtures import GATEWAY_AE
from tests.support.gateway_process import GatewayProcess

pytestmark = pytest.mark.timeout(90)
REQUESTS = 20


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_binary("redis-server")
    with RedisServer(tmp_path_factory.mktemp("redis-workers")) as server:
        yield server


@pytest.fixture
def clean_redis(redis_server: RedisServer) -> RedisServer:
    import redis

    with redis.Redis.from_url(redis_server.url, socket_timeout=5) as client:
        client.flushall()
    return redis_server


@pytest.fixture(scope="module")
def series(sample_datasets: list[Dataset]) -> list[Dataset]:
    """The largest sample series (10 CT slices)."""
    by_series: dict[str, list[Dataset]] = {}
    for ds in sample_datasets:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return max(by_series.values(), key=len)


def _settings(pacs: dict[str, Any], redis_url: str, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "ae_title": GATEWAY_AE, "pacs": [pacs], "cache_backend": "redis",
        "redis_url": redis_url, "storage_scp_enabled": False, "log_level": "WARNING",
    }
    values.update(extra)
    return values


async def _concurrent_series(gateway: GatewayProcess, first: Dataset) -> list[httpx.Response]:
    url = (f"{gateway.url}/dicomweb/studies/{first.StudyInstanceUID}"
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


@pytest.fixture
def demo_pacs(sample_datasets: list[Dataset]) -> Iterator[DemoPacs]:
    """A DemoPacs in this process, slow enough (20 ms per sub-operation) that every request
    arrives while the one retrieval runs."""
    pacs = DemoPacs(sample_datasets, ae_title="WORKERS_PACS", response_delay=0.02)
    pacs.start("127.0.0.1", 0)
    yield pacs
    pacs.stop()


def _counter(text: str, line_start: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(line_start))


def _per_worker_metrics(gateway: GatewayProcess) -> list[str]:
    """Each worker's /metrics (cache and DIMSE lines), scraped on fresh connections until both
    workers have answered: once every request is done, a worker's counters are fixed, and the
    two workers' texts differ (only one of them ran the retrieval)."""
    seen: set[str] = set()
    for _ in range(100):
        text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
        seen.add("\n".join(line for line in text.splitlines()
                            if line.startswith(("cache_hits_total", "cache_misses_total",
                                                "dimse_retrievals_total"))))
        if len(seen) == 2:
            break
    return sorted(seen)


def _run(tmp_path: Path, settings: dict[str, Any], series: list[Dataset]
         ) -> tuple[list[httpx.Response], list[str]]:
    with GatewayProcess(tmp_path / "gw", settings, workers=2) as gateway:
        try:
            responses = asyncio.run(_concurrent_series(gateway, series[0]))
            return responses, _per_worker_metrics(gateway)
        except BaseException:
            print(gateway.log_text()[-4000:])
            raise


def _check_workers(workers: list[str]) -> None:
    """Both workers served some of the requests, and one retrieval ran between them."""
    assert len(workers) == 2, f"only one worker answered: {workers}"
    for text in workers:
        assert _counter(text, 'cache_misses_total{kind="series"}') + _counter(
            text, 'cache_hits_total{kind="series"}') > 0, f"a worker served nothing: {text}"
    assert sum(_counter(t, "dimse_retrievals_total") for t in workers) == 1, workers


def test_two_workers_one_c_get(tmp_path: Path, clean_redis: RedisServer, demo_pacs: DemoPacs,
                               series: list[Dataset]) -> None:
    peer = {"name": "demo", "ae_title": demo_pacs.ae_title, "host": "127.0.0.1",
            "port": demo_pacs.port, "retrieve_method": "get"}
    responses, workers = _run(tmp_path, _settings(peer, clean_redis.url), series)
    expected = sorted(str(d.SOPInstanceUID) for d in series)
    assert all(_sops(r) == expected for r in responses)
    _check_workers(workers)
    counts = demo_pacs.operation_counts
    assert counts["C-GET"] == 1, counts
    assert counts["C-MOVE"] == 0


def test_two_workers_one_c_move(tmp_path: Path, clean_redis: RedisServer, demo_pacs: DemoPacs,
                                series: list[Dataset]) -> None:
    scp_port = free_port()
    demo_pacs.add_move_destination(GATEWAY_AE, "127.0.0.1", scp_port)
    peer = {"name": "demo", "ae_title": demo_pacs.ae_title, "host": "127.0.0.1",
            "port": demo_pacs.port, "retrieve_method": "move"}
    settings = _settings(peer, clean_redis.url, storage_scp_enabled=True,
                         storage_scp_host="127.0.0.1", storage_scp_port=scp_port,
                         storage_scp_reuse_port=True)
    responses, workers = _run(tmp_path, settings, series)
    expected = sorted(str(d.SOPInstanceUID) for d in series)
    assert all(_sops(r) == expected for r in responses)
    _check_workers(workers)
    counts = demo_pacs.operation_counts
    assert counts["C-MOVE"] == 1, counts
    assert counts["C-GET"] == 0


def test_two_workers_c_move_from_orthanc(tmp_path: Path, clean_redis: RedisServer,
                                        orthanc: OrthancServer, gateway_storage_port: int,
                                        series: list[Dataset]) -> None:
    """Real Orthanc sends the sub-operations to whichever worker the kernel picks; every
    request still gets the whole series, and the workers' metrics add up to one C-MOVE."""
    peer = {"name": "orthanc", "ae_title": orthanc.ae_title, "host": orthanc.host,
            "port": orthanc.dicom_port, "retrieve_method": "move"}
    settings = _settings(peer, clean_redis.url, storage_scp_enabled=True,
                         storage_scp_host="127.0.0.1", storage_scp_port=gateway_storage_port,
                         storage_scp_reuse_port=True)
    responses, workers = _run(tmp_path, settings, series)
    expected = sorted(str(d.SOPInstanceUID) for d in series)
    assert all(_sops(r) == expected for r in responses)
    _check_workers(workers)

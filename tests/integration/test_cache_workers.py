"""Two gateway processes sharing one throwaway Redis run ONE retrieval for 20 concurrent
requests of a series (10 sent to each), with C-GET and with C-MOVE (one storage SCP port,
SO_REUSEPORT, shared by both processes; sub-operations reaching the wrong process are relayed
through Redis). A uvicorn ``--workers 2`` gateway is checked the same way, but the kernel
chooses which worker accepts a connection, so there only the total is asserted.

Counting: retrievals are counted where they arrive, at DemoPacs SCPs served from this test
process (operation_counts are exact and global; the gateways are separate processes talking
DIMSE to them over TCP); each process's /metrics must add up to the same single retrieval.
Real Orthanc behind the same gateways is checked with C-MOVE, where the relay matters most.
Identical concurrent searches sent to both processes share one C-FIND sequence (computed counts
included), whichever process runs it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom import Dataset
from pynetdicom.events import Event

from app.demo.pacs import DemoPacs
from tests.peers import OrthancServer
from tests.peers.fixtures import GATEWAY_AE
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_cache import redis_cache_settings, sop_uids

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


def _settings(demo_pacs: dict[str, DemoPacs], orthanc: OrthancServer, redis_url: str,
              storage_port: int) -> dict[str, Any]:
    peers: list[dict[str, Any]] = [
        {"name": method, "ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port,
         "retrieve_method": method} for method, pacs in demo_pacs.items()]
    peers.append({"name": "orthanc", "ae_title": orthanc.ae_title, "host": orthanc.host,
                  "port": orthanc.dicom_port, "retrieve_method": "move"})
    return {
        "ae_title": GATEWAY_AE, "pacs": peers, **redis_cache_settings(redis_url),
        "storage_scp_enabled": True, "storage_scp_host": "127.0.0.1",
        "storage_scp_port": storage_port, "storage_scp_reuse_port": True,
        "log_level": "WARNING",
    }


@pytest.fixture
def replicas(tmp_path_factory: pytest.TempPathFactory, demo_pacs: dict[str, DemoPacs],
             orthanc: OrthancServer, gateway_storage_port: int, redis_url: str
             ) -> Iterator[list[GatewayProcess]]:
    """Two single-worker gateway processes sharing Redis and the storage SCP port."""
    import redis as redis_client

    redis_client.Redis.from_url(redis_url).flushall()
    for pacs in demo_pacs.values():
        pacs.reset_operation_counts()
    settings = _settings(demo_pacs, orthanc, redis_url, gateway_storage_port)
    first = GatewayProcess(tmp_path_factory.mktemp("replica-a"), settings, workers=1)
    second = GatewayProcess(tmp_path_factory.mktemp("replica-b"), settings, workers=1)
    with first, second:
        yield [first, second]


@pytest.fixture
def workers(tmp_path_factory: pytest.TempPathFactory, demo_pacs: dict[str, DemoPacs],
            orthanc: OrthancServer, gateway_storage_port: int, redis_url: str
            ) -> Iterator[GatewayProcess]:
    """One gateway process with two uvicorn workers."""
    import redis as redis_client

    redis_client.Redis.from_url(redis_url).flushall()
    for pacs in demo_pacs.values():
        pacs.reset_operation_counts()
    settings = _settings(demo_pacs, orthanc, redis_url, gateway_storage_port)
    with GatewayProcess(tmp_path_factory.mktemp("workers"), settings, workers=2) as process:
        yield process


async def _concurrent_series(gateways: list[GatewayProcess], peer: str, first: Dataset
                             ) -> list[httpx.Response]:
    path = (f"/pacs/{peer}/dicomweb/studies/{first.StudyInstanceUID}"
            f"/series/{first.SeriesInstanceUID}")
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=0)
    accept = {"Accept": 'multipart/related; type="application/dicom"'}
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        async with asyncio.timeout(80):
            return await asyncio.gather(*(
                client.get(gateways[i % len(gateways)].url + path, headers=accept)
                for i in range(REQUESTS)))


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
        if len(seen) == gateway.workers:
            break
    return sorted(seen)


def _run(gateways: list[GatewayProcess], peer: str, series: list[Dataset]) -> list[str]:
    """20 concurrent requests spread over the gateways; every answer is the whole series; each
    process's metrics (for a multi-worker process, as many distinct worker texts as seen)."""
    try:
        responses = asyncio.run(_concurrent_series(gateways, peer, series[0]))
        expected = sorted(str(d.SOPInstanceUID) for d in series)
        assert all(sop_uids(r) == expected for r in responses)
        texts = [t for g in gateways for t in _per_worker_metrics(g)]
    except BaseException:
        for g in gateways:
            print(g.log_text()[-4000:])
        raise
    return texts


def _served(text: str) -> float:
    return _counter(text, 'cache_misses_total{kind="series"}') + _counter(
        text, 'cache_hits_total{kind="series"}')


@pytest.mark.parametrize("method", ["get", "move"])
def test_two_replicas_one_retrieval(replicas: list[GatewayProcess],
                                    demo_pacs: dict[str, DemoPacs], series: list[Dataset],
                                    method: str) -> None:
    texts = _run(replicas, method, series)
    operation = "C-GET" if method == "get" else "C-MOVE"
    other = "C-MOVE" if method == "get" else "C-GET"
    counts = demo_pacs[method].operation_counts
    assert (counts[operation], counts[other]) == (1, 0), counts
    assert len(texts) == 2 and all(_served(t) > 0 for t in texts), texts
    assert sum(_counter(t, f'dimse_retrievals_total{{operation="{operation}",peer="{method}"}}')
               for t in texts) == 1


@pytest.mark.parametrize("method", ["get", "move"])
def test_two_workers_one_retrieval(workers: GatewayProcess, demo_pacs: dict[str, DemoPacs],
                                   series: list[Dataset], method: str) -> None:
    texts = _run([workers], method, series)
    operation = "C-GET" if method == "get" else "C-MOVE"
    counts = demo_pacs[method].operation_counts
    assert counts[operation] == 1, counts
    assert sum(_counter(t, f'dimse_retrievals_total{{operation="{operation}",peer="{method}"}}')
               for t in texts) == 1


def test_two_replicas_one_c_move_from_orthanc(replicas: list[GatewayProcess],
                                              series: list[Dataset]) -> None:
    """Orthanc sends the sub-operations to whichever process the kernel picks; every request
    still gets the whole series, and the processes' metrics add up to one C-MOVE."""
    texts = _run(replicas, "orthanc", series)
    assert sum(_counter(t, 'dimse_retrievals_total{operation="C-MOVE",peer="orthanc"}')
               for t in texts) == 1


# -- search coalescing across processes ---------------------------------------------------------

SEARCH = {"limit": "101", "offset": "0", "fuzzymatching": "false",
          "includefield": "00081030,00080060"}
SEARCHES = 10


class GatedPacs(DemoPacs):
    """A countless DemoPacs refusing UID lists (counts cost a C-FIND per study and series)
    whose C-FINDs wait while ``gate`` is set and not yet opened."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, omit_counts=True, strict_unique_keys=True, **kwargs)
        self.gate: threading.Event | None = None
        self.arrived = 0

    def _on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        self.arrived += 1
        gate = self.gate
        if gate is not None:
            gate.wait(30)
        yield from super()._on_find(event)


@pytest.fixture(scope="module")
def gated_pacs(sample_datasets: list[Dataset]) -> Iterator[GatedPacs]:
    server = GatedPacs(sample_datasets, ae_title="WORKERS_QIDO")
    server.start("127.0.0.1", 0)
    yield server
    server.stop()


@pytest.fixture
def search_replicas(tmp_path_factory: pytest.TempPathFactory, gated_pacs: GatedPacs,
                    redis_url: str) -> Iterator[list[GatewayProcess]]:
    """Two single-worker gateway processes in front of the gated PACS, sharing Redis, with the
    query cache off (only coalescing can share a search)."""
    import redis as redis_client

    redis_client.Redis.from_url(redis_url).flushall()
    settings = {
        "ae_title": GATEWAY_AE, **redis_cache_settings(redis_url),
        "pacs": [{"name": "qido", "ae_title": gated_pacs.ae_title, "host": "127.0.0.1",
                  "port": gated_pacs.port}],
        "storage_scp_enabled": False, "qido_cache_ttl": 0, "log_level": "WARNING",
    }
    first = GatewayProcess(tmp_path_factory.mktemp("qido-a"), settings, workers=1)
    second = GatewayProcess(tmp_path_factory.mktemp("qido-b"), settings, workers=1)
    with first, second:
        yield [first, second]


async def _concurrent_searches(gateways: list[GatewayProcess], pacs: GatedPacs
                               ) -> list[httpx.Response]:
    """SEARCHES identical searches, alternately to each gateway, while the PACS holds the
    first C-FIND."""
    pacs.gate = threading.Event()
    pacs.arrived = 0
    limits = httpx.Limits(max_connections=SEARCHES, max_keepalive_connections=0)
    try:
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            tasks = [asyncio.ensure_future(client.get(
                f"{gateways[i % len(gateways)].url}/pacs/qido/dicomweb/studies", params=SEARCH))
                for i in range(SEARCHES)]
            for _ in range(1000):  # up to 20 s
                if pacs.arrived:
                    break
                await asyncio.sleep(0.02)
            assert pacs.arrived, "no C-FIND reached the PACS"
            await asyncio.sleep(1.0)  # let every request reach the search's lock
            pacs.gate.set()
            return list(await asyncio.gather(*tasks))
    finally:
        pacs.gate.set()
        pacs.gate = None


def _without_urls(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "00081190"} for r in results]


def test_two_replicas_share_one_search(search_replicas: list[GatewayProcess],
                                       gated_pacs: GatedPacs) -> None:
    try:
        # Each process learns once that this PACS refuses UID lists (one refused C-FIND): let
        # both learn it first, so that one search costs the same whichever process runs it.
        for gateway in reversed(search_replicas):
            alone = httpx.get(f"{gateway.url}/pacs/qido/dicomweb/studies", params=SEARCH,
                              timeout=30)
            assert alone.status_code == 200
        gated_pacs.reset_operation_counts()
        alone = httpx.get(f"{search_replicas[0].url}/pacs/qido/dicomweb/studies",
                          params=SEARCH, timeout=30)
        assert alone.status_code == 200
        one_search = gated_pacs.operation_counts["C-FIND"]
        assert one_search > 1  # counts cost C-FINDs of their own
        gated_pacs.reset_operation_counts()
        responses = asyncio.run(_concurrent_searches(search_replicas, gated_pacs))
        assert [r.status_code for r in responses] == [200] * SEARCHES
        # The same results; each RetrieveURL under the base URL of the gateway that answered.
        for n, response in enumerate(responses):
            results = response.json()
            base = search_replicas[n % len(search_replicas)].url
            assert all(r["00081190"]["Value"][0].startswith(base) for r in results)
            assert _without_urls(results) == _without_urls(alone.json())
        assert gated_pacs.operation_counts["C-FIND"] == one_search
        texts = [httpx.get(f"{g.url}/metrics", timeout=10).text for g in search_replicas]
        assert all(_counter(t, "qido_searches_total") > 0 for t in texts), texts
        assert sum(_counter(t, 'qido_searches_total{peer="qido",source="shared"}')
                   for t in texts) == SEARCHES - 1
    except BaseException:
        for g in search_replicas:
            print(g.log_text()[-4000:])
        raise

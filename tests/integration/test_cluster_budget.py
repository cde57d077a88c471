"""Budgets and metrics that hold cluster-wide, with real gateway processes on one throwaway
Redis (issue #12 items 4 and 5).

- Two replicas of two uvicorn workers each never have more associations open to a PACS than
  its ``max_associations``, however many requests they get at once (counted where they arrive:
  the DemoPacs in this test process sees every association of every process); the same load
  with ``association_budget = "process"`` does exceed it (so the count can fail).
- A replica killed with SIGKILL while holding a lease (an idle pooled association) gives its
  slot back after ``association_lease_ttl``: another replica's request then goes through.
- A request waiting longer than ``association_wait_timeout`` for a slot held by another
  replica gets 503 with Retry-After.
- ``uvicorn --workers 2`` with ``PROMETHEUS_MULTIPROC_DIR``: requests spread over both
  workers, and any worker's /metrics counts them all.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydicom import Dataset

from app.demo.pacs import DemoPacs
from tests.peers.fixtures import GATEWAY_AE
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_cache import redis_cache_settings

pytestmark = pytest.mark.timeout(120)
LIMIT = 2


@pytest.fixture(scope="module")
def pacs(sample_datasets: list[Dataset]) -> Iterator[DemoPacs]:
    """A DemoPacs slow enough (50 ms per C-FIND match) that searches overlap."""
    server = DemoPacs(sample_datasets, ae_title="BUDGET_PACS", response_delay=0.05)
    server.start("127.0.0.1", 0)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_pacs(sample_datasets: list[Dataset]) -> Iterator[DemoPacs]:
    """A DemoPacs whose C-GET of a 10-instance series holds its association ~5 s."""
    server = DemoPacs(sample_datasets, ae_title="SLOW_PACS", response_delay=0.5)
    server.start("127.0.0.1", 0)
    yield server
    server.stop()


@pytest.fixture
def fresh_redis(redis_url: str) -> str:
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    return redis_url


def _settings(redis_url: str, peers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"ae_title": GATEWAY_AE, "pacs": peers, "storage_scp_enabled": False,
            "log_level": "WARNING", "qido_cache_ttl": 0,
            **redis_cache_settings(redis_url), **extra}


def _peer(name: str, server: DemoPacs, **extra: Any) -> dict[str, Any]:
    return {"name": name, "ae_title": server.ae_title, "host": "127.0.0.1",
            "port": server.port, "max_associations": LIMIT, **extra}


def _holders(redis_url: str, peer: str) -> int:
    with redis.Redis.from_url(redis_url) as client:
        return int(client.zcard(f"dwg:assoc:{{{peer}}}:holders"))


async def _searches(urls: list[str], count: int) -> list[httpx.Response]:
    """``count`` different searches at once (distinct limits: no coalescing), spread over
    ``urls`` on fresh connections."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        return await asyncio.gather(*(
            client.get(f"{urls[i % len(urls)]}/dicomweb/studies?limit={100 + i}")
            for i in range(count)))


def _peak_with(tmp_path: Path, pacs: DemoPacs, redis_url: str, **extra: Any) -> int:
    """The most associations open at once while two replicas of two workers answer 24
    concurrent searches."""
    settings = _settings(redis_url, [_peer("budget", pacs)], **extra)
    with (GatewayProcess(tmp_path / "a", settings, workers=2) as first,
          GatewayProcess(tmp_path / "b", settings, workers=2) as second):
        pacs.reset_peak_associations()
        responses = asyncio.run(_searches([first.url, second.url], 24))
        assert [r.status_code for r in responses] == [200] * 24
        return pacs.peak_associations


def test_replicas_times_workers_stay_within_max_associations(
        tmp_path: Path, pacs: DemoPacs, fresh_redis: str) -> None:
    peak = _peak_with(tmp_path / "shared", pacs, fresh_redis)
    assert peak == LIMIT  # saturated, never above
    # Without the shared budget each of the four processes has its own LIMIT.
    unbounded = _peak_with(tmp_path / "process", pacs, fresh_redis,
                           association_budget="process")
    assert unbounded > LIMIT


def test_a_replica_killed_while_holding_a_lease_frees_its_slot_after_the_ttl(
        tmp_path: Path, pacs: DemoPacs, fresh_redis: str) -> None:
    ttl = 3.0
    peer = _peer("budget", pacs, max_associations=1, association_idle_timeout=60,
                 association_wait_timeout=20)
    settings = _settings(fresh_redis, [peer], association_lease_ttl=ttl)
    survivor = GatewayProcess(tmp_path / "survivor", settings, workers=1)
    victim = GatewayProcess(tmp_path / "victim", settings, workers=1)
    with survivor, victim:
        assert httpx.get(f"{victim.url}/dicomweb/studies", timeout=30).status_code == 200
        # The victim keeps its association idle for reuse: it holds the one lease.
        assert _holders(fresh_redis, "budget") == 1 and pacs.open_associations == 1
        victim.kill()
        killed = time.monotonic()
        for _ in range(100):  # the PACS sees the connection go; Redis still has the lease
            if pacs.open_associations == 0:
                break
            time.sleep(0.02)
        assert pacs.open_associations == 0 and _holders(fresh_redis, "budget") == 1
        answer = httpx.get(f"{survivor.url}/dicomweb/studies", timeout=30)
        waited = time.monotonic() - killed
    assert answer.status_code == 200
    # Renewed every ttl/3, so the dead holder's lease had between 2/3 ttl and ttl left.
    assert ttl / 3 < waited < ttl + 2.0


def test_waiting_longer_than_the_wait_timeout_is_503_with_retry_after(
        tmp_path: Path, slow_pacs: DemoPacs, sample_datasets: list[Dataset],
        fresh_redis: str) -> None:
    peer = _peer("slow", slow_pacs, max_associations=1, association_wait_timeout=1)
    settings = _settings(fresh_redis, [peer])
    by_series: dict[str, list[Dataset]] = {}
    for ds in sample_datasets:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    first = max(by_series.values(), key=len)[0]
    path = f"/dicomweb/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"

    def scenario(holder: str, waiter: str) -> tuple[httpx.Response, httpx.Response, float]:
        with ThreadPoolExecutor(1) as pool:
            retrieval = pool.submit(httpx.get, holder + path, timeout=60, headers={
                "Accept": 'multipart/related; type="application/dicom"'})
            for _ in range(300):
                if slow_pacs.operation_counts["C-GET"]:
                    break
                time.sleep(0.02)
            start = time.monotonic()
            search = httpx.get(f"{waiter}/dicomweb/studies", timeout=60)
            waited = time.monotonic() - start
            return search, retrieval.result(), waited

    slow_pacs.reset_operation_counts()
    with (GatewayProcess(tmp_path / "a", settings, workers=1) as first_replica,
          GatewayProcess(tmp_path / "b", settings, workers=1) as second_replica):
        search, retrieval, waited = scenario(first_replica.url, second_replica.url)
    assert search.status_code == 503 and search.headers["Retry-After"] == "5"
    assert "max_associations" in search.text
    assert 0.9 < waited < 3.0
    assert retrieval.status_code == 200


def _sample(text: str, name: str, **labels: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if re.match(rf"{name}[{{ ]", line)
               and all(f'{k}="{v}"' in line for k, v in labels.items()))


def test_metrics_of_every_worker_add_up(tmp_path: Path, pacs: DemoPacs,
                                        fresh_redis: str) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    settings = _settings(fresh_redis, [_peer("budget", pacs)])
    sent = 60
    with GatewayProcess(tmp_path / "workers", settings, workers=2,
                        env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}) as gateway:
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(limits=limits, timeout=30) as client:
            before = _sample(client.get(f"{gateway.url}/metrics").text,
                             "http_request_duration_seconds_count", route="/healthz")
            for _ in range(sent):
                assert client.get(f"{gateway.url}/healthz").status_code == 200
            searches = [client.get(f"{gateway.url}/dicomweb/studies") for _ in range(4)]
            scrapes = [client.get(f"{gateway.url}/metrics").text for _ in range(6)]
        assert all(r.status_code == 200 for r in searches)
    # Both workers served (each wrote samples of its own, named by its PID)...
    pids = {p.stem.rsplit("_", 1)[-1] for p in directory.glob("histogram_*.db")}
    assert len(pids) == 2, sorted(directory.iterdir())
    # ...and every scrape, whichever worker answered it, counts every request (the start-up
    # check's /healthz included in ``before``).
    for text in scrapes:
        assert _sample(text, "http_request_duration_seconds_count", route="/healthz",
                       method="GET", status="200") == before + sent
        assert _sample(text, "qido_searches_total", peer="budget") == 4
        assert _sample(text, "dimse_operation_duration_seconds_count", peer="budget",
                       operation="C-FIND", status="0x0000") >= 4

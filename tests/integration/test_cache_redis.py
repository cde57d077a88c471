"""The cache on a real Redis in front of real Orthanc: a second retrieval (and the same series
through a second gateway) costs no DIMSE; Redis dying mid-run degrades to pass-through with
no failed request, is reported by /readyz and /metrics, and is recovered from by itself when
Redis returns on the same port; the admin endpoints and the `cache` CLI act on Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydicom import Dataset

from tests.peers import OrthancServer, RedisServer, require_binary
from tests.peers.fixtures import GATEWAY_AE
from tests.support.gateway_process import REPO_ROOT, settings_env
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings
from tests.support.redis_cache import ADMIN_AUTH, ADMIN_TOKEN, redis_cache_settings, sop_uids

pytestmark = pytest.mark.timeout(60)
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


@pytest.fixture(scope="module")
def series(sample_datasets: list[Dataset]) -> list[Dataset]:
    """The largest sample series (10 CT slices)."""
    by_series: dict[str, list[Dataset]] = {}
    for ds in sample_datasets:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return max(by_series.values(), key=len)


def _settings(orthanc: OrthancServer, redis_url: str, **extra: Any) -> Any:
    peer = peer_settings("orthanc", orthanc.ae_title, orthanc.host, orthanc.dicom_port)
    values: dict[str, Any] = {"ae_title": GATEWAY_AE, **redis_cache_settings(
        redis_url, admin=True, cache_retry_interval=0.3)}
    values.update(extra)
    return gateway_settings(peer, **values)


def _path(first: Dataset) -> str:
    return f"/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"


def _metric(gateway: GatewayServer, line_start: str) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(line_start))


def _retrievals(gateway: GatewayServer) -> float:
    return _metric(gateway, "dimse_retrievals_total")


def _series_hits(gateway: GatewayServer) -> float:
    return _metric(gateway, 'cache_hits_total{kind="series"}')


def test_second_retrieval_costs_no_dimse_even_on_another_gateway(
        orthanc: OrthancServer, redis_server: RedisServer, series: list[Dataset]) -> None:
    expected = sorted(str(d.SOPInstanceUID) for d in series)
    settings = _settings(orthanc, redis_server.url)
    with GatewayServer(settings) as first, first.client() as http:
        assert sop_uids(http.get(_path(series[0]), headers={"Accept": MULTIPART_DICOM})) == expected
        assert _retrievals(first) == 1
        assert sop_uids(http.get(_path(series[0]), headers={"Accept": MULTIPART_DICOM})) == expected
        assert http.get(f"{_path(series[0])}/metadata").status_code == 200
        for sop in expected:
            frame = http.get(f"{_path(series[0])}/instances/{sop}/frames/1",
                             headers={"Accept": FRAMES})
            assert frame.status_code == 200
        assert _retrievals(first) == 1
        assert _series_hits(first) >= 1
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.dbsize() > len(expected)  # instances, metadata, index: all in Redis
    with GatewayServer(settings) as second, second.client() as http:
        assert sop_uids(http.get(_path(series[0]), headers={"Accept": MULTIPART_DICOM})) == expected
        assert http.get(f"{_path(series[0])}/metadata").status_code == 200
        assert _retrievals(second) == 0  # the first gateway's retrieval serves this one


def test_redis_over_a_unix_socket(orthanc: OrthancServer, series: list[Dataset],
                                  tmp_path: Path) -> None:
    """``redis_url = unix://...``: a fill writes Redis through the socket, and a second
    gateway's retrieval, metadata and frame are read back through it with no DIMSE."""
    require_binary("redis-server")
    expected = sorted(str(d.SOPInstanceUID) for d in series)
    with RedisServer(tmp_path / "redis", unix_socket=True) as server:
        settings = _settings(orthanc, server.socket_url)
        with GatewayServer(settings) as first, first.client() as http:
            assert sop_uids(http.get(_path(series[0]),
                                     headers={"Accept": MULTIPART_DICOM})) == expected
            assert _retrievals(first) == 1
        with redis.Redis(unix_socket_path=str(server.socket_path)) as client:
            assert client.dbsize() > len(expected)
        with GatewayServer(settings) as second, second.client() as http:
            assert sop_uids(http.get(_path(series[0]),
                                     headers={"Accept": MULTIPART_DICOM})) == expected
            assert http.get(f"{_path(series[0])}/metadata").status_code == 200
            frame = http.get(f"{_path(series[0])}/instances/{expected[0]}/frames/1",
                             headers={"Accept": FRAMES})
            pixels = next(d for d in series if d.SOPInstanceUID == expected[0]).PixelData
            assert frame.status_code == 200 and pixels in frame.content
            assert _retrievals(second) == 0
            assert _series_hits(second) >= 1


def _wait_for(predicate: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def test_redis_outage_degrades_then_recovers_by_itself(
        orthanc: OrthancServer, redis_server: RedisServer, series: list[Dataset]) -> None:
    expected = sorted(str(d.SOPInstanceUID) for d in series)
    path = _path(series[0])
    with GatewayServer(_settings(orthanc, redis_server.url)) as gateway, \
            gateway.client() as http:
        assert sop_uids(http.get(path, headers={"Accept": MULTIPART_DICOM})) == expected
        assert _metric(gateway, "cache_backend_up") == 1
        ready = http.get(f"{gateway.url}/readyz").json()
        assert ready["cache"] == {"backend": "redis", "status": "ok"}

        redis_server.stop()
        for _ in range(3):  # keeps working: pass-through, never a 500
            assert sop_uids(http.get(path, headers={"Accept": MULTIPART_DICOM})) == expected
            assert http.get(f"{path}/metadata").status_code == 200
            assert http.get(f"/studies/{series[0].StudyInstanceUID}/series").status_code == 200
        readyz = http.get(f"{gateway.url}/readyz")
        assert readyz.status_code == 200  # the PACS answers: still ready, but degraded
        assert readyz.json()["status"] == "degraded"
        assert readyz.json()["cache"]["status"] == "degraded"
        assert _metric(gateway, "cache_backend_up") == 0
        assert _metric(gateway, "cache_errors_total") >= 1
        stats = http.get(f"{gateway.url}/admin/cache/stats", headers=ADMIN_AUTH)
        assert stats.status_code == 200 and stats.json()["healthy"] is False

        redis_server.start()  # the same port, empty
        assert _wait_for(lambda: _metric(gateway, "cache_backend_up") == 1, 5), \
            "cache_backend_up stayed 0 after Redis came back"
        assert http.get(f"{gateway.url}/readyz").json()["cache"]["status"] == "ok"
        assert sop_uids(http.get(path, headers={"Accept": MULTIPART_DICOM})) == expected
        retrievals, hits = _retrievals(gateway), _series_hits(gateway)
        assert sop_uids(http.get(path, headers={"Accept": MULTIPART_DICOM})) == expected
        assert _retrievals(gateway) == retrievals  # a cache hit again
        assert _series_hits(gateway) == hits + 1


def test_redis_outage_during_a_fill(orthanc: OrthancServer, redis_server: RedisServer,
                                    series: list[Dataset]) -> None:
    """Redis vanishing while requests are in flight costs no request."""
    import threading

    expected = sorted(str(d.SOPInstanceUID) for d in series)
    path = _path(series[0])
    with GatewayServer(_settings(orthanc, redis_server.url)) as gateway:
        results: list[httpx.Response] = []

        def fetch() -> None:
            with gateway.client() as client:
                results.append(client.get(path, headers={"Accept": MULTIPART_DICOM}))

        threads = [threading.Thread(target=fetch) for _ in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(0.05)
        redis_server.stop()
        for thread in threads:
            thread.join(30)
        assert len(results) == 6
        assert all(sop_uids(r) == expected for r in results)


def test_admin_endpoints_on_redis(orthanc: OrthancServer, redis_server: RedisServer,
                                  series: list[Dataset]) -> None:
    path = _path(series[0])
    study = str(series[0].StudyInstanceUID)
    with GatewayServer(_settings(orthanc, redis_server.url)) as gateway, \
            gateway.client() as http, httpx.Client(base_url=gateway.url, timeout=30,
                                                   headers=ADMIN_AUTH) as admin:
        http.get(path, headers={"Accept": MULTIPART_DICOM})
        stats = admin.get("/admin/cache/stats").json()
        assert stats["backend"] == "redis" and stats["healthy"] is True
        assert stats["keys"] >= len(series) + 1
        assert stats["fills_in_progress"] == 0

        assert admin.post("/admin/cache/evict").status_code == 400
        assert admin.post("/admin/cache/evict", json={"study": "1.2.x"}).status_code == 400
        assert admin.post("/admin/cache/evict",
                          json={"study": study, "pacs": "nope"}).status_code == 404
        evicted = admin.post("/admin/cache/evict", json={"study": study})
        assert evicted.status_code == 200 and evicted.json()["removed"] >= len(series) + 1
        before = _retrievals(gateway)
        http.get(path, headers={"Accept": MULTIPART_DICOM})
        assert _retrievals(gateway) == before + 1  # evicted: fetched again

        cleared = admin.post("/admin/cache/clear")
        assert cleared.status_code == 200 and cleared.json()["removed"] >= len(series)
        with redis.Redis.from_url(redis_server.url) as client:
            assert list(client.scan_iter(match="dwg:*")) == []
        http.get(path, headers={"Accept": MULTIPART_DICOM})
        assert _retrievals(gateway) == before + 2


def test_admin_endpoints_off_by_default(orthanc: OrthancServer, redis_server: RedisServer
                                        ) -> None:
    settings = _settings(orthanc, redis_server.url, cache_admin_enabled=False)
    with GatewayServer(settings) as gateway:
        assert httpx.get(f"{gateway.url}/admin/cache/stats").status_code == 404
        assert httpx.post(f"{gateway.url}/admin/cache/clear").status_code == 404


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DWG_")}
    full.update(env)
    full["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run([sys.executable, "-m", "app.cli", "cache", *args], env=full,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)


def _json_out(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_cache_cli_on_redis(orthanc: OrthancServer, redis_server: RedisServer,
                            series: list[Dataset]) -> None:
    study = str(series[0].StudyInstanceUID)
    settings = _settings(orthanc, redis_server.url)
    with GatewayServer(settings) as gateway, gateway.client() as http:
        http.get(_path(series[0]), headers={"Accept": MULTIPART_DICOM})
        over_http = _cli("stats", "--url", gateway.url, env={"DWG_ADMIN_TOKEN": ADMIN_TOKEN})
        assert _json_out(over_http)["backend"] == "redis"
    env = settings_env({"cache_backend": "redis", "redis_url": redis_server.url,
                        "pacs": [{"name": "orthanc", "ae_title": orthanc.ae_title,
                                  "host": orthanc.host, "port": orthanc.dicom_port}]})
    stats = _json_out(_cli("stats", env=env))
    assert stats["backend"] == "redis" and stats["keys"] >= len(series) + 1
    with redis.Redis.from_url(redis_server.url) as client:
        client.set("not-the-gateways", b"x")
        index_keys = list(client.scan_iter(match="dwg:orthanc:s:*"))
        assert index_keys
        assert _json_out(_cli("evict", "--study", study, env=env))["removed"] >= len(series) + 1
        assert list(client.scan_iter(match="dwg:orthanc:s:*")) == []
        assert list(client.scan_iter(match="dwg:orthanc:i:*")) == []
        client.set("dwg:orthanc:q:leftover", b"{}")
        assert _json_out(_cli("clear", env=env))["removed"] >= 1
        assert list(client.scan_iter(match="dwg:*")) == []
        assert client.get("not-the-gateways") == b"x"  # only the gateway's keys go
    refused = _cli("evict", env=env)
    assert refused.returncode != 0
    memory = _cli("stats", env={"DWG_CACHE_BACKEND": "memory"})
    assert memory.returncode == 2 and "--url" in memory.stderr


def test_redis_down_from_the_start(orthanc: OrthancServer, tmp_path: Path,
                                   series: list[Dataset]) -> None:
    """A gateway whose Redis is not running at start-up serves pass-through, and picks Redis
    up when it appears."""
    require_binary("redis-server")
    late = RedisServer(tmp_path / "late-redis")  # its port is chosen, nothing listens yet
    expected = sorted(str(d.SOPInstanceUID) for d in series)
    path = _path(series[0])
    try:
        with GatewayServer(_settings(orthanc, late.url)) as gateway, gateway.client() as http:
            for _ in range(2):
                assert sop_uids(http.get(path, headers={"Accept": MULTIPART_DICOM})) == expected
            assert _metric(gateway, "cache_backend_up") == 0
            late.start()
            assert _wait_for(lambda: _metric(gateway, "cache_backend_up") == 1, 5)
            http.get(path, headers={"Accept": MULTIPART_DICOM})
            before = _retrievals(gateway)
            assert sop_uids(http.get(path, headers={"Accept": MULTIPART_DICOM})) == expected
            assert _retrievals(gateway) == before
    finally:
        late.stop()


def test_readyz_reports_an_unreachable_redis_before_any_traffic(
        orthanc: OrthancServer, tmp_path: Path) -> None:
    never = RedisServer(tmp_path / "never")  # never started
    with GatewayServer(_settings(orthanc, never.url)) as gateway:
        ready = httpx.get(f"{gateway.url}/readyz", timeout=10).json()
        assert ready["cache"]["status"] == "degraded"

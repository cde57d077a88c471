"""OHIF on studies prefetched as a worklist (issue #14 item 1): after `dicomweb-gateway prefetch`
filled a Redis cache with the CT studies, the viewer opens them (images drawn, a long series
scrolled) and the gateway sends the PACS no retrieval at all; the study list's searches are still
C-FINDs (a prefetch fills the WADO-RS cache, not the QIDO-RS one)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import Dataset

from tests.e2e.conftest import (
    DATA_SOURCE_VARIANTS,
    HARNESS,
    LONG_CT_SLICES,
    OHIF_DIST,
    BrowserTools,
    long_ct_series,
    render_app_config,
)
from tests.e2e.ohif.static_server import OhifStaticServer
from tests.e2e.test_ohif import CT_DESCRIPTION, DRIVER_TIMEOUT_S, seeded_studies
from tests.peers import OrthancServer, RedisServer, require_binary
from tests.peers.fixtures import GATEWAY_AE
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings
from tests.support.redis_cache import ADMIN_TOKEN, redis_cache_settings

pytestmark = pytest.mark.timeout(300)


def _retrievals(gateway: GatewayServer) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("dimse_retrievals_total"))


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_binary("redis-server")
    server = RedisServer(tmp_path_factory.mktemp("redis-e2e-prefetch"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_prefetched_studies_open_in_ohif_without_any_retrieval(
        browser_tools: BrowserTools, e2e_orthanc: OrthancServer, redis_server: RedisServer,
        sample_datasets: list[Dataset], tmp_path: Path, e2e_artifacts: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from app import cli

    studies = seeded_studies([*sample_datasets, *long_ct_series()])
    ct = next(s for s in studies.values() if s.description == CT_DESCRIPTION)
    long_ct = next(s for s in studies.values() if s.instances == LONG_CT_SLICES)
    with OhifStaticServer(OHIF_DIST) as viewer:
        peer = peer_settings("orthanc", e2e_orthanc.ae_title, e2e_orthanc.host,
                             e2e_orthanc.dicom_port)
        settings = gateway_settings(peer, ae_title=GATEWAY_AE, cors_allow_origins=[viewer.url],
                                    **redis_cache_settings(redis_server.url, admin=True))
        with GatewayServer(settings) as gateway:
            viewer.app_config = render_app_config(gateway.dicomweb,
                                                  DATA_SOURCE_VARIANTS["shipped"])
            monkeypatch.setenv("DWG_ADMIN_TOKEN", ADMIN_TOKEN)
            code = cli.main(["prefetch", "--url", gateway.url, "--study", ct.uid,
                             "--study", long_ct.uid, "--poll", "0.2"])
            out = capsys.readouterr().out
            assert code == 0, out
            assert "2/2 studies" in out and "0 failed" in out, out
            prefetched = _retrievals(gateway)
            assert prefetched > 0

            artifacts = e2e_artifacts / "prefetched"
            artifacts.mkdir(exist_ok=True)
            driver_input = {
                "nodeModules": str(browser_tools.node_modules),
                "chromium": browser_tools.chromium,
                "userDataDir": str(tmp_path / "profile"),
                "viewerUrl": viewer.url,
                "gatewayUrl": gateway.url,
                "studyTexts": [ct.description],
                "studies": [{"name": "ct", "uid": ct.uid, "scrollSteps": 0},
                            {"name": "long-ct", "uid": long_ct.uid, "scrollSteps": 30}],
                "artifactDir": str(artifacts),
                "timeoutMs": (DRIVER_TIMEOUT_S - 10) * 1000,
            }
            (tmp_path / "input.json").write_text(json.dumps(driver_input), encoding="utf-8")
            result_path = tmp_path / "result.json"
            completed = subprocess.run(
                [browser_tools.node, str(HARNESS / "drive_ohif.mjs"),
                 str(tmp_path / "input.json"), str(result_path)],
                capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S, check=False)
            (artifacts / "ohif-driver.log").write_text(completed.stderr, encoding="utf-8")
            assert result_path.is_file(), completed.stderr[-3000:]
            result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
            assert result["ok"], result["error"]

            for name in ("ct", "long-ct"):
                image = result["studies"][name]["firstImage"]
                assert image is not None and image["nonBlack"] > image["pixels"] * 0.05, image
            frames = [r for r in result["requests"] if "/frames/" in r["url"]
                      and (ct.uid in r["url"] or long_ct.uid in r["url"])]
            assert frames and all(r["status"] == 200 for r in frames)
            assert _retrievals(gateway) == prefetched  # every frame came from the cache

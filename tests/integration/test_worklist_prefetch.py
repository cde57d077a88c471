"""Worklist prefetch against real Orthanc with a real Redis cache (issue #14 item 1): after
`dicomweb-gateway prefetch --query ...`, reading the prefetched studies (metadata, instances,
frames) makes no DIMSE retrieval, on this gateway or on a second one sharing the Redis."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydicom import Dataset

from tests.peers import OrthancServer, RedisServer
from tests.peers.fixtures import GATEWAY_AE
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings
from tests.support.redis_cache import ADMIN_TOKEN, redis_cache_settings, sop_uids

pytestmark = pytest.mark.timeout(120)
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def _settings(orthanc: OrthancServer, redis_url: str) -> Any:
    peer = peer_settings("orthanc", orthanc.ae_title, orthanc.host, orthanc.dicom_port)
    return gateway_settings(peer, ae_title=GATEWAY_AE,
                            **redis_cache_settings(redis_url, admin=True))


def _retrievals(gateway: GatewayServer) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("dimse_retrievals_total"))


def test_prefetched_ct_studies_cost_no_retrieval(
        orthanc: OrthancServer, redis_server: RedisServer, sample_datasets: list[Dataset],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from app import cli

    ct: dict[str, dict[str, list[str]]] = {}
    for d in sample_datasets:
        if d.Modality == "CT":
            ct.setdefault(str(d.StudyInstanceUID), {}).setdefault(
                str(d.SeriesInstanceUID), []).append(str(d.SOPInstanceUID))
    total = sum(len(s) for s in ct.values())
    settings = _settings(orthanc, redis_server.url)
    monkeypatch.setenv("DWG_ADMIN_TOKEN", ADMIN_TOKEN)
    with GatewayServer(settings) as first:
        code = cli.main(["prefetch", "--url", first.url, "--query",
                         "ModalitiesInStudy=CT&StudyDate=-today", "--poll", "0.1"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert f"{len(ct)}/{len(ct)} studies, {total}/{total} series ({total} filled" in out
        after_prefetch = _retrievals(first)
        assert after_prefetch >= total
        with first.client() as http:
            _read_everything(http, ct)
        assert _retrievals(first) == after_prefetch
    with GatewayServer(settings) as second, second.client() as http:
        _read_everything(http, ct)
        assert _retrievals(second) == 0  # the prefetch filled the shared Redis


def _read_everything(http: httpx.Client, ct: dict[str, dict[str, list[str]]]) -> None:
    for study, series in ct.items():
        assert http.get(f"/studies/{study}/metadata").status_code == 200
        for uid, sops in series.items():
            path = f"/studies/{study}/series/{uid}"
            assert sop_uids(http.get(path, headers={"Accept": MULTIPART_DICOM})) == sorted(sops)
            assert http.get(f"{path}/metadata").status_code == 200
            frame = http.get(f"{path}/instances/{sops[0]}/frames/1", headers={"Accept": FRAMES})
            assert frame.status_code == 200

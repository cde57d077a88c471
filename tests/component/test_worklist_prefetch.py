"""Prefetch a worklist (issue #14 item 1): the admin endpoint fills the cache with the studies a
query (or a list of UIDs) names, within its bounds, and reports progress; afterwards those
studies' metadata and instances cost the PACS nothing. The CLI drives it end to end."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from app.demo.pacs import DemoPacs

from .conftest import GatewayFactory, gateway_settings, peer_config

pytestmark = pytest.mark.timeout(90)

TOKEN = "s3cret-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DICOM_JSON = "application/dicom+json"


def _problem(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith(DICOM_JSON)
    text: str = r.json()["00000902"]["Value"][0]
    return text


def _studies(samples: list[Dataset], modality: str) -> dict[str, set[str]]:
    """StudyInstanceUID -> its SeriesInstanceUIDs, for studies of a modality."""
    out: dict[str, set[str]] = {}
    for d in samples:
        if d.Modality == modality:
            out.setdefault(str(d.StudyInstanceUID), set()).add(str(d.SeriesInstanceUID))
    return out


async def _finished(client: httpx.AsyncClient, within: float = 30.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        r = await client.get("/admin/prefetch", headers=AUTH)
        assert r.status_code == 200
        body: dict[str, Any] = r.json()
        if body["state"] in ("done", "failed", "cancelled") or loop.time() > deadline:
            return body
        await asyncio.sleep(0.05)


@pytest.fixture
def pacs(samples: list[Dataset]) -> Any:
    """A DemoPacs of its own, so operation counts are this test's."""
    server = DemoPacs(samples, ae_title="DEMO_PACS")
    server.start("127.0.0.1", 0)
    yield server
    server.stop()


async def test_a_prefetched_query_costs_the_pacs_nothing_afterwards(
        gateway: GatewayFactory, pacs: DemoPacs, samples: list[Dataset],
        cache_settings: dict[str, Any]) -> None:
    settings = gateway_settings(peer_config(pacs.port), cache_admin_enabled=True,
                                admin_token=TOKEN, **cache_settings)
    ct = _studies(samples, "CT")
    async with gateway(settings) as client:
        r = await client.post("/admin/prefetch", headers=AUTH,
                              json={"query": {"ModalitiesInStudy": "CT"}})
        assert r.status_code == 202, r.text
        assert r.json()["run"] == 1
        progress = await _finished(client)
        assert progress["state"] == "done", progress
        assert progress["studies"] == {"done": len(ct), "total": len(ct)}
        total_series = sum(len(s) for s in ct.values())
        assert progress["series"]["total"] == progress["series"]["done"] == total_series
        assert progress["series"]["filled"] == total_series
        expected_bytes = sum(len(p) for p in _part10_sizes(samples, ct))
        assert progress["bytes"] >= expected_bytes * 0.9  # stored entries: the Part 10 files
        assert progress["eta"] is None and progress["rate"] > 0

        before = Counter(pacs.operation_counts)
        for study, series_set in ct.items():
            for series in series_set:
                base = f"/dicomweb/studies/{study}/series/{series}"
                metadata = await client.get(f"{base}/metadata")
                assert metadata.status_code == 200
                for item in metadata.json():
                    sop = item["00080018"]["Value"][0]
                    one = await client.get(f"{base}/instances/{sop}",
                                           headers={"Accept": "multipart/related; "
                                                              'type="application/dicom"'})
                    assert one.status_code == 200
            whole = await client.get(f"/dicomweb/studies/{study}/metadata")
            assert whole.status_code == 200
        assert Counter(pacs.operation_counts) == before

        metrics = (await client.get("/metrics")).text
        assert f"worklist_prefetch_series_done {total_series}" in metrics
        assert f"worklist_prefetch_studies_planned {len(ct)}.0" in metrics
        assert "worklist_prefetch_running 0" in metrics
        assert 'worklist_prefetch_series_total{outcome="filled"}' in metrics

        # A second run resumes: everything is cached, nothing is retrieved again.
        gets = pacs.operation_counts["C-GET"]
        r = await client.post("/admin/prefetch", headers=AUTH,
                              json={"query": {"ModalitiesInStudy": "CT"}})
        assert r.status_code == 202 and r.json()["run"] == 2
        again = await _finished(client)
        assert again["series"]["skipped"] == total_series and again["bytes"] == 0
        assert pacs.operation_counts["C-GET"] == gets


def _part10_sizes(samples: list[Dataset], studies: dict[str, set[str]]) -> list[bytes]:
    from io import BytesIO

    out = []
    for d in samples:
        if str(d.StudyInstanceUID) in studies:
            buffer = BytesIO()
            d.save_as(buffer, enforce_file_format=True)
            out.append(buffer.getvalue())
    return out


async def test_a_list_of_studies_bounded_by_max_studies_and_concurrency(
        gateway: GatewayFactory, pacs: DemoPacs, samples: list[Dataset]) -> None:
    settings = gateway_settings(peer_config(pacs.port), cache_admin_enabled=True,
                                admin_token=TOKEN, cache_backend="memory")
    uids = list(dict.fromkeys(str(d.StudyInstanceUID) for d in samples))
    async with gateway(settings) as client:
        r = await client.post("/admin/prefetch", headers=AUTH,
                              json={"studies": uids, "max_studies": 3, "concurrency": 2})
        assert r.status_code == 202, r.text
        progress = await _finished(client)
        assert progress["state"] == "done"
        assert progress["studies"]["total"] == 3 and progress["studies"]["done"] == 3
        assert progress["series"]["peak_in_flight"] <= 2
        assert progress["limits"] == {"max_studies": 3, "max_bytes": None, "concurrency": 2}
        # Only the first three studies were filled: a fourth one is still a PACS retrieval.
        gets = pacs.operation_counts["C-GET"]
        assert (await client.get(f"/dicomweb/studies/{uids[0]}/metadata")).status_code == 200
        assert pacs.operation_counts["C-GET"] == gets
        assert (await client.get(f"/dicomweb/studies/{uids[3]}/metadata")).status_code == 200
        assert pacs.operation_counts["C-GET"] > gets


async def test_default_concurrency_is_one_series_at_a_time(
        gateway: GatewayFactory, pacs: DemoPacs, samples: list[Dataset]) -> None:
    settings = gateway_settings(peer_config(pacs.port), cache_admin_enabled=True,
                                admin_token=TOKEN, cache_backend="memory")
    async with gateway(settings) as client:
        r = await client.post("/admin/prefetch", headers=AUTH, json={"query": {}})
        assert r.status_code == 202
        progress = await _finished(client)
        assert progress["state"] == "done"
        assert progress["series"]["peak_in_flight"] == 1
        assert progress["yielded"] < 5.0  # its own fills are not "interactive" (30 s each)
        assert progress["series"]["filled"] == len({str(d.SeriesInstanceUID) for d in samples})


async def test_prefetch_yields_to_interactive_fills(
        gateway: GatewayFactory, pacs: DemoPacs, samples: list[Dataset]) -> None:
    """While other fills run in the process (a viewer's), no new series starts."""
    settings = gateway_settings(peer_config(pacs.port), cache_admin_enabled=True,
                                admin_token=TOKEN, cache_backend="memory")
    study = str(samples[0].StudyInstanceUID)
    async with gateway(settings) as client:
        worklist = client._transport.app.state.services.worklist  # type: ignore[attr-defined]
        busy = [True]  # a viewer's fill runs until the test says otherwise
        real = worklist._fills_running
        worklist._fills_running = lambda: real() + (1 if busy[0] else 0)
        r = await client.post("/admin/prefetch", headers=AUTH, json={"studies": [study]})
        assert r.status_code == 202
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while (await client.get("/admin/prefetch", headers=AUTH)).json()["state"] != "running":
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        waiting = (await client.get("/admin/prefetch", headers=AUTH)).json()
        assert waiting["series"]["in_flight"] == 0 and waiting["series"]["done"] == 0
        busy[0] = False
        progress = await _finished(client)
        assert progress["state"] == "done"
        assert progress["yielded"] >= 0.4
        assert progress["series"]["filled"] >= 1


async def test_the_byte_budget_stops_new_series(
        gateway: GatewayFactory, pacs: DemoPacs, samples: list[Dataset]) -> None:
    settings = gateway_settings(peer_config(pacs.port), cache_admin_enabled=True,
                                admin_token=TOKEN, cache_backend="memory")
    async with gateway(settings) as client:
        r = await client.post("/admin/prefetch", headers=AUTH,
                              json={"query": {}, "max_bytes": 1})
        assert r.status_code == 202
        progress = await _finished(client)
        assert progress["state"] == "done"
        assert progress["series"]["filled"] == 1 and progress["stopped_by"] == "max_bytes"
        assert progress["series"]["done"] < progress["series"]["total"]


async def test_relative_dates_and_a_query_finding_nothing(
        gateway: GatewayFactory, pacs: DemoPacs) -> None:
    settings = gateway_settings(peer_config(pacs.port), cache_admin_enabled=True,
                                admin_token=TOKEN, cache_backend="memory")
    async with gateway(settings) as client:
        # The sample studies are all older than a week: nothing to do.
        r = await client.post("/admin/prefetch", headers=AUTH,
                              json={"query": {"StudyDate": "today-7"}})
        assert r.status_code == 202
        progress = await _finished(client)
        assert progress["state"] == "done" and progress["studies"]["total"] == 0


@pytest.mark.parametrize("body", [
    {}, {"query": {}, "studies": ["1.2.3"]}, {"studies": []}, {"studies": ["1.2.x"]},
    {"query": {"NotAnAttribute": "x"}}, {"query": {"StudyDate": "yesterdayish"}},
    {"query": {}, "max_studies": 0}, {"query": {}, "concurrency": 9},
    {"query": {}, "max_bytes": 0}, {"query": {}, "surprise": 1}, ["1.2.3"],
    {"query": "StudyDate=today"},
])
async def test_bad_input_is_400(gateway: GatewayFactory, sample_pacs: DemoPacs,
                                body: Any) -> None:
    settings = gateway_settings(peer_config(sample_pacs.port), cache_admin_enabled=True,
                                admin_token=TOKEN, cache_backend="memory")
    async with gateway(settings) as client:
        _problem(await client.post("/admin/prefetch", headers=AUTH, json=body), 400)
        assert (await client.get("/admin/prefetch", headers=AUTH)).json() == {"state": "idle"}


async def test_unknown_pacs_404_running_409_no_cache_409(
        gateway: GatewayFactory, pacs: DemoPacs, samples: list[Dataset]) -> None:
    settings = gateway_settings(peer_config(pacs.port), cache_admin_enabled=True,
                                admin_token=TOKEN, cache_backend="memory")
    async with gateway(settings) as client:
        _problem(await client.post("/admin/prefetch", headers=AUTH,
                                   json={"query": {}, "pacs": "nope"}), 404)
        r = await client.post("/admin/prefetch", headers=AUTH, json={"query": {}})
        assert r.status_code == 202
        assert "already running" in _problem(
            await client.post("/admin/prefetch", headers=AUTH, json={"query": {}}), 409)
        await _finished(client)
    off = gateway_settings(peer_config(pacs.port), cache_admin_enabled=True,
                           admin_token=TOKEN, cache_backend="none")
    async with gateway(off) as client:
        assert "caching is off" in _problem(
            await client.post("/admin/prefetch", headers=AUTH, json={"query": {}}), 409)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
async def test_without_the_token_401_and_nothing_runs(gateway: GatewayFactory,
                                                      sample_pacs: DemoPacs,
                                                      headers: dict[str, str]) -> None:
    settings = gateway_settings(peer_config(sample_pacs.port), cache_admin_enabled=True,
                                admin_token=TOKEN, cache_backend="memory")
    async with gateway(settings) as client:
        _problem(await client.post("/admin/prefetch", headers=headers, json={"query": {}}), 401)
        _problem(await client.get("/admin/prefetch", headers=headers), 401)
        _problem(await client.post("/admin/prefetch", json={"query": {}}, headers={
            **AUTH, "Origin": "https://evil.example"}), 403)
        assert (await client.get("/admin/prefetch", headers=AUTH)).json() == {"state": "idle"}


async def test_admin_off_is_404(gateway: GatewayFactory, sample_pacs: DemoPacs) -> None:
    settings = gateway_settings(peer_config(sample_pacs.port), admin_token=TOKEN)
    async with gateway(settings) as client:
        _problem(await client.post("/admin/prefetch", headers=AUTH, json={"query": {}}), 404)


async def test_prefetch_cli_end_to_end(pacs: DemoPacs, samples: list[Dataset],
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from app import cli
    from tests.support.gateway_server import GatewayServer

    settings = gateway_settings(peer_config(pacs.port), cache_admin_enabled=True,
                                admin_token=TOKEN, cache_backend="memory")
    ct = _studies(samples, "CT")
    with GatewayServer(settings) as server:
        monkeypatch.setenv("DWG_ADMIN_TOKEN", TOKEN)
        code = await asyncio.to_thread(cli.main, [
            "prefetch", "--url", server.url, "--query", "ModalitiesInStudy=CT&StudyDate=-today",
            "--max-bytes", "1G", "--concurrency", "1", "--poll", "0.05"])
        out = capsys.readouterr().out
        assert code == 0, out
        total = sum(len(s) for s in ct.values())
        assert f"{len(ct)}/{len(ct)} studies, {total}/{total} series ({total} filled" in out
        before = Counter(pacs.operation_counts)
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            for study in ct:
                assert (await client.get(f"/dicomweb/studies/{study}/metadata")
                        ).status_code == 200
        assert Counter(pacs.operation_counts) == before

        study = next(iter(ct))
        code = await asyncio.to_thread(cli.main, [
            "prefetch", "--url", server.url, "--study", study, "--poll", "0.05"])
        out = capsys.readouterr().out
        assert code == 0 and "already cached" in out and "0 filled" in out

        assert await asyncio.to_thread(cli.main, [
            "prefetch", "--url", server.url, "--study", "1.2.x"]) == 1
        assert "400" in capsys.readouterr().err
        assert await asyncio.to_thread(cli.main, ["prefetch", "--url", server.url]) == 2
        monkeypatch.setenv("DWG_ADMIN_TOKEN", "another-token-0123456789")
        assert await asyncio.to_thread(cli.main, [
            "prefetch", "--url", server.url, "--study", study]) == 1
        assert "401" in capsys.readouterr().err
        monkeypatch.setenv("DWG_ADMIN_TOKEN", TOKEN)
        # --every repeats until interrupted: interrupt it during its first pause.
        calls: list[float] = []

        def interrupt(seconds: float) -> None:
            calls.append(seconds)
            if len(calls) > 1:
                raise KeyboardInterrupt

        monkeypatch.setattr(cli, "_wait", interrupt)
        code = await asyncio.to_thread(cli.main, [
            "prefetch", "--url", server.url, "--study", study, "--every", "15m", "--poll", "0"])
        captured = capsys.readouterr()
        assert code == 130
        assert captured.out.count("already cached") == 2, captured.out
        assert calls == [pytest.approx(900, abs=5)] * 2
        assert "resumes" in captured.err


async def test_prefetch_cli_shows_a_progress_bar_on_a_terminal(
        pacs: DemoPacs, samples: list[Dataset], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from app import cli
    from tests.support.gateway_server import GatewayServer

    settings = gateway_settings(peer_config(pacs.port), cache_admin_enabled=True,
                                admin_token=TOKEN, cache_backend="memory")
    study = str(samples[0].StudyInstanceUID)
    series = len({str(d.SeriesInstanceUID) for d in samples
                  if str(d.StudyInstanceUID) == study})
    with GatewayServer(settings) as server:
        monkeypatch.setenv("DWG_ADMIN_TOKEN", TOKEN)
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
        code = await asyncio.to_thread(cli.main, [
            "prefetch", "--url", server.url, "--study", study, "--poll", "0.05"])
        out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capsys.readouterr().out)  # colours
        assert code == 0
        bar = f"{series}/{series} series  1/1 studies"  # the summary says "studies, series"
        assert bar in out
        assert "prefetch run 1 done" in out  # the summary
        code = await asyncio.to_thread(cli.main, [
            "prefetch", "--url", server.url, "--study", study, "--no-progress"])
        out = capsys.readouterr().out
        assert code == 0 and bar not in out
        assert "prefetch run 2 done" in out

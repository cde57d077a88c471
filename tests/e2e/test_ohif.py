"""OHIF Viewer v3 working end to end through the gateway in front of a real PACS (Orthanc): the
study list, a multi-series CT drawn from real pixels, scrolling through a long series, and every
request the viewer makes answered without error or CORS failure. Run with the DICOMweb data
source as OHIF ships it ("shipped") and as its dist/google.js configures a full DICOMweb
service ("full").

One headless Chromium session per variant (tests/e2e/ohif/drive_ohif.mjs, playwright-core)
observes; the tests below assert on what it recorded. Artefacts in .artifacts/e2e/<variant>/:
screenshots, every request to the gateway (``ohif-requests.json``) and the distinct request
kinds with their statuses (``ohif-request-kinds.txt``).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import Dataset

from tests.e2e.conftest import HARNESS, LONG_CT_SLICES, BrowserTools, ViewerStack, long_ct_series

pytestmark = pytest.mark.timeout(240)

DRIVER_TIMEOUT_S = 150
CT_DESCRIPTION = "CT Chest Abdomen"

_UID = re.compile(r"\d+(?:\.\d+){3,}")


@dataclass(frozen=True)
class SeededStudy:
    """What the study list should show for one sample study."""

    uid: str
    description: str
    family_name: str
    instances: int


def seeded_studies(datasets: list[Dataset]) -> dict[str, SeededStudy]:
    """The sample studies by StudyInstanceUID (description, patient family name, size)."""
    counts = Counter(str(ds.StudyInstanceUID) for ds in datasets)
    studies: dict[str, SeededStudy] = {}
    for ds in datasets:
        uid = str(ds.StudyInstanceUID)
        if uid not in studies:
            family = str(ds.PatientName).split("=")[0].split("^")[0]
            studies[uid] = SeededStudy(uid, str(ds.StudyDescription), family, counts[uid])
    return studies


_SHOWN_VALUES = {"includefield", "fuzzymatching", "limit", "offset", "viewport"}


def request_kind(record: dict[str, Any]) -> str:
    """A request without its UIDs and match values: method, path template, query keys (with the
    values of the control parameters) and Accept."""
    url = record["url"]
    path, _, query = url.partition("?")
    path = _UID.sub("{uid}", path.split("/dicomweb", 1)[-1])
    path = re.sub(r"/frames/[\d,]+", "/frames/{n}", path)
    params = sorted(
        {
            pair if pair.split("=", 1)[0] in _SHOWN_VALUES else pair.split("=", 1)[0]
            for pair in query.split("&")
            if pair
        }
    )
    shown = path + (f"?{'&'.join(params)}" if params else "")
    return f"{record['method']} {shown} | Accept: {record['accept']}"


@pytest.fixture(scope="module")
def ohif_run(
    browser_tools: BrowserTools,
    viewer_stack: ViewerStack,
    sample_datasets: list[Dataset],
    e2e_artifacts: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """Run the browser once over the study list and the CT study; the recorded result."""
    work = tmp_path_factory.mktemp(f"ohif-{viewer_stack.variant}")
    artifacts = e2e_artifacts / viewer_stack.variant
    artifacts.mkdir(exist_ok=True)
    studies = seeded_studies([*sample_datasets, *long_ct_series()])
    ct = next(s for s in studies.values() if s.description == CT_DESCRIPTION)
    long_ct = next(s for s in studies.values() if s.instances == LONG_CT_SLICES)
    driver_input = {
        "nodeModules": str(browser_tools.node_modules),
        "chromium": browser_tools.chromium,
        "userDataDir": str(work / "profile"),
        "viewerUrl": viewer_stack.viewer.url,
        "gatewayUrl": viewer_stack.gateway.url,
        "studyTexts": sorted({s.description for s in studies.values()}),
        "studies": [
            {"name": "ct", "uid": ct.uid, "scrollSteps": 0},
            {"name": "long-ct", "uid": long_ct.uid, "scrollSteps": 30},
        ],
        "artifactDir": str(artifacts),
        "timeoutMs": (DRIVER_TIMEOUT_S - 10) * 1000,
    }
    (work / "input.json").write_text(json.dumps(driver_input), encoding="utf-8")
    result_path = work / "result.json"
    completed = subprocess.run(
        [
            browser_tools.node,
            str(HARNESS / "drive_ohif.mjs"),
            str(work / "input.json"),
            str(result_path),
        ],
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT_S,
        check=False,
    )
    (artifacts / "ohif-driver.log").write_text(completed.stderr, encoding="utf-8")
    if not result_path.is_file():
        pytest.fail(
            f"the browser driver wrote no result (exit {completed.returncode}):\n"
            f"{completed.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
    result["gateway_log"] = [r.as_dict() for r in viewer_stack.gateway_log]
    result["seeded"] = studies
    result["ct"] = ct
    result["long_ct"] = long_ct
    _write_request_log(result, artifacts)
    return result


def _write_request_log(result: dict[str, Any], artifacts: Path) -> None:
    """Every request to the gateway, and the distinct kinds with their statuses."""
    requests = result["requests"]
    (artifacts / "ohif-requests.json").write_text(json.dumps(requests, indent=2), encoding="utf-8")
    kinds: dict[str, Counter[str]] = {}
    for record in requests:
        status = str(record["status"] or record["failure"])
        kinds.setdefault(request_kind(record), Counter())[status] += 1
    lines = [
        f"{kind} -> " + ", ".join(f"{s} x{n}" for s, n in sorted(statuses.items()))
        for kind, statuses in sorted(kinds.items())
    ]
    (artifacts / "gateway-requests.json").write_text(
        json.dumps(result["gateway_log"], indent=2), encoding="utf-8"
    )
    (artifacts / "ohif-request-kinds.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (artifacts / "ohif-console.json").write_text(
        json.dumps(
            {
                "console": result["console"],
                "pageErrors": result["pageErrors"],
                "steps": result["steps"],
            },
            indent=2,
        ),
        encoding="utf-8",
    )


def test_browser_session_completed(ohif_run: dict[str, Any]) -> None:
    assert ohif_run["ok"], ohif_run["error"]


def test_study_list_shows_the_seeded_studies(ohif_run: dict[str, Any]) -> None:
    text: str = ohif_run["studyListText"]
    studies: dict[str, SeededStudy] = ohif_run["seeded"]
    missing = [s.description for s in studies.values() if s.description not in text]
    assert not missing, f"study list lacks {missing}; it shows:\n{text[:2000]}"
    # OHIF shows Person Names as "Family, Given"; non-ASCII names decoded by the gateway.
    for name in ("Doe, John", "Doe, Jane", "Smith, Anna", "Müller, Jürgen"):
        assert name in text, f"patient {name} not in the study list"
    qido = [
        r
        for r in ohif_run["requests"]
        if r["phase"] == "studylist" and "/studies" in r["url"] and r["status"] == 200
    ]
    assert qido, "the study list made no successful QIDO-RS request to the gateway"


def _frames(ohif_run: dict[str, Any], study: SeededStudy) -> list[dict[str, Any]]:
    return [
        r
        for r in ohif_run["requests"]
        if f"/studies/{study.uid}/" in r["url"] and "/frames/" in r["url"]
    ]


def test_viewer_draws_the_multi_series_ct_from_real_pixels(ohif_run: dict[str, Any]) -> None:
    ct: SeededStudy = ohif_run["ct"]
    image = ohif_run["studies"]["ct"]["firstImage"]
    assert image is not None, "no cornerstone canvas in the viewer"
    # The phantom is air, fat, soft tissue, lung and bone: many grey levels, much not black.
    assert image["nonBlack"] > image["pixels"] * 0.05, image
    assert image["distinctLevels"] > 8, image
    assert any(r["status"] == 200 for r in _frames(ohif_run, ct)), "no frame retrieved"
    # Both series of the study were described through the gateway (series metadata).
    metadata = {
        r["url"].split("/series/")[1].split("/")[0]
        for r in ohif_run["requests"]
        if f"/studies/{ct.uid}/series/" in r["url"]
        and r["url"].endswith("/metadata")
        and r["status"] == 200
    }
    assert len(metadata) == 2, f"series metadata retrieved for {len(metadata)} of 2 series"


def test_scrolling_loads_and_shows_further_slices(ohif_run: dict[str, Any]) -> None:
    long_ct: SeededStudy = ohif_run["long_ct"]
    outcome = ohif_run["studies"]["long-ct"]
    first, scrolled = outcome["firstImage"], outcome["scrolledImage"]
    assert first is not None and scrolled is not None
    assert first["nonBlack"] > first["pixels"] * 0.05, first
    assert scrolled["hash"] != first["hash"], "the image did not change when scrolling"
    assert scrolled["nonBlack"] > scrolled["pixels"] * 0.05, scrolled
    # The viewport moved to another slice, and that slice's frame came through the gateway.
    assert first["imageIndex"] is not None and scrolled["imageIndex"] is not None, outcome
    assert scrolled["imageIndex"] > first["imageIndex"], (first, scrolled)
    shown = scrolled["imageId"].removeprefix("wadors:")
    assert any(r["url"] == shown and r["status"] == 200 for r in _frames(ohif_run, long_ct)), (
        f"the slice shown after scrolling ({shown}) was not retrieved from the gateway"
    )
    # OHIF's stack prefetch retrieves the remaining slices in the background (with the shipped
    # settings it had requested all of them before the scroll began): each slice reached the
    # gateway, once, successfully.
    frames = _frames(ohif_run, long_ct)
    instances = {
        r["url"].split("/instances/")[1].split("/")[0] for r in frames if r["status"] == 200
    }
    assert len(instances) == LONG_CT_SLICES, f"{len(instances)} of {LONG_CT_SLICES} retrieved"
    assert outcome["framesAfter"] >= outcome["framesBefore"] > 0, outcome


def test_every_gateway_request_succeeds(ohif_run: dict[str, Any]) -> None:
    requests = ohif_run["requests"]
    assert requests, "OHIF made no request to the gateway"
    failed = [
        f"{r['method']} {r['url']} (Accept: {r['accept']}) -> {r['status'] or r['failure']}"
        for r in requests
        if r["failure"] or r["status"] is None or r["status"] >= 400
    ]
    assert not failed, "gateway requests failed:\n" + "\n".join(failed)


def test_the_gateway_saw_every_request_and_answered_each(ohif_run: dict[str, Any]) -> None:
    """The same requests from the gateway's side, where CORS preflights are visible too."""
    log = ohif_run["gateway_log"]
    failed = [
        f"{r['method']} {r['path']}?{r['query']} -> {r['status']}"
        for r in log
        if r["status"] is None or r["status"] >= 400
    ]
    assert not failed, "\n".join(failed)
    seen = {f"{r['path']}?{r['query']}".rstrip("?") for r in log if r["method"] == "GET"}
    browser = {r["url"].split("/", 3)[3] for r in ohif_run["requests"]}
    missing = {url for url in browser if "/" + url not in seen}
    assert not missing, f"requests the browser sent but the gateway never saw: {missing}"
    for preflight in (r for r in log if r["method"] == "OPTIONS"):
        assert preflight["status"] == 200, preflight


def _expected_media_type(accept: str | None) -> str:
    """The media type a successful answer to ``accept`` must carry (the first one offered)."""
    first = (accept or "").split(",")[0].strip().lower()
    if first.startswith("multipart/related"):
        return "multipart/related"
    return first.split(";")[0]


def test_responses_have_the_media_type_asked_for(ohif_run: dict[str, Any]) -> None:
    wrong = []
    for r in ohif_run["requests"]:
        if r["status"] != 200:
            continue
        expected = _expected_media_type(r["accept"])
        got = (r["contentType"] or "").lower()
        if not got.startswith(expected):
            wrong.append(f"{r['url']} (Accept: {r['accept']}) -> Content-Type {got}")
        elif expected == "multipart/related" and "application/octet-stream" not in got:
            wrong.append(f"{r['url']} frames not typed application/octet-stream: {got}")
    assert not wrong, "\n".join(wrong)


def test_no_cors_or_network_errors_in_the_console(ohif_run: dict[str, Any]) -> None:
    errors = [
        m["text"]
        for m in ohif_run["console"]
        if m["type"] == "error" and re.search(r"CORS|Access-Control|net::ERR", m["text"])
    ]
    assert not errors, "\n".join(errors)


def test_gateway_answers_the_viewers_cors_preflight(viewer_stack: ViewerStack) -> None:
    """Chromium hides preflights from page listeners; check the one OHIF's requests would need
    (Accept is only CORS-safelisted for some values) directly, and that no other origin is let
    in."""
    preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "accept"}
    url = f"{viewer_stack.gateway.dicomweb}/studies"
    with httpx.Client(timeout=10) as client:
        allowed = client.options(url, headers={"Origin": viewer_stack.viewer.url, **preflight})
        other = client.options(url, headers={"Origin": "http://127.0.0.1:1", **preflight})
        simple = client.get(
            url, headers={"Origin": viewer_stack.viewer.url, "Accept": "application/dicom+json"}
        )
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == viewer_stack.viewer.url
    assert "accept" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in other.headers
    assert simple.headers["access-control-allow-origin"] == viewer_stack.viewer.url

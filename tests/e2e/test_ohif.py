"""OHIF Viewer v3, with the DICOMweb data source as OHIF ships it, working end to end through the
gateway in front of a real PACS (Orthanc): the study list, a CT drawn from real pixels, scrolling
through the slices, and every request the viewer makes answered without error or CORS failure.

One headless Chromium session (tests/e2e/ohif/drive_ohif.mjs, playwright-core) observes; the
tests below assert on what it recorded. Artefacts in .artifacts/e2e/: screenshots, every request
to the gateway (``ohif-requests.json``) and the distinct request kinds (``ohif-request-kinds``).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset

from tests.e2e.conftest import LONG_CT_SLICES, HARNESS, BrowserTools, ViewerStack, long_ct_series

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


def request_kind(record: dict[str, Any]) -> str:
    """A request without its UIDs and values: method, path template, query keys and Accept."""
    url = record["url"]
    path, _, query = url.partition("?")
    path = _UID.sub("{uid}", path.split("/dicomweb", 1)[-1])
    path = re.sub(r"/frames/[\d,]+", "/frames/{n}", path)
    keys = sorted({pair.split("=", 1)[0] for pair in query.split("&") if pair})
    shown = path + (f"?{'&'.join(keys)}" if keys else "")
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
    work = tmp_path_factory.mktemp("ohif-browser")
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
        "studies": [{"name": "ct", "uid": ct.uid, "scrollSteps": 0},
                    {"name": "long-ct", "uid": long_ct.uid, "scrollSteps": 30}],
        "artifactDir": str(e2e_artifacts),
        "timeoutMs": (DRIVER_TIMEOUT_S - 10) * 1000,
    }
    (work / "input.json").write_text(json.dumps(driver_input), encoding="utf-8")
    result_path = work / "result.json"
    completed = subprocess.run(
        [browser_tools.node, str(HARNESS / "drive_ohif.mjs"), str(work / "input.json"),
         str(result_path)],
        capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S, check=False,
    )
    (e2e_artifacts / "ohif-driver.log").write_text(completed.stderr, encoding="utf-8")
    if not result_path.is_file():
        pytest.fail(f"the browser driver wrote no result (exit {completed.returncode}):\n"
                    f"{completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
    result["seeded"] = studies
    result["ct"] = ct
    result["long_ct"] = long_ct
    _write_request_log(result, e2e_artifacts)
    return result


def _write_request_log(result: dict[str, Any], artifacts: Path) -> None:
    """Every request to the gateway, and the distinct kinds with their statuses."""
    requests = result["requests"]
    (artifacts / "ohif-requests.json").write_text(json.dumps(requests, indent=2),
                                                  encoding="utf-8")
    kinds: dict[str, Counter[str]] = {}
    for record in requests:
        status = str(record["status"] or record["failure"])
        kinds.setdefault(request_kind(record), Counter())[status] += 1
    lines = [f"{kind} -> " + ", ".join(f"{s} x{n}" for s, n in sorted(statuses.items()))
             for kind, statuses in sorted(kinds.items())]
    (artifacts / "ohif-request-kinds.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (artifacts / "ohif-console.json").write_text(
        json.dumps({"console": result["console"], "pageErrors": result["pageErrors"],
                    "steps": result["steps"]}, indent=2), encoding="utf-8")


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
    qido = [r for r in ohif_run["requests"]
            if r["phase"] == "studylist" and "/studies" in r["url"] and r["status"] == 200]
    assert qido, "the study list made no successful QIDO-RS request to the gateway"


def _frames(ohif_run: dict[str, Any], study: SeededStudy) -> list[dict[str, Any]]:
    return [r for r in ohif_run["requests"]
            if f"/studies/{study.uid}/" in r["url"] and "/frames/" in r["url"]]


def test_viewer_draws_the_multi_series_ct_from_real_pixels(ohif_run: dict[str, Any]) -> None:
    ct: SeededStudy = ohif_run["ct"]
    image = ohif_run["studies"]["ct"]["firstImage"]
    assert image is not None, "no cornerstone canvas in the viewer"
    # The phantom is air, fat, soft tissue, lung and bone: many grey levels, much not black.
    assert image["nonBlack"] > image["pixels"] * 0.05, image
    assert image["distinctLevels"] > 8, image
    assert any(r["status"] == 200 for r in _frames(ohif_run, ct)), "no frame retrieved"
    # Both series of the study were described through the gateway (series metadata).
    metadata = {r["url"].split("/series/")[1].split("/")[0] for r in ohif_run["requests"]
                if f"/studies/{ct.uid}/series/" in r["url"] and r["url"].endswith("/metadata")
                and r["status"] == 200}
    assert len(metadata) == 2, f"series metadata retrieved for {len(metadata)} of 2 series"


def test_scrolling_loads_and_shows_further_slices(ohif_run: dict[str, Any]) -> None:
    long_ct: SeededStudy = ohif_run["long_ct"]
    outcome = ohif_run["studies"]["long-ct"]
    first, scrolled = outcome["firstImage"], outcome["scrolledImage"]
    assert first is not None and scrolled is not None
    assert first["nonBlack"] > first["pixels"] * 0.05, first
    assert scrolled["hash"] != first["hash"], "the image did not change when scrolling"
    assert scrolled["nonBlack"] > scrolled["pixels"] * 0.05, scrolled
    # Scrolling past what was prefetched made the viewer retrieve frames of further slices.
    assert outcome["framesAfter"] > outcome["framesBefore"], outcome
    assert outcome["instancesAfter"] > outcome["instancesBefore"], outcome
    assert outcome["instancesBefore"] < LONG_CT_SLICES
    ok = [r for r in _frames(ohif_run, long_ct) if r["status"] == 200]
    assert len(ok) >= outcome["instancesAfter"], "some slices shown were not retrieved"


def test_every_gateway_request_succeeds(ohif_run: dict[str, Any]) -> None:
    requests = ohif_run["requests"]
    assert requests, "OHIF made no request to the gateway"
    failed = [f"{r['method']} {r['url']} (Accept: {r['accept']}) -> "
              f"{r['status'] or r['failure']}"
              for r in requests if r["failure"] or r["status"] is None or r["status"] >= 400]
    assert not failed, "gateway requests failed:\n" + "\n".join(failed)


def test_no_cors_or_network_errors_in_the_console(ohif_run: dict[str, Any]) -> None:
    errors = [m["text"] for m in ohif_run["console"]
              if m["type"] == "error" and re.search(r"CORS|Access-Control|net::ERR", m["text"])]
    assert not errors, "\n".join(errors)

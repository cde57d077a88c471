"""Fixtures of the browser tests: the OHIF build and Chromium (a failure in CI when missing, a
skip elsewhere), a private Orthanc with the sample studies and a long CT series, the gateway in
front of it with CORS for the viewer's origin, the viewer served statically, and the artefact
directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset

from tests.e2e.ohif.recorder import RecordedRequest, RequestRecorder
from tests.e2e.ohif.static_server import OhifStaticServer
from tests.peers import OrthancServer, require_binary, skip_or_fail
from tests.peers.fixtures import GATEWAY_AE
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E_NODE_MODULES = REPO_ROOT / "e2e" / "node_modules"
OHIF_DIST = E2E_NODE_MODULES / "@ohif" / "app" / "dist"
HARNESS = Path(__file__).resolve().parent / "ohif"
ARTIFACTS = REPO_ROOT / ".artifacts" / "e2e"

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test collected under tests/e2e with ``integration`` (it needs real peers)."""
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


@dataclass(frozen=True)
class BrowserTools:
    """What the driver script needs: Node, Chromium and the e2e npm packages."""

    node: str
    chromium: str
    node_modules: Path


@pytest.fixture(scope="session")
def browser_tools() -> BrowserTools:
    """Node, Debian's Chromium, playwright-core and the OHIF build, or skip (fail in CI)."""
    node = require_binary("node")
    chromium = require_binary("chromium")
    if not (E2E_NODE_MODULES / "playwright-core" / "package.json").is_file():
        skip_or_fail("playwright-core is not installed in e2e/ (run scripts/install-deps)")
    if not (OHIF_DIST / "index.html").is_file():
        skip_or_fail("the OHIF build @ohif/app/dist is missing in e2e/ (run scripts/install-deps)")
    return BrowserTools(node=node, chromium=chromium, node_modules=E2E_NODE_MODULES)


def render_app_config(dicomweb_root: str, overrides: dict[str, Any] | None = None) -> str:
    """The viewer's ``app-config.js``: the template with the gateway's DICOMweb root and any
    data-source settings that differ from OHIF's shipped defaults."""
    template = (HARNESS / "app-config.template.js").read_text(encoding="utf-8")
    return template.replace("__DICOMWEB_ROOT__", dicomweb_root).replace(
        "__DATA_SOURCE_OVERRIDES__", json.dumps(overrides or {})
    )


DATA_SOURCE_VARIANTS: dict[str, dict[str, Any]] = {
    # The dicomweb data source exactly as @ohif/app ships it (only the roots changed).
    "shipped": {},
    # As OHIF's dist/google.js configures a full DICOMweb service (Google Cloud Healthcare):
    # QIDO with includefield and fuzzy matching, per-series metadata, rendered thumbnails.
    "full": {
        "staticWado": False,
        "qidoSupportsIncludeField": True,
        "supportsFuzzyMatching": True,
        "supportsWildcard": False,
        "thumbnailRendering": "rendered",
    },
}
"""OHIF data-source settings the browser test runs with, by name (overrides of the template)."""


@dataclass(frozen=True)
class ViewerStack:
    """The viewer (static OHIF) and the gateway it talks to, on two loopback origins."""

    variant: str
    viewer: OhifStaticServer
    gateway: GatewayServer
    gateway_log: list[RecordedRequest]
    """Every request that reached the gateway (preflights included), as the gateway saw it."""


LONG_CT_SLICES = 80
"""Slices of the extra CT series: more than OHIF's stack prefetch fetches up front (the sample
CT series have 10, all prefetched at once), so scrolling must load further slices."""


def long_ct_series() -> list[Dataset]:
    """One CT series of ``LONG_CT_SLICES`` small slices whose bone moves from slice to slice."""
    from app.demo.samples import generate_ct_series

    return list(generate_ct_series(LONG_CT_SLICES, rows=64, columns=64, seed=7))


@pytest.fixture(scope="module")
def e2e_orthanc(
    browser_tools: BrowserTools,
    tmp_path_factory: pytest.TempPathFactory,
    sample_datasets: list[Dataset],
) -> Iterator[OrthancServer]:
    """A private Orthanc holding the sample studies plus ``long_ct_series()`` (the shared
    session Orthanc must hold exactly the sample studies)."""
    require_binary("Orthanc")
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-e2e"))
    server.start()
    try:
        server.load([*sample_datasets, *long_ct_series()])
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=sorted(DATA_SOURCE_VARIANTS))
def viewer_stack(
    request: pytest.FixtureRequest, browser_tools: BrowserTools, e2e_orthanc: OrthancServer
) -> Iterator[ViewerStack]:
    """OHIF on one port, the gateway (C-GET from Orthanc) on another, with CORS allowing
    exactly the viewer's origin, as a deployment on two hosts would configure it; once per
    data-source variant."""
    variant: str = request.param
    orthanc = e2e_orthanc
    with OhifStaticServer(OHIF_DIST) as viewer:
        peer = peer_settings("orthanc", orthanc.ae_title, orthanc.host, orthanc.dicom_port)
        settings = gateway_settings(peer, ae_title=GATEWAY_AE, cors_allow_origins=[viewer.url])
        gateway = GatewayServer(settings)
        gateway_log: list[RecordedRequest] = []
        gateway.app.add_middleware(RequestRecorder, log=gateway_log)
        with gateway:
            viewer.app_config = render_app_config(gateway.dicomweb, DATA_SOURCE_VARIANTS[variant])
            yield ViewerStack(variant, viewer, gateway, gateway_log)


@pytest.fixture(scope="session")
def e2e_artifacts() -> Path:
    """``.artifacts/e2e`` at the repository root (git-ignored): screenshots and request logs."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS

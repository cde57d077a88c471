"""OHIF viewer benchmark: time to first image and to the whole series loaded in OHIF Viewer v3
(headless Chromium), through the gateway and with OHIF pointed straight at Orthanc's own
DICOMweb plugin, on the same data in the same run; cold and warm.

Run from the repository root: ``.venv/bin/python -m benchmarks.ohif_load [--slices 300]
[--repeat 3]``; the figures replace the ``ohif-load-results`` section of docs/benchmarks.md.
With ``--network wan`` every load runs on an emulated WAN (Chromium's network emulation,
``--down-mbps``, ``--up-mbps``, ``--rtt-ms``), a second gateway without compressed JSON
(``DWG_COMPRESS_RESPONSES=false``) is added, and the figures replace the ``ohif-wan-results``
section instead. Every server runs on 127.0.0.1 on a free port and is stopped at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.demo.samples import generate_ct_series
from benchmarks.common import (
    add_output_arguments,
    log,
    recorded_args,
    replace_section,
    started_orthanc,
    work_directory,
)
from benchmarks.wado_retrieve import (
    GatewayProcess,
    PeerAddress,
    load_orthanc,
    machine_info,
    restart_orthanc,
    snapshot_app,
    study_uid_of,
)
from tests.e2e.conftest import DATA_SOURCE_VARIANTS, OHIF_DIST, render_app_config
from tests.e2e.ohif.static_server import OhifStaticServer
from tests.peers.binaries import find_binary
from tests.peers.orthanc import OrthancServer

REPO_ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = REPO_ROOT / "docs" / "benchmarks.md"
DRIVER = Path(__file__).resolve().parent / "ohif_load.mjs"
NODE_MODULES = REPO_ROOT / "e2e" / "node_modules"
RESULTS_BEGIN = "<!-- ohif-load-results:begin -->"
RESULTS_END = "<!-- ohif-load-results:end -->"
WAN_RESULTS_BEGIN = "<!-- ohif-wan-results:begin -->"
WAN_RESULTS_END = "<!-- ohif-wan-results:end -->"
SEED = 4
DRIVER_TIMEOUT_S = 240.0
STALL_MS = 30_000
FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
BROWSER_CONNECTIONS = 6
TIMELINE_REQUESTS = 16
WARM_TOLERANCE = 1.0
COLD_TOLERANCE = 2.0
# Issue #8: cold first image <= 1.2x Orthanc for the 300-slice CT, <= 1.5x for 1,000 slices.
COLD_FIRST_IMAGE_TOLERANCE = ((1000, 1.5), (0, 1.2))
ENGINES = ("asyncio", "pynetdicom")

GATEWAY = "gateway"
GATEWAY_CORS = "gateway-cors"
GATEWAY_IDENTITY = "gateway-identity"
GATEWAY_NO_PREFETCH = "gateway-no-prefetch"
ORTHANC = "orthanc"
ORTHANC_IDENTITY = "orthanc-identity"
TARGET_LABELS = {
    GATEWAY: "gateway (memory cache)",
    GATEWAY_IDENTITY: "gateway, JSON not compressed",
    ORTHANC: "Orthanc DICOMweb plugin",
    ORTHANC_IDENTITY: "Orthanc, HttpCompressionEnabled false",
    GATEWAY_CORS: "gateway, CORS, normal web security",
    GATEWAY_NO_PREFETCH: "gateway, no prefetch on OHIF's series/study queries",
}


# -- one load ------------------------------------------------------------------------------------


@dataclass
class Load:
    """One timed viewer load; times in ms since the navigation started (the page's clock)."""

    target: str
    phase: str
    round: int
    ok: bool
    error: str | None = None
    first_image_ms: float | None = None
    all_loaded_ms: float | None = None
    first_request_ms: float | None = None
    metadata_done_ms: float | None = None
    metadata_request_ms: float | None = None
    first_frame_ms: float | None = None
    last_frame_ms: float | None = None
    frames: int = 0
    frame_bytes: int = 0
    frame_latency_median_ms: float | None = None
    frame_latency_p90_ms: float | None = None
    max_frames_in_flight: int = 0
    mean_frames_in_flight: float | None = None
    frames_per_s: float | None = None
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    timeline: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    """The first DICOMweb requests: kind, start, response start, end (ms), bytes (JSON only)."""
    failures: int = 0
    stack_size: int | None = None
    wall_ms: float | None = None
    metadata_wire_bytes: int | None = None
    """The series metadata response(s) as received: headers + body after Content-Encoding."""
    metadata_encoding: str | None = None
    json_wire_bytes: int | None = None
    """Every DICOMweb response but the frames (QIDO and metadata), as received."""
    json_requests: int = 0
    wire_bytes: int | None = None
    wire_frames: int = 0
    frame_wire_bytes: int | None = None
    """Frame responses seen by CDP's Network domain of the page's target (the emulated one)."""
    context_frames: int = 0
    """Frame responses the whole browser context saw (page and any worker)."""
    workers: int = 0


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _in_flight(spans: Sequence[tuple[float, float]]) -> int:
    """The largest number of overlapping (start, end) spans."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


_UID = re.compile(r"\d+(?:\.\d+){3,}")


def request_kind(url: str, root: str) -> str:
    """A DICOMweb request without its UIDs, frame numbers and query values."""
    path, _, query = url.removeprefix(root).partition("?")
    path = re.sub(r"/frames/[\d,]+", "/frames/{n}", _UID.sub("{uid}", path))
    keys = sorted({pair.split("=", 1)[0] for pair in query.split("&") if pair})
    return path + (f"?{'&'.join(keys)}" if keys else "")


def summarise_probe(load: Load, result: dict[str, Any], root: str) -> Load:
    """Fill ``load`` from the driver's result: the probe's times and the resource timings."""
    probe = result.get("probe") or {}
    load.first_image_ms = probe.get("firstImage")
    load.all_loaded_ms = probe.get("allLoaded")
    load.stack_size = probe.get("stackSize")
    load.statuses = result.get("statuses", {})
    load.failures = len(result.get("failures", []))
    load.wall_ms = result.get("wallMs")
    wire = result.get("wire") or []
    if wire:
        load.wire_bytes = sum(int(w.get("wireBytes") or 0) for w in wire)
        load.wire_frames = sum(1 for w in wire if "/frames/" in w["url"])
        load.frame_wire_bytes = sum(int(w.get("wireBytes") or 0) for w in wire
                                    if "/frames/" in w["url"])
        text = [w for w in wire if "/frames/" not in w["url"]]
        load.json_requests = len(text)
        load.json_wire_bytes = sum(int(w.get("wireBytes") or 0) for w in text)
        meta = [w for w in text if w["url"].split("?")[0].endswith("/metadata")]
        if meta:
            load.metadata_wire_bytes = sum(int(w.get("wireBytes") or 0) for w in meta)
            load.metadata_encoding = ",".join(sorted({w.get("encoding") or "identity"
                                                      for w in meta}))
    load.context_frames = int((result.get("contextResponses") or {}).get("frames") or 0)
    load.workers = len(result.get("workers") or [])
    resources = probe.get("resources", [])
    load.requests = len(resources)
    for r in resources:
        kind = f"{request_kind(r['url'], root)} -> {r.get('status') or '?'}"
        load.kinds[kind] = load.kinds.get(kind, 0) + 1
    for r in sorted(resources, key=lambda r: r["start"])[:TIMELINE_REQUESTS]:
        load.timeline.append((request_kind(r["url"], root), round(r["start"]),
                              round(r.get("responseStart") or 0), round(r["end"]),
                              int(r.get("bytes") or 0)))
    if resources:
        load.first_request_ms = min(r["start"] for r in resources)
    metadata = [r for r in resources if r["url"].split("?")[0].endswith("/metadata")]
    if metadata:
        load.metadata_done_ms = max(r["end"] for r in metadata)
        load.metadata_request_ms = load.metadata_done_ms - min(r["start"] for r in metadata)
    frames = [r for r in resources if "/frames/" in r["url"]]
    ok_frames = {r["url"]: r for r in frames if r.get("status") in (None, 0, 200)}
    load.frames = len(ok_frames)
    load.frame_bytes = sum(int(r.get("bytes") or 0) for r in ok_frames.values())
    if frames:
        load.first_frame_ms = min(r["end"] for r in frames)
        load.last_frame_ms = max(r["end"] for r in frames)
        latencies = [r["end"] - r["start"] for r in frames]
        load.frame_latency_median_ms = statistics.median(latencies)
        load.frame_latency_p90_ms = _percentile(latencies, 0.9)
        load.max_frames_in_flight = _in_flight([(r["start"], r["end"]) for r in frames])
        span = load.last_frame_ms - min(r["start"] for r in frames)
        if span > 0:
            load.mean_frames_in_flight = sum(latencies) / span
            load.frames_per_s = len(frames) / span * 1000
    return load


@dataclass(frozen=True)
class Browser:
    """Node, Chromium and the e2e npm packages the driver needs."""

    node: str
    chromium: str

    @classmethod
    def find(cls) -> Browser:
        node, chromium = find_binary("node"), find_binary("chromium")
        if node is None or chromium is None:
            raise SystemExit("node and chromium are required (scripts/install-deps)")
        if not (NODE_MODULES / "playwright-core" / "package.json").is_file():
            raise SystemExit("playwright-core is missing in e2e/ (npm ci --prefix e2e)")
        if not (OHIF_DIST / "index.html").is_file():
            raise SystemExit("the OHIF build is missing in e2e/ (npm ci --prefix e2e)")
        return cls(node, chromium)


def browser_load(browser: Browser, workdir: Path, *, viewer_url: str, dicomweb_root: str,
                 study_uid: str, expected: int, disable_web_security: bool,
                 screenshot: Path | None = None,
                 network: dict[str, float] | None = None) -> dict[str, Any]:
    """One load in a fresh Chromium with a fresh profile (removed afterwards): the driver's
    JSON result."""
    run_dir = Path(tempfile.mkdtemp(prefix="load-", dir=workdir))
    try:
        driver_input = {
            "nodeModules": str(NODE_MODULES),
            "chromium": browser.chromium,
            "userDataDir": str(run_dir / "profile"),
            "viewerUrl": viewer_url,
            "studyUid": study_uid,
            "dicomwebRoot": dicomweb_root,
            "expectedImages": expected,
            "disableWebSecurity": disable_web_security,
            "timeoutMs": int((DRIVER_TIMEOUT_S - 10) * 1000),
            "stallMs": STALL_MS,
            "screenshot": str(screenshot) if screenshot else None,
            "network": network,
        }
        (run_dir / "input.json").write_text(json.dumps(driver_input))
        result_path = run_dir / "result.json"
        try:
            completed = subprocess.run(
                [browser.node, str(DRIVER), str(run_dir / "input.json"), str(result_path)],
                capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"driver killed after {DRIVER_TIMEOUT_S} s"}
        if not result_path.is_file():
            return {"ok": False, "error": f"driver exit {completed.returncode}: "
                                          f"{completed.stderr[-1500:]}"}
        result: dict[str, Any] = json.loads(result_path.read_text())
        return result
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def frame_paths(slices: int) -> list[str]:
    """``/studies/../frames/1`` of every slice generate_ct_series gives (same UIDs as loaded)."""
    return [f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
            f"{ds.SOPInstanceUID}/frames/1" for ds in generate_ct_series(slices, seed=SEED)]


def server_frame_rate(root: str, paths: Sequence[str],
                      connections: int = BROWSER_CONNECTIONS) -> float:
    """Frames per second one server delivers to a plain HTTP client over ``connections``
    keep-alive connections (Chromium's per-host limit): its capacity without the browser."""
    chunks = [list(paths[i::connections]) for i in range(connections)]

    def fetch(chunk: list[str]) -> int:
        with httpx.Client(base_url=root, timeout=60.0,
                          headers={"Accept": FRAME_ACCEPT}) as client:
            for path in chunk:
                response = client.get(root + path)
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: {response.status_code}")
        return len(chunk)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(connections) as pool:
        done = sum(pool.map(fetch, chunks))
    return done / (time.perf_counter() - t0)


# -- servers -------------------------------------------------------------------------------------


def network_conditions(args: argparse.Namespace) -> dict[str, float] | None:
    """The driver's ``network`` input (CDP Network.emulateNetworkConditions: latency in ms,
    throughputs in bytes/s), or None on the plain loopback."""
    if getattr(args, "network", "none") == "none":
        return None
    return {"latencyMs": float(args.rtt_ms), "downloadBps": args.down_mbps * 1e6 / 8,
            "uploadBps": args.up_mbps * 1e6 / 8}


def with_identity_gateway(args: argparse.Namespace) -> bool:
    """Whether the run has the second gateway without compressed JSON."""
    return bool(getattr(args, "uncompressed", False)) or network_conditions(args) is not None


def cold_first_image_tolerance(slices: int) -> float:
    """The issue #8 limit of the cold first image, gateway / Orthanc, for a series this long."""
    return next(limit for floor, limit in COLD_FIRST_IMAGE_TOLERANCE if slices >= floor)


class ViewerGateway(GatewayProcess):
    """The gateway as its own process with the default in-process cache, the chosen DIMSE
    engine (``DWG_DIMSE_ENGINE``), optionally CORS allowing the viewer's origin (the
    realistic two-origin deployment), and compressed JSON on (the default) or off
    (``DWG_COMPRESS_RESPONSES``), and the prefetch on OHIF's queries on (the default) or off
    (``DWG_PREFETCH_ON_SERIES_QUERY``, ``DWG_PREFETCH_ON_STUDY_LOOKUP``)."""

    def __init__(self, workdir: Path, peers: Sequence[PeerAddress], *, source: Path,
                 cors_origin: str | None, engine: str = "asyncio",
                 compress: bool = True, prefetch: bool = True) -> None:
        self.cors_origin = cors_origin
        self.engine = engine
        self.compress = compress
        self.prefetch = prefetch
        super().__init__(workdir, peers, source=source, cache="memory")

    def env(self) -> dict[str, str]:
        env = super().env()
        env["DWG_DIMSE_ENGINE"] = self.engine
        env["DWG_COMPRESS_RESPONSES"] = "true" if self.compress else "false"
        if not self.prefetch:
            env["DWG_PREFETCH_ON_SERIES_QUERY"] = env["DWG_PREFETCH_ON_STUDY_LOOKUP"] = "false"
        if self.cors_origin:
            env["DWG_CORS_ALLOW_ORIGINS"] = json.dumps([self.cors_origin])
        return env


@dataclass
class Results:
    """Everything one run measured."""

    args: dict[str, Any]
    machine: dict[str, Any] = field(default_factory=dict)
    app_digest: str = ""
    study_uid: str = ""
    loads: list[Load] = field(default_factory=list)
    server_rates: dict[str, list[float]] = field(default_factory=dict)
    orthanc_config: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class Bench:
    """The servers of one run and the measurement steps."""

    def __init__(self, args: argparse.Namespace, workdir: Path, results: Results,
                 browser: Browser, orthanc: OrthancServer, viewer: OhifStaticServer,
                 app_source: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.results = results
        self.browser = browser
        self.orthanc = orthanc
        self.viewer = viewer
        self.app_source = app_source
        self.shots = args.screenshots
        self.network = network_conditions(args)

    def _load(self, target: str, phase: str, round_no: int, root: str,
              disable_web_security: bool) -> Load:
        self.viewer.app_config = render_app_config(root, DATA_SOURCE_VARIANTS["shipped"])
        shot = (self.shots / f"{target}-{phase}-{round_no}.png") if self.shots else None
        raw = browser_load(self.browser, self.workdir, viewer_url=self.viewer.url,
                           dicomweb_root=root, study_uid=self.results.study_uid,
                           expected=self.args.slices, disable_web_security=disable_web_security,
                           screenshot=shot, network=self.network)
        load = summarise_probe(Load(target, phase, round_no, bool(raw.get("ok")),
                                    raw.get("error")), raw, root)
        if load.ok and load.frames < self.args.slices:
            load.ok = False
            load.error = f"only {load.frames} frames of {self.args.slices} retrieved"
        if not load.ok:
            self.results.errors.append(f"{target} {phase} round {round_no}: {load.error}")
        log(f"  {target:<13} {phase:<4} first image {_ms(load.first_image_ms):>8}  "
            f"all loaded {_ms(load.all_loaded_ms):>8}  frames {load.frames}  "
            f"statuses {load.statuses}{'' if load.ok else '  ERROR ' + str(load.error)[:200]}")
        self.results.loads.append(load)
        return load

    def gateway_round(self, round_no: int, target: str) -> None:
        """A fresh gateway (empty cache) of ``target``'s kind: one cold load, then ``warm``
        loads on a filled cache, each in a fresh browser."""
        cors = target == GATEWAY_CORS
        restart_orthanc(self.orthanc, nodelay=False)
        peer = PeerAddress("orthanc", self.orthanc.ae_title, self.orthanc.host,
                           self.orthanc.dicom_port)
        with ViewerGateway(self.workdir, [peer], source=self.app_source,
                           cors_origin=self.viewer.url if cors else None,
                           engine=self.args.engine, compress=target != GATEWAY_IDENTITY,
                           prefetch=target != GATEWAY_NO_PREFETCH) as gw:
            self._load(target, "cold", round_no, gw.dicomweb(), disable_web_security=not cors)
            for _ in range(self.args.warm):
                self._load(target, "warm", round_no, gw.dicomweb(),
                           disable_web_security=not cors)

    def orthanc_round(self, round_no: int, *, compress: bool = True) -> None:
        """Orthanc restarted (its own caches empty): a first load, then second loads. Without
        ``compress``, Orthanc runs with ``HttpCompressionEnabled`` false (its default gzips
        every answer the client accepts gzip for, the frames' multipart bodies included)."""
        target = ORTHANC if compress else ORTHANC_IDENTITY
        if not compress:
            self.orthanc.extra_config["HttpCompressionEnabled"] = False
        try:
            restart_orthanc(self.orthanc, nodelay=False)
            self._load(target, "cold", round_no, self.orthanc.dicomweb_url,
                       disable_web_security=True)
            for _ in range(self.args.warm):
                self._load(target, "warm", round_no, self.orthanc.dicomweb_url,
                           disable_web_security=True)
        finally:
            if not compress:
                self.orthanc.extra_config.pop("HttpCompressionEnabled", None)

    def profile(self, out_dir: Path) -> None:
        """py-spy (collapsed stacks, thread ids, only samples holding the GIL, non-blocking) on
        a fresh gateway during one cold and one warm load; not part of the reported figures."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out_dir.mkdir(parents=True, exist_ok=True)
        restart_orthanc(self.orthanc, nodelay=False)
        peer = PeerAddress("orthanc", self.orthanc.ae_title, self.orthanc.host,
                           self.orthanc.dicom_port)
        with ViewerGateway(self.workdir, [peer], source=self.app_source, cors_origin=None,
                           engine=self.args.engine) as gw:
            for phase in ("cold", "warm"):
                out = out_dir / f"gateway-{phase}.txt"
                spy_process = subprocess.Popen(
                    [spy, "record", "-p", str(gw.pid), "-f", "raw", "-t", "-g", "--nonblocking",
                     "-r", "200", "-o", str(out)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    time.sleep(1.0)
                    load = self._load(GATEWAY, phase, 0, gw.dicomweb(), True)
                    self.results.loads.remove(load)
                finally:
                    spy_process.send_signal(2)
                    try:
                        spy_process.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        spy_process.kill()
                        spy_process.wait(timeout=10)
                log(f"  profile written to {out}")

    def server_rates(self, rounds: int = 3) -> None:
        """Without a browser: the frames of the series from a filled gateway and from Orthanc,
        fetched over six connections, alternately."""
        paths = frame_paths(self.args.slices)
        peer = PeerAddress("orthanc", self.orthanc.ae_title, self.orthanc.host,
                           self.orthanc.dicom_port)
        with ViewerGateway(self.workdir, [peer], source=self.app_source, cors_origin=None,
                           engine=self.args.engine) as gw:
            server_frame_rate(gw.dicomweb(), paths)  # fills the cache; not reported
            server_frame_rate(self.orthanc.dicomweb_url, paths)
            for _ in range(rounds):
                for target, root in ((GATEWAY, gw.dicomweb()),
                                     (ORTHANC, self.orthanc.dicomweb_url)):
                    rate = server_frame_rate(root, paths)
                    self.results.server_rates.setdefault(target, []).append(rate)
                    log(f"  {target:<13} server-only {rate:.0f} frames/s")

    def warm_up(self) -> None:
        """One untimed load (Chromium, Node and OHIF's files into the page cache)."""
        log("warm-up load (not reported)")
        browser_load(self.browser, self.workdir, viewer_url=self.viewer.url,
                     dicomweb_root=self.orthanc.dicomweb_url, study_uid=self.results.study_uid,
                     expected=self.args.slices, disable_web_security=True)

    def run(self) -> None:
        self.viewer.app_config = render_app_config(self.orthanc.dicomweb_url,
                                                   DATA_SOURCE_VARIANTS["shipped"])
        self.warm_up()
        for round_no in range(1, self.args.repeat + 1):
            log(f"round {round_no}/{self.args.repeat}")
            steps = [GATEWAY, ORTHANC]
            if with_identity_gateway(self.args):
                steps = [GATEWAY, GATEWAY_IDENTITY, ORTHANC, ORTHANC_IDENTITY]
            if round_no % 2 == 0:
                steps.reverse()
            if self.args.cors:
                steps.append(GATEWAY_CORS)
            if self.args.no_prefetch:
                steps.append(GATEWAY_NO_PREFETCH)
            for target in steps:
                if target in (ORTHANC, ORTHANC_IDENTITY):
                    self.orthanc_round(round_no, compress=target == ORTHANC)
                else:
                    self.gateway_round(round_no, target)
        if self.network is not None:
            return  # the servers' capacity without a browser is the loopback run's business
        log("server-only frame rate (no browser)")
        try:
            self.server_rates()
        except (RuntimeError, httpx.HTTPError) as exc:  # keep the loads; report the failure
            self.results.errors.append(f"server-only frame rate: {exc}")
            log(f"!! server-only frame rate failed: {exc}")
        if self.args.profile:
            log("profiling the gateway (extra loads, not reported)")
            self.profile(self.args.profile)


def run(args: argparse.Namespace) -> Results:
    results = Results(args=recorded_args(args))
    browser = Browser.find()
    with ExitStack() as stack:
        workdir = work_directory(stack, "dwg-ohif-bench-", keep=args.keep)
        app_source, results.app_digest = snapshot_app(workdir)
        orthanc = started_orthanc(stack, workdir)
        results.machine = machine_info(orthanc)
        results.orthanc_config = {k: v for k, v in orthanc.config().items()
                                  if k in ("DicomWeb", "MaximumStorageCacheSize",
                                           "HttpCompressionEnabled")}
        t0 = time.perf_counter()
        load_orthanc(orthanc, generate_ct_series(args.slices, seed=SEED))
        results.timings["load_s"] = time.perf_counter() - t0
        results.study_uid = study_uid_of(args.slices, SEED)
        log(f"loaded {args.slices} slices into Orthanc in {results.timings['load_s']:.1f} s")
        viewer = stack.enter_context(OhifStaticServer(OHIF_DIST))
        if args.screenshots:
            args.screenshots.mkdir(parents=True, exist_ok=True)
        Bench(args, workdir, results, browser, orthanc, viewer, app_source).run()
    return results


# -- report --------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def medians(results: Results, target: str, phase: str) -> dict[str, float | None]:
    """Medians over the successful loads of one target and phase."""
    loads = [x for x in results.loads if x.target == target and x.phase == phase and x.ok]
    keys = ("first_image_ms", "all_loaded_ms", "first_request_ms", "metadata_done_ms",
            "metadata_request_ms", "first_frame_ms", "last_frame_ms", "frame_latency_median_ms",
            "frame_latency_p90_ms", "frames_per_s", "mean_frames_in_flight")
    out: dict[str, float | None] = {k: _median([getattr(x, k) for x in loads]) for k in keys}
    for key in ("first_image_ms", "all_loaded_ms"):
        out[f"{key}_after_boot"] = _median(
            [getattr(x, key) - x.first_request_ms for x in loads
             if getattr(x, key) is not None and x.first_request_ms is not None])
    out["n"] = len(loads)
    return out


def verdict(gateway: float | None, orthanc: float | None, limit: float) -> tuple[str, str]:
    """(ratio text, verdict) of gateway / Orthanc against ``limit``."""
    if gateway is None or orthanc is None or orthanc <= 0:
        return "-", "no data"
    ratio = gateway / orthanc
    return f"{ratio:.2f}x", ("met" if ratio <= limit else "**NOT met**")


def _every_load(results: Results, extra: list[str], cells: Callable[[Load], list[str]]
                ) -> list[str]:
    """The folded table of every load: round, target, phase, times, frames, then the
    ``extra`` columns (``cells`` of a load), then the statuses."""
    heads = ["Round", "Target", "Phase", "First image", "Whole series", "Frames", *extra,
             "Statuses"]
    lines = ["", "<details><summary>Every load</summary>", "", "| " + " | ".join(heads) + " |",
             "|" + "---|" * len(heads)]
    for x in results.loads:
        statuses = ", ".join(f"{k} x{v}" for k, v in sorted(x.statuses.items()))
        row = [str(x.round), TARGET_LABELS[x.target], x.phase, _ms(x.first_image_ms),
               _ms(x.all_loaded_ms), str(x.frames), *cells(x),
               statuses + ("" if x.ok else " ERROR")]
        lines.append("| " + " | ".join(row) + " |")
    return lines + ["", "</details>", ""]


def render(results: Results) -> str:
    """The generated markdown section."""
    m, a = results.machine, results.args
    lines = [
        RESULTS_BEGIN,
        "<!-- Generated by `python -m benchmarks.ohif_load`; edits here are overwritten. -->",
        "",
        f"#### Run of {m.get('date', '?')}",
        "",
        f"- Machine: {m.get('nproc')} CPUs ({m.get('cpu')}), {m.get('ram_gb')} GB RAM, "
        f"{m.get('os')}",
        f"- Software: Python {m.get('python')}, pynetdicom {m.get('pynetdicom')}, "
        f"pydicom {m.get('pydicom')}, uvicorn {m.get('uvicorn')}; Orthanc {m.get('orthanc')} "
        f"(DICOMweb plugin {m.get('orthanc_dicomweb')}); OHIF @ohif/app 3.13.2 (data source as "
        "shipped), Debian Chromium headless via playwright-core",
        f"- Gateway: `python -m app.cli serve` as its own process, DIMSE engine "
        f"`{a.get('engine', 'asyncio')}` (`DWG_DIMSE_ENGINE`), default in-process cache "
        f"(`DWG_CACHE_BACKEND=memory`), C-GET from the same Orthanc; sources of `app/` copied at "
        f"the start of the run (digest {results.app_digest}).",
        f"- Command: `python -m benchmarks.ohif_load --slices {a['slices']} --repeat "
        f"{a['repeat']} --warm {a['warm']} --engine {a.get('engine', 'asyncio')}"
        f"{' --cors' if a.get('cors') else ''}{' --no-prefetch' if a.get('no_prefetch') else ''}`",
        f"- Study: one CT series of {a['slices']} slices 512x512x16-bit (Explicit VR Little "
        "Endian). Medians over the rounds; every load in a fresh Chromium with a fresh profile "
        "and the HTTP cache disabled; Chromium runs with `--disable-web-security` for the "
        "gateway and Orthanc rows alike.",
        "",
        "| Target | Gateway | Orthanc (same run) | Ratio | Verdict | After OHIF's boot: "
        "gateway, Orthanc, ratio |",
        "|---|---|---|---|---|---|",
    ]
    rows = [
        ("Warm: first image no slower than Orthanc", "warm", "first_image_ms", WARM_TOLERANCE),
        ("Warm: whole series no slower than Orthanc", "warm", "all_loaded_ms", WARM_TOLERANCE),
        (f"Cold: first image within {cold_first_image_tolerance(a['slices']):g}x Orthanc "
         "(issue #8)", "cold", "first_image_ms", cold_first_image_tolerance(a["slices"])),
        ("Cold: whole series within 2x Orthanc", "cold", "all_loaded_ms", COLD_TOLERANCE),
    ]
    for title, phase, key, limit in rows:
        gm, om = medians(results, GATEWAY, phase), medians(results, ORTHANC, phase)
        ratio, ok = verdict(gm[key], om[key], limit)
        gb, ob = gm[f"{key}_after_boot"], om[f"{key}_after_boot"]
        boot_ratio, _ = verdict(gb, ob, limit)
        lines.append(f"| {title} | {_ms(gm[key])} | {_ms(om[key])} | {ratio} | {ok} | "
                     f"{_ms(gb)}, {_ms(ob)}, {boot_ratio} |")
    if a.get("no_prefetch"):  # issue #9: what the prefetch on OHIF's queries gains cold
        on, off = medians(results, GATEWAY, "cold"), medians(results, GATEWAY_NO_PREFETCH, "cold")
        for title, key in (("first image", "first_image_ms"), ("whole series", "all_loaded_ms")):
            gain = _ratio(on[key], off[key])
            lines.append(f"| (Reported) Cold {title}, gateway with the prefetch on OHIF's "
                         f"queries vs without (second column: without) | {_ms(on[key])} | "
                         f"{_ms(off[key])} | {gain} | - | {_ms(on[f'{key}_after_boot'])}, "
                         f"{_ms(off[f'{key}_after_boot'])}, "
                         f"{_ratio(on[f'{key}_after_boot'], off[f'{key}_after_boot'])} |")
    lines += [
        "",
        "The verdicts use the times from the navigation, as the targets are defined. OHIF's "
        "own boot (navigation to its first DICOMweb request, served by the same static server "
        "for both) is in both figures and scatters by several hundred ms on a loaded machine; "
        "the last column is the median over the loads of each time minus that load's first "
        "DICOMweb request, the part the DICOMweb server can influence.",
        "",
        "Medians per step, in ms since navigation (first DICOMweb request = OHIF booted; "
        "metadata = last series metadata response; frames = first and last frame response "
        "complete; image = first non-blank canvas; series = every image of the stack in "
        "cornerstone's cache):",
        "",
        "| Target | Phase | n | First request | Metadata (its request) | First frame | "
        "First image | Last frame | Whole series | Frame latency median / p90 | Frames/s "
        "(mean in flight) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    targets = ([GATEWAY] + ([GATEWAY_IDENTITY] if a.get("uncompressed") else []) + [ORTHANC]
               + ([ORTHANC_IDENTITY] if a.get("uncompressed") else [])
               + ([GATEWAY_CORS] if a.get("cors") else [])
               + ([GATEWAY_NO_PREFETCH] if a.get("no_prefetch") else []))
    for target in targets:
        for phase in ("cold", "warm"):
            s = medians(results, target, phase)
            lines.append(
                f"| {TARGET_LABELS[target]} | {phase} | {s['n']} | {_ms(s['first_request_ms'])} | "
                f"{_ms(s['metadata_done_ms'])} ({_ms(s['metadata_request_ms'])}) | "
                f"{_ms(s['first_frame_ms'])} | "
                f"{_ms(s['first_image_ms'])} | {_ms(s['last_frame_ms'])} | "
                f"{_ms(s['all_loaded_ms'])} | {_ms(s['frame_latency_median_ms'])} / "
                f"{_ms(s['frame_latency_p90_ms'])} | {_num(s['frames_per_s'])} "
                f"({_num(s['mean_frames_in_flight'], 1)}) |")
    if results.server_rates:
        rates = {t: _median(v) for t, v in results.server_rates.items()}
        lines += [
            "",
            f"Without a browser, the same {a['slices']} frames (`frames/1` of each instance, "
            f"Accept as OHIF sends it) fetched by an httpx client over {BROWSER_CONNECTIONS} "
            "keep-alive connections (Chromium's per-host limit), gateway cache filled; medians "
            "of " + str(len(next(iter(results.server_rates.values())))) + " alternating runs: "
            + "; ".join(f"{TARGET_LABELS[t]} {_num(r)} frames/s" for t, r in rates.items())
            + ".",
        ]
    lines += _every_load(results, ["Peak frames in flight"],
                         lambda x: [str(x.max_frames_in_flight)])
    lines += ["<details><summary>Requests of the first cold load of each target (resource "
              "timing; status as the browser saw it)</summary>", ""]
    for target in targets:
        first = next((x for x in results.loads if x.target == target and x.phase == "cold"),
                     None)
        if first is None:
            continue
        lines += [f"{TARGET_LABELS[target]}:", "", "```"]
        lines += [f"{n:>4} x {kind}" for kind, n in sorted(first.kinds.items())]
        lines += ["```", ""]
    lines += ["</details>", ""]
    if results.errors:
        lines += ["Errors:", ""] + [f"- {e}" for e in results.errors] + [""]
    lines.append(RESULTS_END)
    return "\n".join(lines) + "\n"


def _kb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:.0f} kB"


def _ratio(value: float | None, reference: float | None) -> str:
    return "-" if value is None or not reference else f"{value / reference:.2f}x"


def wan_medians(results: Results, target: str, phase: str) -> dict[str, Any]:
    """``medians`` plus the bytes on the wire and the encodings of the metadata."""
    out: dict[str, Any] = medians(results, target, phase)
    loads = [x for x in results.loads if x.target == target and x.phase == phase and x.ok]
    for key in ("metadata_wire_bytes", "json_wire_bytes", "wire_bytes", "frame_wire_bytes"):
        out[key] = _median([getattr(x, key) for x in loads])
    out["metadata_encoding"] = ",".join(sorted({x.metadata_encoding or "?" for x in loads}))
    return out


def render_wan(results: Results) -> str:
    """The generated markdown section of a run on an emulated network."""
    m, a = results.machine, results.args
    n = network_conditions(argparse.Namespace(**a)) or {}
    targets = [GATEWAY, GATEWAY_IDENTITY, ORTHANC, ORTHANC_IDENTITY] + (
        [GATEWAY_CORS] if a.get("cors") else [])
    orthanc_compression = results.orthanc_config.get("HttpCompressionEnabled",
                                                     "not set (Orthanc's default)")
    lines = [
        WAN_RESULTS_BEGIN,
        "<!-- Generated by `python -m benchmarks.ohif_load --network wan`; edits here are "
        "overwritten. -->",
        "",
        f"#### Run of {m.get('date', '?')}",
        "",
        f"- Machine: {m.get('nproc')} CPUs ({m.get('cpu')}), {m.get('ram_gb')} GB RAM, "
        f"{m.get('os')}",
        f"- Software: Python {m.get('python')}, pynetdicom {m.get('pynetdicom')}, "
        f"pydicom {m.get('pydicom')}, uvicorn {m.get('uvicorn')}; Orthanc {m.get('orthanc')} "
        f"(DICOMweb plugin {m.get('orthanc_dicomweb')}, `HttpCompressionEnabled` "
        f"{orthanc_compression}); OHIF @ohif/app 3.13.2 (data source as shipped), Debian "
        "Chromium headless via playwright-core",
        f"- Network: Chromium's emulation (CDP `Network.emulateNetworkConditions` on the page): "
        f"{a['down_mbps']:g} Mbit/s down ({n.get('downloadBps', 0):.0f} B/s), {a['up_mbps']:g} "
        f"Mbit/s up, latency {a['rtt_ms']:g} ms added to every request, for every target.",
        f"- Gateway: `python -m app.cli serve`, DIMSE engine `{a.get('engine', 'asyncio')}`, "
        "memory cache, C-GET from the same Orthanc; compressed JSON as shipped "
        "(`compress_responses`, br or gzip as the browser accepts) and a second process with "
        f"`DWG_COMPRESS_RESPONSES=false`; sources of `app/` digest {results.app_digest}.",
        f"- Command: `python -m benchmarks.ohif_load --slices {a['slices']} --repeat "
        f"{a['repeat']} --warm {a['warm']} --network wan --down-mbps {a['down_mbps']:g} "
        f"--up-mbps {a['up_mbps']:g} --rtt-ms {a['rtt_ms']:g}`",
        f"- Study: one CT series of {a['slices']} slices 512x512x16-bit (Explicit VR Little "
        "Endian, uncompressed frames). Medians over the rounds; every load in a fresh Chromium "
        "with a fresh profile and the HTTP cache disabled, `--disable-web-security` for all "
        "rows.",
        "",
        "Times from the navigation, then (in brackets) from the load's first DICOMweb request, "
        "i.e. without OHIF's own boot, whose static files are throttled too; ratios against "
        "Orthanc as configured by default, measured in the same run.",
        "",
        "| Target | Phase | n | First image (after boot) | vs Orthanc (after boot) | Whole "
        "series (after boot) | vs Orthanc (after boot) | Metadata on the wire (encoding) | "
        "Metadata request | QIDO + metadata on the wire | Frames on the wire | Frame latency "
        "median / p90 | Frames/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase in ("cold", "warm"):
        ref = wan_medians(results, ORTHANC, phase)
        for target in targets:
            s_ = wan_medians(results, target, phase)
            if not s_["n"]:
                continue
            cells = []
            for key in ("first_image_ms", "all_loaded_ms"):
                boot = f"{key}_after_boot"
                cells.append(f"{_ms(s_[key])} ({_ms(s_[boot])}) | "
                             f"{_ratio(s_[key], ref[key])} ({_ratio(s_[boot], ref[boot])})")
            lines.append(
                f"| {TARGET_LABELS[target]} | {phase} | {s_['n']} | {' | '.join(cells)} | "
                f"{_kb(s_['metadata_wire_bytes'])} ({s_['metadata_encoding']}) | "
                f"{_ms(s_['metadata_request_ms'])} | {_kb(s_['json_wire_bytes'])} | "
                f"{_kb(s_['frame_wire_bytes'])} | "
                f"{_ms(s_['frame_latency_median_ms'])} / {_ms(s_['frame_latency_p90_ms'])} | "
                f"{_num(s_['frames_per_s'])} |")
    lines += [
        "",
        "Medians per step, in ms since navigation (as in the loopback section):",
        "",
        "| Target | Phase | First request | Metadata done | First frame | First image | "
        "Last frame | Whole series | Mean frames in flight |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target in targets:
        for phase in ("cold", "warm"):
            s_ = medians(results, target, phase)
            lines.append(
                f"| {TARGET_LABELS[target]} | {phase} | {_ms(s_['first_request_ms'])} | "
                f"{_ms(s_['metadata_done_ms'])} | {_ms(s_['first_frame_ms'])} | "
                f"{_ms(s_['first_image_ms'])} | {_ms(s_['last_frame_ms'])} | "
                f"{_ms(s_['all_loaded_ms'])} | {_num(s_['mean_frames_in_flight'], 1)} |")
    emulated = [x for x in results.loads if x.ok]
    lines += [
        "",
        "Coverage of the emulation: frame responses seen by the emulated page target's "
        f"Network domain / in the page's resource timing / by the whole browser context: "
        f"{sum(x.wire_frames for x in emulated)} / {sum(x.frames for x in emulated)} / "
        f"{sum(x.context_frames for x in emulated)} over {len(emulated)} loads; dedicated "
        f"workers started by the page: {max((x.workers for x in emulated), default=0)} per load "
        "(cornerstone's decoders).",
    ]
    lines += _every_load(
        results, ["Metadata on the wire", "All DICOMweb bytes on the wire"],
        lambda x: [f"{_kb(x.metadata_wire_bytes)} ({x.metadata_encoding or '?'})",
                   _kb(x.wire_bytes)])
    if results.errors:
        lines += ["Errors:", ""] + [f"- {e}" for e in results.errors] + [""]
    lines.append(WAN_RESULTS_END)
    return "\n".join(lines) + "\n"


SECTION_HEADER = """## OHIF viewer load

`python -m benchmarks.ohif_load` (see `benchmarks/README.md`) times OHIF Viewer v3 opening one
CT series through the gateway and pointed straight at Orthanc's DICOMweb plugin.

"""


WAN_SECTION_HEADER = """## OHIF viewer load on an emulated WAN

`python -m benchmarks.ohif_load --network wan` (see `benchmarks/README.md`): the same loads with
Chromium's network emulation, gateway with and without compressed JSON, and Orthanc.

"""


def write_doc(section: str, path: Path, *, wan: bool = False) -> None:
    """Replace the generated section between the ohif-load (or, with ``wan``, the ohif-wan)
    markers, or append a new section."""
    begin, end = (WAN_RESULTS_BEGIN, WAN_RESULTS_END) if wan else (RESULTS_BEGIN, RESULTS_END)
    replace_section(path, begin, end, section,
                    new_heading=WAN_SECTION_HEADER if wan else SECTION_HEADER)

# -- entry point ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ohif_load", description=__doc__)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians are reported)")
    parser.add_argument("--warm", type=int, default=1, help="warm loads per round")
    parser.add_argument("--engine", choices=ENGINES, default="asyncio",
                        help="the gateway's DIMSE engine (DWG_DIMSE_ENGINE)")
    parser.add_argument("--no-prefetch", action="store_true",
                        help="also a gateway without the prefetch on OHIF's series and study "
                             "queries, to measure what it gains the cold load")
    parser.add_argument("--cors", action="store_true",
                        help="also the gateway with real CORS (no --disable-web-security)")
    parser.add_argument("--uncompressed", action="store_true",
                        help="also a gateway with DWG_COMPRESS_RESPONSES=false (implied by "
                             "--network wan)")
    parser.add_argument("--network", choices=("none", "wan"), default="none",
                        help="emulate a network in Chromium for every load (the figures go to "
                             "the ohif-wan-results section)")
    parser.add_argument("--down-mbps", type=float, default=50.0,
                        help="emulated download throughput, Mbit/s (with --network wan)")
    parser.add_argument("--up-mbps", type=float, default=50.0,
                        help="emulated upload throughput, Mbit/s (with --network wan)")
    parser.add_argument("--rtt-ms", type=float, default=40.0,
                        help="latency added to every request, ms (with --network wan)")
    add_output_arguments(parser, DOC_PATH)
    parser.add_argument("--screenshots", type=Path, default=None,
                        help="a directory for a screenshot at the end of each load")
    parser.add_argument("--profile", type=Path, default=None,
                        help="a directory for py-spy profiles of one extra cold and warm load")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.slices < 1 or args.repeat < 1 or args.warm < 1:
        raise SystemExit("--slices, --repeat and --warm must be at least 1")
    t0 = time.perf_counter()
    results = run(args)
    results.timings["total_s"] = time.perf_counter() - t0
    results.machine.setdefault("date", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    wan = args.network != "none"
    write_doc(render_wan(results) if wan else render(results), args.output, wan=wan)
    log(f"results written to {args.output}")
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=2, default=str))
    for target in (GATEWAY, GATEWAY_IDENTITY, ORTHANC, ORTHANC_IDENTITY, GATEWAY_CORS):
        for phase in ("cold", "warm"):
            s = medians(results, target, phase)
            if s["n"]:
                log(f"{target:<13} {phase}: first image {_ms(s['first_image_ms'])}, whole series "
                    f"{_ms(s['all_loaded_ms'])} (n={s['n']})")
    return 1 if results.errors else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())

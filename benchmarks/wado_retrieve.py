"""WADO-RS retrieval benchmark: the gateway against a raw pynetdicom C-GET and DCMTK ``getscu`` on
the same Orthanc study at the same moment, plus PDU size, TCP_NODELAY and peak-RSS measurements.

Run from the repository root: ``.venv/bin/python -m benchmarks.wado_retrieve [--slices 300]
[--big-slices 2100] [--repeat 3]``; the figures replace the results section of
docs/benchmarks.md. Every server runs on 127.0.0.1 on a free port and is stopped at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet  # type: ignore[attr-defined]

from app.demo.samples import generate_ct_series
from benchmarks.common import (
    add_output_arguments,
    log,
    ms,
    replace_section,
    run_footer,
    run_steps,
    started_orthanc,
    times,
    verdict,
    work_directory,
)
from tests.peers.binaries import find_binary
from tests.peers.dcmqrscp import DcmqrscpServer, dcmtk_environment
from tests.peers.orthanc import OrthancServer, dataset_to_part10
from tests.peers.ports import free_port
from tests.peers.process import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = REPO_ROOT / "docs" / "benchmarks.md"
RESULTS_BEGIN = "<!-- wado-retrieve-results:begin -->"
RESULTS_END = "<!-- wado-retrieve-results:end -->"
GET_MODEL = StudyRootQueryRetrieveInformationModelGet
ACCEPT_DICOM = 'multipart/related; type="application/dicom"'
GATEWAY_AE = "BENCH_GW"
DCMTK_MAX_PDU = 131072
PDU_SWEEP = (16384, 65536, 131072, 0)
SMALL_SEED, BIG_SEED = 2, 3
DIMSE_TIMEOUT = 120.0
HTTP_TIMEOUT = httpx.Timeout(300.0, connect=10.0)
TTFP_ALLOWANCE_S = 0.030


# -- measurements --------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One retrieval: wall time, time to the first complete instance, what arrived."""

    method: str
    seconds: float
    first_s: float | None
    instances: int
    nbytes: int
    extra: dict[str, Any] = field(default_factory=dict)


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None (None when there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def set_nodelay(event: evt.Event) -> None:
    """Turn Nagle's algorithm off on a pynetdicom association's socket (EVT_CONN_OPEN)."""
    transport = event.assoc.dul.socket
    sock = transport.socket if transport is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def study_identifier(study_uid: str) -> Dataset:
    """A STUDY-level C-GET identifier."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return ds


def raw_c_get(
    host: str,
    port: int,
    called_ae: str,
    study_uid: str,
    *,
    max_pdu: int = 0,
    nodelay: bool = True,
    sop_class: str = CTImageStorage,
    record_pdus: bool = False,
) -> Measurement:
    """A bare pynetdicom C-GET of one study: the handler only counts the bytes it is given.

    ``record_pdus`` also notes the size of every P-DATA-TF PDU received (costs time: use it only
    for a diagnostic run)."""
    ae = AE(ae_title="BENCH_RAW")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = DIMSE_TIMEOUT
    ae.maximum_pdu_size = max_pdu
    contexts = [build_context(GET_MODEL), build_context(sop_class, ExplicitVRLittleEndian),
                build_context(sop_class, ImplicitVRLittleEndian)]
    state: dict[str, Any] = {"first": None, "count": 0, "bytes": 0, "pdus": []}
    t0 = time.perf_counter()

    def on_store(event: evt.Event) -> int:
        if state["first"] is None:
            state["first"] = time.perf_counter() - t0
        state["count"] += 1
        dataset = getattr(event.request, "DataSet", None)
        state["bytes"] += dataset.getbuffer().nbytes if dataset is not None else 0
        return 0x0000

    def on_pdu(event: evt.Event) -> None:
        if event.pdu.__class__.__name__ == "P_DATA_TF":
            state["pdus"].append(len(event.pdu))

    handlers: list[Any] = [(evt.EVT_C_STORE, on_store)]
    if nodelay:
        handlers.append((evt.EVT_CONN_OPEN, set_nodelay))
    if record_pdus:
        handlers.append((evt.EVT_PDU_RECV, on_pdu))
    assoc = ae.associate(host, port, contexts=contexts, ae_title=called_ae,
                         ext_neg=[build_role(sop_class, scp_role=True)], evt_handlers=handlers,
                         max_pdu=max_pdu)
    if not assoc.is_established:
        raise RuntimeError(f"raw C-GET: association with {called_ae}@{host}:{port} failed")
    final = None
    try:
        for status, _identifier in assoc.send_c_get(study_identifier(study_uid), GET_MODEL):
            if status and int(status.Status) not in (0xFF00, 0xFF01):
                final = int(status.Status)
    finally:
        if assoc.is_established:
            assoc.release()
    seconds = time.perf_counter() - t0
    if final != 0x0000:
        raise RuntimeError(f"raw C-GET ended with status {final!r} after {state['count']}")
    extra: dict[str, Any] = {"max_pdu": max_pdu, "nodelay": nodelay}
    if record_pdus and state["pdus"]:
        extra.update(pdu_count=len(state["pdus"]), pdu_max=max(state["pdus"]),
                     pdu_median=statistics.median(state["pdus"]))
    return Measurement("raw pynetdicom C-GET", seconds, state["first"], state["count"],
                       state["bytes"], extra)


def getscu_c_get(host: str, port: int, called_ae: str, study_uid: str, *,
                 verbose: bool = False) -> Measurement:
    """DCMTK getscu of one study, TCP_NODELAY=1, largest PDU, received and discarded.

    The time includes starting the process (a few ms); with ``verbose`` the received instances
    are counted from the log."""
    binary = find_binary("getscu")
    if binary is None:
        raise RuntimeError("getscu is not installed (DCMTK)")
    argv = [binary, "-aet", "BENCH_GETSCU", "-aec", called_ae, "-S",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
            "-pdu", str(DCMTK_MAX_PDU), "--ignore", host, str(port)]
    if verbose:
        argv.insert(1, "-v")
    t0 = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=dcmtk_environment(),
                            timeout=DIMSE_TIMEOUT * 2)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"getscu failed ({result.returncode}): {result.stderr[-2000:]}")
    log = result.stdout + result.stderr
    count = len(re.findall(r"Received C-STORE Request", log, re.IGNORECASE)) if verbose else -1
    return Measurement("DCMTK getscu", seconds, None, count, 0, {"pdu": DCMTK_MAX_PDU})


def wado_retrieve(base_url: str, study_uid: str, *, resource: str = "",
                  sampler: RssSampler | None = None) -> Measurement:
    """GET {base}/studies/{uid}{resource} streaming the multipart body, discarding it; counts the
    parts and times the first complete part (its headers and all of its Content-Length bytes)."""
    url = f"{base_url}/studies/{study_uid}{resource}"
    total = parts = 0
    first_s: float | None = None
    head = bytearray()
    first_end: int | None = None
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        t0 = time.perf_counter()
        with client.stream("GET", url, headers={"Accept": ACCEPT_DICOM}) as response:
            if response.status_code != 200:
                response.read()
                raise RuntimeError(f"WADO-RS {url}: {response.status_code} {response.text[:300]}")
            match = re.search(r'boundary="?([^";]+)"?', response.headers["content-type"])
            if match is None:
                raise RuntimeError("WADO-RS response without a multipart boundary")
            marker = b"\r\n--" + match.group(1).encode("ascii")
            tail = b""
            for chunk in response.iter_raw():
                total += len(chunk)
                if first_s is None:
                    if first_end is None:
                        head += chunk
                        end = head.find(b"\r\n\r\n")
                        if end >= 0:
                            length = re.search(rb"Content-Length:\s*(\d+)", head[:end],
                                               re.IGNORECASE)
                            if length is None:
                                raise RuntimeError("first part has no Content-Length")
                            first_end = end + 4 + int(length.group(1))
                            head = bytearray()
                    if first_end is not None and total >= first_end:
                        first_s = time.perf_counter() - t0
                seam = tail + chunk[: len(marker) - 1]
                parts += seam.count(marker) + chunk.count(marker)
                tail = chunk[-(len(marker) - 1):]
        seconds = time.perf_counter() - t0
    extra: dict[str, Any] = {}
    if sampler is not None:
        extra.update(sampler.summary())
    # Each part after the first is preceded by CRLF--boundary, and so is the closing delimiter.
    return Measurement("gateway WADO-RS", seconds, first_s, parts, total, extra)


# -- processes -----------------------------------------------------------------------------------


def read_status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
    return out


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread; records the peak."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.idle_kb = read_status_kb(pid)["VmRSS"]
        self.peak_kb = self.idle_kb
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                rss = read_status_kb(self.pid)["VmRSS"]
            except (OSError, KeyError):
                return
            self.samples += 1
            self.peak_kb = max(self.peak_kb, rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> dict[str, Any]:
        """Idle and peak RSS in MB, and the process's own high-water mark."""
        hwm = read_status_kb(self.pid).get("VmHWM", 0)
        return {"idle_rss_mb": self.idle_kb / 1024, "peak_rss_mb": self.peak_kb / 1024,
                "vmhwm_mb": hwm / 1024, "rss_samples": self.samples}


@dataclass(frozen=True)
class PeerAddress:
    """Where a PACS listens, and what the gateway calls it."""

    name: str
    ae_title: str
    host: str
    port: int


class GatewayProcess:
    """The gateway as its own process (``python -m app.cli serve``) so that its RSS is its own.

    With ``max_pdu`` or ``quiet_logging`` set, it runs through this module's ``gateway`` command
    instead, which forces that maximum PDU on every association the gateway opens, or keeps the
    root logger at WARNING (the app has no setting for either). ``cache`` is DWG_CACHE_BACKEND.
    """

    def __init__(self, workdir: Path, peers: Sequence[PeerAddress], *,
                 max_pdu: int | None = None, source: Path = REPO_ROOT, cache: str = "none",
                 quiet_logging: bool = False) -> None:
        self.port = free_port()
        self.peers = peers
        self.max_pdu = max_pdu
        self.source = source
        self.cache = cache
        self.quiet_logging = quiet_logging
        label = "-".join(x for x in ("default" if max_pdu is None else f"pdu{max_pdu}",
                                      f"cache-{cache}", "quiet" if quiet_logging else "") if x)
        self._process = ManagedProcess(self.argv(), workdir / f"gateway-{label}.log",
                                       env=self.env(), cwd=source)

    def argv(self) -> list[str]:
        if self.max_pdu is None and not self.quiet_logging:
            return [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1",
                    "--port", str(self.port)]
        argv = [sys.executable, "-m", "benchmarks.wado_retrieve", "gateway", "--port",
                str(self.port)]
        if self.max_pdu is not None:
            argv += ["--max-pdu", str(self.max_pdu)]
        if self.quiet_logging:
            argv.append("--quiet-logging")
        return argv

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DWG_")}
        env.update(
            DWG_PACS=json.dumps([{"name": p.name, "ae_title": p.ae_title, "host": p.host,
                                  "port": p.port, "max_associations": 4} for p in self.peers]),
            DWG_AE_TITLE=GATEWAY_AE,
            DWG_STORAGE_SCP_ENABLED="false",
            DWG_CACHE_BACKEND=self.cache,
            DWG_LOG_LEVEL="WARNING",
            # ``app`` comes from ``source`` (the working directory, first on sys.path with -m);
            # ``benchmarks`` and ``tests`` from the repository.
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(
                os.pathsep),
        )
        return env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def dicomweb(self, peer: str | None = None) -> str:
        """DICOMweb root of the default PACS, or of the named one."""
        return f"{self.url}/dicomweb" if peer is None else f"{self.url}/pacs/{peer}/dicomweb"

    @property
    def pid(self) -> int:
        pid = self._process.pid
        if pid is None:
            raise RuntimeError("gateway is not running")
        return pid

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        popen = self._process.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if popen.poll() is not None:
                break
            time.sleep(0.1)
        tail = self._process.log_tail()
        self.stop()
        raise RuntimeError(f"gateway did not start:\n{tail}")

    def stop(self) -> None:
        self._process.stop(10)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_gateway(port: int, max_pdu: int | None, quiet_logging: bool) -> int:
    """Run the gateway with every association proposing ``max_pdu`` (0: unlimited; None: as the
    app does), and with ``quiet_logging`` the root logger at WARNING (app.cli's basicConfig at
    INFO is then a no-op, so pynetdicom's per-message INFO lines are not formatted)."""
    if max_pdu is not None:
        original = AE.associate

        def associate(self: AE, *args: Any, **kwargs: Any) -> Any:
            kwargs["max_pdu"] = max_pdu
            return original(self, *args, **kwargs)

        AE.associate = associate  # type: ignore[method-assign]
    if quiet_logging:
        logging.basicConfig(level=logging.WARNING)
    from app.cli import main as cli_main

    return cli_main(["serve", "--host", "127.0.0.1", "--port", str(port)])


def snapshot_app(workdir: Path, timeout: float = 300.0) -> tuple[Path, str]:
    """Copy ``app/`` once it imports cleanly, so that edits made to the working tree during the
    run cannot change what is measured; returns the directory and a digest of the sources."""
    deadline = time.monotonic() + timeout
    while True:
        target = workdir / "src"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(REPO_ROOT / "app", target / "app",
                        ignore=shutil.ignore_patterns("__pycache__"))
        probe = subprocess.run([sys.executable, "-c", "import app.main, app.cli"], cwd=target,
                               capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            digest = hashlib.sha256()
            for path in sorted((target / "app").rglob("*.py")):
                digest.update(str(path.relative_to(target)).encode() + b"\0" + path.read_bytes())
            return target, digest.hexdigest()[:12]
        if time.monotonic() >= deadline:
            raise RuntimeError(f"app/ does not import: {probe.stderr.strip().splitlines()[-1:]}")
        log("app/ does not import right now (being edited?); retrying in 10 s")
        time.sleep(10)


# -- loading -------------------------------------------------------------------------------------


def load_orthanc(server: OrthancServer, datasets: Iterable[Dataset], *, workers: int = 3) -> int:
    """POST datasets to Orthanc a few at a time; at most ``2 * workers`` encoded instances are
    held at once, so a 1 GB study loads in bounded memory."""
    count = 0
    with server.client(timeout=120) as client, ThreadPoolExecutor(workers) as pool:
        pending: set[Future[None]] = set()

        def post(body: bytes) -> None:
            response = client.post("/instances", content=body,
                                   headers={"Content-Type": "application/dicom"})
            response.raise_for_status()

        for ds in datasets:
            pending.add(pool.submit(post, dataset_to_part10(ds)))
            count += 1
            if len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
        for future in pending:
            future.result()
    return count


def first_instance_path(slices: int, seed: int) -> str:
    """``/series/{uid}/instances/{uid}`` of the first slice generate_ct_series gives."""
    ds = next(generate_ct_series(slices, seed=seed))
    return f"/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def study_uid_of(slices: int, seed: int) -> str:
    """The StudyInstanceUID generate_ct_series gives for these parameters."""
    return str(next(generate_ct_series(slices, seed=seed)).StudyInstanceUID)


# -- environment ---------------------------------------------------------------------------------


def machine_info(orthanc: OrthancServer) -> dict[str, Any]:
    """nproc, RAM, CPU model, OS and the versions of everything measured."""
    import fastapi
    import pydicom
    import pynetdicom
    import starlette
    import uvicorn

    cpu = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    os_name = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"') + f" (kernel {platform.release()})"
    except OSError:
        pass
    with orthanc.client() as client:
        system = client.get("/system").json()
        try:
            dicomweb = client.get("/plugins/dicom-web").json().get("Version", "?")
        except (httpx.HTTPError, ValueError):
            dicomweb = "?"
    getscu = find_binary("getscu")
    dcmtk = "?"
    if getscu:
        out = subprocess.run([getscu, "--version"], capture_output=True, text=True, timeout=10)
        match = re.search(r"v(\d+\.\d+\.\d+)", out.stdout)
        dcmtk = match.group(1) if match else "?"
    loops = []
    for name in ("uvloop", "httptools"):
        try:
            module = __import__(name)
            loops.append(f"{name} {getattr(module, '__version__', '?')}")
        except ImportError:
            pass
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "cpu": cpu,
        "os": os_name,
        "python": platform.python_version(),
        "pynetdicom": pynetdicom.__version__,
        "pydicom": pydicom.__version__,
        "fastapi": fastapi.__version__,
        "starlette": starlette.__version__,
        "uvicorn": uvicorn.__version__ + (f" ({', '.join(loops)})" if loops else ""),
        "httpx": httpx.__version__,
        "orthanc": system.get("Version", "?"),
        "orthanc_dicomweb": dicomweb,
        "dcmtk": dcmtk,
    }


# -- the benchmark -------------------------------------------------------------------------------


@dataclass
class Results:
    """Everything one run measured, for the report and the JSON dump."""

    args: dict[str, Any]
    app_source: Path = REPO_ROOT
    app_digest: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    study_bytes: int = 0
    big_study_bytes: int = 0
    main: list[Measurement] = field(default_factory=list)
    gateway_first_request: Measurement | None = None
    pdu_sweep: list[Measurement] = field(default_factory=list)
    pdu_diag: list[Measurement] = field(default_factory=list)
    nodelay: list[Measurement] = field(default_factory=list)
    orthanc_nodelay: list[Measurement] = field(default_factory=list)
    dcmqrscp: list[Measurement] = field(default_factory=list)
    big: list[Measurement] = field(default_factory=list)
    quiet: list[Measurement] = field(default_factory=list)
    cached: list[Measurement] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def check(m: Measurement, expected: int) -> Measurement:
    """Refuse a measurement that did not deliver the whole study."""
    if m.instances not in (expected, -1):
        raise RuntimeError(f"{m.method}: {m.instances} instances instead of {expected}")
    log(f"  {m.method:<22} {m.seconds:7.3f} s  first "
        f"{'-' if m.first_s is None else f'{m.first_s * 1000:6.1f} ms'}  {m.extra or ''}")
    return m


def run_main(results: Results, orthanc: OrthancServer, gw: GatewayProcess, uid: str,
             slices: int, repeat: int) -> None:
    """Raw C-GET, getscu and the gateway, alternating, ``repeat`` rounds (order rotated)."""
    host, port, ae = "127.0.0.1", orthanc.dicom_port, orthanc.ae_title
    methods: list[Callable[[], Measurement]] = [
        lambda: raw_c_get(host, port, ae, uid),
        lambda: getscu_c_get(host, port, ae, uid),
        lambda: wado_retrieve(gw.dicomweb(), uid),
    ]
    for round_no in range(repeat):
        log(f"round {round_no + 1}/{repeat}")
        order = methods[round_no % 3:] + methods[:round_no % 3]
        for method in order:
            results.main.append(check(method(), slices))


def run_pdu_sweep(results: Results, orthanc: OrthancServer, workdir: Path, uid: str,
                  slices: int, repeat: int) -> None:
    """The gateway (and the raw C-GET) with each maximum PDU size in PDU_SWEEP."""
    host, port, ae = "127.0.0.1", orthanc.dicom_port, orthanc.ae_title
    peer = PeerAddress("orthanc", ae, host, port)
    for pdu in PDU_SWEEP:
        diag = raw_c_get(host, port, ae, uid, max_pdu=pdu, record_pdus=True)
        results.pdu_diag.append(check(diag, slices))
        with GatewayProcess(workdir, [peer], max_pdu=pdu, source=results.app_source) as gw:
            check(wado_retrieve(gw.dicomweb(), uid), slices)  # warm-up
            for _ in range(repeat):
                raw = raw_c_get(host, port, ae, uid, max_pdu=pdu)
                raw.extra["max_pdu"] = pdu
                results.pdu_sweep.append(check(raw, slices))
                m = wado_retrieve(gw.dicomweb(), uid)
                m.extra["max_pdu"] = pdu
                results.pdu_sweep.append(check(m, slices))


def run_nodelay(results: Results, orthanc: OrthancServer, uid: str, slices: int,
                repeat: int) -> None:
    """The raw C-GET with and without TCP_NODELAY on its socket."""
    for _ in range(repeat):
        for nodelay in (True, False):
            m = raw_c_get("127.0.0.1", orthanc.dicom_port, orthanc.ae_title, uid, nodelay=nodelay)
            results.nodelay.append(check(m, slices))


def restart_orthanc(orthanc: OrthancServer, nodelay: bool) -> None:
    """Restart Orthanc on the same storage and ports, with or without ``TCP_NODELAY=1`` in its
    environment (its DCMTK network layer reads that variable, like the DCMTK tools)."""
    orthanc.stop()
    saved = os.environ.pop("TCP_NODELAY", None)
    if nodelay:
        os.environ["TCP_NODELAY"] = "1"
    try:
        orthanc.start()
    finally:
        os.environ.pop("TCP_NODELAY", None)
        if saved is not None:
            os.environ["TCP_NODELAY"] = saved


def run_orthanc_nodelay(results: Results, orthanc: OrthancServer, workdir: Path, uid: str,
                        slices: int, repeat: int) -> None:
    """The main comparison again with Orthanc itself running with TCP_NODELAY=1."""
    host, port, ae = "127.0.0.1", orthanc.dicom_port, orthanc.ae_title
    restart_orthanc(orthanc, nodelay=True)
    try:
        with GatewayProcess(workdir, [PeerAddress("orthanc", ae, host, port)],
                            source=results.app_source) as gw:
            check(wado_retrieve(gw.dicomweb(), uid), slices)  # warm-up
            check(raw_c_get(host, port, ae, uid), slices)
            for _ in range(repeat):
                results.orthanc_nodelay.append(check(raw_c_get(host, port, ae, uid), slices))
                results.orthanc_nodelay.append(check(getscu_c_get(host, port, ae, uid), slices))
                results.orthanc_nodelay.append(check(wado_retrieve(gw.dicomweb(), uid), slices))
    finally:
        restart_orthanc(orthanc, nodelay=False)


def run_quiet_logging(results: Results, orthanc: OrthancServer, workdir: Path, uid: str,
                      slices: int, repeat: int) -> None:
    """What-if: the same gateway with the root logger at WARNING (no pynetdicom INFO lines)."""
    host, port, ae = "127.0.0.1", orthanc.dicom_port, orthanc.ae_title
    peer = PeerAddress("orthanc", ae, host, port)
    with GatewayProcess(workdir, [peer], source=results.app_source, quiet_logging=True) as gw:
        check(wado_retrieve(gw.dicomweb(), uid), slices)  # warm-up
        for _ in range(repeat):
            results.quiet.append(check(raw_c_get(host, port, ae, uid), slices))
            results.quiet.append(check(wado_retrieve(gw.dicomweb(), uid), slices))


def run_memory_cache(results: Results, orthanc: OrthancServer, workdir: Path, uid: str,
                     slices: int, repeat: int) -> None:
    """The default in-process cache: a fresh gateway per round, so the first request is a cold
    miss (retrieval plus filling the cache) and the second a warm hit."""
    host, port, ae = "127.0.0.1", orthanc.dicom_port, orthanc.ae_title
    peer = PeerAddress("orthanc", ae, host, port)
    for _ in range(repeat):
        results.cached.append(check(raw_c_get(host, port, ae, uid), slices))
        with GatewayProcess(workdir, [peer], source=results.app_source, cache="memory") as gw:
            cold = wado_retrieve(gw.dicomweb(), uid)
            cold.extra["cache"] = "cold"
            results.cached.append(check(cold, slices))
            warm = wado_retrieve(gw.dicomweb(), uid)
            warm.extra["cache"] = "warm"
            results.cached.append(check(warm, slices))


def run_dcmqrscp(results: Results, workdir: Path, slices: int, repeat: int) -> None:
    """The same three methods against DCMTK dcmqrscp (one study: far below its 500 limit)."""
    uid = study_uid_of(slices, SMALL_SEED)
    with DcmqrscpServer(workdir / "dcmqrscp", ae_titles=("DCMQRSCP",)) as qr:
        t0 = time.perf_counter()
        qr.load(generate_ct_series(slices, seed=SMALL_SEED))
        results.timings["load_dcmqrscp_s"] = time.perf_counter() - t0
        peer = PeerAddress("dcmqrscp", qr.ae_title, qr.host, qr.port)
        with GatewayProcess(workdir, [peer], source=results.app_source) as gw:
            check(getscu_c_get(qr.host, qr.port, qr.ae_title, uid, verbose=True), slices)
            check(wado_retrieve(gw.dicomweb(), uid), slices)  # warm-up
            for _ in range(repeat):
                results.dcmqrscp.append(check(raw_c_get(qr.host, qr.port, qr.ae_title, uid),
                                              slices))
                results.dcmqrscp.append(check(getscu_c_get(qr.host, qr.port, qr.ae_title, uid),
                                              slices))
                results.dcmqrscp.append(check(wado_retrieve(gw.dicomweb(), uid), slices))


def run_big(results: Results, orthanc: OrthancServer, workdir: Path, small_uid: str,
            big_slices: int) -> None:
    """Load a >1 GB study, then stream it through a fresh gateway while sampling its RSS."""
    t0 = time.perf_counter()
    load_orthanc(orthanc, generate_ct_series(big_slices, seed=BIG_SEED))
    results.timings["load_big_s"] = time.perf_counter() - t0
    uid = study_uid_of(big_slices, BIG_SEED)
    warm_path = first_instance_path(results.args["slices"], SMALL_SEED)
    host, port, ae = "127.0.0.1", orthanc.dicom_port, orthanc.ae_title
    check(raw_c_get(host, port, ae, uid), big_slices)  # warms the page cache; not reported
    raw = check(raw_c_get(host, port, ae, uid), big_slices)
    results.big.append(raw)
    results.big_study_bytes = raw.nbytes
    with GatewayProcess(workdir, [PeerAddress("orthanc", ae, host, port)],
                        source=results.app_source) as gw:
        # Warm up on one instance (imports, first-request paths), then let it settle.
        check(wado_retrieve(gw.dicomweb(), small_uid, resource=warm_path), 1)
        time.sleep(1.0)
        with RssSampler(gw.pid) as sampler:
            m = wado_retrieve(gw.dicomweb(), uid, sampler=sampler)
        m.extra["cache"] = "none"
        results.big.append(check(m, big_slices))
    # The same with the default in-process cache (bounded by DWG_CACHE_MAX_BYTES).
    with GatewayProcess(workdir, [PeerAddress("orthanc", ae, host, port)],
                        source=results.app_source, cache="memory") as gw:
        check(wado_retrieve(gw.dicomweb(), small_uid, resource=warm_path), 1)
        time.sleep(1.0)
        with RssSampler(gw.pid) as sampler:
            m = wado_retrieve(gw.dicomweb(), uid, sampler=sampler)
        m.extra["cache"] = "memory"
        results.big.append(check(m, big_slices))


def run(args: argparse.Namespace) -> Results:
    results = Results(args=vars(args).copy())
    results.args.pop("func", None)
    with ExitStack() as stack:
        workdir = work_directory(stack, "dwg-bench-", keep=args.keep)
        results.app_source, results.app_digest = snapshot_app(workdir)
        log(f"measuring a copy of app/ (sources digest {results.app_digest})")
        orthanc = started_orthanc(stack, workdir)
        results.machine = machine_info(orthanc)
        log(f"Orthanc {results.machine['orthanc']} on DICOM port {orthanc.dicom_port}")
        small_uid = study_uid_of(args.slices, SMALL_SEED)
        t0 = time.perf_counter()
        load_orthanc(orthanc, generate_ct_series(args.slices, seed=SMALL_SEED))
        results.timings["load_small_s"] = time.perf_counter() - t0
        log(f"loaded {args.slices} slices in {results.timings['load_small_s']:.1f} s")

        host, port, ae = "127.0.0.1", orthanc.dicom_port, orthanc.ae_title
        warm = check(raw_c_get(host, port, ae, small_uid), args.slices)
        results.study_bytes = warm.nbytes
        check(getscu_c_get(host, port, ae, small_uid, verbose=True), args.slices)
        steps: list[tuple[str, Callable[[], None]]] = []
        gw = GatewayProcess(workdir, [PeerAddress("orthanc", ae, host, port)],
                            source=results.app_source)

        def main_step() -> None:
            with gw:
                first = wado_retrieve(gw.dicomweb(), small_uid)
                results.gateway_first_request = check(first, args.slices)
                run_main(results, orthanc, gw, small_uid, args.slices, args.repeat)

        steps.append(("main comparison", main_step))
        steps.append(("logging what-if", lambda: run_quiet_logging(
            results, orthanc, workdir, small_uid, args.slices, args.repeat)))
        steps.append(("memory cache", lambda: run_memory_cache(
            results, orthanc, workdir, small_uid, args.slices, args.repeat)))
        steps.append(("TCP_NODELAY", lambda: run_nodelay(results, orthanc, small_uid,
                                                         args.slices, args.repeat)))
        if not args.no_pdu_sweep:
            steps.append(("PDU sweep", lambda: run_pdu_sweep(results, orthanc, workdir,
                                                             small_uid, args.slices,
                                                             args.repeat)))
        steps.append(("Orthanc with TCP_NODELAY", lambda: run_orthanc_nodelay(
            results, orthanc, workdir, small_uid, args.slices, args.repeat)))
        if args.dcmqrscp:
            steps.append(("dcmqrscp", lambda: run_dcmqrscp(results, workdir, args.slices,
                                                           args.repeat)))
        if args.big_slices > 0:
            steps.append(("big study RSS", lambda: run_big(results, orthanc, workdir,
                                                           small_uid, args.big_slices)))
        run_steps(steps, results.timings, results.errors)
    return results


# -- the report ----------------------------------------------------------------------------------


def _mbps(nbytes: int, seconds: float | None) -> str:
    return "-" if not seconds else f"{nbytes / seconds / 1e6:.0f} MB/s"


def _delta(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:+.0f} ms"


def summarise(results: Results) -> dict[str, Any]:
    """Medians and target verdicts."""
    def med(ms: list[Measurement], method: str, attr: str = "seconds",
            **match: Any) -> float | None:
        return median(getattr(m, attr) for m in ms if m.method == method
                      and all(m.extra.get(k) == v for k, v in match.items()))

    raw_t = med(results.main, "raw pynetdicom C-GET")
    raw_first = med(results.main, "raw pynetdicom C-GET", "first_s")
    scu_t = med(results.main, "DCMTK getscu")
    gw_t = med(results.main, "gateway WADO-RS")
    gw_first = med(results.main, "gateway WADO-RS", "first_s")
    out: dict[str, Any] = {"raw_t": raw_t, "raw_first": raw_first, "scu_t": scu_t,
                           "gw_t": gw_t, "gw_first": gw_first}
    out["ratio_raw"] = raw_t / gw_t if raw_t and gw_t else None
    out["ratio_scu"] = scu_t / gw_t if scu_t and gw_t else None
    out["first_delta"] = gw_first - raw_first if gw_first and raw_first else None
    big_gw = [m for m in results.big if m.method == "gateway WADO-RS"]
    out["rss"] = big_gw[0].extra if big_gw else None
    out["growth_mb"] = (big_gw[0].extra["peak_rss_mb"] - big_gw[0].extra["idle_rss_mb"]
                        if big_gw else None)
    out["t_throughput_raw"] = None if out["ratio_raw"] is None else out["ratio_raw"] >= 0.9
    out["t_first"] = (None if out["first_delta"] is None
                      else out["first_delta"] <= TTFP_ALLOWANCE_S)
    out["t_scu"] = None if out["ratio_scu"] is None else out["ratio_scu"] >= 0.8
    out["t_rss"] = None if out["growth_mb"] is None else out["growth_mb"] < 150
    return out


def render(results: Results) -> str:
    """The results section of docs/benchmarks.md."""
    s = summarise(results)
    m = results.machine
    a = results.args
    n = a["slices"]
    size = results.study_bytes
    lines = [
        RESULTS_BEGIN,
        "<!-- Generated by `python -m benchmarks.wado_retrieve`; edits here are overwritten. -->",
        "",
        f"### Run of {m.get('date', '?')}",
        "",
        f"- Machine: {m.get('nproc')} CPUs ({m.get('cpu')}), {m.get('ram_gb')} GB RAM, "
        f"{m.get('os')}",
        f"- Software: Python {m.get('python')}, pynetdicom {m.get('pynetdicom')}, pydicom "
        f"{m.get('pydicom')}, FastAPI {m.get('fastapi')}, Starlette {m.get('starlette')}, uvicorn "
        f"{m.get('uvicorn')}, httpx {m.get('httpx')} (client); Orthanc {m.get('orthanc')} "
        f"(DICOMweb plugin {m.get('orthanc_dicomweb')}), DCMTK {m.get('dcmtk')}",
        f"- Gateway: `python -m app.cli serve` as its own process (uvicorn, one worker), "
        f"cache off (`DWG_CACHE_BACKEND=none`), log level WARNING; sources of `app/` copied at "
        f"the start of the run (digest {results.app_digest}).",
        f"- Command: `python -m benchmarks.wado_retrieve --slices {n} --big-slices "
        f"{a['big_slices']} --repeat {a['repeat']}"
        f"{' --dcmqrscp' if a.get('dcmqrscp') else ''}`",
        f"- Study: {n} CT slices 512x512x16-bit, Explicit VR Little Endian, "
        f"{size / 1e6:.1f} MB of datasets; all on one Orthanc on loopback. Figures are medians "
        f"of {a['repeat']} rounds; in each round the three methods run one after the other "
        "(order rotated), so every ratio compares figures from the same moment.",
        "",
        "#### Targets",
        "",
        "| Target | Gateway | Baseline (same run) | Ratio / difference | Verdict |",
        "|---|---|---|---|---|",
        f"| Cold WADO-RS throughput >= 0.9x raw pynetdicom C-GET | {ms(s['gw_t'])} "
        f"({_mbps(size, s['gw_t'])}) | {ms(s['raw_t'])} ({_mbps(size, s['raw_t'])}) | "
        f"{times(s['ratio_raw'])} | "
        f"{verdict(s['t_throughput_raw'])} |",
        f"| Time to first part <= raw first instance + 30 ms | {ms(s['gw_first'])} | "
        f"{ms(s['raw_first'])} | "
        f"{_delta(s['first_delta'])} | "
        f"{verdict(s['t_first'])} |",
        f"| Throughput >= 0.8x DCMTK getscu (TCP_NODELAY=1, -pdu 131072) | {ms(s['gw_t'])} | "
        f"{ms(s['scu_t'])} ({_mbps(size, s['scu_t'])}) | "
        f"{times(s['ratio_scu'])} | "
        f"{verdict(s['t_scu'])} |",
    ]
    if s["rss"]:
        r = s["rss"]
        lines.append(
            f"| Peak RSS growth < 150 MB streaming {a['big_slices']} slices "
            f"({results.big_study_bytes / 1e9:.2f} GB), cache off | peak {r['peak_rss_mb']:.0f} MB "
            f"(VmHWM {r['vmhwm_mb']:.0f} MB) | idle {r['idle_rss_mb']:.0f} MB | "
            f"+{s['growth_mb']:.0f} MB | {verdict(s['t_rss'])} |")
    else:
        lines.append("| Peak RSS growth < 150 MB on a >1 GB study | - | - | - | not measured |")
    lines += ["", "#### Every run of the main comparison", "",
              "| Round | Method | Time | Throughput | First instance / part |",
              "|---|---|---|---|---|"]
    for i, meas in enumerate(results.main):
        lines.append(f"| {i // 3 + 1} | {meas.method} | {ms(meas.seconds)} | "
                     f"{_mbps(size, meas.seconds)} | {ms(meas.first_s)} |")
    if results.gateway_first_request:
        f = results.gateway_first_request
        lines += ["", f"The gateway's very first request after start-up (not in the medians): "
                      f"{ms(f.seconds)}, first part after {ms(f.first_s)}."]
    if results.big:
        lines += ["", "#### The large study", "",
                  "| Method | Cache | Time | Throughput | First instance / part | RSS |",
                  "|---|---|---|---|---|---|"]
        for meas in results.big:
            rss = ""
            if "peak_rss_mb" in meas.extra:
                rss = (f"idle {meas.extra['idle_rss_mb']:.0f} MB, peak "
                       f"{meas.extra['peak_rss_mb']:.0f} MB "
                       f"({meas.extra['rss_samples']} samples), VmHWM "
                       f"{meas.extra['vmhwm_mb']:.0f} MB")
            lines.append(f"| {meas.method} | {meas.extra.get('cache', '-')} | "
                         f"{ms(meas.seconds)} | {_mbps(results.big_study_bytes, meas.seconds)} "
                         f"| {ms(meas.first_s)} | {rss} |")
    if results.quiet:
        raw_q = median(x.seconds for x in results.quiet if x.method.startswith("raw"))
        raw_qf = median(x.first_s for x in results.quiet if x.method.startswith("raw"))
        gw_q = median(x.seconds for x in results.quiet if x.method.startswith("gateway"))
        gw_qf = median(x.first_s for x in results.quiet if x.method.startswith("gateway"))
        lines += ["", "#### What-if: the same gateway with the root logger at WARNING", "",
                  "`app.cli` configures the root logger at INFO whatever `DWG_LOG_LEVEL` says, so "
                  "pynetdicom formats and writes several lines per DIMSE message; here the "
                  "benchmark's launcher sets WARNING first (no app change).", "",
                  "| Raw C-GET | raw first | Gateway | gateway first | gateway / raw throughput "
                  "| first part - raw first |", "|---|---|---|---|---|---|",
                  f"| {ms(raw_q)} | {ms(raw_qf)} | {ms(gw_q)} | {ms(gw_qf)} | "
                  f"{times(raw_q / gw_q if raw_q and gw_q else None)} | "
                  f"{_delta(gw_qf - raw_qf if gw_qf and raw_qf else None)} |"]
    if results.cached:
        raw_c = median(x.seconds for x in results.cached if x.method.startswith("raw"))
        raw_cf = median(x.first_s for x in results.cached if x.method.startswith("raw"))
        lines += ["", "#### With the default in-process cache (`DWG_CACHE_BACKEND=memory`)", "",
                  "A fresh gateway per round: the first request misses (retrieval and cache "
                  "fill), the second hits.", "",
                  "| Request | Time (median) | Throughput | First part (median) | "
                  "vs raw C-GET (same rounds) |", "|---|---|---|---|---|",
                  f"| raw pynetdicom C-GET | {ms(raw_c)} | {_mbps(size, raw_c)} | "
                  f"{ms(raw_cf)} | 1.00x |"]
        for kind in ("cold", "warm"):
            t_k = median(x.seconds for x in results.cached if x.extra.get("cache") == kind)
            f_k = median(x.first_s for x in results.cached if x.extra.get("cache") == kind)
            lines.append(f"| gateway, {kind} cache | {ms(t_k)} | {_mbps(size, t_k)} | "
                         f"{ms(f_k)} | {times(raw_c / t_k if raw_c and t_k else None)} |")
    if results.pdu_sweep:
        lines += ["", "#### Maximum PDU size (gateway forced to each size; raw C-GET alongside)",
                  "", "| max PDU | PDUs received (raw, diagnostic run) | raw time | raw first | "
                  "gateway time | gateway first | gateway / raw throughput |",
                  "|---|---|---|---|---|---|---|"]
        for pdu in PDU_SWEEP:
            raw_t = median(x.seconds for x in results.pdu_sweep
                           if x.method.startswith("raw") and x.extra.get("max_pdu") == pdu)
            raw_f = median(x.first_s for x in results.pdu_sweep
                           if x.method.startswith("raw") and x.extra.get("max_pdu") == pdu)
            gw_t = median(x.seconds for x in results.pdu_sweep
                          if x.method.startswith("gateway") and x.extra.get("max_pdu") == pdu)
            gw_f = median(x.first_s for x in results.pdu_sweep
                          if x.method.startswith("gateway") and x.extra.get("max_pdu") == pdu)
            diag = next((x for x in results.pdu_diag if x.extra.get("max_pdu") == pdu), None)
            pdus = (f"{diag.extra.get('pdu_count')} (largest {diag.extra.get('pdu_max')} B)"
                    if diag and "pdu_count" in diag.extra else "-")
            label = "unlimited (0)" if pdu == 0 else f"{pdu // 1024} KiB"
            ratio = f"{raw_t / gw_t:.2f}x" if raw_t and gw_t else "-"
            lines.append(f"| {label} | {pdus} | {ms(raw_t)} | {ms(raw_f)} | {ms(gw_t)} | "
                         f"{ms(gw_f)} | {ratio} |")
    if results.nodelay:
        lines += ["", "#### TCP_NODELAY on the raw pynetdicom C-GET's socket", "",
                  "| TCP_NODELAY | time (median) | first instance (median) | first instance, "
                  "each run |", "|---|---|---|---|"]
        for flag in (True, False):
            runs = [x for x in results.nodelay if x.extra.get("nodelay") is flag]
            lines.append(f"| {'on' if flag else 'off'} | {ms(median(x.seconds for x in runs))} "
                         f"| {ms(median(x.first_s for x in runs))} | "
                         f"{', '.join(ms(x.first_s) for x in runs)} |")
    if results.orthanc_nodelay:
        lines += ["", "#### The same comparison with Orthanc itself started with TCP_NODELAY=1", "",
                  "Debian's Orthanc uses Debian's DCMTK network layer, which leaves Nagle's "
                  "algorithm on unless `TCP_NODELAY=1` is in its environment.", "",
                  "| Method | Time (median) | Throughput | First (median) | "
                  "gateway's throughput relative to it |", "|---|---|---|---|---|"]
        gw_n = median(x.seconds for x in results.orthanc_nodelay
                      if x.method.startswith("gateway"))
        for method in ("raw pynetdicom C-GET", "DCMTK getscu", "gateway WADO-RS"):
            t_n = median(x.seconds for x in results.orthanc_nodelay if x.method == method)
            f_n = median(x.first_s for x in results.orthanc_nodelay if x.method == method)
            lines.append(f"| {method} | {ms(t_n)} | {_mbps(size, t_n)} | {ms(f_n)} | "
                         f"{times(t_n / gw_n if t_n and gw_n else None)} |")
    if results.dcmqrscp:
        lines += ["", "#### The same study on DCMTK dcmqrscp (MaxPDUSize 131072)", "",
                  "| Method | Time (median) | Throughput | First (median) | "
                  "gateway's throughput relative to it |",
                  "|---|---|---|---|---|"]
        gw_q = median(x.seconds for x in results.dcmqrscp if x.method.startswith("gateway"))
        for method in ("raw pynetdicom C-GET", "DCMTK getscu", "gateway WADO-RS"):
            t_q = median(x.seconds for x in results.dcmqrscp if x.method == method)
            f_q = median(x.first_s for x in results.dcmqrscp if x.method == method)
            rel = f"{t_q / gw_q:.2f}x" if t_q and gw_q else "-"
            lines.append(f"| {method} | {ms(t_q)} | {_mbps(size, t_q)} | {ms(f_q)} | {rel} |")
    lines += run_footer(results.errors, results.timings, m.get("nproc"),
                        "; above about 2 other work was competing, and single figures are "
                        "noisy).")
    lines.append(RESULTS_END)
    return "\n".join(lines) + "\n"


DOC_HEADER = """# Benchmarks

How to run them: see `benchmarks/README.md`.

## WADO-RS retrieval

"""


def write_doc(section: str, path: Path = DOC_PATH) -> None:
    """Replace the generated results section of docs/benchmarks.md (or create the file)."""
    replace_section(path, RESULTS_BEGIN, RESULTS_END, section, new_file=DOC_HEADER)

def to_json(results: Results) -> str:
    return json.dumps(asdict(results) | {"summary": summarise(results)}, indent=2, default=str)


# -- entry point ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.wado_retrieve",
                                     description=__doc__)
    sub = parser.add_subparsers(dest="command")
    gateway = sub.add_parser("gateway", help="(internal) run the gateway with a forced max PDU")
    gateway.add_argument("--port", type=int, required=True)
    gateway.add_argument("--max-pdu", type=int)
    gateway.add_argument("--quiet-logging", action="store_true")
    parser.add_argument("--slices", type=int, default=300, help="slices of the main study")
    parser.add_argument("--big-slices", type=int, default=2100,
                        help="slices of the >1 GB study for the RSS test (0: skip)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per comparison")
    parser.add_argument("--dcmqrscp", action="store_true",
                        help="also compare the three methods on DCMTK dcmqrscp")
    parser.add_argument("--no-pdu-sweep", action="store_true", help="skip the PDU size sweep")
    add_output_arguments(parser, DOC_PATH)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "gateway":
        return serve_gateway(args.port, args.max_pdu, args.quiet_logging)
    if args.slices < 1 or args.repeat < 1:
        raise SystemExit("--slices and --repeat must be at least 1")
    t0 = time.perf_counter()
    results = run(args)
    results.timings["total_s"] = time.perf_counter() - t0
    write_doc(render(results), args.output)
    log(f"results written to {args.output}")
    if args.json:
        args.json.write_text(to_json(results))
    s = summarise(results)
    log(json.dumps({k: v for k, v in s.items() if k != "rss"}, default=str))
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())

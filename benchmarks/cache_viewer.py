"""Cache benchmark: warm series retrieval through the gateway against Orthanc's own DICOMweb, and
a simulated viewer (series metadata, then every frame, 6 requests in parallel) cold and warm.

Run from the repository root: ``.venv/bin/python -m benchmarks.cache_viewer [--slices 300]
[--repeat 3] [--profile]``; the figures replace the cache-viewer section of docs/benchmarks.md.
Both cache backends are measured: the in-process memory cache and a throwaway Redis. Every
server runs on 127.0.0.1 on a free port and is stopped at the end, with its work directory.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.demo.samples import generate_ct_series
from benchmarks.common import (
    add_output_arguments,
    log,
    ms,
    recorded_args,
    replace_section,
    run_footer,
    run_steps,
    started_orthanc,
    times,
    verdict,
    work_directory,
)
from benchmarks.wado_retrieve import (
    DOC_PATH,
    HTTP_TIMEOUT,
    GatewayProcess,
    PeerAddress,
    load_orthanc,
    machine_info,
    median,
    read_status_kb,
    snapshot_app,
)
from tests.peers.binaries import find_binary
from tests.peers.orthanc import OrthancServer
from tests.peers.redis_server import RedisServer

RESULTS_BEGIN = "<!-- cache-viewer-results:begin -->"
RESULTS_END = "<!-- cache-viewer-results:end -->"
SECTION_HEADING = "## Cache: warm retrieval and a simulated viewer"
MAIN_SEED, WARMUP_SEED = 4, 5
WARMUP_SLICES = 2
ACCEPT_SERIES = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
ACCEPT_METADATA = "application/dicom+json"
# What a frame request to Orthanc's plugin may need when the viewer's own header is refused.
ORTHANC_FRAME_FALLBACKS = (
    ACCEPT_FRAMES,
    'multipart/related; type="application/octet-stream"',
    'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1',
    "*/*",
)
VIEWER_PARALLEL = 6
FRAME_BYTES = 512 * 512 * 2
SOP_INSTANCE_UID, INSTANCE_NUMBER, NUMBER_OF_FRAMES = "00080018", "00200013", "00280008"


# -- HTTP measurements ---------------------------------------------------------------------------


@dataclass
class Retrieval:
    """One multipart series retrieval: wall time, first byte, parts and bytes received."""

    target: str  # "gateway" or "orthanc"
    backend: str  # the gateway's cache backend of this section ("memory", "redis")
    phase: str  # "cold", "warm" (gateway) or "local" (Orthanc from its storage)
    seconds: float
    first_byte_s: float
    parts: int
    nbytes: int


@dataclass
class ViewerRun:
    """One simulated viewer session: metadata, then every frame with N requests in flight."""

    target: str
    backend: str
    phase: str
    seconds: float
    metadata_s: float
    frames: int
    frame_bytes: int
    retrievals: float | None = None  # the gateway's dimse_retrievals_total during the session
    accept: str = ACCEPT_FRAMES
    latencies_ms: dict[str, float] = field(default_factory=dict)


def multipart_get(client: httpx.Client, url: str, accept: str) -> tuple[float, float, int, int]:
    """GET a multipart/related resource, streaming and discarding it; returns (seconds, first
    byte seconds, parts, bytes). Parts are counted by boundary delimiters (the last is closing)."""
    total = delimiters = 0
    first: float | None = None
    t0 = time.perf_counter()
    with client.stream("GET", url, headers={"Accept": accept}) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:300]}")
        match = re.search(r'boundary="?([^";,\s]+)"?', response.headers.get("content-type", ""))
        if match is None:
            raise RuntimeError(f"GET {url}: no multipart boundary in "
                               f"{response.headers.get('content-type')!r}")
        marker = b"--" + match.group(1).encode("ascii")
        tail = b""
        for chunk in response.iter_raw():
            if first is None:
                first = time.perf_counter() - t0
            total += len(chunk)
            seam = tail + chunk[: len(marker) - 1]
            delimiters += seam.count(marker) + chunk.count(marker)
            tail = chunk[-(len(marker) - 1):]
    seconds = time.perf_counter() - t0
    return seconds, first or seconds, max(delimiters - 1, 0), total


def series_retrieval(client: httpx.Client, base: str, study: str, series: str, *, target: str,
                     backend: str, phase: str, expected: int) -> Retrieval:
    """Retrieve a whole series as application/dicom parts; refuse an incomplete answer."""
    seconds, first, parts, nbytes = multipart_get(
        client, f"{base}/studies/{study}/series/{series}", ACCEPT_SERIES)
    if parts != expected:
        raise RuntimeError(f"{target} ({phase}): {parts} parts instead of {expected}")
    log(f"  series {target:<8} {backend:<6} {phase:<5} {seconds * 1000:7.0f} ms  "
        f"first byte {first * 1000:6.1f} ms  {nbytes / seconds / 1e6:6.0f} MB/s")
    return Retrieval(target, backend, phase, seconds, first, parts, nbytes)


def frame_refs(metadata: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(SOP Instance UID, frame number) of every frame, in Instance Number order."""

    def value(obj: dict[str, Any], tag: str, default: Any) -> Any:
        values = obj.get(tag, {}).get("Value") or [default]
        return values[0]

    ordered = sorted(metadata, key=lambda o: int(value(o, INSTANCE_NUMBER, 0)))
    return [(str(value(o, SOP_INSTANCE_UID, "")), n) for o in ordered
            for n in range(1, int(value(o, NUMBER_OF_FRAMES, 1)) + 1)]


async def _viewer(base: str, study: str, series: str, accept: str, parallel: int
                  ) -> tuple[float, float, int, int, list[float]]:
    limits = httpx.Limits(max_connections=parallel, max_keepalive_connections=parallel)
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, limits=limits) as client:
        t0 = time.perf_counter()
        response = await client.get(f"{base}/studies/{study}/series/{series}/metadata",
                                    headers={"Accept": ACCEPT_METADATA})
        if response.status_code != 200:
            raise RuntimeError(f"metadata: {response.status_code} {response.text[:300]}")
        refs = frame_refs(response.json())
        metadata_s = time.perf_counter() - t0
        queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        for ref in refs:
            queue.put_nowait(ref)
        received: list[int] = []
        latencies: list[float] = []

        async def worker() -> None:
            while True:
                try:
                    sop, number = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                url = f"{base}/studies/{study}/series/{series}/instances/{sop}/frames/{number}"
                started = time.perf_counter()
                r = await client.get(url, headers={"Accept": accept})
                latencies.append(time.perf_counter() - started)
                if r.status_code != 200:
                    raise RuntimeError(f"frame {sop}/{number}: {r.status_code} {r.text[:200]}")
                if len(r.content) < FRAME_BYTES:
                    raise RuntimeError(f"frame {sop}/{number}: only {len(r.content)} bytes")
                received.append(len(r.content))

        await asyncio.gather(*(worker() for _ in range(parallel)))
        seconds = time.perf_counter() - t0
    return seconds, metadata_s, len(received), sum(received), latencies


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank) of non-empty ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def simulated_viewer(base: str, study: str, series: str, *, target: str, backend: str,
                     phase: str, expected: int, accept: str = ACCEPT_FRAMES,
                     parallel: int = VIEWER_PARALLEL) -> ViewerRun:
    """Series metadata, then each frame in its own request, ``parallel`` at a time."""
    seconds, meta_s, frames, nbytes, lat = asyncio.run(
        _viewer(base, study, series, accept, parallel))
    if frames != expected:
        raise RuntimeError(f"viewer on {target}: {frames} frames instead of {expected}")
    run = ViewerRun(target, backend, phase, seconds, meta_s, frames, nbytes, accept=accept,
                    latencies_ms={"p50": percentile(lat, 50) * 1000,
                                  "p95": percentile(lat, 95) * 1000,
                                  "max": max(lat) * 1000})
    log(f"  viewer {target:<8} {backend:<6} {phase:<5} {seconds * 1000:7.0f} ms  metadata "
        f"{meta_s * 1000:6.0f} ms  frame p50 {run.latencies_ms['p50']:5.1f} ms")
    return run


def orthanc_frame_accept(orthanc: OrthancServer, study: str, series: str, sop: str
                         ) -> tuple[str, list[str]]:
    """The first Accept header in ORTHANC_FRAME_FALLBACKS its frames endpoint answers with
    200, and a note for each one it refused."""
    refused: list[str] = []
    url = f"{orthanc.dicomweb_url}/studies/{study}/series/{series}/instances/{sop}/frames/1"
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        for accept in ORTHANC_FRAME_FALLBACKS:
            r = client.get(url, headers={"Accept": accept})
            if r.status_code == 200 and len(r.content) >= FRAME_BYTES:
                return accept, refused
            refused.append(f"`{accept}` -> {r.status_code} {r.text.strip()[:120]!r}")
    raise RuntimeError("Orthanc refused every frames request: " + "; ".join(refused))


def cpu_busy(window: float = 0.5) -> float:
    """Fraction of all CPUs busy over ``window`` seconds (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(window)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_quiet(threshold: float = 0.3, max_wait: float = 20.0) -> float:
    """Wait (at most ``max_wait`` s) until other work leaves the CPUs mostly idle, so that a
    round is not measured in the middle of someone else's burst; returns the last busy
    fraction seen."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


# -- the gateway ---------------------------------------------------------------------------------


class CachedGateway(GatewayProcess):
    """GatewayProcess with a cache backend, and the Redis URL when that backend is Redis."""

    def __init__(self, workdir: Path, peers: Sequence[PeerAddress], *, source: Path,
                 cache: str, redis_url: str | None = None) -> None:
        self.redis_url = redis_url  # read by env(), which the base constructor calls
        super().__init__(workdir, peers, source=source, cache=cache)

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.redis_url:
            env["DWG_REDIS_URL"] = self.redis_url
        return env


def metric_sum(gateway_url: str, name: str, **labels: str) -> float:
    """The sum of a counter over its label sets in the gateway's /metrics (0 when absent)."""
    text = httpx.get(f"{gateway_url}/metrics", timeout=10.0).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


def retrievals(gateway_url: str) -> float:
    """C-GET/C-MOVE retrievals the gateway has started so far (all PACS)."""
    return metric_sum(gateway_url, "dimse_retrievals_total")


def flush_redis(url: str) -> None:
    """Empty the throwaway Redis so that the next gateway starts cold."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        client.flushall()
    finally:
        client.close()


# -- profiling -----------------------------------------------------------------------------------


def profile_leaves(raw_path: Path, top: int = 15) -> tuple[int, list[tuple[str, int]],
                                                              list[tuple[str, int]]]:
    """From py-spy's raw (collapsed) output: total samples, the top leaf frames (self time) and
    the top frames by inclusive samples, each ``function (file)`` without line numbers."""
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and
                  not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        leaves[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    own = Counter({k: v for k, v in inclusive.items() if "(app/" in k and "app/cli.py" not in k})
    return total, leaves.most_common(top), (own | Counter(dict(inclusive.most_common(top))))\
        .most_common(top * 3)


def run_profiled(pid: int, out: Path, duration: float, work: Callable[[], None]) -> Path:
    """Run ``work`` while py-spy samples ``pid`` for ``duration`` s; only the thread holding
    the GIL is sampled, so waiting threads (the executor's idle workers) do not count."""
    py_spy = Path(sys.executable).with_name("py-spy")
    binary = str(py_spy) if py_spy.exists() else find_binary("py-spy")
    if binary is None:
        raise RuntimeError("py-spy is not installed")
    spy = subprocess.Popen([binary, "record", "-p", str(pid), "-o", str(out), "--format", "raw",
                            "--gil", "-r", "250", "-d", str(int(duration))],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)
        work()
    finally:
        try:
            _, err = spy.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate(timeout=10)
    if not out.exists():
        raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-300:]}")
    return out


# -- the benchmark -------------------------------------------------------------------------------


@dataclass
class Results:
    """Everything one run measured."""

    args: dict[str, Any]
    app_digest: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    series_bytes: int = 0
    orthanc_frame_accept: str = ""
    orthanc_refused: list[str] = field(default_factory=list)
    series: list[Retrieval] = field(default_factory=list)
    viewers: list[ViewerRun] = field(default_factory=list)
    series_retrievals: dict[str, dict[str, float]] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    busy: list[float] = field(default_factory=list)  # CPU busy fraction as each round began
    errors: list[str] = field(default_factory=list)


@dataclass
class Setup:
    """The servers and data of one run."""

    workdir: Path
    source: Path
    orthanc: OrthancServer
    redis: RedisServer | None
    study: str
    series: str
    warmup_study: str
    warmup_series: str
    slices: int

    def gateway(self, backend: str) -> CachedGateway:
        peer = PeerAddress("orthanc", self.orthanc.ae_title, "127.0.0.1", self.orthanc.dicom_port)
        url = None
        if backend == "redis":
            assert self.redis is not None
            url = self.redis.url
            flush_redis(url)
        return CachedGateway(self.workdir, [peer], source=self.source, cache=backend,
                             redis_url=url)

    def warm_up(self, gw: GatewayProcess) -> None:
        """Exercise the gateway's code paths on another series (imports, first requests)."""
        simulated_viewer(gw.dicomweb(), self.warmup_study, self.warmup_series, target="gateway",
                         backend="-", phase="setup", expected=WARMUP_SLICES)


def run_series(results: Results, s: Setup, backend: str, repeat: int) -> None:
    """A cold series retrieval (cache fill), then warm gateway and Orthanc retrievals
    alternating (order rotated per round)."""
    with s.gateway(backend) as gw, httpx.Client(timeout=HTTP_TIMEOUT) as client:
        s.warm_up(gw)
        series_retrieval(client, s.orthanc.dicomweb_url, s.study, s.series, target="orthanc",
                         backend=backend, phase="setup", expected=s.slices)  # page cache
        before = retrievals(gw.url)
        cold = series_retrieval(client, gw.dicomweb(), s.study, s.series, target="gateway",
                                backend=backend, phase="cold", expected=s.slices)
        results.series.append(cold)
        after_cold = retrievals(gw.url)
        series_retrieval(client, gw.dicomweb(), s.study, s.series, target="gateway",
                         backend=backend, phase="setup", expected=s.slices)  # first warm read
        methods: list[Callable[[], Retrieval]] = [
            lambda: series_retrieval(client, gw.dicomweb(), s.study, s.series, target="gateway",
                                     backend=backend, phase="warm", expected=s.slices),
            lambda: series_retrieval(client, s.orthanc.dicomweb_url, s.study, s.series,
                                     target="orthanc", backend=backend, phase="local",
                                     expected=s.slices),
        ]
        for round_no in range(repeat):
            results.busy.append(wait_for_quiet())
            for method in (methods if round_no % 2 == 0 else methods[::-1]):
                results.series.append(method())
        results.series_retrievals[backend] = {"cold": after_cold - before,
                                              "warm": retrievals(gw.url) - after_cold}
        results.rss_mb[f"{backend} after series"] = read_status_kb(gw.pid)["VmHWM"] / 1024


def run_viewer(results: Results, s: Setup, backend: str, repeat: int) -> None:
    """Per round: a fresh gateway (cold cache) viewed twice (cold, then warm), and the same
    viewer pointed at Orthanc's DICOMweb, before or after it (alternating)."""
    sops = frame_refs_from_orthanc(s)

    def orthanc_view() -> None:
        results.viewers.append(simulated_viewer(
            s.orthanc.dicomweb_url, s.study, s.series, target="orthanc", backend=backend,
            phase="local", expected=len(sops), accept=results.orthanc_frame_accept))

    for round_no in range(repeat):
        results.busy.append(wait_for_quiet())
        if round_no % 2 == 0:
            orthanc_view()
        with s.gateway(backend) as gw:
            s.warm_up(gw)
            for phase in ("cold", "warm"):
                before = retrievals(gw.url)
                run = simulated_viewer(gw.dicomweb(), s.study, s.series, target="gateway",
                                       backend=backend, phase=phase, expected=len(sops))
                run.retrievals = retrievals(gw.url) - before
                log(f"    PACS retrievals during it: {run.retrievals:g}")
                results.viewers.append(run)
            results.rss_mb[f"{backend} after viewer"] = read_status_kb(gw.pid)["VmHWM"] / 1024
        if round_no % 2 == 1:
            orthanc_view()


def frame_refs_from_orthanc(s: Setup) -> list[tuple[str, int]]:
    """Every frame of the series, from Orthanc's series metadata."""
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        r = client.get(f"{s.orthanc.dicomweb_url}/studies/{s.study}/series/{s.series}/metadata",
                       headers={"Accept": ACCEPT_METADATA})
        r.raise_for_status()
        return frame_refs(r.json())


def run_profile(results: Results, s: Setup, backend: str) -> None:
    """py-spy on a warm gateway: ten warm series retrievals, then three warm viewer sessions."""
    with s.gateway(backend) as gw, httpx.Client(timeout=HTTP_TIMEOUT) as client:
        s.warm_up(gw)
        series_retrieval(client, gw.dicomweb(), s.study, s.series, target="gateway",
                         backend=backend, phase="setup", expected=s.slices)  # fills the cache

        def warm_series() -> None:
            for _ in range(10):
                series_retrieval(client, gw.dicomweb(), s.study, s.series, target="gateway",
                                 backend=backend, phase="prof", expected=s.slices)

        def warm_viewer() -> None:
            for _ in range(3):
                simulated_viewer(gw.dicomweb(), s.study, s.series, target="gateway",
                                 backend=backend, phase="prof", expected=s.slices)

        cases: dict[str, Callable[[], None]] = {"warm series": warm_series,
                                                "warm viewer": warm_viewer}
        for name, work in cases.items():
            t0 = time.perf_counter()
            work()  # a timing run to size py-spy's duration
            duration = (time.perf_counter() - t0) + 3
            out = s.workdir / f"profile-{backend}-{name.replace(' ', '-')}.txt"
            run_profiled(gw.pid, out, duration, work)
            total, leaves, inclusive = profile_leaves(out)
            results.profiles[f"{backend}, {name}"] = {"samples": total, "leaves": leaves,
                                                      "inclusive": inclusive}
            if results.args.get("keep_profiles"):
                shutil.copy(out, Path(results.args["keep_profiles"]) / out.name)
            log(f"  profile {backend} {name}: {total} samples; top leaves {leaves[:5]}")


def run(args: argparse.Namespace) -> Results:
    results = Results(args=recorded_args(args))
    backends = [b for b in args.backends.split(",") if b]
    with ExitStack() as stack:
        workdir = work_directory(stack, "dwg-cachebench-", keep=args.keep)
        source, results.app_digest = snapshot_app(workdir)
        orthanc = started_orthanc(stack, workdir)
        results.machine = machine_info(orthanc)
        redis_server = None
        if "redis" in backends:
            redis_server = RedisServer(workdir / "redis")
            redis_server.start()
            stack.callback(redis_server.stop)
            version = subprocess.run([find_binary("redis-server") or "redis-server",
                                      "--version"], capture_output=True, text=True, timeout=10)
            match = re.search(r"v=(\S+)", version.stdout)
            results.machine["redis"] = match.group(1) if match else "?"
        t0 = time.perf_counter()
        load_orthanc(orthanc, generate_ct_series(args.slices, seed=MAIN_SEED))
        load_orthanc(orthanc, generate_ct_series(WARMUP_SLICES, seed=WARMUP_SEED))
        results.timings["load_s"] = time.perf_counter() - t0
        main_ds = next(generate_ct_series(args.slices, seed=MAIN_SEED))
        warm_ds = next(generate_ct_series(WARMUP_SLICES, seed=WARMUP_SEED))
        setup = Setup(workdir, source, orthanc, redis_server, str(main_ds.StudyInstanceUID),
                      str(main_ds.SeriesInstanceUID), str(warm_ds.StudyInstanceUID),
                      str(warm_ds.SeriesInstanceUID), args.slices)
        log(f"loaded {args.slices} + {WARMUP_SLICES} slices in {results.timings['load_s']:.1f} s")
        results.orthanc_frame_accept, results.orthanc_refused = orthanc_frame_accept(
            orthanc, setup.study, setup.series, frame_refs_from_orthanc(setup)[0][0])
        log(f"Orthanc frames answer to {results.orthanc_frame_accept!r}; refused: "
            f"{results.orthanc_refused}")

        steps: list[tuple[str, Callable[[], None]]] = []
        for backend in backends:
            steps.append((f"series {backend}",
                          functools.partial(run_series, results, setup, backend, args.repeat)))
            steps.append((f"viewer {backend}",
                          functools.partial(run_viewer, results, setup, backend, args.repeat)))
        if args.profile:
            for backend in backends:
                steps.append((f"profile {backend}",
                              functools.partial(run_profile, results, setup, backend)))
        run_steps(steps, results.timings, results.errors)
        sizes = [r.nbytes for r in results.series if r.target == "gateway"]
        results.series_bytes = sizes[0] if sizes else 0
    return results


# -- the report ----------------------------------------------------------------------------------


def paired_ratio(baseline: list[float], measured: list[float]) -> float | None:
    """Median over rounds of baseline[i] / measured[i] (both lists hold one figure a round)."""
    pairs = [b / m for b, m in zip(baseline, measured, strict=False) if m]
    return median(pairs)


def summarise(results: Results) -> dict[str, dict[str, Any]]:
    """Per backend: medians, ratios (Orthanc time / gateway time: >= 1 means the gateway is at
    least as fast) and verdicts."""
    out: dict[str, dict[str, Any]] = {}
    for backend in dict.fromkeys(r.backend for r in results.series + results.viewers):
        def sm(target: str, phase: str, attr: str = "seconds", b: str = backend
               ) -> float | None:
            return median(getattr(r, attr) for r in results.series
                          if r.backend == b and r.target == target and r.phase == phase)

        def vm(target: str, phase: str, attr: str = "seconds", b: str = backend
               ) -> float | None:
            return median(getattr(v, attr) for v in results.viewers
                          if v.backend == b and v.target == target and v.phase == phase)

        s: dict[str, Any] = {
            "series_cold": sm("gateway", "cold"), "series_warm": sm("gateway", "warm"),
            "series_warm_first": sm("gateway", "warm", "first_byte_s"),
            "series_orthanc": sm("orthanc", "local"),
            "series_orthanc_first": sm("orthanc", "local", "first_byte_s"),
            "viewer_cold": vm("gateway", "cold"), "viewer_warm": vm("gateway", "warm"),
            "viewer_cold_meta": vm("gateway", "cold", "metadata_s"),
            "viewer_warm_meta": vm("gateway", "warm", "metadata_s"),
            "viewer_orthanc": vm("orthanc", "local"),
            "viewer_orthanc_meta": vm("orthanc", "local", "metadata_s"),
        }
        cold_counts = [v.retrievals for v in results.viewers if v.backend == backend
                       and v.target == "gateway" and v.phase == "cold"]
        warm_counts = [v.retrievals for v in results.viewers if v.backend == backend
                       and v.target == "gateway" and v.phase == "warm"]
        s["viewer_cold_retrievals"] = cold_counts
        s["viewer_warm_retrievals"] = warm_counts
        s["series_ratio"] = (s["series_orthanc"] / s["series_warm"]
                             if s["series_orthanc"] and s["series_warm"] else None)
        s["viewer_warm_ratio"] = (s["viewer_orthanc"] / s["viewer_warm"]
                                  if s["viewer_orthanc"] and s["viewer_warm"] else None)
        s["viewer_cold_ratio"] = (s["viewer_orthanc"] / s["viewer_cold"]
                                  if s["viewer_orthanc"] and s["viewer_cold"] else None)
        s["series_paired"] = paired_ratio(
            [r.seconds for r in results.series if r.backend == backend and r.phase == "local"],
            [r.seconds for r in results.series if r.backend == backend and r.phase == "warm"])
        s["viewer_warm_paired"] = paired_ratio(
            [v.seconds for v in results.viewers if v.backend == backend and v.phase == "local"],
            [v.seconds for v in results.viewers if v.backend == backend and v.phase == "warm"])
        s["t_series"] = None if s["series_ratio"] is None else s["series_ratio"] >= 1.0
        s["t_retrievals"] = (None if not cold_counts else
                             all(c == 1 for c in cold_counts) and all(w == 0 for w in warm_counts))
        out[backend] = s
    return out


def render(results: Results) -> str:
    """The generated cache-viewer section of docs/benchmarks.md."""
    summary = summarise(results)
    m, a = results.machine, results.args
    n = a["slices"]
    lines = [
        RESULTS_BEGIN,
        "<!-- Generated by `python -m benchmarks.cache_viewer`; edits here are overwritten. -->",
        "",
        f"### Run of {m.get('date', '?')}",
        "",
        f"- Machine: {m.get('nproc')} CPUs ({m.get('cpu')}), {m.get('ram_gb')} GB RAM, "
        f"{m.get('os')}",
        f"- Software: Python {m.get('python')}, pynetdicom {m.get('pynetdicom')}, pydicom "
        f"{m.get('pydicom')}, FastAPI {m.get('fastapi')}, uvicorn {m.get('uvicorn')}, httpx "
        f"{m.get('httpx')} (client); Orthanc {m.get('orthanc')} (DICOMweb plugin "
        f"{m.get('orthanc_dicomweb')}), Redis {m.get('redis', '-')}",
        f"- Gateway: `python -m app.cli serve` as its own process (uvicorn, one worker), "
        f"`DWG_CACHE_BACKEND` memory (default 512 MiB cap) or redis (a throwaway "
        f"`redis-server` on loopback, flushed before each fresh gateway), log level WARNING; "
        f"sources of `app/` copied at the start of the run (digest {results.app_digest}).",
        f"- Command: `python -m benchmarks.cache_viewer --slices {n} --repeat {a['repeat']}"
        f"{' --profile' if a.get('profile') else ''}`",
        f"- Series: {n} CT slices 512x512x16-bit, Explicit VR Little Endian "
        f"({results.series_bytes / 1e6:.1f} MB as multipart), on one Orthanc on loopback. "
        f"Series retrievals use `Accept: {ACCEPT_SERIES}`; the viewer asks for the series "
        f"metadata (`{ACCEPT_METADATA}`) and then each frame in its own request, "
        f"{VIEWER_PARALLEL} in flight on {VIEWER_PARALLEL} keep-alive connections (httpx "
        f"asyncio client), with `Accept: {ACCEPT_FRAMES}`.",
        f"- Orthanc's frames endpoint answered `{results.orthanc_frame_accept}`"
        + (" after refusing " + "; ".join(results.orthanc_refused) if results.orthanc_refused
           else " (the viewer's own header)") + ".",
        "",
        "#### Targets",
        "",
        "| Target | Cache | Gateway | Orthanc DICOMweb (same run) | Orthanc / gateway | "
        "Verdict |",
        "|---|---|---|---|---|---|",
    ]
    for backend, s in summary.items():
        lines.append(
            f"| Warm series retrieval at least as fast as Orthanc's DICOMweb | {backend} | "
            f"{ms(s['series_warm'])} | {ms(s['series_orthanc'])} | {times(s['series_ratio'])} "
            f"(median of per-round ratios {times(s['series_paired'])}) | "
            f"{verdict(s['t_series'])} |")
    for backend, s in summary.items():
        counts = ", ".join(f"{c:g}" for c in s["viewer_cold_retrievals"] if c is not None)
        warm = ", ".join(f"{c:g}" for c in s["viewer_warm_retrievals"] if c is not None)
        lines.append(
            f"| Viewer session: 1 PACS retrieval cold, 0 warm | {backend} | cold: {counts or '-'};"
            f" warm: {warm or '-'} | - | - | {verdict(s['t_retrievals'])} |")
    lines += ["", "#### Series retrieval (medians)", "",
              "| Cache | Gateway cold (fill) | Gateway warm | warm first byte | Orthanc | "
              "Orthanc first byte | Orthanc / gateway warm | PACS retrievals cold / warm |",
              "|---|---|---|---|---|---|---|---|"]
    for backend, s in summary.items():
        fills = results.series_retrievals.get(backend, {})
        warm = s["series_warm"]
        speed = f" ({results.series_bytes / warm / 1e6:.0f} MB/s)" if warm else ""
        dimse = f"{fills['cold']:g} / {fills['warm']:g}" if fills else "-"
        lines.append(f"| {backend} | {ms(s['series_cold'])} | {ms(warm)}{speed} | "
                     f"{ms(s['series_warm_first'])} | {ms(s['series_orthanc'])} | "
                     f"{ms(s['series_orthanc_first'])} | {times(s['series_ratio'])} | {dimse} |")
    lines += ["", "#### Simulated viewer (medians)", "",
              "| Cache | Target | Total | Metadata | Orthanc / it | Frame latency p50 / p95 "
              "(median over sessions) | PACS retrievals per session |",
              "|---|---|---|---|---|---|---|"]
    for backend, s in summary.items():
        for phase, target in (("cold", "gateway"), ("warm", "gateway"), ("local", "orthanc")):
            runs = [v for v in results.viewers if v.backend == backend and v.target == target
                    and v.phase == phase]
            if not runs:
                continue
            p50 = median(v.latencies_ms.get("p50") for v in runs)
            p95 = median(v.latencies_ms.get("p95") for v in runs)
            total = median(v.seconds for v in runs)
            ratio = s["viewer_orthanc"] / total if s["viewer_orthanc"] and total else None
            counts = ", ".join(f"{v.retrievals:g}" for v in runs if v.retrievals is not None)
            label = f"gateway, {phase}" if target == "gateway" else "Orthanc DICOMweb"
            lines.append(f"| {backend} | {label} | {ms(total)} | "
                         f"{ms(median(v.metadata_s for v in runs))} | {times(ratio)} | "
                         f"{p50:.0f} / {p95:.0f} ms | {counts or '-'} |")
    lines += ["", "Median of the per-round ratios Orthanc / warm gateway viewer: " + ", ".join(
        f"{b} {times(s['viewer_warm_paired'])}" for b, s in summary.items()) + ".",
        "", "#### Every measurement", "",
              "| Kind | Cache | Target | Phase | Time | First byte / metadata |",
              "|---|---|---|---|---|---|"]
    for r in results.series:
        lines.append(f"| series | {r.backend} | {r.target} | {r.phase} | {ms(r.seconds)} | "
                     f"{ms(r.first_byte_s)} |")
    for v in results.viewers:
        lines.append(f"| viewer | {v.backend} | {v.target} | {v.phase} | {ms(v.seconds)} | "
                     f"{ms(v.metadata_s)} |")
    rss = ", ".join(f"{k} {v:.0f} MB" for k, v in results.rss_mb.items())
    if rss:
        lines += ["", f"Gateway VmHWM (peak RSS): {rss}."]
    for name, prof in results.profiles.items():
        total = max(prof["samples"], 1)
        lines += ["", f"#### py-spy, {name} ({prof['samples']} samples at 250 Hz of the thread "
                      "holding the GIL)", "", "| Leaf function (self) | Samples | Share |",
                  "|---|---|---|"]
        for frame, count in prof["leaves"][:10]:
            lines.append(f"| `{frame}` | {count} | {count / total:.0%} |")
        lines += ["", "| The gateway's own functions (inclusive) | Samples | Share |",
                  "|---|---|---|"]
        shown = [(f, c) for f, c in prof["inclusive"]
                 if "(app/" in f and "app/cli.py" not in f][:12]
        for frame, count in shown:
            lines.append(f"| `{frame}` | {count} | {count / total:.0%} |")
    lines += run_footer(results.errors, results.timings, m.get("nproc"),
                        "). Each round waited (up to 20 s) for the CPUs to be at most 30 % busy; "
                        "busy fraction as the rounds began: "
                        + ", ".join(f"{b:.0%}" for b in results.busy) + ".")
    lines.append(RESULTS_END)
    return "\n".join(lines) + "\n"


def write_doc(section: str, path: Path = DOC_PATH) -> None:
    """Replace this benchmark's generated section of ``path``; on first use, append it under
    its own heading at the end, leaving every other section as it is."""
    replace_section(path, RESULTS_BEGIN, RESULTS_END, section, new_heading=(
        f"{SECTION_HEADING}\n\n`python -m benchmarks.cache_viewer`: see `benchmarks/README.md`."
        "\n\n### Generated results of the last run\n\n"))

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache_viewer",
                                     description=__doc__)
    parser.add_argument("--slices", type=int, default=300, help="slices of the series")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per comparison")
    parser.add_argument("--backends", default="memory,redis",
                        help="comma-separated cache backends to measure (memory, redis)")
    parser.add_argument("--profile", action="store_true",
                        help="also sample a warm gateway with py-spy (after the measurements)")
    parser.add_argument("--keep-profiles", type=Path,
                        help="copy py-spy's raw profiles into this directory")
    add_output_arguments(parser, DOC_PATH)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.slices < 1 or args.repeat < 1:
        raise SystemExit("--slices and --repeat must be at least 1")
    if not set(args.backends.split(",")) <= {"memory", "redis"}:
        raise SystemExit("--backends: memory and/or redis")
    t0 = time.perf_counter()
    results = run(args)
    results.timings["total_s"] = time.perf_counter() - t0
    write_doc(render(results), args.output)
    log(f"results written to {args.output}")
    summary = summarise(results)
    if args.json:
        args.json.write_text(json.dumps(asdict(results) | {"summary": summary}, indent=2,
                                        default=str))
    log(json.dumps(summary, default=str))
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())

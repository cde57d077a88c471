"""DIMSE engine benchmark (issue #8): both engines side by side, in one run, against an Orthanc
started with ``TCP_NODELAY=1``, Debian's default Orthanc (Nagle on) and Debian's default
dcmqrscp, with DCMTK ``getscu``, a raw pynetdicom C-GET and Orthanc's own DICOMweb plugin as the
baselines measured in the same rounds.

Measured: cold WADO-RS study retrieval (cache off, both engines; the gateway's CPU seconds per
GB), time to the first part, the memory and Redis caches on a cold retrieval, C-ECHO (in-process
loops on a pooled and on fresh associations, and ``/readyz``), OHIF's study-list query, RSS while
streaming a > 1 GB study, and, with ``--profile``, py-spy profiles of the gateway.

Run from the repository root: ``.venv/bin/python -m benchmarks.dimse_engine [--slices 300]
[--repeat 5] [--big-slices 2100] [--profile] [--ohif-json FILE ...]``; the figures replace the
``dimse-engine-results`` section of docs/benchmarks.md. Every server runs on 127.0.0.1 on a
free port and is stopped at the end, with its work directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from app.demo.samples import generate_ct_series, generate_many_studies
from benchmarks.cache_viewer import profile_leaves, run_profiled, wait_for_quiet
from benchmarks.common import (
    add_output_arguments,
    log,
    ms,
    recorded_args,
    replace_section,
    run_footer,
    run_steps,
    times,
    verdict,
    work_directory,
)
from benchmarks.wado_retrieve import (
    DOC_PATH,
    GATEWAY_AE,
    HTTP_TIMEOUT,
    REPO_ROOT,
    GatewayProcess,
    PeerAddress,
    RssSampler,
    first_instance_path,
    getscu_c_get,
    load_orthanc,
    machine_info,
    median,
    raw_c_get,
    snapshot_app,
    study_uid_of,
)
from tests.peers.binaries import find_binary
from tests.peers.dcmqrscp import DcmqrscpServer
from tests.peers.orthanc import OrthancServer
from tests.peers.ports import wait_for_port
from tests.peers.process import ManagedProcess
from tests.peers.redis_server import RedisServer

BENCH_ADMIN_TOKEN = "benchmark-admin-token-0123"  # the admin API needs one (>= 16 chars)

RESULTS_BEGIN = "<!-- dimse-engine-results:begin -->"
RESULTS_END = "<!-- dimse-engine-results:end -->"
ACCEPT_STUDY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
STUDY_LIST = "/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060"
LIST_STUDIES = 101
STUDY_SEED, BIG_SEED, LIST_SEED = 2, 3, 8
ENGINES = ("asyncio", "pynetdicom")
NODELAY, NAGLE, DCMQRSCP = "orthanc-nodelay", "orthanc-debian", "dcmqrscp"
PACS_LABELS = {
    NODELAY: "Orthanc, TCP_NODELAY=1",
    NAGLE: "Orthanc, Debian default (Nagle on)",
    DCMQRSCP: "dcmqrscp, Debian default (Nagle on)",
}
# Methods of the retrieval rounds.
GETSCU, RAW, ORTHANC_WADO = "DCMTK getscu", "raw pynetdicom C-GET", "Orthanc WADO-RS"
MEMORY_COLD = "gateway asyncio, memory cache (cold)"
REDIS_COLD = "gateway asyncio, Redis cache (cold)"
REDIS_UNIX_COLD = "gateway asyncio, Redis cache over a Unix socket (cold)"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# (engine, pooled association, event loop, pause between echoes in ms) of the in-process
# C-ECHO loops: back to back, as successive DIMSE exchanges of one request are, and with a pause
# (as successive /readyz requests are).
ECHO_LOOPS = (("asyncio", True, "uvloop", 0), ("asyncio", False, "uvloop", 0),
              ("pynetdicom", False, "uvloop", 0), ("asyncio", True, "asyncio", 0),
              ("asyncio", True, "uvloop", 5))
QUIET_WAIT_S = 15.0  # before each PACS of a round, wait at most this long for quiet CPUs


def gateway_method(engine: str) -> str:
    """The method name of a cache-off gateway retrieval with this engine."""
    return f"gateway {engine}"


# -- measurements --------------------------------------------------------------------------------


@dataclass
class Retrieval:
    """One study retrieval by one method from one PACS."""

    pacs: str
    method: str
    round: int
    seconds: float
    first_s: float | None
    items: int
    nbytes: int
    cpu_s: float | None = None


@dataclass
class Timed:
    """A series of timings of one request kind (ms), with what it returned."""

    kind: str
    target: str
    engine: str
    times_ms: list[float] = field(default_factory=list)
    note: str = ""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _first_part_end(head: bytes | bytearray, marker: bytes) -> int | None:
    """Where the first part of a multipart body ends, once ``head`` holds enough of it: by its
    Content-Length when it has one, else at the next delimiter."""
    start = head.find(marker)
    headers_end = head.find(b"\r\n\r\n", start) if start >= 0 else -1
    if headers_end < 0:
        return None
    body = headers_end + 4
    length = re.search(rb"Content-Length:\s*(\d+)", head[start:headers_end], re.IGNORECASE)
    if length is not None:
        end = body + int(length.group(1))
        return end if len(head) >= end else None
    following = head.find(b"\r\n" + marker, body)
    return following if following >= 0 else None


def multipart_retrieve(client: httpx.Client, url: str, accept: str = ACCEPT_STUDY
                       ) -> tuple[float, float | None, int, int]:
    """GET a multipart resource, streaming and discarding it: (seconds, seconds until the first
    part had fully arrived, parts, bytes)."""
    total = delimiters = 0
    first_s: float | None = None
    head = bytearray()
    t0 = time.perf_counter()
    with client.stream("GET", url, headers={"Accept": accept}) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:300]}")
        match = re.search(r'boundary="?([^";,\s]+)"?', response.headers.get("content-type", ""))
        if match is None:
            raise RuntimeError(f"GET {url}: no multipart boundary")
        marker = b"--" + match.group(1).encode("ascii")
        tail = b""
        for chunk in response.iter_raw():
            total += len(chunk)
            if first_s is None:
                head += chunk
                if _first_part_end(head, marker) is not None:
                    first_s = time.perf_counter() - t0
                    head = bytearray()
            seam = tail + chunk[: len(marker) - 1]
            delimiters += seam.count(marker) + chunk.count(marker)
            tail = chunk[-(len(marker) - 1):]
    seconds = time.perf_counter() - t0
    return seconds, first_s, max(delimiters - 1, 0), total


# -- servers -------------------------------------------------------------------------------------


class EngineGateway(GatewayProcess):
    """The gateway as its own process with a DIMSE engine (``DWG_DIMSE_ENGINE``), a cache
    backend, the cache admin API (to empty the cache between cold retrievals) and no QIDO cache,
    in a work directory of its own."""

    def __init__(self, workdir: Path, peers: Sequence[PeerAddress], *, source: Path,
                 engine: str, cache: str = "none", redis_url: str | None = None,
                 variant: str = "") -> None:
        self.engine = engine
        self.redis_url = redis_url
        self.label = f"{engine}-{cache}{variant}"
        own = workdir / f"gateway-{self.label}"
        own.mkdir(parents=True, exist_ok=True)
        super().__init__(own, peers, source=source, cache=cache)

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(DWG_DIMSE_ENGINE=self.engine, DWG_QIDO_CACHE_TTL="0",
                   DWG_CACHE_ADMIN_ENABLED="true", DWG_ADMIN_TOKEN=BENCH_ADMIN_TOKEN)
        if self.redis_url:
            env["DWG_REDIS_URL"] = self.redis_url
        return env

    def clear_cache(self) -> int:
        """Empty the gateway's cache through its admin API (the next retrieval is a miss);
        how many entries it removed."""
        response = httpx.post(f"{self.url}/admin/cache/clear", timeout=30.0,
                              headers={"Authorization": f"Bearer {BENCH_ADMIN_TOKEN}"})
        response.raise_for_status()
        return int(response.json().get("removed", 0))


class NagleDcmqrscp(DcmqrscpServer):
    """dcmqrscp as Debian ships it: without ``TCP_NODELAY=1`` in its environment, so Nagle's
    algorithm stays on (the test fixture turns it off)."""

    def start(self, timeout: float = 15.0) -> None:
        binary = find_binary("dcmqrscp")
        if binary is None:
            raise RuntimeError("dcmqrscp is not installed (run scripts/install-deps)")
        env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
        self._process = ManagedProcess(
            [binary, "--config", str(self.config_path), "--disable-host-lookup"],
            self.log_path, env=env, cwd=self.workdir, own_group=True)
        popen = self._process.start()
        try:
            wait_for_port(self.host, self.port, timeout, process=popen)
        except (TimeoutError, RuntimeError) as error:
            tail = self._process.log_tail()
            self.stop()
            raise RuntimeError(f"dcmqrscp did not start on port {self.port}:\n{tail}") from error


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for what is started inside the block (then restore them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class Lab:
    """The PACS, caches and gateways of one run, and the studies they hold."""

    workdir: Path
    source: Path
    orthanc_fast: OrthancServer
    orthanc_nagle: OrthancServer
    dcmqrscp: NagleDcmqrscp
    redis: RedisServer
    study_uid: str
    slices: int
    gateways: dict[str, EngineGateway] = field(default_factory=dict)

    def peer(self, name: str) -> PeerAddress:
        """The gateway's view of one PACS."""
        if name == DCMQRSCP:
            return PeerAddress(name, self.dcmqrscp.ae_title, "127.0.0.1", self.dcmqrscp.port)
        orthanc = self.orthanc_fast if name == NODELAY else self.orthanc_nagle
        return PeerAddress(name, orthanc.ae_title, "127.0.0.1", orthanc.dicom_port)

    def dimse(self, name: str) -> tuple[str, int, str]:
        """(host, port, AE title) of one PACS for the DIMSE baselines."""
        peer = self.peer(name)
        return peer.host, peer.port, peer.ae_title


def start_lab(stack: ExitStack, workdir: Path, source: Path, slices: int) -> Lab:
    """Start the three PACS and Redis and load them: the CT study everywhere, ``LIST_STUDIES``
    small studies for the study list in both Orthancs and in dcmqrscp."""
    with environment(TCP_NODELAY="1"):
        fast = OrthancServer(workdir / "orthanc-nodelay", ae_title="ORTHANC_ND")
        fast.start()
    stack.callback(fast.stop)
    saved = os.environ.pop("TCP_NODELAY", None)
    try:
        nagle = OrthancServer(workdir / "orthanc-debian", ae_title="ORTHANC")
        nagle.start()
    finally:
        if saved is not None:
            os.environ["TCP_NODELAY"] = saved
    stack.callback(nagle.stop)
    qr = NagleDcmqrscp(workdir / "dcmqrscp", ae_titles=("DCMQRSCP",))
    redis = RedisServer(workdir / "redis", unix_socket=True)
    redis.start()
    stack.callback(redis.stop)
    for orthanc in (fast, nagle):
        load_orthanc(orthanc, generate_ct_series(slices, seed=STUDY_SEED))
        load_orthanc(orthanc, generate_many_studies(LIST_STUDIES, seed=LIST_SEED))
    qr.load(generate_ct_series(slices, seed=STUDY_SEED))
    qr.load(generate_many_studies(LIST_STUDIES, seed=LIST_SEED))
    qr.start()
    stack.callback(qr.stop)
    return Lab(workdir, source, fast, nagle, qr, redis, study_uid_of(slices, STUDY_SEED), slices)


def start_gateways(stack: ExitStack, lab: Lab) -> None:
    """Cache-off gateways of both engines in front of the three PACS; asyncio gateways with
    the memory cache and with Redis in front of the TCP_NODELAY Orthanc."""
    every = [lab.peer(name) for name in (NODELAY, NAGLE, DCMQRSCP)]
    specs: list[tuple[str, list[PeerAddress], str, str | None, str]] = [
        ("asyncio", every, "none", None, ""), ("pynetdicom", every, "none", None, ""),
        ("asyncio", [lab.peer(NODELAY)], "memory", None, ""),
        ("asyncio", [lab.peer(NODELAY)], "redis", lab.redis.url, ""),
        ("asyncio", [lab.peer(NODELAY)], "redis", lab.redis.socket_url, "-unix"),
    ]
    for engine, peers, cache, redis_url, variant in specs:
        gw = EngineGateway(lab.workdir, peers, source=lab.source, engine=engine, cache=cache,
                           redis_url=redis_url, variant=variant)
        stack.enter_context(gw)
        lab.gateways[gw.label] = gw


# -- the retrieval rounds ------------------------------------------------------------------------


Method = Callable[[], Retrieval]


def gateway_retrieval(client: httpx.Client, gw: EngineGateway, pacs: str, uid: str,
                      method: str, round_no: int) -> Retrieval:
    """A study retrieval through the gateway, with the CPU time its process spent on it."""
    cpu0 = cpu_seconds(gw.pid)
    seconds, first, parts, nbytes = multipart_retrieve(
        client, f"{gw.dicomweb(pacs)}/studies/{uid}")
    return Retrieval(pacs, method, round_no, seconds, first, parts, nbytes,
                     cpu_seconds(gw.pid) - cpu0)


def orthanc_retrieval(client: httpx.Client, orthanc: OrthancServer, uid: str,
                      round_no: int) -> Retrieval:
    """Orthanc's own WADO-RS of the study (its DICOMweb plugin), same Accept."""
    seconds, first, parts, nbytes = multipart_retrieve(
        client, f"{orthanc.dicomweb_url}/studies/{uid}")
    return Retrieval(NODELAY, ORTHANC_WADO, round_no, seconds, first, parts, nbytes)


def dimse_baseline(lab: Lab, pacs: str, method: str, round_no: int) -> Retrieval:
    """getscu or the raw pynetdicom C-GET of the study from one PACS."""
    host, port, ae = lab.dimse(pacs)
    if method == GETSCU:
        m = getscu_c_get(host, port, ae, lab.study_uid)
    else:
        m = raw_c_get(host, port, ae, lab.study_uid)
    return Retrieval(pacs, method, round_no, m.seconds, m.first_s, m.instances, m.nbytes)


def round_methods(lab: Lab, client: httpx.Client, round_no: int) -> list[tuple[str, Method]]:
    """Every (PACS, method) of one round, the retrievals to time."""
    uid = lab.study_uid
    out: list[tuple[str, Method]] = []
    for pacs in (NODELAY, NAGLE, DCMQRSCP):
        group: list[Method] = [partial(dimse_baseline, lab, pacs, GETSCU, round_no),
                               partial(dimse_baseline, lab, pacs, RAW, round_no)]
        group += [partial(gateway_retrieval, client, lab.gateways[f"{engine}-none"], pacs, uid,
                          gateway_method(engine), round_no) for engine in ENGINES]
        if pacs == NODELAY:
            group.append(partial(orthanc_retrieval, client, lab.orthanc_fast, uid, round_no))
            group += [partial(cold_cached, client, lab, cache, method, round_no)
                      for cache, method in (("memory", MEMORY_COLD), ("redis", REDIS_COLD),
                                            ("redis-unix", REDIS_UNIX_COLD))]
        shift = round_no % len(group)
        out += [(pacs, fn) for fn in group[shift:] + group[:shift]]
    return out


def cold_cached(client: httpx.Client, lab: Lab, cache: str, method: str,
                round_no: int) -> Retrieval:
    """A cold retrieval through an asyncio gateway with a cache (``memory``, ``redis``,
    ``redis-unix``): emptied first (not timed)."""
    gw = lab.gateways[f"asyncio-{cache}"]
    gw.clear_cache()
    return gateway_retrieval(client, gw, NODELAY, lab.study_uid, method, round_no)


def expected_items(r: Retrieval, slices: int) -> None:
    """Refuse a retrieval that did not deliver the whole study (getscu does not count)."""
    if r.method != GETSCU and r.items != slices:
        raise RuntimeError(f"{r.method} from {r.pacs}: {r.items} instances, not {slices}")


def run_retrievals(results: Results, lab: Lab, repeat: int) -> None:
    """A warm-up of every method, then ``repeat`` rounds (order rotated per round)."""
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        log("warm-up of every method (not reported)")
        for _pacs, method in round_methods(lab, client, -1):
            expected_items(method(), lab.slices)
        for round_no in range(repeat):
            log(f"round {round_no + 1}/{repeat} (load average {os.getloadavg()[0]:.1f})")
            previous = None
            for pacs, method in round_methods(lab, client, round_no):
                if pacs != previous:  # each PACS's group of methods starts on quiet CPUs
                    results.busy.append(wait_for_quiet(max_wait=QUIET_WAIT_S))
                    previous = pacs
                r = method()
                expected_items(r, lab.slices)
                results.retrievals.append(r)
                log(f"  {PACS_LABELS[r.pacs][:24]:<24} {r.method:<38} {r.seconds * 1000:7.0f} ms"
                    f"  first {'-' if r.first_s is None else f'{r.first_s * 1000:6.1f} ms'}")
    raws = [r for r in results.retrievals if r.method == RAW]
    results.study_bytes = raws[0].nbytes if raws else 0


# -- C-ECHO --------------------------------------------------------------------------------------


async def _echo_loop(engine: str, peer: dict[str, Any], count: int, pooled: bool,
                     gap_s: float = 0.0) -> list[float]:
    """``count`` C-ECHOs through the gateway's own DIMSE client of ``engine`` (in this process),
    after one warm-up, ``gap_s`` apart; seconds each. Not pooled: each on a fresh association."""
    from app.dimse.client import DimseClients
    from app.settings import PacsPeer, Settings

    if not pooled:
        peer = peer | {"association_idle_timeout": 0}
    settings = Settings.model_validate({
        "pacs": [PacsPeer.model_validate(peer)], "dimse_engine": engine,
        "ae_title": GATEWAY_AE, "storage_scp_enabled": False, "cache_backend": "none",
        "log_level": "WARNING"})
    clients = DimseClients(settings)
    try:
        client = clients.get(peer["name"])
        await client.echo()
        times = []
        for _ in range(count):
            if gap_s:
                await asyncio.sleep(gap_s)
            t0 = time.perf_counter()
            await client.echo()
            times.append(time.perf_counter() - t0)
        return times
    finally:
        await clients.aclose()


def echo_loop_command(engine: str, peer_json: str, count: int, pooled: bool,
                      loop: str, gap_ms: float) -> int:
    """(internal) Print the echo loop's timings as JSON; run from the snapshot of ``app/``, on
    uvloop (what uvicorn runs the gateway on when it is installed) or asyncio's own loop."""
    coroutine = _echo_loop(engine, json.loads(peer_json), count, pooled, gap_ms / 1000)
    if loop == "uvloop":
        import uvloop

        times = uvloop.run(coroutine)
    else:
        times = asyncio.run(coroutine)
    print(json.dumps([t * 1000 for t in times]))
    return 0


def run_echo(results: Results, lab: Lab, count: int) -> None:
    """In-process echo loops (both engines; pooled and fresh associations for asyncio, fresh
    only for pynetdicom, which has no pool; on uvloop, and the asyncio engine on asyncio's own
    loop too) and ``/readyz`` through both gateways."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DWG_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    for pacs in (NAGLE, DCMQRSCP, NODELAY):
        p = lab.peer(pacs)
        peer = {"name": p.name, "ae_title": p.ae_title, "host": p.host, "port": p.port}
        for engine, pooled, loop, gap_ms in ECHO_LOOPS:
            argv = [sys.executable, "-m", "benchmarks.dimse_engine", "echo-loop", "--engine",
                    engine, "--peer", json.dumps(peer), "--count", str(count), "--loop", loop,
                    "--gap-ms", str(gap_ms)]
            if pooled:
                argv.append("--pooled")
            done = subprocess.run(argv, cwd=lab.source, env=env, capture_output=True, text=True,
                                  timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"echo loop {engine} {pacs}: {done.stderr[-500:]}")
            kind = (f"C-ECHO, {'pooled' if pooled else 'fresh'} association"
                    + (", asyncio's own event loop" if loop == "asyncio" else "")
                    + (f", {gap_ms} ms pause before each" if gap_ms else ""))
            timed = Timed(kind, pacs, engine, json.loads(done.stdout.strip().splitlines()[-1]))
            results.echo.append(timed)
            log(f"  {kind:<55} {engine:<10} {pacs:<16} median "
                f"{median(timed.times_ms):6.1f} ms")
    for engine in ENGINES:
        gw = lab.gateways[f"{engine}-none"]
        readyz: dict[str, Timed] = {n: Timed("/readyz echo_ms", n, engine)
                                    for n in (NAGLE, DCMQRSCP, NODELAY)}
        for _ in range(20):
            body = httpx.get(f"{gw.url}/readyz", timeout=60.0).json()
            for name, timed in readyz.items():
                timed.times_ms.append(float(body["pacs"][name]["echo_ms"]))
        results.echo += list(readyz.values())


# -- the study list ------------------------------------------------------------------------------


def study_list_targets(lab: Lab) -> list[tuple[str, str, str]]:
    """(target PACS, engine or "orthanc", URL) of the OHIF study-list query."""
    out = [(NAGLE, "orthanc", lab.orthanc_nagle.dicomweb_url + STUDY_LIST),
           (NODELAY, "orthanc", lab.orthanc_fast.dicomweb_url + STUDY_LIST)]
    for engine in ENGINES:
        gw = lab.gateways[f"{engine}-none"]
        out += [(pacs, engine, gw.dicomweb(pacs) + STUDY_LIST)
                for pacs in (NAGLE, NODELAY, DCMQRSCP)]
    return out


def run_study_list(results: Results, lab: Lab, rounds: int) -> None:
    """The study list from each target, ``rounds`` times after a warm-up, order rotated; checks
    that 101 studies come back and counts those with NumberOfStudyRelatedInstances."""
    targets = study_list_targets(lab)
    timed = {(pacs, who): Timed("study list", pacs, who) for pacs, who, _ in targets}
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        for round_no in range(-1, rounds):
            shift = max(round_no, 0) % len(targets)
            for pacs, who, url in targets[shift:] + targets[:shift]:
                t0 = time.perf_counter()
                response = client.get(url, headers={"Accept": "application/dicom+json"})
                ms = (time.perf_counter() - t0) * 1000
                if response.status_code != 200:
                    raise RuntimeError(f"study list {who} {pacs}: {response.status_code}")
                studies = response.json()
                if len(studies) != LIST_STUDIES:
                    raise RuntimeError(f"study list {who} {pacs}: {len(studies)} studies")
                counted = sum(1 for s in studies if s.get(NUMBER_OF_STUDY_RELATED_INSTANCES,
                                                          {}).get("Value"))
                if round_no >= 0:
                    timed[(pacs, who)].times_ms.append(ms)
                    timed[(pacs, who)].note = f"{counted} of {len(studies)} with counts"
    results.study_list = list(timed.values())
    for t in results.study_list:
        log(f"  study list {t.engine:<10} {t.target:<16} median {median(t.times_ms):6.0f} ms "
            f"({t.note})")


# -- memory --------------------------------------------------------------------------------------


def run_big(results: Results, lab: Lab, big_slices: int) -> None:
    """Load a > 1 GB study into the TCP_NODELAY Orthanc and stream it through a fresh asyncio
    gateway (cache off) while sampling its RSS every 10 ms."""
    t0 = time.perf_counter()
    load_orthanc(lab.orthanc_fast, generate_ct_series(big_slices, seed=BIG_SEED))
    results.timings["load big study_s"] = time.perf_counter() - t0
    uid = study_uid_of(big_slices, BIG_SEED)
    host, port, ae = lab.dimse(NODELAY)
    raw_c_get(host, port, ae, uid)  # page cache; not reported
    gw = EngineGateway(lab.workdir / "big", [lab.peer(NODELAY)], source=lab.source,
                       engine="asyncio")
    with gw, httpx.Client(timeout=HTTP_TIMEOUT) as client:
        one = first_instance_path(lab.slices, STUDY_SEED)
        multipart_retrieve(client, f"{gw.dicomweb()}/studies/{lab.study_uid}{one}")
        time.sleep(1.0)
        cpu0 = cpu_seconds(gw.pid)
        with RssSampler(gw.pid) as sampler:
            seconds, first, parts, nbytes = multipart_retrieve(
                client, f"{gw.dicomweb()}/studies/{uid}")
        if parts != big_slices:
            raise RuntimeError(f"big study: {parts} parts instead of {big_slices}")
        results.big = {"slices": big_slices, "seconds": seconds, "first_s": first,
                       "nbytes": nbytes, "cpu_s": cpu_seconds(gw.pid) - cpu0,
                       **sampler.summary()}
    log(f"  big study {nbytes / 1e9:.2f} GB in {seconds:.1f} s, RSS "
        f"{results.big['idle_rss_mb']:.0f} -> {results.big['peak_rss_mb']:.0f} MB")


# -- profiles ------------------------------------------------------------------------------------


def _frames(line: str) -> tuple[list[str], int]:
    """The frames (``function (file)``, no line numbers, no process/thread) and the count of
    one line of py-spy's raw output."""
    stack, _, count = line.rpartition(" ")
    if not stack or not count.isdigit():
        return [], 0
    frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
    return [f for f in frames if not f.startswith(("process ", "thread "))], int(count)


def leaf_callers(raw_path: Path, leaves: Sequence[str], top: int = 3
                 ) -> dict[str, list[tuple[str, int]]]:
    """For each of ``leaves``: the gateway's own functions (app/, nearest to the leaf) that
    its samples were under, most frequent first."""
    callers: dict[str, Counter[str]] = {leaf: Counter() for leaf in leaves}
    for line in raw_path.read_text().splitlines():
        frames, count = _frames(line)
        if not frames or frames[-1] not in callers:
            continue
        own = next((f for f in reversed(frames[:-1]) if "(app/" in f), "(none in app/)")
        callers[frames[-1]][own] += count
    return {leaf: c.most_common(top) for leaf, c in callers.items()}


def profile_summary(raw_path: Path) -> dict[str, Any]:
    """Samples, top leaf frames (self), the callers in app/ of the top five leaves, and the
    top inclusive frames without the entry-point chain every sample goes through."""
    total, leaves, inclusive = profile_leaves(raw_path)
    inclusive = [(f, c) for f, c in inclusive if c < 0.9 * max(total, 1)]
    return {"samples": total, "leaves": leaves, "inclusive": inclusive,
            "callers": leaf_callers(raw_path, [f for f, _ in leaves[:5]])}


def run_profiles(results: Results, lab: Lab) -> None:
    """py-spy (thread holding the GIL, 250 Hz) on the cache-off asyncio gateway during cold
    retrievals from each PACS, and during study-list queries in front of dcmqrscp."""
    off = lab.gateways["asyncio-none"]
    study = f"/studies/{lab.study_uid}"
    cases: list[tuple[str, EngineGateway, str]] = [
        (f"cache off, cold retrievals, {PACS_LABELS[p]}", off, off.dicomweb(p) + study)
        for p in (NODELAY, NAGLE, DCMQRSCP)]
    cases += [(f"{cache} cache, cold retrievals (emptied before each), {PACS_LABELS[NODELAY]}",
               lab.gateways[f"asyncio-{cache}"],
               lab.gateways[f"asyncio-{cache}"].dicomweb(NODELAY) + study)
              for cache in ("memory", "redis")]
    cases.append((f"cache off, study lists, {PACS_LABELS[DCMQRSCP]}", off,
                  off.dicomweb(DCMQRSCP) + STUDY_LIST))
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        for name, gw, url in cases:
            def work(target: str = url, gateway: EngineGateway = gw) -> None:
                deadline = time.monotonic() + 8.0
                for _ in range(200):
                    if time.monotonic() >= deadline:
                        return
                    if "/studies?" in target:
                        client.get(target, headers={"Accept": "application/dicom+json"})
                    else:
                        if gateway.cache != "none":
                            gateway.clear_cache()
                        multipart_retrieve(client, target)

            out = lab.workdir / f"profile-{len(results.profiles)}.txt"
            run_profiled(gw.pid, out, 10.0, work)
            results.profiles[name] = profile_summary(out)
            keep = results.args.get("keep_profiles")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(out, Path(keep) / out.name)
            log(f"  profile {name}: {results.profiles[name]['samples']} samples; top leaves "
                f"{results.profiles[name]['leaves'][:3]}")


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Results:
    """Everything one run measured."""

    args: dict[str, Any]
    app_digest: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    study_bytes: int = 0
    retrievals: list[Retrieval] = field(default_factory=list)
    echo: list[Timed] = field(default_factory=list)
    study_list: list[Timed] = field(default_factory=list)
    big: dict[str, Any] = field(default_factory=dict)
    ohif: list[dict[str, Any]] = field(default_factory=list)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    busy: list[float] = field(default_factory=list)  # CPU busy fraction as each round began
    errors: list[str] = field(default_factory=list)


def run(args: argparse.Namespace) -> Results:
    results = Results(args=recorded_args(args, leave_out=("ohif_json",)))
    results.ohif = [ohif_summary(Path(p)) for p in args.ohif_json or []]
    with ExitStack() as stack:
        workdir = work_directory(stack, "dwg-engine-bench-", keep=args.keep)
        source, results.app_digest = snapshot_app(workdir)
        t0 = time.perf_counter()
        lab = start_lab(stack, workdir, source, args.slices)
        results.timings["start and load_s"] = time.perf_counter() - t0
        results.machine = machine_info(lab.orthanc_fast)
        start_gateways(stack, lab)
        log(f"servers up and loaded in {results.timings['start and load_s']:.0f} s")
        steps: list[tuple[str, Callable[[], None]]] = [
            ("retrievals", lambda: run_retrievals(results, lab, args.repeat)),
            ("C-ECHO", lambda: run_echo(results, lab, args.echo_count)),
            ("study list", lambda: run_study_list(results, lab, args.list_rounds)),
        ]
        if args.profile:
            steps.append(("profiles", lambda: run_profiles(results, lab)))
        if args.big_slices > 0:
            steps.append(("big study", lambda: run_big(results, lab, args.big_slices)))
        run_steps(steps, results.timings, results.errors)
    return results


def load_results(path: Path) -> Results:
    """A run's results from its ``--json`` file (to render it again, e.g. with OHIF runs made
    after it)."""
    data = json.loads(path.read_text())
    results = Results(**{k: v for k, v in data.items()
                         if k not in ("retrievals", "echo", "study_list")})
    results.retrievals = [Retrieval(**r) for r in data.get("retrievals", [])]
    results.echo = [Timed(**t) for t in data.get("echo", [])]
    results.study_list = [Timed(**t) for t in data.get("study_list", [])]
    kept = results.args.get("keep_profiles")
    for index, name in enumerate(list(results.profiles)):
        raw = Path(kept or "-") / f"profile-{index}.txt"
        if kept and raw.is_file():  # summarise the raw profiles again with this code
            results.profiles[name] = profile_summary(raw)
    return results


def ohif_summary(path: Path) -> dict[str, Any]:
    """Cold time to first image, gateway and Orthanc (medians), from an ohif_load JSON file."""
    data = json.loads(path.read_text())
    loads = data.get("loads", [])

    def cold(target: str) -> float | None:
        return median(x.get("first_image_ms") for x in loads
                      if x.get("target") == target and x.get("phase") == "cold" and x.get("ok"))

    args = data.get("args", {})
    return {"slices": args.get("slices"), "repeat": args.get("repeat"),
            "engine": args.get("engine", "asyncio"), "date": data.get("machine", {}).get("date"),
            "gateway_ms": cold("gateway"), "orthanc_ms": cold("orthanc"),
            "rounds": sum(1 for x in loads if x.get("phase") == "cold"
                          and x.get("target") == "gateway")}


# -- the report ----------------------------------------------------------------------------------


def med(results: Results, pacs: str, method: str, attr: str = "seconds") -> float | None:
    """Median over the rounds of one method on one PACS."""
    return median(getattr(r, attr) for r in results.retrievals
                  if r.pacs == pacs and r.method == method)


def paired(results: Results, pacs: str, measured: str, baseline: str, attr: str,
           combine: Callable[[float, float], float]) -> float | None:
    """Median over the rounds of ``combine(measured, baseline)``, both taken in the same round
    on the same PACS (less exposed to other work than a ratio of medians)."""
    def by_round(method: str) -> dict[int, float]:
        return {r.round: getattr(r, attr) for r in results.retrievals
                if r.pacs == pacs and r.method == method and getattr(r, attr) is not None}

    ours, theirs = by_round(measured), by_round(baseline)
    return median(combine(ours[k], theirs[k]) for k in ours if k in theirs)


def best(results: Results, pacs: str, method: str) -> float | None:
    """The fastest round of one method on one PACS (the least disturbed by other work)."""
    times = [r.seconds for r in results.retrievals if r.pacs == pacs and r.method == method]
    return min(times) if times else None


def cpu_per_gb(results: Results, pacs: str, method: str) -> float | None:
    """CPU seconds of the gateway process per GB it delivered (all rounds together)."""
    runs = [r for r in results.retrievals if r.pacs == pacs and r.method == method
            and r.cpu_s is not None]
    nbytes = sum(r.nbytes for r in runs)
    return sum(r.cpu_s or 0 for r in runs) / (nbytes / 1e9) if nbytes else None


def ratio(baseline: float | None, measured: float | None) -> float | None:
    """baseline time / measured time: the measured method's speed relative to the baseline."""
    return baseline / measured if baseline and measured else None


def timed_median(items: list[Timed], kind: str, target: str, engine: str) -> float | None:
    """Median (ms) of one series of timings."""
    for t in items:
        if t.kind == kind and t.target == target and t.engine == engine:
            return median(t.times_ms)
    return None


@dataclass
class Target:
    """One line of the targets table."""

    target: str
    measured: str
    ok: bool | None


def targets_table(items: Sequence[Target]) -> list[str]:
    """The Markdown table of ``items`` (target, what was measured, verdict)."""
    return (["#### Targets", "", "| Target | Measured | Verdict |", "|---|---|---|"]
            + [f"| {t.target} | {t.measured} | {_verdict(t.ok)} |" for t in items])


def log_targets(items: Sequence[Target]) -> None:
    """One log line per target: its verdict first."""
    for t in items:
        log(f"{_verdict(t.ok):<14} {t.target}: {t.measured}")


def targets(results: Results) -> list[Target]:
    """Issue #8's targets, each with what this run measured and a verdict."""
    out: list[Target] = []
    gw = gateway_method("asyncio")
    gw_t = med(results, NODELAY, gw)
    scu_ratio = ratio(med(results, NODELAY, GETSCU), gw_t)
    wado_ratio = ratio(med(results, NODELAY, ORTHANC_WADO), gw_t)
    best_gw = best(results, NODELAY, gw)
    speed = partial(paired, results, NODELAY, gw, attr="seconds",
                    combine=lambda ours, theirs: theirs / ours)
    out.append(Target("Cold WADO-RS study >= 0.6x getscu (TCP_NODELAY Orthanc)",
                      f"{times(scu_ratio)} ({ms(gw_t)} vs {ms(med(results, NODELAY, GETSCU))}; "
                      f"per-round ratios {times(speed(GETSCU))}; best rounds "
                      f"{times(ratio(best(results, NODELAY, GETSCU), best_gw))})",
                      None if scu_ratio is None else scu_ratio >= 0.6))
    out.append(Target("Cold WADO-RS study >= 0.5x Orthanc's own WADO-RS",
                      f"{times(wado_ratio)} ({ms(gw_t)} vs "
                      f"{ms(med(results, NODELAY, ORTHANC_WADO))}; per-round ratios "
                      f"{times(speed(ORTHANC_WADO))}; best rounds "
                      f"{times(ratio(best(results, NODELAY, ORTHANC_WADO), best_gw))})",
                      None if wado_ratio is None else wado_ratio >= 0.5))
    cpu = cpu_per_gb(results, NODELAY, gw)
    out.append(Target("Gateway CPU seconds per GB, end to end (reported, no target)",
                      "-" if cpu is None else f"{cpu:.2f} s/GB (asyncio); pynetdicom "
                      f"{cpu_per_gb(results, NODELAY, gateway_method('pynetdicom')) or 0:.2f}",
                      None))
    for pacs in (NODELAY, NAGLE, DCMQRSCP):
        first, raw_first = med(results, pacs, gw, "first_s"), med(results, pacs, RAW, "first_s")
        delta = first - raw_first if first is not None and raw_first is not None else None
        pair = paired(results, pacs, gw, RAW, "first_s", lambda ours, theirs: ours - theirs)
        out.append(Target(f"First part <= raw first instance + 15 ms, median of per-round "
                          f"differences ({PACS_LABELS[pacs]})",
                          "-" if delta is None else
                          f"{ms(first)} vs {ms(raw_first)} ({delta * 1000:+.0f} ms; "
                          f"per-round differences {ms(pair)})",
                          None if pair is None else pair <= 0.015))
    off = med(results, NODELAY, gw)
    for method, label in ((MEMORY_COLD, "memory"), (REDIS_COLD, "Redis")):
        r = ratio(off, med(results, NODELAY, method))
        pair = paired(results, NODELAY, method, gw, "seconds", lambda ours, theirs: theirs / ours)
        out.append(Target(f"Cache on ({label}), cold >= 0.9x cache off",
                          f"{times(r)} ({ms(med(results, NODELAY, method))} vs {ms(off)}; "
                          f"per-round ratios {times(pair)})",
                          None if r is None else r >= 0.9))
    r = ratio(off, med(results, NODELAY, REDIS_UNIX_COLD))
    out.append(Target("(Reported, no target) Redis over a Unix socket, cold vs cache off",
                      f"{times(r)} ({ms(med(results, NODELAY, REDIS_UNIX_COLD))} vs {ms(off)})",
                      None))
    for kind in ("C-ECHO, pooled association", "C-ECHO, fresh association",
                 "C-ECHO, pooled association, 5 ms pause before each"):
        e = timed_median(results.echo, kind, NAGLE, "asyncio")
        out.append(Target(f"{kind} to Debian's Orthanc <= 10 ms (asyncio engine, uvloop)",
                          "-" if e is None else f"{e:.1f} ms", None if e is None else e <= 10))
    e = timed_median(results.echo, "/readyz echo_ms", NAGLE, "asyncio")
    out.append(Target("C-ECHO to Debian's Orthanc <= 10 ms (`/readyz` echo_ms, asyncio)",
                      "-" if e is None else f"{e:.1f} ms", None if e is None else e <= 10))
    for pacs in (NAGLE, NODELAY):
        g = timed_median(results.study_list, "study list", pacs, "asyncio")
        o = timed_median(results.study_list, "study list", pacs, "orthanc")
        r = g / o if g and o else None
        out.append(Target(f"Study list <= 1.2x Orthanc's own QIDO ({PACS_LABELS[pacs]})",
                          f"{'-' if r is None else f'{r:.3f}x'} ({g or 0:.0f} ms vs "
                          f"{o or 0:.0f} ms)",
                          None if r is None else r <= 1.2))
    q = timed_median(results.study_list, "study list", DCMQRSCP, "asyncio")
    out.append(Target("Study list in front of dcmqrscp (counts computed) <= 400 ms",
                      "-" if q is None else f"{q:.0f} ms", None if q is None else q <= 400))
    if results.big:
        growth = results.big["peak_rss_mb"] - results.big["idle_rss_mb"]
        out.append(Target(f"RSS growth < 150 MB streaming {results.big['nbytes'] / 1e9:.2f} GB, "
                          "cache off (asyncio)", f"+{growth:.0f} MB", growth < 150))
    else:
        out.append(Target("RSS growth < 150 MB streaming > 1 GB, cache off", "-", None))
    for run in results.ohif:
        limit = 1.5 if (run["slices"] or 0) >= 1000 else 1.2
        gw_ms, orthanc_ms = run["gateway_ms"], run["orthanc_ms"]
        r = gw_ms / orthanc_ms if gw_ms and orthanc_ms else None
        out.append(Target(f"OHIF cold first image, {run['slices']} slices <= {limit}x OHIF on "
                          f"Orthanc (run of {run['date']}, {run['rounds']} rounds)",
                          f"{times(r)} ({gw_ms or 0:.0f} ms vs {orthanc_ms or 0:.0f} ms)",
                          None if r is None else r <= limit))
    return out


def render_retrievals(results: Results) -> list[str]:
    """The retrieval table: every method on every PACS, medians and ratios."""
    size = results.study_bytes
    lines = ["#### Cold study retrieval (medians over the rounds)", "",
             "| PACS | Method | Time | Best round | Throughput | First instance / part | "
             "vs getscu | vs Orthanc WADO-RS | Gateway CPU s per GB |",
             "|---|---|---|---|---|---|---|---|---|"]
    wado = med(results, NODELAY, ORTHANC_WADO)
    methods = (GETSCU, RAW, ORTHANC_WADO, gateway_method("asyncio"), gateway_method("pynetdicom"),
               MEMORY_COLD, REDIS_COLD, REDIS_UNIX_COLD)
    for pacs in (NODELAY, NAGLE, DCMQRSCP):
        scu = med(results, pacs, GETSCU)
        for method in methods:
            t = med(results, pacs, method)
            if t is None:
                continue
            mbps = f"{size / t / 1e6:.0f} MB/s" if size else "-"
            cpu = cpu_per_gb(results, pacs, method)
            lines.append(f"| {PACS_LABELS[pacs]} | {method} | {ms(t)} | "
                         f"{ms(best(results, pacs, method))} | {mbps} | "
                         f"{ms(med(results, pacs, method, 'first_s'))} | {times(ratio(scu, t))} | "
                         f"{times(ratio(wado, t))} | {'-' if cpu is None else f'{cpu:.2f}'} |")
    return lines


def render_timed(title: str, items: list[Timed], header: str) -> list[str]:
    """A table of timing series: median, p90 (nearest rank), min, count."""
    lines = [f"#### {title}", "", f"| {header} | PACS | Median | p90 | Min | n | Note |",
             "|---|---|---|---|---|---|---|"]
    for t in items:
        ordered = sorted(t.times_ms)
        if not ordered:
            continue
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        lines.append(f"| {t.engine if t.kind == 'study list' else f'{t.kind}, {t.engine}'} | "
                     f"{PACS_LABELS[t.target]} | {median(ordered):.1f} ms | {p90:.1f} ms | "
                     f"{ordered[0]:.1f} ms | {len(ordered)} | {t.note} |")
    return lines


def render_profiles(results: Results) -> list[str]:
    """The top frames of each py-spy profile, with their sample shares."""
    lines: list[str] = []
    for name, prof in results.profiles.items():
        total = max(prof["samples"], 1)
        lines += ["", f"#### py-spy: asyncio gateway, {name} ({prof['samples']} samples at "
                      "250 Hz of the thread holding the GIL)", "",
                  "| Leaf function (self) | Samples | Share |", "|---|---|---|"]
        for f, c in prof["leaves"][:10]:
            under = ", ".join(f"`{g}` {n / c:.0%}" for g, n in prof.get("callers", {}).get(f, []))
            lines.append(f"| `{f}`{' (under ' + under + ')' if under else ''} | {c} | "
                         f"{c / total:.0%} |")
        lines += ["", "| Inclusive: the gateway's own functions, then others | Samples | Share |",
                  "|---|---|---|"]
        own = [(f, c) for f, c in prof["inclusive"] if "(app/" in f and "app/cli.py" not in f]
        rest = [(f, c) for f, c in prof["inclusive"] if "(app/" not in f]
        lines += [f"| `{f}` | {c} | {c / total:.0%} |" for f, c in own[:10] + rest[:5]]
    return lines


def render(results: Results) -> str:
    """The generated section of docs/benchmarks.md."""
    m, a = results.machine, results.args
    lines = [
        RESULTS_BEGIN,
        "<!-- Generated by `python -m benchmarks.dimse_engine`; edits here are overwritten. -->",
        "",
        f"### Run of {m.get('date', '?')}",
        "",
        f"- Machine: {m.get('nproc')} CPUs ({m.get('cpu')}), {m.get('ram_gb')} GB RAM, "
        f"{m.get('os')}",
        f"- Software: Python {m.get('python')}, pynetdicom {m.get('pynetdicom')}, pydicom "
        f"{m.get('pydicom')}, uvicorn {m.get('uvicorn')}, httpx {m.get('httpx')} (client); "
        f"Orthanc {m.get('orthanc')} (DICOMweb plugin {m.get('orthanc_dicomweb')}), DCMTK "
        f"{m.get('dcmtk')}",
        f"- Gateways: `python -m app.cli serve`, each its own process, `DWG_DIMSE_ENGINE` "
        f"asyncio or pynetdicom, cache off (`DWG_CACHE_BACKEND=none`) unless stated, QIDO cache "
        f"off, log level WARNING; sources of `app/` copied at the start (digest "
        f"{results.app_digest}).",
        f"- Command: `python -m benchmarks.dimse_engine --slices {a['slices']} --repeat "
        f"{a['repeat']} --big-slices {a['big_slices']} --list-rounds {a['list_rounds']}"
        f"{' --profile' if a.get('profile') else ''}`",
        f"- Study: {a['slices']} CT slices 512x512x16-bit, Explicit VR Little Endian, "
        f"{results.study_bytes / 1e6:.1f} MB of datasets, in each of the three PACS, with "
        f"{LIST_STUDIES} one-instance studies for the study list. `Accept: {ACCEPT_STUDY}`. "
        "In each round every method runs once per PACS, order rotated, so that ratios compare "
        "figures of the same moment.",
        "",
    ]
    lines += targets_table(targets(results))
    lines += [""] + render_retrievals(results)
    lines += ["", "Throughput is the study's dataset bytes over the time; CPU is the gateway "
              "process's user + system time (`/proc/<pid>/stat`, all threads) over the bytes of "
              "the multipart responses it sent."]
    if results.echo:
        lines += [""] + render_timed(
            "C-ECHO (in-process loops of the gateway's DIMSE client; `/readyz` through the "
            "gateway process)", results.echo, "Kind, engine")
    if results.study_list:
        lines += [""] + render_timed(
            f"OHIF's study list (`{STUDY_LIST}`)", results.study_list, "Served by")
    if results.big:
        big = results.big
        lines += ["", "#### A study larger than 1 GB, asyncio engine, cache off", "",
                  f"{big['slices']} slices, {big['nbytes'] / 1e9:.2f} GB as multipart, in "
                  f"{big['seconds']:.1f} s ({big['nbytes'] / big['seconds'] / 1e6:.0f} MB/s), "
                  f"first part after {ms(big['first_s'])}; RSS idle {big['idle_rss_mb']:.0f} "
                  f"MB, peak {big['peak_rss_mb']:.0f} MB ({big['rss_samples']} samples), VmHWM "
                  f"{big['vmhwm_mb']:.0f} MB; gateway CPU "
                  f"{big['cpu_s'] / (big['nbytes'] / 1e9):.2f} s per GB."]
    for o in results.ohif:
        lines += ["", f"OHIF ({o['slices']} slices, engine {o['engine']}, `benchmarks.ohif_load`"
                      f" run of {o['date']}, {o['rounds']} rounds): cold first image "
                      f"{o['gateway_ms'] or 0:.0f} ms through the gateway, "
                      f"{o['orthanc_ms'] or 0:.0f} ms on Orthanc's DICOMweb."]
    lines += render_profiles(results)
    lines += run_footer(results.errors, results.timings, m.get("nproc"),
                        f"). In each retrieval round, each PACS's methods waited (up to "
                        f"{QUIET_WAIT_S:.0f} s) for the CPUs to be at most 30 % busy; busy "
                        "fraction as they began: "
                        + (", ".join(f"{b:.0%}" for b in results.busy) or "-") + ".")
    lines.append(RESULTS_END)
    return "\n".join(lines) + "\n"


def _verdict(ok: bool | None) -> str:
    return verdict(ok, unmeasured="-", met="met")


def write_doc(section: str, path: Path = DOC_PATH) -> None:
    """Replace the generated section between this benchmark's markers (or append it)."""
    replace_section(path, RESULTS_BEGIN, RESULTS_END, section, new_heading=(
        "## DIMSE engine (issue #8)\n\n### Generated results of the last run\n\n"))

# -- entry point ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dimse_engine",
                                     description=__doc__)
    sub = parser.add_subparsers(dest="command")
    echo = sub.add_parser("echo-loop", help="(internal) time C-ECHOs in this process")
    echo.add_argument("--engine", choices=ENGINES, required=True)
    echo.add_argument("--peer", required=True, help="the PacsPeer as JSON")
    echo.add_argument("--count", type=int, default=50)
    echo.add_argument("--pooled", action="store_true")
    echo.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    echo.add_argument("--gap-ms", type=float, default=0.0)
    again = sub.add_parser("render", help="write the report of a saved run (--json) again")
    again.add_argument("saved", type=Path, help="the run's --json file")
    parser.add_argument("--slices", type=int, default=300, help="slices of the CT study")
    parser.add_argument("--repeat", type=int, default=5, help="retrieval rounds")
    parser.add_argument("--big-slices", type=int, default=2100,
                        help="slices of the > 1 GB study for the RSS test (0: skip)")
    parser.add_argument("--echo-count", type=int, default=50, help="C-ECHOs per loop")
    parser.add_argument("--list-rounds", type=int, default=7, help="study-list rounds")
    parser.add_argument("--profile", action="store_true", help="py-spy profiles of the gateway")
    parser.add_argument("--keep-profiles", type=Path, help="copy py-spy's raw output here")
    parser.add_argument("--ohif-json", type=Path, action="append",
                        help="an ohif_load --json file to include in the targets (repeatable)")
    add_output_arguments(parser, DOC_PATH)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "echo-loop":
        return echo_loop_command(args.engine, args.peer, args.count, args.pooled, args.loop,
                                 args.gap_ms)
    if args.command == "render":
        results = load_results(args.saved)
        if args.ohif_json:
            results.ohif = [ohif_summary(Path(p)) for p in args.ohif_json]
        write_doc(render(results), args.output)
        log(f"results of {args.saved} written to {args.output}")
        return 0
    if args.slices < 1 or args.repeat < 1 or args.list_rounds < 1:
        raise SystemExit("--slices, --repeat and --list-rounds must be at least 1")
    t0 = time.perf_counter()
    results = run(args)
    results.timings["total_s"] = time.perf_counter() - t0
    write_doc(render(results), args.output)
    log(f"results written to {args.output}")
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=2, default=str))
    log_targets(targets(results))
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())

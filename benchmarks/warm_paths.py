"""Warm paths and search coalescing (issue #9), side by side in one run against one Orthanc
(``TCP_NODELAY=1``) holding the CT study and 101 one-instance studies:

1. warm WADO-RS study retrieval through gateways with the memory cache and with a throwaway
   Redis, alternating with Orthanc's own WADO-RS; the gateway's CPU and the DIMSE calls (none
   expected) of each warm retrieval;
2. 10 identical concurrent cold searches (OHIF's study list) against one alone: time and the
   C-FINDs Orthanc received (counted by a Lua ``IncomingFindRequestFilter``);
3. a mixed load of N clients for T seconds on a Redis gateway: per request kind p50/p95/p99/max;
4. optionally, OHIF's warm figures from a ``benchmarks.ohif_load --json`` file.

Run from the repository root: ``.venv/bin/python -m benchmarks.warm_paths [--slices 300]
[--repeat 5] [--search-rounds 12] [--load-seconds 60] [--clients 20] [--ohif-json F]
[--json F] [--output F]``;
the figures replace the ``warm-paths-results`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.demo.samples import generate_ct_series, generate_many_studies
from benchmarks.cache_viewer import flush_redis, metric_sum, percentile, wait_for_quiet
from benchmarks.common import run_steps
from benchmarks.dimse_engine import (
    ACCEPT_STUDY,
    LIST_SEED,
    LIST_STUDIES,
    STUDY_LIST,
    STUDY_SEED,
    EngineGateway,
    Target,
    cpu_seconds,
    environment,
    log_targets,
    multipart_retrieve,
    targets_table,
)
from benchmarks.wado_retrieve import (
    DOC_PATH,
    HTTP_TIMEOUT,
    PeerAddress,
    load_orthanc,
    log,
    machine_info,
    median,
    snapshot_app,
    study_uid_of,
)
from tests.peers.orthanc import OrthancServer
from tests.peers.redis_server import RedisServer

RESULTS_BEGIN = "<!-- warm-paths-results:begin -->"
RESULTS_END = "<!-- warm-paths-results:end -->"
SECTION_HEADING = "## Warm paths and search coalescing (issue #9)"
PACS = "orthanc"
MEMORY, REDIS, ORTHANC = "gateway, memory cache", "gateway, Redis cache", "Orthanc WADO-RS"
CONCURRENT_SEARCHES = 10
CACHED_REFERENCE = "gateway, Redis cache, QIDO cache hits (reference)"
ACCEPT_JSON = "application/dicom+json"
ACCEPT_FRAME = "multipart/related; type=application/octet-stream; transfer-syntax=*"
# Request kinds of the mixed load and their weights (out of 100).
MIX = (("QIDO studies", 30), ("QIDO series", 15), ("series metadata", 15), ("frame", 35),
       ("series retrieval", 5))
FIND_COUNTER_LUA = """function IncomingFindRequestFilter(query, origin)
  local f = io.open("{path}", "a")
  f:write("C-FIND\\n")
  f:close()
  return query
end
"""


# -- servers -------------------------------------------------------------------------------------


class CountingOrthanc(OrthancServer):
    """Orthanc whose Lua ``IncomingFindRequestFilter`` writes a line per C-FIND it receives (and
    returns the query unchanged, as the filter must)."""

    def __init__(self, workdir: Path, ae_title: str = "ORTHANC_ND") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.finds_path = workdir / "finds.log"
        script = workdir / "count-finds.lua"
        script.write_text(FIND_COUNTER_LUA.format(path=self.finds_path))
        super().__init__(workdir, ae_title=ae_title, extra_config={"LuaScripts": [str(script)]})

    def finds(self) -> int:
        """C-FIND requests received so far."""
        return len(self.finds_path.read_bytes().splitlines()) if self.finds_path.exists() else 0


class DefaultQidoGateway(EngineGateway):
    """An EngineGateway with the QIDO cache at its default TTL (the mixed load's gateway, as
    deployed) instead of off."""

    def env(self) -> dict[str, str]:
        env = super().env()
        env.pop("DWG_QIDO_CACHE_TTL", None)
        return env


@dataclass
class Lab:
    """The PACS, Redis, gateways and UIDs of one run."""

    workdir: Path
    source: Path
    orthanc: CountingOrthanc
    redis: RedisServer
    study_uid: str
    series_uid: str
    sop_uids: list[str]
    small_studies: list[str]
    gateways: dict[str, EngineGateway] = field(default_factory=dict)

    @property
    def peer(self) -> PeerAddress:
        return PeerAddress(PACS, self.orthanc.ae_title, "127.0.0.1", self.orthanc.dicom_port)

    def dimse_calls(self, gw: EngineGateway) -> tuple[float, int]:
        """(retrievals the gateway started, C-FINDs Orthanc received) so far."""
        return metric_sum(gw.url, "dimse_retrievals_total"), self.orthanc.finds()


def start_lab(stack: ExitStack, workdir: Path, source: Path, slices: int) -> Lab:
    """Orthanc (TCP_NODELAY=1, C-FINDs counted) loaded with the CT study and the small studies,
    a throwaway Redis, and asyncio gateways with the memory cache and with Redis."""
    with environment(TCP_NODELAY="1"):
        orthanc = CountingOrthanc(workdir / "orthanc")
        orthanc.start()
    stack.callback(orthanc.stop)
    redis = RedisServer(workdir / "redis")
    redis.start()
    stack.callback(redis.stop)
    load_orthanc(orthanc, generate_ct_series(slices, seed=STUDY_SEED))
    small = generate_many_studies(LIST_STUDIES, seed=LIST_SEED)
    load_orthanc(orthanc, small)
    first = next(generate_ct_series(slices, seed=STUDY_SEED))
    sops = [str(ds.SOPInstanceUID) for ds in generate_ct_series(slices, seed=STUDY_SEED)]
    lab = Lab(workdir, source, orthanc, redis, study_uid_of(slices, STUDY_SEED),
              str(first.SeriesInstanceUID), sops, [str(ds.StudyInstanceUID) for ds in small])
    for cache, url in ((MEMORY, None), (REDIS, redis.url)):
        gw = EngineGateway(workdir, [lab.peer], source=source, engine="asyncio",
                           cache="memory" if url is None else "redis", redis_url=url)
        stack.enter_context(gw)
        lab.gateways[cache] = gw
    return lab


# -- 1. warm study retrieval ---------------------------------------------------------------------


@dataclass
class Retrieval:
    """One study retrieval: time, first part, size, the gateway's CPU and DIMSE calls."""

    target: str
    phase: str  # "fill" or "warm" (gateway), "local" (Orthanc)
    round: int
    seconds: float
    first_s: float | None
    parts: int
    nbytes: int
    cpu_s: float | None = None
    retrievals: float | None = None  # dimse_retrievals_total during it
    c_finds: int | None = None  # C-FINDs Orthanc received during it


def retrieve(client: httpx.Client, lab: Lab, target: str, phase: str, round_no: int,
             slices: int) -> Retrieval:
    """One study retrieval from ``target``, with the gateway's CPU and DIMSE calls."""
    gw = lab.gateways.get(target)
    url = (f"{lab.orthanc.dicomweb_url}" if gw is None else gw.dicomweb()) + \
        f"/studies/{lab.study_uid}"
    before = lab.dimse_calls(gw) if gw else None
    cpu0 = cpu_seconds(gw.pid) if gw else 0.0
    seconds, first, parts, nbytes = multipart_retrieve(client, url, ACCEPT_STUDY)
    r = Retrieval(target, phase, round_no, seconds, first, parts, nbytes)
    if gw is not None and before is not None:
        r.cpu_s = cpu_seconds(gw.pid) - cpu0
        after = lab.dimse_calls(gw)
        r.retrievals, r.c_finds = after[0] - before[0], after[1] - before[1]
    if parts != slices:
        raise RuntimeError(f"{target} ({phase}): {parts} parts instead of {slices}")
    log(f"  {target:<22} {phase:<5} {seconds * 1000:7.0f} ms  first part "
        f"{'-' if first is None else f'{first * 1000:6.1f} ms'}  DIMSE "
        f"{r.retrievals if gw else '-'} retrievals, {r.c_finds if gw else '-'} C-FINDs")
    return r


def run_warm(results: Results, lab: Lab, repeat: int, slices: int) -> None:
    """Empty each gateway's cache and fill it with one retrieval; then ``repeat`` rounds of a
    warm retrieval from each gateway and Orthanc's own WADO-RS, order rotated per round."""
    targets = [MEMORY, REDIS, ORTHANC]
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        for target in (MEMORY, REDIS):
            lab.gateways[target].clear_cache()
            results.warm.append(retrieve(client, lab, target, "fill", 0, slices))
        retrieve(client, lab, ORTHANC, "local", 0, slices)  # Orthanc's caches; not reported
        for round_no in range(1, repeat + 1):
            results.busy.append(wait_for_quiet(max_wait=15.0))
            shift = round_no % len(targets)
            for target in targets[shift:] + targets[:shift]:
                phase = "local" if target == ORTHANC else "warm"
                results.warm.append(retrieve(client, lab, target, phase, round_no, slices))


# -- 2. search coalescing ------------------------------------------------------------------------


@dataclass
class SearchRound:
    """One search alone and ``CONCURRENT_SEARCHES`` identical ones at once, both cold."""

    target: str
    round: int
    alone_s: float
    alone_finds: int
    concurrent_s: list[float]
    concurrent_finds: int
    sources: dict[str, float]  # qido_searches_total deltas of the concurrent burst, by source


async def _searches(url: str, count: int) -> list[float]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, limits=limits) as client:
        async def one() -> float:
            t0 = time.perf_counter()
            response = await client.get(url, headers={"Accept": ACCEPT_JSON})
            seconds = time.perf_counter() - t0
            if response.status_code != 200 or len(response.json()) != LIST_STUDIES:
                raise RuntimeError(f"search: {response.status_code} {response.text[:200]}")
            return seconds

        health = url.split("/dicomweb")[0] + "/healthz"  # open every connection untimed
        await asyncio.gather(*(client.get(health) for _ in range(count)))
        return list(await asyncio.gather(*(one() for _ in range(count))))


def run_coalescing(results: Results, lab: Lab, repeat: int) -> None:
    """Per gateway and round: the cache emptied, one search alone; emptied again, ten at once."""
    for target in (MEMORY, REDIS):
        gw = lab.gateways[target]
        url = gw.dicomweb() + STUDY_LIST
        for round_no in range(1, repeat + 1):
            results.busy.append(wait_for_quiet(max_wait=15.0))
            gw.clear_cache()
            f0 = lab.orthanc.finds()
            alone = asyncio.run(_searches(url, 1))[0]
            alone_finds = lab.orthanc.finds() - f0
            gw.clear_cache()
            s0 = {s: metric_sum(gw.url, "qido_searches_total", source=s)
                  for s in ("pacs", "shared", "cache")}
            f0 = lab.orthanc.finds()
            times = asyncio.run(_searches(url, CONCURRENT_SEARCHES))
            finds = lab.orthanc.finds() - f0
            sources = {s: metric_sum(gw.url, "qido_searches_total", source=s) - v
                       for s, v in s0.items()}
            results.searches.append(SearchRound(target, round_no, alone, alone_finds, times,
                                                finds, sources))
            log(f"  {target:<22} alone {alone * 1000:6.0f} ms ({alone_finds} C-FINDs); "
                f"{CONCURRENT_SEARCHES} at once: slowest {max(times) * 1000:6.0f} ms "
                f"({finds} C-FINDs; searches {sources})")


# -- 3. mixed load -------------------------------------------------------------------------------


@dataclass
class LoadKind:
    """Latencies (ms) and errors of one request kind under the mixed load."""

    kind: str
    times_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)


def mixed_request(lab: Lab, root: str, rng: random.Random) -> tuple[str, str, str]:
    """(kind, URL, Accept) of one request of the mix, drawn with ``rng``."""
    kind = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
    study, series = lab.study_uid, lab.series_uid
    if kind == "QIDO studies":
        n = rng.randrange(LIST_STUDIES)
        query = rng.choice([
            STUDY_LIST.removeprefix("/studies"),
            f"?PatientName=Paging%5EPatient{n // 10:03d}*&includefield=00081030",
            f"?StudyDate=2000{1 + n % 12:02d}01-20{10 + n % 15}1231&limit=50",
            "?ModalitiesInStudy=CT&includefield=00081030%2C00080060",
            f"?limit=25&offset={n % 4 * 25}&fuzzymatching=false",
            f"?AccessionNumber=PG{n:06d}"])
        return kind, f"{root}/studies{query}", ACCEPT_JSON
    if kind == "QIDO series":
        query = rng.choice([f"/studies/{study}/series?includefield=0008103E",
                            f"/studies/{rng.choice(lab.small_studies)}/series",
                            "/series?Modality=CT", "/series?Modality=OT&limit=20"])
        return kind, root + query, ACCEPT_JSON
    if kind == "series metadata":
        return kind, f"{root}/studies/{study}/series/{series}/metadata", ACCEPT_JSON
    if kind == "frame":
        sop = rng.choice(lab.sop_uids)
        return (kind, f"{root}/studies/{study}/series/{series}/instances/{sop}/frames/1",
                ACCEPT_FRAME)
    return kind, f"{root}/studies/{study}/series/{series}", ACCEPT_STUDY


async def _mixed_load(lab: Lab, root: str, clients: int, seconds: float
                      ) -> dict[str, LoadKind]:
    kinds = {k: LoadKind(k) for k, _ in MIX}
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, limits=limits) as client:
        async def worker(index: int) -> None:
            rng = random.Random(index)
            while time.monotonic() < deadline:
                kind, url, accept = mixed_request(lab, root, rng)
                t0 = time.perf_counter()
                problem = None
                try:
                    async with client.stream("GET", url, headers={"Accept": accept}) as r:
                        async for _ in r.aiter_raw():
                            pass
                        if r.status_code != 200:
                            problem = f"{r.status_code} GET {url[len(root):][:100]}"
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__} GET {url[len(root):][:100]}"
                entry = kinds[kind]
                entry.times_ms.append((time.perf_counter() - t0) * 1000)
                if problem is not None:
                    entry.errors += 1
                    if len(entry.error_samples) < 3:
                        entry.error_samples.append(problem)

        await asyncio.gather(*(worker(i) for i in range(clients)))
    return kinds


def run_cached_searches(results: Results, lab: Lab, gw: EngineGateway, repeat: int) -> None:
    """The reference for the coalescing figures: the same search alone and ten at once, all
    answered from the QIDO cache (filled by one search just before), so no PACS is involved and
    what remains is the gateway's own cost of answering."""
    url = gw.dicomweb() + STUDY_LIST
    for round_no in range(1, repeat + 1):
        asyncio.run(_searches(url, 1))  # fills the QIDO cache
        f0 = lab.orthanc.finds()
        alone = asyncio.run(_searches(url, 1))[0]
        times = asyncio.run(_searches(url, CONCURRENT_SEARCHES))
        results.searches.append(SearchRound(CACHED_REFERENCE, round_no, alone, 0, times,
                                            lab.orthanc.finds() - f0, {}))
        log(f"  QIDO cache hits: alone {alone * 1000:6.0f} ms; {CONCURRENT_SEARCHES} at once: "
            f"slowest {max(times) * 1000:6.0f} ms")


def run_mixed(results: Results, lab: Lab, clients: int, seconds: float) -> None:
    """A fresh Redis gateway (QIDO cache at its default TTL), the CT series filled once, the
    cached-search reference, then ``clients`` asyncio clients in this process for ``seconds``."""
    flush_redis(lab.redis.url)
    gw = DefaultQidoGateway(lab.workdir / "mixed", [lab.peer], source=lab.source,
                            engine="asyncio", cache="redis", redis_url=lab.redis.url)
    with gw, httpx.Client(timeout=HTTP_TIMEOUT) as client:
        multipart_retrieve(client, f"{gw.dicomweb()}/studies/{lab.study_uid}/series/"
                                   f"{lab.series_uid}", ACCEPT_STUDY)
        run_cached_searches(results, lab, gw, int(results.args.get("search_rounds")
                                                  or results.args.get("repeat", 1)))
        results.busy.append(wait_for_quiet(max_wait=15.0))
        own0, gw0, t0 = cpu_seconds(os.getpid()), cpu_seconds(gw.pid), time.perf_counter()
        kinds = asyncio.run(_mixed_load(lab, gw.dicomweb(), clients, seconds))
        wall = time.perf_counter() - t0
        results.mixed = list(kinds.values())
        results.mixed_cpu = {"wall_s": wall,
                             "client_cpu_share": (cpu_seconds(os.getpid()) - own0) / wall,
                             "gateway_cpu_share": (cpu_seconds(gw.pid) - gw0) / wall}
    for k in results.mixed:
        if k.times_ms:
            log(f"  {k.kind:<18} n={len(k.times_ms):5d}  p50 {percentile(k.times_ms, 50):7.1f}"
                f"  p99 {percentile(k.times_ms, 99):7.1f}  max {max(k.times_ms):7.1f} ms  "
                f"errors {k.errors}")


# -- 4. OHIF -------------------------------------------------------------------------------------


def ohif_figures(path: Path) -> dict[str, Any]:
    """Medians of time to first image and to the whole series, per target and phase, from a
    ``benchmarks.ohif_load --json`` file."""
    data = json.loads(path.read_text())
    loads = [x for x in data.get("loads", []) if x.get("ok")]
    out: dict[str, Any] = {"file": path.name, "date": data.get("machine", {}).get("date"),
                           "slices": data.get("args", {}).get("slices"),
                           "rounds": data.get("args", {}).get("repeat")}
    for target in ("gateway", "orthanc"):
        for phase in ("cold", "warm"):
            chosen = [x for x in loads if x.get("target") == target and x.get("phase") == phase]
            out[f"{target}_{phase}"] = {
                "first_image_ms": median(x.get("first_image_ms") for x in chosen),
                "all_loaded_ms": median(x.get("all_loaded_ms") for x in chosen),
                "n": len(chosen)}
    return out


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Results:
    """Everything one run measured."""

    args: dict[str, Any]
    command: str = ""
    app_digest: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    warm: list[Retrieval] = field(default_factory=list)
    searches: list[SearchRound] = field(default_factory=list)
    mixed: list[LoadKind] = field(default_factory=list)
    mixed_cpu: dict[str, float] = field(default_factory=dict)
    ohif: dict[str, Any] = field(default_factory=dict)
    busy: list[float] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def run(args: argparse.Namespace, command: str) -> Results:
    results = Results(args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                            if k != "command"}, command=command)
    if args.ohif_json:
        results.ohif = ohif_figures(args.ohif_json)
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="dwg-warm-bench-"))
        if not args.keep:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        log(f"work directory {workdir}")
        source, results.app_digest = snapshot_app(workdir)
        t0 = time.perf_counter()
        lab = start_lab(stack, workdir, source, args.slices)
        results.timings["start and load_s"] = time.perf_counter() - t0
        results.machine = machine_info(lab.orthanc)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("warm retrieval", lambda: run_warm(results, lab, args.repeat, args.slices)),
            ("search coalescing", lambda: run_coalescing(results, lab, args.search_rounds)),
            ("mixed load", lambda: run_mixed(results, lab, args.clients, args.load_seconds)),
        ]
        run_steps(steps, results.timings, results.errors)
    return results


# -- the report ----------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def warm_of(results: Results, target: str, attr: str = "seconds") -> list[float]:
    """One attribute of the reported retrievals of a target (fills excluded)."""
    return [getattr(r, attr) for r in results.warm
            if r.target == target and r.phase != "fill" and getattr(r, attr) is not None]


def round_ratios(results: Results, target: str) -> list[float]:
    """Orthanc's time over the gateway's, per round (how many times faster the gateway is)."""
    by_round = {(r.target, r.round): r.seconds for r in results.warm if r.phase != "fill"}
    return [by_round[(ORTHANC, n)] / by_round[(target, n)] for (t, n) in by_round
            if t == target and (ORTHANC, n) in by_round]


def targets(results: Results) -> list[Target]:
    """Each issue #9 target with what this run measured."""
    out: list[Target] = []
    orthanc = median(warm_of(results, ORTHANC))
    for target, limit in ((MEMORY, 1.2), (REDIS, 1.0)):
        t = median(warm_of(results, target))
        r = orthanc / t if orthanc and t else None
        out.append(Target(f"Warm study retrieval, {target.removeprefix('gateway, ')} >= "
                          f"{limit}x Orthanc's own WADO-RS",
                          f"{_x(r)} ({_ms(t)} vs {_ms(orthanc)}; per-round "
                          f"{', '.join(_x(x) for x in round_ratios(results, target)) or '-'})",
                          None if r is None else r >= limit))
    for target in (MEMORY, REDIS):
        first = median(warm_of(results, target, "first_s"))
        out.append(Target(f"Warm first part <= 10 ms ({target.removeprefix('gateway, ')})",
                          _ms(first), None if first is None else first <= 0.010))
    warm = [r for r in results.warm if r.phase == "warm"]
    calls = sum((r.retrievals or 0) + (r.c_finds or 0) for r in warm)
    out.append(Target("Warm retrievals make no DIMSE call (C-GET/C-MOVE from /metrics, C-FIND "
                      "at Orthanc)", f"{calls} calls in {len(warm)} warm retrievals",
                      None if not warm else calls == 0))
    for target in (MEMORY, REDIS):
        rounds = [s for s in results.searches if s.target == target]
        ratios = [max(s.concurrent_s) / s.alone_s for s in rounds]
        ratio = median(ratios)
        spread = f" (median of {len(ratios)} rounds, {min(ratios):.2f}x-{max(ratios):.2f}x)" \
            if ratios else ""
        out.append(Target(f"{CONCURRENT_SEARCHES} identical concurrent cold searches <= 1.5x "
                          f"one alone ({target.removeprefix('gateway, ')}; slowest of the "
                          f"{CONCURRENT_SEARCHES})", _x(ratio) + spread,
                          None if ratio is None else ratio <= 1.5))
        extra = [s.concurrent_finds - s.alone_finds for s in rounds]
        out.append(Target(f"... and cost the PACS one search's C-FINDs "
                          f"({target.removeprefix('gateway, ')})",
                          ", ".join(f"{s.concurrent_finds} vs {s.alone_finds}" for s in rounds)
                          or "-", None if not rounds else max(extra) <= 0))
    cached = [s for s in results.searches if s.target == CACHED_REFERENCE]
    if cached:
        ratio = median(max(s.concurrent_s) / s.alone_s for s in cached)
        out.append(Target(f"(Reference, no target) the same {CONCURRENT_SEARCHES} at once, all "
                          "from the QIDO cache: slowest over one alone", _x(ratio), None))
    qido = [t for k in results.mixed if k.kind.startswith("QIDO") for t in k.times_ms]
    p99 = percentile(qido, 99) if qido else None
    out.append(Target(f"Mixed load ({results.args.get('clients')} clients x "
                      f"{results.args.get('load_seconds')} s): QIDO p99 <= 1 s",
                      "-" if p99 is None else f"{p99:.0f} ms", None if p99 is None else
                      p99 <= 1000))
    errors = sum(k.errors for k in results.mixed)
    out.append(Target("Mixed load: 0 errors", str(errors) if results.mixed else "-",
                      None if not results.mixed else errors == 0))
    o = results.ohif
    for key, label in (("first_image_ms", "first image"), ("all_loaded_ms", "whole series")):
        g = (o.get("gateway_warm") or {}).get(key)
        t = (o.get("orthanc_warm") or {}).get(key)
        r = g / t if g and t else None
        out.append(Target(f"OHIF warm {label} <= 0.8x OHIF on Orthanc"
                          + (f" ({o.get('file')}, run of {o.get('date')})" if o else ""),
                          "-" if r is None else f"{_x(r)} ({g:.0f} ms vs {t:.0f} ms)",
                          None if r is None else r <= 0.8))
    return out


def render_warm(results: Results) -> list[str]:
    lines = ["#### Study retrieval (medians over the rounds; fills: the one retrieval that "
             "filled each cache)", "",
             "| Target | Phase | n | Time | Best | Throughput | First part | vs Orthanc | "
             "Gateway CPU per retrieval | DIMSE retrievals | C-FINDs at the PACS |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    orthanc = median(warm_of(results, ORTHANC))
    for target in (MEMORY, REDIS, ORTHANC):
        for phase in ("fill", "warm", "local"):
            rs = [r for r in results.warm if r.target == target and r.phase == phase]
            if not rs:
                continue
            t = median(r.seconds for r in rs)
            nbytes = rs[0].nbytes
            cpu = median(r.cpu_s for r in rs)
            calls = (f"{sum(r.retrievals or 0 for r in rs):.0f}" if rs[0].retrievals is not None
                     else "-")
            finds = f"{sum(r.c_finds or 0 for r in rs)}" if rs[0].c_finds is not None else "-"
            lines.append(
                f"| {target} | {phase} | {len(rs)} | {_ms(t)} | {_ms(min(r.seconds for r in rs))}"
                f" | {nbytes / t / 1e6 if t else 0:.0f} MB/s | "
                f"{_ms(median(r.first_s for r in rs))} | "
                f"{_x(orthanc / t if orthanc and t and phase != 'fill' else None)} | "
                f"{'-' if cpu is None else f'{cpu * 1000:.0f} ms'} | {calls} | {finds} |")
    return lines


def render_searches(results: Results) -> list[str]:
    lines = [f"#### Search coalescing (`{STUDY_LIST}`, cache emptied before each, except "
             "the reference rows: every answer from the QIDO cache of the mixed-load gateway, "
             "no PACS involved)", "",
             "| Gateway | Round | Alone | C-FINDs alone | "
             f"{CONCURRENT_SEARCHES} at once: median / slowest | C-FINDs | Searches by source "
             "(pacs / shared / cache) |", "|---|---|---|---|---|---|---|"]
    for s in results.searches:
        src = " / ".join(f"{s.sources.get(k, 0):.0f}" for k in ("pacs", "shared", "cache")) \
            if s.sources else "-"
        lines.append(f"| {s.target} | {s.round} | {_ms(s.alone_s)} | {s.alone_finds} | "
                     f"{_ms(median(s.concurrent_s))} / {_ms(max(s.concurrent_s))} | "
                     f"{s.concurrent_finds} | {src} |")
    return lines


def render_mixed(results: Results) -> list[str]:
    a, cpu = results.args, results.mixed_cpu
    lines = [f"#### Mixed load: {a.get('clients')} clients x {a.get('load_seconds')} s, Redis "
             "cache, QIDO cache at its default TTL", "",
             "| Request kind | Weight | n | p50 | p95 | p99 | Max | Errors |",
             "|---|---|---|---|---|---|---|---|"]
    weights = dict(MIX)
    for k in results.mixed:
        if not k.times_ms:
            lines.append(f"| {k.kind} | {weights.get(k.kind, '-')}% | 0 | - | - | - | - | "
                         f"{k.errors} |")
            continue
        p = [percentile(k.times_ms, q) for q in (50, 95, 99)]
        lines.append(f"| {k.kind} | {weights.get(k.kind, '-')}% | {len(k.times_ms)} | "
                     + " | ".join(f"{v:.1f} ms" for v in p)
                     + f" | {max(k.times_ms):.1f} ms | {k.errors} |")
    samples = [e for k in results.mixed for e in k.error_samples]
    if samples:
        lines += ["", "Errors seen: " + "; ".join(f"`{e}`" for e in samples)]
    if cpu:
        lines += ["", f"One client process (asyncio, httpx, {a.get('clients')} tasks on "
                      f"{a.get('clients')} keep-alive connections) used "
                      f"{cpu['client_cpu_share']:.0%} of a CPU, the gateway "
                      f"{cpu['gateway_cpu_share']:.0%}, over {cpu['wall_s']:.0f} s."]
    return lines


def render_ohif(results: Results) -> list[str]:
    o = results.ohif
    if not o:
        return []
    lines = [f"#### OHIF ({o.get('slices')} slices, `{o.get('file')}`, run of {o.get('date')},"
             f" medians)", "", "| Target | Phase | n | First image | Whole series |",
             "|---|---|---|---|---|"]
    for target in ("gateway", "orthanc"):
        for phase in ("cold", "warm"):
            f = o.get(f"{target}_{phase}") or {}
            first, whole = f.get("first_image_ms"), f.get("all_loaded_ms")
            lines.append(f"| {target} | {phase} | {f.get('n', 0)} | "
                         f"{'-' if first is None else f'{first:.0f} ms'} | "
                         f"{'-' if whole is None else f'{whole:.0f} ms'} |")
    return lines


def render(results: Results) -> str:
    """The generated section of docs/benchmarks.md."""
    m, a = results.machine, results.args
    nbytes = next((r.nbytes for r in results.warm if r.target == ORTHANC), 0)
    lines = [
        RESULTS_BEGIN,
        "<!-- Generated by `python -m benchmarks.warm_paths`; edits here are overwritten. -->",
        "",
        f"### Run of {m.get('date', '?')}",
        "",
        f"- Machine: {m.get('nproc')} CPUs ({m.get('cpu')}), {m.get('ram_gb')} GB RAM, "
        f"{m.get('os')}",
        f"- Software: Python {m.get('python')}, pynetdicom {m.get('pynetdicom')}, uvicorn "
        f"{m.get('uvicorn')}, httpx {m.get('httpx')} (client); Orthanc {m.get('orthanc')} "
        f"(DICOMweb plugin {m.get('orthanc_dicomweb')}), `TCP_NODELAY=1`, C-FINDs counted by a "
        "Lua `IncomingFindRequestFilter`",
        f"- Gateways: `python -m app.cli serve`, each its own process, asyncio engine, memory or "
        f"Redis (a throwaway `redis-server`) cache, QIDO cache off (`DWG_QIDO_CACHE_TTL=0`) "
        f"except for the mixed load; sources of `app/` copied at the start (digest "
        f"{results.app_digest}).",
        f"- Command: `{results.command}`",
        f"- Study: {a.get('slices')} CT slices 512x512x16-bit ({nbytes / 1e6:.1f} MB as "
        f"multipart), with {LIST_STUDIES} one-instance studies for the searches. "
        f"`Accept: {ACCEPT_STUDY}`; rounds rotate the order of the three targets.",
        "",
    ]
    lines += targets_table(targets(results))
    lines += [""] + render_warm(results)
    lines += ["", "First part: until the first part had fully arrived. CPU: the gateway "
              "process's user + system time (`/proc/<pid>/stat`). DIMSE retrievals: the "
              "gateway's `dimse_retrievals_total`; C-FINDs: counted by Orthanc."]
    if results.searches:
        lines += [""] + render_searches(results)
    if results.mixed:
        lines += [""] + render_mixed(results)
    ohif = render_ohif(results)
    if ohif:
        lines += [""] + ohif
    if results.errors:
        lines += ["", "#### Steps that failed", ""] + [f"- {e}" for e in results.errors]
    spent = {k: v for k, v in results.timings.items() if k.endswith("_s")}
    load_start = results.timings.get("loadavg_start", 0.0)
    load_end = results.timings.get("loadavg_end", 0.0)
    lines += ["", "Time spent: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s"
                                             for k, v in spent.items()) + ".",
              "", f"1-minute load average at the start {load_start:.1f}, at the end "
                  f"{load_end:.1f}; CPU busy "
                  "fraction as each round began: "
              + (", ".join(f"{b:.0%}" for b in results.busy) or "-") + ".",
              RESULTS_END]
    return "\n".join(lines) + "\n"


def write_doc(section: str, path: Path = DOC_PATH) -> None:
    """Replace the generated section between this benchmark's markers (or append it under
    its own heading)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if RESULTS_BEGIN in text and RESULTS_END in text:
        before, rest = text.split(RESULTS_BEGIN, 1)
        text = before + section.rstrip("\n") + rest.split(RESULTS_END, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION_HEADING}\n\n" + section
    path.write_text(text)


def load_results(path: Path) -> Results:
    """A run's results from its ``--json`` file (to render it again, e.g. with an OHIF run made
    after it)."""
    data = json.loads(path.read_text())
    results = Results(**{k: v for k, v in data.items()
                         if k not in ("warm", "searches", "mixed")})
    results.warm = [Retrieval(**r) for r in data.get("warm", [])]
    results.searches = [SearchRound(**s) for s in data.get("searches", [])]
    results.mixed = [LoadKind(**k) for k in data.get("mixed", [])]
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.warm_paths",
                                     description=__doc__)
    sub = parser.add_subparsers(dest="command")
    again = sub.add_parser("render", help="write the report of a saved run (--json) again")
    again.add_argument("saved", type=Path, help="the run's --json file")
    parser.add_argument("--slices", type=int, default=300, help="slices of the CT study")
    parser.add_argument("--repeat", type=int, default=5, help="rounds of part 1")
    parser.add_argument("--search-rounds", type=int, default=12,
                        help="rounds of part 2: ten searches at once over one alone moves by "
                             "+-30 %% from round to round on two CPUs, so its median needs more "
                             "rounds than the retrievals")
    parser.add_argument("--load-seconds", type=float, default=60.0, help="mixed load duration")
    parser.add_argument("--clients", type=int, default=20, help="mixed load clients")
    parser.add_argument("--ohif-json", type=Path, help="a benchmarks.ohif_load --json file")
    parser.add_argument("--output", type=Path, default=DOC_PATH)
    parser.add_argument("--json", type=Path, help="every measurement as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "render":
        results = load_results(args.saved)
        if args.ohif_json:
            results.ohif = ohif_figures(args.ohif_json)
        write_doc(render(results), args.output)
        log(f"results of {args.saved} written to {args.output}")
        return 0
    if (args.slices < 1 or args.repeat < 1 or args.search_rounds < 1 or args.clients < 1
            or args.load_seconds <= 0):
        raise SystemExit("--slices, --repeat, --search-rounds, --clients and --load-seconds "
                         "must be positive")
    command = shlex.join(["python", "-m", "benchmarks.warm_paths", *argv])
    t0 = time.perf_counter()
    results = run(args, command)
    results.timings["total_s"] = time.perf_counter() - t0
    write_doc(render(results), args.output)
    log(f"results written to {args.output}")
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=2, default=str))
    log_targets(targets(results))
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())

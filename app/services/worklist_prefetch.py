"""Prefetch a worklist (issue #14 item 1): fill the cache with the studies a QIDO-style query
finds, or with listed StudyInstanceUIDs, before anyone opens them.

A run resolves its studies (one study-level search through QueryService, relative dates such as
``StudyDate=today`` resolved first), lists each study's series (WadoService.study_series, one
C-FIND per study, cached), then fills the cache study by study, series by series
(WadoService.warm, single-flight with interactive requests for the same series), bounded by:

- ``max_studies``: the first N studies the search answers (or the first N UIDs given);
- ``max_bytes``: no new series starts once the bytes this run filled reach the budget (series
  in flight finish, so a run may overshoot by at most ``concurrency`` series). Bytes are those
  the cache holds for each series this run filled, measured after its fill (the lengths of the
  stored Part 10 entries, asked of the backend without reading them back); series that were
  cached already are skipped and count no bytes;
- ``concurrency``: how many series are retrieved at once, i.e. how many of the PACS's
  associations the run may hold (the association budget). Default 1, so interactive users keep
  the rest of the pool and of the PACS's association limit.

Prefetch yields to interactive requests: before it starts a series, it waits while other cache
fills run in this process (a viewer's retrievals, or on-search prefetches), up to
``YIELD_AT_MOST`` seconds each time, so a viewer opening a study is not queued behind it.

Resume: a series already complete in the cache is skipped (WadoService.warm does nothing for it),
so running the same worklist again after an interruption continues where the last run stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from app.cache.store import GatewayCache
from app.dicomweb.attributes import QueryLevel
from app.dicomweb.refs import SeriesRef, check_uid
from app.dicomweb.relative_dates import resolve_relative_dates
from app.dicomweb.search import parse_search
from app.errors import BadRequest, Conflict, GatewayError
from app.metrics import Metrics
from app.services.query import QueryService
from app.services.wado import WadoService

log = logging.getLogger(__name__)

STUDY_INSTANCE_UID = 0x0020000D
DEFAULT_MAX_STUDIES = 50
MAX_STUDIES = 10_000
MAX_CONCURRENCY = 8
FINISHED = ("done", "failed", "cancelled")
YIELD_AT_MOST = 30.0  # seconds a series waits for interactive fills before starting anyway
YIELD_POLL = 0.05


@dataclass(frozen=True)
class PrefetchRequest:
    """What to prefetch and within which bounds (validated: see ``PrefetchRequest.of``)."""

    query: tuple[tuple[str, str], ...] = ()
    studies: tuple[str, ...] = ()
    max_studies: int = DEFAULT_MAX_STUDIES
    max_bytes: int | None = None
    concurrency: int = 1
    pacs: str | None = None

    @classmethod
    def of(cls, query: dict[str, Any] | None, studies: list[str] | None, *,
           max_studies: int | None = None, max_bytes: int | None = None,
           concurrency: int | None = None, pacs: str | None = None) -> PrefetchRequest:
        """A request from loose input; BadRequest for anything out of bounds."""
        if (query is None) == (studies is None):
            raise BadRequest('give either "query" (QIDO study parameters) or "studies" '
                             "(a list of StudyInstanceUIDs)")
        pairs: list[tuple[str, str]] = []
        for name, value in (query or {}).items():
            values = value if isinstance(value, list) else [value]
            for item in values:
                if not isinstance(item, (str, int)) or isinstance(item, bool):
                    raise BadRequest(f"query parameter {name!r}: give a string value")
                pairs.append((str(name), str(item)))
        # Parsed now only to validate, so a bad query is a 400 rather than a failed run. A
        # parameter QIDO-RS would ignore (with a Warning) is refused: ignoring it here would
        # widen the worklist, perhaps to the whole PACS.
        parsed = parse_search(resolve_relative_dates(pairs, date.today()), level=QueryLevel.STUDY)
        if parsed.ignored:
            raise BadRequest(f"query: unknown parameters {', '.join(parsed.ignored)}")
        uids = tuple(check_uid(u, "StudyInstanceUID") for u in (studies or []))
        if studies is not None and not uids:
            raise BadRequest('"studies" is empty')
        if max_studies is not None and not 1 <= max_studies <= MAX_STUDIES:
            raise BadRequest(f"max_studies must be between 1 and {MAX_STUDIES}")
        if max_bytes is not None and max_bytes < 1:
            raise BadRequest("max_bytes must be a positive number of bytes")
        if concurrency is not None and not 1 <= concurrency <= MAX_CONCURRENCY:
            raise BadRequest(f"concurrency must be between 1 and {MAX_CONCURRENCY}")
        return cls(query=tuple(pairs), studies=uids,
                   max_studies=max_studies or DEFAULT_MAX_STUDIES, max_bytes=max_bytes,
                   concurrency=concurrency or 1, pacs=pacs)


@dataclass
class PrefetchProgress:
    """Where a run stands; ``as_json`` is what the admin endpoint and the CLI show."""

    run: int
    state: str = "resolving"  # resolving, running, done, failed, cancelled
    started: float = field(default_factory=time.time)
    finished: float | None = None
    studies_total: int = 0
    studies_done: int = 0
    series_total: int = 0
    series_done: int = 0
    series_filled: int = 0
    series_skipped: int = 0
    series_failed: int = 0
    series_in_flight: int = 0
    peak_in_flight: int = 0
    bytes_filled: int = 0
    yielded: float = 0.0  # seconds spent waiting for interactive fills
    stopped_by: str | None = None  # "max_bytes" when the budget stopped the run early
    error: str | None = None
    limits: dict[str, Any] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.state not in FINISHED

    def elapsed(self) -> float:
        return max((self.finished or time.time()) - self.started, 1e-6)

    def rate(self) -> float:
        """Bytes filled per second since the run started."""
        return self.bytes_filled / self.elapsed()

    def eta(self) -> float | None:
        """Seconds left, from the average time per series so far (and the byte budget, when it
        binds sooner); None before the first series or once finished."""
        if not self.running or self.series_done == 0:
            return None
        remaining = max(self.series_total - self.series_done, 0)
        eta = remaining * self.elapsed() / self.series_done
        budget = self.limits.get("max_bytes")
        if budget and self.bytes_filled and self.rate() > 0:
            eta = min(eta, max(budget - self.bytes_filled, 0) / self.rate())
        return round(eta, 1)

    def as_json(self) -> dict[str, Any]:
        return {
            "run": self.run, "state": self.state, "started": self.started,
            "finished": self.finished, "elapsed": round(self.elapsed(), 3),
            "studies": {"done": self.studies_done, "total": self.studies_total},
            "series": {"done": self.series_done, "total": self.series_total,
                       "filled": self.series_filled, "skipped": self.series_skipped,
                       "failed": self.series_failed, "in_flight": self.series_in_flight,
                       "peak_in_flight": self.peak_in_flight},
            "bytes": self.bytes_filled, "rate": round(self.rate(), 1), "eta": self.eta(),
            "yielded": round(self.yielded, 3),
            "stopped_by": self.stopped_by, "error": self.error, "limits": self.limits,
        }


class WorklistPrefetcher:
    """One worklist prefetch run at a time per gateway process, in the background."""

    def __init__(self, query: Callable[[str | None], QueryService],
                 wado: Callable[[str | None], WadoService],
                 cache: Callable[[str | None], GatewayCache | None], metrics: Metrics,
                 fills_running: Callable[[], int] = lambda: 0,
                 today: Callable[[], date] = date.today) -> None:
        self._query = query
        self._wado = wado
        self._cache = cache
        self._metrics = metrics
        self._fills_running = fills_running
        self._today = today
        self._runs = 0
        self.progress: PrefetchProgress | None = None
        self._task: asyncio.Task[None] | None = None
        for name, read, text in (
            ("worklist_prefetch_running", lambda p: 1.0 if p.running else 0.0,
             "1 while a worklist prefetch runs"),
            ("worklist_prefetch_studies_planned", lambda p: p.studies_total,
             "studies in the current (or last) worklist prefetch"),
            ("worklist_prefetch_studies_done", lambda p: p.studies_done,
             "studies of the current (or last) worklist prefetch done"),
            ("worklist_prefetch_series_planned", lambda p: p.series_total,
             "series in the current (or last) worklist prefetch"),
            ("worklist_prefetch_series_done", lambda p: p.series_done,
             "series of the current (or last) worklist prefetch done"),
            ("worklist_prefetch_bytes_filled", lambda p: p.bytes_filled,
             "bytes filled by the current (or last) worklist prefetch"),
            ("worklist_prefetch_rate_bytes_per_second", lambda p: p.rate(),
             "fill rate of the current (or last) worklist prefetch"),
        ):
            metrics.gauge(name, self._reader(read), text)

    def _reader(self, read: Callable[[PrefetchProgress], float]) -> Callable[[], float]:
        return lambda: float(read(self.progress)) if self.progress is not None else 0.0

    @property
    def running(self) -> bool:
        return self.progress is not None and self.progress.running

    def start(self, request: PrefetchRequest) -> PrefetchProgress:
        """Start a run in the background; Conflict while one runs, LookupError for an unknown
        PACS. A query that finds nothing is a run with no studies, done at once."""
        if self.running:
            raise Conflict("a worklist prefetch is already running; GET /admin/prefetch for "
                           "its progress")
        if self._cache(request.pacs) is None:
            raise Conflict("caching is off (cache_backend = none): there is nothing to fill")
        self._runs += 1
        progress = PrefetchProgress(run=self._runs, limits={
            "max_studies": request.max_studies, "max_bytes": request.max_bytes,
            "concurrency": request.concurrency})
        self.progress = progress
        self._metrics.inc("worklist_prefetch_runs_total")
        self._task = asyncio.get_running_loop().create_task(
            self._run(request, progress), name=f"worklist prefetch {progress.run}")
        return progress

    async def wait(self) -> None:
        """Until the current run (if any) has finished."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def close(self) -> None:
        """Cancel a running run (at shutdown)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        await self.wait()

    # -- a run -------------------------------------------------------------------------------

    async def _run(self, request: PrefetchRequest, progress: PrefetchProgress) -> None:
        try:
            studies = await self._studies(request)
            progress.studies_total = len(studies)
            plan: list[tuple[str, list[str]]] = []
            wado = self._wado(request.pacs)
            for study in studies:
                try:
                    series = await wado.study_series(study)
                except GatewayError as exc:
                    log.info("worklist prefetch: listing study %s failed: %s", study,
                             exc.detail)
                    series = []
                plan.append((study, series))
                progress.series_total += len(series)
            progress.state = "running"
            await self._fill(request, progress, plan)
            progress.state = "done"
        except asyncio.CancelledError:
            progress.state = "cancelled"
            raise
        except GatewayError as exc:
            progress.state, progress.error = "failed", exc.detail
            log.warning("worklist prefetch %d failed: %s", progress.run, exc.detail)
        except Exception as exc:  # a background task: report, never lose it
            progress.state, progress.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("worklist prefetch %d failed", progress.run)
        finally:
            progress.finished = time.time()
            self._metrics.inc("worklist_prefetch_runs_finished_total", state=progress.state)
            log.info("worklist prefetch %d %s: %d/%d studies, %d/%d series (%d filled, %d "
                     "skipped, %d failed), %d bytes", progress.run, progress.state,
                     progress.studies_done, progress.studies_total, progress.series_done,
                     progress.series_total, progress.series_filled, progress.series_skipped,
                     progress.series_failed, progress.bytes_filled)

    async def _yield(self, progress: PrefetchProgress) -> None:
        """Wait while fills other than this run's own run in this process (at most
        ``YIELD_AT_MOST`` seconds)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        # Polled: the fill count is read from SingleFlight, which signals no change of it.
        while (self._fills_running() > progress.series_in_flight  # noqa: ASYNC110
               and loop.time() - start < YIELD_AT_MOST):
            await asyncio.sleep(YIELD_POLL)
        progress.yielded += loop.time() - start

    async def _studies(self, request: PrefetchRequest) -> list[str]:
        """The StudyInstanceUIDs to prefetch, at most ``max_studies``, in the PACS's order."""
        if request.studies:
            return list(dict.fromkeys(request.studies))[:request.max_studies]
        params = resolve_relative_dates(request.query, self._today())
        query = parse_search(params, level=QueryLevel.STUDY, default_limit=request.max_studies,
                             max_limit=request.max_studies)
        result = await self._query(request.pacs).search(query, "")
        uids: list[str] = []
        for ds in result.datasets:
            element = ds.get(STUDY_INSTANCE_UID)
            uid = str(element.value) if element is not None and element.value else ""
            if uid and uid not in uids:
                uids.append(uid)
        return uids[:request.max_studies]

    async def _fill(self, request: PrefetchRequest, progress: PrefetchProgress,
                    plan: list[tuple[str, list[str]]]) -> None:
        wado = self._wado(request.pacs)
        cache = self._cache(request.pacs)
        left = {study: len(series) for study, series in plan}
        progress.studies_done += sum(1 for count in left.values() if count == 0)
        queue = [(study, uid) for study, series in plan for uid in series]
        slots = asyncio.Semaphore(request.concurrency)
        tasks: set[asyncio.Task[None]] = set()

        async def one(study: str, series: str) -> None:
            try:
                filled = await wado.warm(SeriesRef(study, series))
                if filled:
                    size = await cache.series_bytes(series) if cache is not None else 0
                    progress.bytes_filled += size
                    progress.series_filled += 1
                    self._metrics.inc("worklist_prefetch_bytes_total", size)
                    self._metrics.inc("worklist_prefetch_series_total", outcome="filled")
                else:
                    progress.series_skipped += 1
                    self._metrics.inc("worklist_prefetch_series_total", outcome="skipped")
            except GatewayError as exc:
                progress.series_failed += 1
                self._metrics.inc("worklist_prefetch_series_total", outcome="failed")
                log.info("worklist prefetch: series %s failed: %s", series, exc.detail)
            except Exception:  # one series' surprise must not end the run
                progress.series_failed += 1
                self._metrics.inc("worklist_prefetch_series_total", outcome="failed")
                log.exception("worklist prefetch: series %s failed", series)
            finally:
                progress.series_in_flight -= 1
                progress.series_done += 1
                left[study] -= 1
                if left[study] == 0:
                    progress.studies_done += 1
                slots.release()

        try:
            for study, series in queue:
                await slots.acquire()
                budget = request.max_bytes
                if budget is not None and progress.bytes_filled >= budget:
                    slots.release()
                    progress.stopped_by = "max_bytes"
                    break
                await self._yield(progress)
                progress.series_in_flight += 1
                progress.peak_in_flight = max(progress.peak_in_flight,
                                              progress.series_in_flight)
                task = asyncio.get_running_loop().create_task(one(study, series))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*list(tasks))
        finally:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*list(tasks), return_exceptions=True)

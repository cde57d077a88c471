"""The gateway's Prometheus metrics (prometheus_client), declared in one table.

One ``Metrics`` per app, created in the lifespan and injected, never a module-level singleton:
each has its own registry, so tests can run several gateways in one process. With several
worker processes (``uvicorn --workers N``, or ``dicomweb-gateway serve --workers N``) set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before the workers start: every worker then
writes its samples there and any worker's ``/metrics`` answers the sum over all of them.
Gauges read from the app's state (pool sizes, fills in progress) are sampled into that
directory every ``GAUGE_SAMPLE_S`` seconds by each worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase

log = logging.getLogger(__name__)
disable_created_metrics()  # no *_created series: they double the output and nobody graphs them
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
GAUGE_SAMPLE_S = 1.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Kind = Literal["counter", "gauge", "histogram"]
# How a gauge's per-process values add up across workers (prometheus_client multiprocess modes).
GaugeMode = Literal["livesum", "livemin", "livemax", "liveall"]

# Seconds: a QIDO answered from the cache in ~1 ms, a study streamed for minutes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True)
class Definition:
    """One metric: its type, help text, label names, and for gauges how workers add up."""

    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    mode: GaugeMode = "livesum"
    buckets: tuple[float, ...] = LATENCY_BUCKETS


DEFINITIONS: dict[str, Definition] = {
    # HTTP
    "http_request_duration_seconds": Definition(
        "histogram", "HTTP requests by route template, method and status: time until the last "
        "byte of the response was handed to the server", ("route", "method", "status")),
    "http_response_bytes_total": Definition(
        "counter", "response body bytes sent (streamed), by route template and method",
        ("route", "method")),
    # DIMSE
    "dimse_operation_duration_seconds": Definition(
        "histogram", "DIMSE operations on an association, by PACS, operation and final status "
        "(0xNNNN, or what ended it: timeout, aborted, error, cancelled)",
        ("peer", "operation", "status")),
    "dimse_association_wait_seconds": Definition(
        "histogram", "time an operation waited for an association slot (process and "
        "cluster-wide budget)", ("peer",)),
    "dimse_association_wait_timeouts_total": Definition(
        "counter", "operations that found no association slot within association_wait_timeout "
        "(answered 503)", ("peer",)),
    "dimse_associations_open": Definition(
        "gauge", "associations open to a PACS (in use or idle in the pool)", ("peer",)),
    "dimse_associations_in_use": Definition(
        "gauge", "associations carrying an operation", ("peer",)),
    "dimse_associations_waiting": Definition(
        "gauge", "operations waiting for an association slot", ("peer",)),
    "dimse_association_budget_up": Definition(
        "gauge", "1 while the cluster-wide association budget (Redis) answers; 0 while each "
        "process falls back to its own limit", (), "livemin"),
    "dimse_retrievals_total": Definition(
        "counter", "C-GET/C-MOVE retrievals started", ("peer", "operation")),
    "dimse_retrieve_partial_total": Definition(
        "counter", "retrievals where some sub-operations failed", ("peer",)),
    "dimse_retrieve_lost_total": Definition(
        "counter", "retrievals the PACS reported sent but nothing arrived", ("peer",)),
    "dimse_get_refusals_total": Definition(
        "counter", "C-GETs a PACS refused before any instance (retrieve_method auto), each "
        "followed by a C-MOVE when the storage SCP runs", ("peer",)),
    "dimse_move_fallbacks_total": Definition(
        "counter", "C-MOVEs sent for instances a C-GET did not deliver (move_fallback)",
        ("peer",)),
    "dimse_capability_learned_total": Definition(
        "counter", "capabilities learned about a PACS (e.g. C-GET refused)",
        ("peer", "capability", "value")),
    "dimse_move_retrievals_in_progress": Definition(
        "gauge", "C-MOVE retrievals waiting for sub-operations"),
    # QIDO
    "qido_searches_total": Definition(
        "counter", "QIDO-RS searches, by where the answer came from", ("peer", "source")),
    "qido_refreshes_total": Definition(
        "counter", "cached searches run again in the background before they expire",
        ("peer",)),
    "qido_capped_subqueries_total": Definition(
        "counter", "StudyDate/StudyTime sub-queries completing capped C-FINDs", ("peer",)),
    "qido_capped_incomplete_total": Definition(
        "counter", "capped C-FINDs left incomplete by the sub-query bounds", ("peer",)),
    # cache
    "cache_hits_total": Definition(
        "counter", "requests answered from the cache, by what was found", ("kind",)),
    "cache_misses_total": Definition(
        "counter", "requests that had to start or join a retrieval", ("kind",)),
    "cache_errors_total": Definition(
        "counter", "calls to Redis that failed and were answered by the local fallback"),
    "cache_prefetches_total": Definition(
        "counter", "series prefetches started, by what triggered them", ("trigger",)),
    "cache_fills_in_progress": Definition(
        "gauge", "cache fills (single-flight retrievals) running"),
    "cache_backend_up": Definition(
        "gauge", "1 while the shared cache backend answers (the lowest over workers)", (),
        "livemin"),
    # federation
    "federation_search_failures_total": Definition(
        "counter", "federated searches one PACS failed or timed out in (answered with a 299 "
        "warning)", ("peer", "reason")),
    "federation_failovers_total": Definition(
        "counter", "federated retrievals a PACS failed before sending anything (the next one "
        "is tried)", ("peer", "status")),
    # STOW-RS
    "stow_instances_total": Definition(
        "counter", "STOW-RS instances by outcome (stored, warning, failed)", ("peer", "outcome")),
    # worklist prefetch
    "worklist_prefetch_runs_total": Definition("counter", "worklist prefetch runs started"),
    "worklist_prefetch_runs_finished_total": Definition(
        "counter", "worklist prefetch runs finished, by how", ("state",)),
    "worklist_prefetch_series_total": Definition(
        "counter", "series a worklist prefetch filled, found cached already, or failed to fill",
        ("outcome",)),
    "worklist_prefetch_bytes_total": Definition(
        "counter", "bytes filled by worklist prefetches"),
    "worklist_prefetch_running": Definition(
        "gauge", "1 while a worklist prefetch runs", (), "livemax"),
    "worklist_prefetch_studies_planned": Definition(
        "gauge", "studies in the current (or last) worklist prefetch", (), "livemax"),
    "worklist_prefetch_studies_done": Definition(
        "gauge", "studies of the current (or last) worklist prefetch done", (), "livemax"),
    "worklist_prefetch_series_planned": Definition(
        "gauge", "series in the current (or last) worklist prefetch", (), "livemax"),
    "worklist_prefetch_series_done": Definition(
        "gauge", "series of the current (or last) worklist prefetch done", (), "livemax"),
    "worklist_prefetch_bytes_filled": Definition(
        "gauge", "bytes filled by the current (or last) worklist prefetch", (), "livemax"),
    "worklist_prefetch_rate_bytes_per_second": Definition(
        "gauge", "fill rate of the current (or last) worklist prefetch", (), "livemax"),
}


def multiprocess_dir() -> str | None:
    """The shared samples directory when multiprocess mode is on (``PROMETHEUS_MULTIPROC_DIR``)."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The app's metrics: counters and histograms updated where things happen, gauges read
    from the app's state; ``render`` gives the Prometheus text of this process, or of every
    worker in multiprocess mode."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._registry = CollectorRegistry(auto_describe=True)
        self._multiprocess = multiprocess_dir() is not None
        self._collectors: dict[str, MetricWrapperBase] = {}
        self._readers: dict[tuple[str, tuple[tuple[str, str], ...]], Callable[[], float]] = {}
        self._sampler: asyncio.Task[None] | None = None
        for name, spec in DEFINITIONS.items():
            self._collectors[name] = self._build(name, spec)

    def _build(self, name: str, spec: Definition) -> MetricWrapperBase:
        if spec.kind == "counter":
            return Counter(name, spec.help, spec.labels, registry=self._registry)
        if spec.kind == "histogram":
            return Histogram(name, spec.help, spec.labels, registry=self._registry,
                             buckets=spec.buckets)
        return Gauge(name, spec.help, spec.labels, registry=self._registry,
                     multiprocess_mode=spec.mode)

    @property
    def registry(self) -> CollectorRegistry:
        """This process's registry (every metric the app declares)."""
        return self._registry

    def _child(self, name: str, labels: dict[str, str]) -> MetricWrapperBase:
        metric = self._collectors[name]
        return metric.labels(**labels) if labels else metric

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` to a counter."""
        self._child(name, labels).inc(amount)  # type: ignore[attr-defined]

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation in a histogram."""
        self._child(name, labels).observe(value)  # type: ignore[attr-defined]

    def value(self, name: str, **labels: str) -> float:
        """This process's value of a counter (or a histogram's count): the sum over the series
        whose labels include ``labels`` (all of them when none are given)."""
        spec = DEFINITIONS[name]
        sample = name if spec.kind != "histogram" else f"{name}_count"
        if spec.kind == "counter" and not sample.endswith("_total"):
            sample += "_total"
        total = 0.0
        for family in self._collectors[name].collect():
            for s in family.samples:
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def gauge(self, name: str, read: Callable[[], float], help_text: str = "",
              **labels: str) -> None:
        """Have a declared gauge report ``read()`` (with ``labels``): read at each scrape, and in
        multiprocess mode sampled every ``GAUGE_SAMPLE_S`` seconds by each worker."""
        del help_text  # the help text lives in DEFINITIONS
        if DEFINITIONS[name].kind != "gauge":
            raise ValueError(f"{name} is not a gauge")
        with self._lock:
            self._readers[(name, tuple(sorted(labels.items())))] = read

    def sample_gauges(self) -> None:
        """Set every gauge from its reader (a reader that fails leaves its gauge as it was)."""
        with self._lock:
            readers = list(self._readers.items())
        for (name, labels), read in readers:
            try:
                current = float(read())
            except Exception:  # a gauge that cannot be read is not fatal
                continue
            self._child(name, dict(labels)).set(current)  # type: ignore[attr-defined]

    def render(self) -> str:
        """The Prometheus text exposition: every worker's samples in multiprocess mode."""
        self.sample_gauges()
        if not self._multiprocess:
            return generate_latest(self._registry).decode()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry).decode()

    async def start(self) -> None:
        """In multiprocess mode, sample the gauges periodically (other workers' scrapes read
        them from the shared directory)."""
        if self._multiprocess and self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(self._sample_forever())

    async def _sample_forever(self) -> None:
        while True:
            self.sample_gauges()
            await asyncio.sleep(GAUGE_SAMPLE_S)

    async def close(self) -> None:
        """Stop sampling; in multiprocess mode, drop this worker's live gauges (it is ending)."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        directory = multiprocess_dir()
        if directory is not None:
            with contextlib.suppress(OSError):
                multiprocess.mark_process_dead(os.getpid(), directory)

    def names(self) -> Iterator[str]:
        """Every sample name this registry can expose (e.g. ``x_bucket``, ``x_total``)."""
        for name, spec in DEFINITIONS.items():
            if spec.kind == "counter":
                yield name if name.endswith("_total") else f"{name}_total"
            elif spec.kind == "histogram":
                yield from (f"{name}_bucket", f"{name}_count", f"{name}_sum")
            else:
                yield name

"""The services of the running gateway, per configured PACS; built once in the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from app.cache.backend import CacheBackend
from app.cache.factory import build_backend
from app.cache.resilient import ResilientBackend
from app.cache.singleflight import SingleFlight
from app.cache.store import GatewayCache
from app.cache.study_locations import StudyLocations
from app.dicomweb.refs import SeriesRef
from app.dimse.client import DimseClients
from app.errors import GatewayError
from app.metrics import Metrics
from app.services.capabilities import PeerCapabilities
from app.services.federated_query import FederatedQuery
from app.services.federated_wado import FederatedWado, StudyLocator
from app.services.move_relay import MoveRelay
from app.services.pacs_retrieval import PacsRetrieval
from app.services.query import QueryService
from app.services.store import StoreService
from app.services.wado import WadoService
from app.services.worklist_prefetch import WorklistPrefetcher
from app.settings import PacsPeer, Settings

log = logging.getLogger(__name__)
PREFETCH_MAX_STUDIES = 10
PREFETCH_SERIES_AT_ONCE = 2
PREFETCH_LOOKUP_MAX_STUDIES = 2  # a search naming more UIDs is a list, not a study opened
SEARCH_EVENT_TTL = 60.0
FEDERATED = "(federated)"
"""The name under which ``{prefix}/...`` answers from every federated PACS (``federate``); no
PACS name can be it (names are letters, digits and ``_.-``)."""
AnyQuery = QueryService | FederatedQuery
AnyWado = WadoService | FederatedWado


class Services:
    """Entry point of the HTTP layer into the gateway: per-PACS QIDO and WADO services, the
    cache, echo and metrics."""

    def __init__(self, settings: Settings, dimse: DimseClients, metrics: Metrics,
                 backend: CacheBackend | None = None, relay: MoveRelay | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._prefetch_slots = asyncio.Semaphore(2)
        self._series_prefetch_slots = asyncio.Semaphore(PREFETCH_SERIES_AT_ONCE)
        self._prefetch_tasks: set[asyncio.Task[None]] = set()
        self._dimse = dimse
        self.backend = backend if backend is not None else build_backend(
            settings, lambda: metrics.inc("cache_errors_total"))
        self.flights = (SingleFlight(self.backend, lock_ttl=settings.cache_lock_ttl)
                        if self.backend is not None else None)
        # Coalesced searches: their event logs only say done or failed, kept for a minute.
        self.search_flights = (SingleFlight(self.backend, lock_ttl=settings.cache_lock_ttl,
                                            event_ttl=SEARCH_EVENT_TTL)
                               if self.backend is not None else None)
        self.caches = {
            p.name: GatewayCache(self.backend, p.name, ttl=settings.cache_ttl,
                                 query_ttl=settings.qido_cache_ttl)
            for p in settings.pacs
        } if self.backend is not None else {}
        self._query = {p.name: QueryService(dimse.get(p.name), self.caches.get(p.name),
                                            self.search_flights, metrics,
                                            refresh_ahead=settings.qido_cache_refresh_ahead)
                       for p in settings.pacs}
        for p in settings.pacs:
            if p.move_fallback and not settings.storage_scp_wanted:
                log.warning("PACS %s: move_fallback is ignored while the storage SCP is off "
                            "(storage_scp_enabled = false)", p.name)
        self.capabilities = {p.name: PeerCapabilities(p, metrics) for p in settings.pacs}
        self._wado = {
            p.name: WadoService(PacsRetrieval(dimse.get(p.name), metrics, relay,
                                                settings.ae_title,
                                                p.move_fallback and settings.storage_scp_wanted,
                                                storage_scp=settings.storage_scp_wanted,
                                                capabilities=self.capabilities[p.name]),
                                metrics,
                                self.caches.get(p.name), self.flights)
            for p in settings.pacs
        }
        self._store = {
            p.name: StoreService(p.name, dimse.get(p.name).store_session,
                                 self.caches.get(p.name), metrics,
                                 max_instance_bytes=settings.stow_max_instance_bytes,
                                 max_request_bytes=settings.stow_max_request_bytes)
            for p in settings.pacs
        }
        self.federated: FederatedQuery | None = None
        self.federated_wado: FederatedWado | None = None
        names = settings.federated_names
        if names:
            shared = self.backend if settings.cache_backend == "redis" else None
            self.locations = StudyLocations(names, settings.federate_remembered_studies, shared,
                                            ttl=settings.cache_ttl)
            members = [self._query[n] for n in names]
            self.federated = FederatedQuery(
                members, {p.name: p.ae_title for p in settings.pacs}, self.locations, metrics,
                max_matches=settings.federate_max_matches,
                timeout=settings.federate_search_timeout)
            self.federated_wado = FederatedWado(
                [self._wado[n] for n in names], names,
                StudyLocator(members, self.locations, settings.federate_search_timeout),
                metrics)
        flights_now = self.flights
        self.worklist = WorklistPrefetcher(
            self.query, self.peer_wado, self.cache, metrics,
            fills_running=lambda: flights_now.running if flights_now is not None else 0)
        metrics.gauge("dimse_move_retrievals_in_progress", lambda: len(dimse.router),
                      "C-MOVE retrievals waiting for sub-operations")
        for p in settings.pacs:
            client = dimse.get(p.name)
            for index, name in enumerate(("dimse_associations_open", "dimse_associations_in_use",
                                          "dimse_associations_waiting")):
                metrics.gauge(name, lambda c=client, i=index: c.associations[i],  # type: ignore[misc]
                              peer=p.name)
        if self.flights is not None:
            flights = self.flights
            metrics.gauge("cache_fills_in_progress", lambda: flights.running,
                          "cache fills (single-flight retrievals) running in this process")
        if isinstance(self.backend, ResilientBackend):
            backend = self.backend
            metrics.gauge("cache_backend_up", lambda: 1.0 if backend.healthy else 0.0,
                          "1 while the shared cache backend answers")

    def peer(self, name: str | None = None) -> PacsPeer:
        """The named or default peer; LookupError when unknown."""
        return self.settings.peer(name)

    def dicomweb_root(self, name: str | None) -> str:
        """Which service a DICOMweb path answers from: the PACS it names, FEDERATED for the
        unnamed root while ``federate`` is set, else the default PACS (LookupError for an
        unknown name)."""
        if name is None and self.federated is not None:
            return FEDERATED
        return self.settings.peer(name).name

    def query(self, name: str | None = None) -> QueryService:
        """The QIDO-RS service for the named or default peer."""
        return self._query[self.settings.peer(name).name]

    def searcher(self, name: str | None = None) -> AnyQuery:
        """The QIDO-RS service for the named or default peer, or the federated one."""
        if name == FEDERATED and self.federated is not None:
            return self.federated
        return self.query(name)

    def wado(self, name: str | None = None) -> AnyWado:
        """The WADO-RS service for the named or default peer, or the federated one."""
        if name == FEDERATED and self.federated_wado is not None:
            return self.federated_wado
        return self._wado[self.settings.peer(name).name]

    def peer_wado(self, name: str | None = None) -> WadoService:
        """The WADO-RS service of one PACS (never the federated one)."""
        return self._wado[self.settings.peer(name).name]

    def store(self, name: str | None = None) -> StoreService:
        """The STOW-RS service for the named or default peer."""
        return self._store[self.settings.peer(name).name]

    def cache(self, name: str | None = None) -> GatewayCache | None:
        """The cache of the named or default peer (None when caching is off)."""
        return self.caches.get(self.settings.peer(name).name)

    def prefetch_studies(self, name: str | None, study_uids: list[str]) -> None:
        """Warm the cache with the first series of each study (prefetch_on_search), in the
        background, at most two at a time; failures are only logged."""
        if not self.settings.prefetch_on_search or self.flights is None:
            return
        wado = self.wado(name)

        async def one(study: str) -> None:
            async with self._prefetch_slots:
                try:
                    series = await wado.study_series(study)
                    if series:
                        await wado.warm(SeriesRef(study, series[0]))
                except GatewayError as exc:
                    log.info("prefetch of study %s failed: %s", study, exc.detail)

        for study in study_uids[:PREFETCH_MAX_STUDIES]:
            self._track(asyncio.get_running_loop().create_task(one(study)))

    def retrieve_operation(self, name: str | None = None) -> str:
        """How a peer is retrieved from now: "C-MOVE" for retrieve_method "move", and for
        "auto" while the PACS is known to refuse C-GET; "C-GET" otherwise."""
        peer = self.settings.peer(name)
        if peer.retrieve_method == "move" or (
                peer.retrieve_method == "auto" and self.capabilities[peer.name].get_refused):
            return "C-MOVE"
        return "C-GET"

    def prefetch_series(self, name: str | None, study_uid: str,
                        series: list[tuple[str, int | None]]) -> None:
        """Warm the cache with the series a client just listed for a study (the viewer reads
        them next), in the background, ``PREFETCH_SERIES_AT_ONCE`` at a time, within
        ``prefetch_study_max_series`` and ``prefetch_study_max_instances`` (series without an
        instance count count as none; they still count as series). ``series``: (UID, count)
        in the order listed; each series is filled at most once (single-flight)."""
        if not self.settings.prefetch_on_series_query or self.flights is None:
            return
        self._prefetch_listed(name, study_uid, series, "series_query")

    def prefetch_looked_up(self, name: str | None, study_uids: list[str]) -> None:
        """Warm the cache with the studies a search named by StudyInstanceUID (what a viewer
        asks when it opens a study by its UID, before listing its series): each study's series
        list (one C-FIND, cached), then its series as ``prefetch_series`` does, without
        instance counts (the series list has none)."""
        if (not self.settings.prefetch_on_study_lookup or self.flights is None
                or len(study_uids) > PREFETCH_LOOKUP_MAX_STUDIES):
            return
        wado = self.wado(name)

        async def one(study: str) -> None:
            try:
                series = await wado.study_series(study)
            except GatewayError as exc:
                log.info("prefetch of study %s failed: %s", study, exc.detail)
                return
            self._prefetch_listed(name, study, [(uid, None) for uid in series], "study_lookup")

        for study in study_uids:
            self._track(asyncio.get_running_loop().create_task(one(study),
                                                               name=f"prefetch {study}"))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._prefetch_tasks.add(task)
        task.add_done_callback(self._prefetch_tasks.discard)

    def _prefetch_listed(self, name: str | None, study_uid: str,
                         series: list[tuple[str, int | None]], trigger: str) -> None:
        """Fill ``series`` of a study in the background, within the prefetch bounds."""
        settings = self.settings
        wado = self.wado(name)
        chosen: list[str] = []
        instances = 0
        for uid, count in series[:settings.prefetch_study_max_series]:
            if count is not None and instances + count > settings.prefetch_study_max_instances:
                continue
            instances += count or 0
            chosen.append(uid)

        async def one(uid: str) -> None:
            async with self._series_prefetch_slots:
                try:
                    if await wado.warm(SeriesRef(study_uid, uid)):
                        self.metrics.inc("cache_prefetches_total", trigger=trigger)
                except GatewayError as exc:
                    log.info("prefetch of series %s failed: %s", uid, exc.detail)

        for uid in chosen:
            self._track(asyncio.get_running_loop().create_task(one(uid), name=f"prefetch {uid}"))

    async def echo(self, name: str | None = None) -> float:
        """C-ECHO a peer; round-trip seconds, or a GatewayError."""
        return await self._dimse.get(name).echo()

    async def cache_health(self) -> dict[str, Any]:
        """Whether the cache answers, for readiness."""
        if self.backend is None:
            return {"backend": "none", "status": "off"}
        healthy = (await self.backend.check() if isinstance(self.backend, ResilientBackend)
                   else await self.backend.ping())
        return {"backend": self.backend.name, "status": "ok" if healthy else "degraded"}

    async def close(self) -> None:
        """Stop prefetches and fills, release connections and worker threads."""
        await self.worklist.close()
        for store in self._store.values():
            await store.close()
        prefetches = list(self._prefetch_tasks)
        for task in prefetches:
            task.cancel()
        await asyncio.gather(*prefetches, return_exceptions=True)
        if self.flights is not None:
            await self.flights.close()
        if self.search_flights is not None:
            await self.search_flights.close()
        if self.backend is not None:
            await self.backend.close()
        await self._dimse.aclose()

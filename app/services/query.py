"""QIDO-RS search orchestration: a SearchQuery becomes one or more Study Root C-FINDs.

Hierarchical resources are one C-FIND. Relational resources (/series, /instances,
/studies/{s}/instances) and keys above the query level are answered with one C-FIND when the PACS
accepts relational queries (PS3.4 C.4.1.3.2), and otherwise by staged hierarchical queries (study
-> series -> image), merging upper-level attributes into the results (PS3.18 10.6.3.3).
``limit``/``offset`` are emulated: matches past the page cancel the C-FIND (C-CANCEL, then drain).
A request never holds one association while waiting for another, so it cannot deadlock the pool.

Identical concurrent searches (same PACS, same normalised query) are coalesced: one runs its
C-FINDs (counts included) under a single-flight lock, in this process or any other sharing the
cache, and the others wait for its result (kept briefly even when ``qido_cache_ttl`` is 0).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from app.cache.singleflight import Fill, FillContext, FillEvent, SingleFlight
from app.cache.store import GatewayCache
from app.dicomweb.attributes import (
    ALL_RETURN_KEYS,
    DROPPED_FROM_RESULTS,
    REQUIRED_RETURN_KEYS,
    UNIQUE_KEY,
    QueryLevel,
    level_of,
)
from app.dicomweb.counts import (
    has_value,
    wanted_keys,
)
from app.dicomweb.identifiers import build_identifier
from app.dicomweb.matching import DATE_TIME_PAIRS, can_match, combined_range_matches
from app.dicomweb.search import AttributePath, MatchKey, SearchQuery, is_private
from app.dicomweb.tags import MODALITIES_IN_STUDY, SPECIFIC_CHARACTER_SET, STUDY_RELATED_SERIES
from app.dimse.client import Client
from app.dimse.find import FindOutcome
from app.errors import GatewayError
from app.metrics import Metrics
from app.services.capped import INCOMPLETE_WARNING, CappedFind
from app.services.counts import CountsComputer, SeriesMemo
from app.services.fill_errors import error_from_event, failure_event
from app.services.search_result import AnswerMemo, SearchResult, with_retrieve_url

log = logging.getLogger(__name__)
LEVELS = (QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE)
SHARED_RESULT_TTL = 60.0
"""Seconds a coalesced search's result is kept for the identical searches that waited for it."""
REFRESHED_REMEMBERED = 1024
"""Query-cache entries remembered as refreshed already (each is refreshed at most once)."""


CAPPED_WARNING = INCOMPLETE_WARNING
UNSUPPORTED_KEYS_WARNING = "The PACS did not support some optional return keys."
# Warnings noticed while the C-FINDs of one search run (each search runs in its own task context).
_search_notes: ContextVar[set[str]] = ContextVar("search_notes")
# Series rows fetched to compute counts during one search, by StudyInstanceUID.
_search_series: ContextVar[SeriesMemo] = ContextVar("search_series")


def _note(text: str) -> None:
    notes = _search_notes.get(None)
    if notes is not None:
        notes.add(text)


def _note_outcome(outcome: FindOutcome, *, capped_handled: bool = False) -> None:
    """Warnings a C-FIND's outcome calls for; ``capped_handled``: a cap is being dealt with
    (app.services.capped), so it is not reported as such."""
    if outcome.capped and not capped_handled:
        _note(CAPPED_WARNING)
    if outcome.optional_keys_unsupported:
        _note(UNSUPPORTED_KEYS_WARNING)


class QueryService:
    """Runs searches against one PACS through its DIMSE client."""

    def __init__(self, client: Client, cache: GatewayCache | None = None,
                 flights: SingleFlight | None = None, metrics: Metrics | None = None, *,
                 refresh_ahead: float = 0.0) -> None:
        self._client = client
        self._refresh_ahead = refresh_ahead
        self._refreshed: OrderedDict[Any, None] = OrderedDict()  # entry ids refreshed here
        self._peer = client.peer
        self._cache = cache
        self._flights = flights
        self._metrics = metrics if metrics is not None else Metrics()
        self._counts = CountsComputer(client, _note_outcome)
        self._answers = AnswerMemo()
        self._capped = CappedFind(client, self._metrics, _note,
                                  lambda outcome: _note_outcome(outcome, capped_handled=True))

    # -- public -----------------------------------------------------------------------------

    @property
    def peer_name(self) -> str:
        """The name of the PACS this service searches."""
        return self._peer.name

    async def search(self, query: SearchQuery, base_url: str, *,
                     counts: bool = True) -> SearchResult:
        """Answer ``query``; results carry RetrieveURL under ``base_url``. ``counts=False``
        leaves out the computed ModalitiesInStudy and NumberOf*Related* values (a federated
        search computes them for its page only, with ``complete_counts``).

        The cache holds results without RetrieveURL: each answer, cached or not, gets it built
        from its own UIDs and this request's (validated) base URL, so a cached answer is the
        same for every client except for that base URL."""
        # A search that arrived before an identical one's fill ended shares its result, even
        # when the event loop (busy with that fill) gets to it only after the end.
        arrived = SingleFlight.ticket()
        key = [repr(query)] if counts else [repr(query), "no-counts"]
        digest = ""
        if self._cache is not None:  # a store since an identical search makes its answer stale
            generation = await self._cache.query_generation()
            digest = GatewayCache.query_digest([generation, *key] if generation else key)
        if self._cache is not None:
            hit = await self._cache.get_query(digest)
            if hit is not None:
                self._counted("cache")
                if self._refresh_due(hit):
                    await self._refresh(query, digest, counts, hit)
                return SearchResult.from_stored(hit, query.level, base_url, self._answers)
        if self._cache is None:
            result = await self._run(query, counts)
            self._counted("pacs")
            for ds in result.datasets:
                with_retrieve_url(ds, query.level, base_url)
            return result
        stored: dict[str, Any] | None = None
        if self._flights is not None:
            ran, stored = await self._coalesced(query, digest, counts, arrived)
            if not ran and stored is not None:
                self._counted("shared")
                return SearchResult.from_stored(stored, query.level, base_url, self._answers)
            if stored is None:
                log.info("the result of a coalesced search on %s is gone; searching again",
                         self._peer.name)
        if stored is None:
            stored = (await self._run(query, counts)).stored_form()
            await self._cache.put_query(digest, stored)
        self._counted("pacs")
        return SearchResult.from_stored(stored, query.level, base_url, self._answers)

    async def complete_counts(self, datasets: Sequence[Dataset], query: SearchQuery) -> list[str]:
        """Fill in the ModalitiesInStudy and NumberOf*Related* values ``query`` asks for and
        the PACS left out, for ``datasets`` found by a ``counts=False`` search; its warnings."""
        notes: set[str] = set()
        token = _search_notes.set(notes)
        series_token = _search_series.set({})
        try:
            plan = _Plan.of(query)
            await self._complete_counts(list(datasets), query.level,
                                        wanted_keys(query.level, plan.return_keys[query.level]))
        finally:
            _search_series.reset(series_token)
            _search_notes.reset(token)
        return sorted(notes)

    def _counted(self, source: str) -> None:
        self._metrics.inc("qido_searches_total", peer=self._peer.name, source=source)

    async def _run(self, query: SearchQuery, counts: bool = True) -> SearchResult:
        """The C-FINDs of one search, with its own warnings and count memo."""
        notes: set[str] = set()
        token = _search_notes.set(notes)
        series_token = _search_series.set({})
        try:
            return await self._search(query, notes, counts)
        finally:
            _search_series.reset(series_token)
            _search_notes.reset(token)

    async def _coalesced(self, query: SearchQuery, digest: str, counts: bool,
                         arrived: int) -> tuple[bool, dict[str, Any] | None]:
        """Run ``query`` once for every identical concurrent search (any process sharing the
        cache): whether this request's own fill ran it, and the stored result (without
        RetrieveURL), None when another request's result is gone."""
        cache, flights = self._cache, self._flights
        assert cache is not None and flights is not None
        own: list[dict[str, Any] | GatewayError] = []
        fill = self._fill(query, digest, counts, own)

        async def complete() -> bool:  # already answered by the query cache
            return cache.query_ttl > 0 and await cache.get_query(digest) is not None

        async for event in flights.follow(cache.keys.query_lock(digest),
                                          lambda token: cache.keys.query_events(digest, token),
                                          fill, complete, since=arrived):
            if event.kind == "failed":
                if own and isinstance(own[0], GatewayError):
                    raise own[0]
                raise error_from_event(event)
            if event.kind == "done":
                if own and isinstance(own[0], dict):
                    return True, own[0]
                if isinstance(event.result, dict):  # a fill in this process: no read back
                    return False, event.result
                break
        if cache.query_ttl > 0:
            hit = await cache.get_query(digest)
            if hit is not None:
                return False, hit
        return False, await cache.get_query_flight(digest)

    def _fill(self, query: SearchQuery, digest: str, counts: bool,
              own: list[dict[str, Any] | GatewayError]) -> Fill:
        """The single-flight fill of a search: run it, store the result for the query cache
        and for the searches waiting on it, and end with ``done`` (or ``failed``); what it
        made or met is appended to ``own``."""
        cache = self._cache
        assert cache is not None

        async def fill(ctx: FillContext) -> None:
            try:
                payload = (await self._run(query, counts)).stored_form()
            except GatewayError as exc:
                own.append(exc)
                await ctx.publish(failure_event(exc))
                return
            own.append(payload)
            await cache.put_query(digest, payload)
            if not await cache.put_query_flight(digest, payload, SHARED_RESULT_TTL):
                log.warning("a search's result on %s is too large to share", self._peer.name)
            await ctx.publish(FillEvent("done", result=payload))

        return fill

    def _refresh_due(self, hit: dict[str, Any]) -> bool:
        """Whether a query-cache hit is old enough to be searched again in the background
        (``qido_cache_refresh_ahead`` of ``qido_cache_ttl``; entries without a time never)."""
        if self._refresh_ahead <= 0 or self._cache is None or self._flights is None:
            return False
        made = hit.get("at")
        return (isinstance(made, (int, float))
                and time.time() - made >= self._refresh_ahead * self._cache.query_ttl)

    async def _refresh(self, query: SearchQuery, digest: str, counts: bool,
                       hit: dict[str, Any]) -> None:
        """Search again in the background so that an often-asked search never waits for the
        PACS (at most one refresh per search at a time, anywhere, coalesced with any search
        that misses meanwhile); a refresh that fails leaves the entry to expire."""
        cache, flights = self._cache, self._flights
        assert cache is not None and flights is not None
        entry = hit.get("id")
        if entry in self._refreshed:  # one try per entry: a failed refresh is not repeated
            return
        self._refreshed[entry] = None
        if len(self._refreshed) > REFRESHED_REMEMBERED:
            self._refreshed.popitem(last=False)

        async def due() -> bool:
            current = await cache.get_query(digest)
            return current is not None and self._refresh_due(current)

        if await flights.refresh(cache.keys.query_lock(digest),
                                 lambda token: cache.keys.query_events(digest, token),
                                 self._fill(query, digest, counts, []), due):
            self._metrics.inc("qido_refreshes_total", peer=self._peer.name)

    async def _search(self, query: SearchQuery, notes: set[str],
                      counts: bool = True) -> SearchResult:
        plan = _Plan.of(query)
        relational = False
        if plan.needs_staging and not plan.lower_keys:
            relational = await self._client.supports_relational()
        page: list[Dataset] = []
        more = False
        skipped = 0
        results = (self._relational_results(plan) if relational
                   else self._staged_results(plan, 0, {}, None))
        async with aclosing(results) as stream:
            async for ds in stream:
                if skipped < query.offset:
                    skipped += 1
                    continue
                if len(page) >= query.limit:
                    more = True
                    break
                page.append(ds)
        if counts:
            await self._complete_counts(page, query.level,
                                        wanted_keys(query.level, plan.return_keys[query.level]))
        return SearchResult([self._finish(ds, query) for ds in page], more,
                            sorted(notes))

    # -- result streams ---------------------------------------------------------------------

    async def _relational_results(self, plan: _Plan) -> AsyncGenerator[Dataset, None]:
        """One C-FIND at the target level carrying keys of every level (relational query)."""
        ident = build_identifier(
            plan.target,
            unique_keys=plan.query.path_uids,
            matches=[m for lvl in LEVELS for m in plan.keys[lvl]],
            return_keys=[k for lvl in LEVELS for k in plan.return_keys[lvl]],
            character_set=self._peer.query_character_set,
        )
        async for ds in self._stream(ident, plan.target, relational=True):
            if await self._acceptable(ds, plan, plan.all_keys, plan.target):
                yield ds

    async def _staged_results(
        self, plan: _Plan, depth: int, uids: dict[int, str], inherited: Dataset | None
    ) -> AsyncGenerator[Dataset, None]:
        """Hierarchical queries from the top needed level down to the target level."""
        level = LEVELS[depth]
        if depth < plan.start_depth:
            async for ds in self._staged_results(plan, depth + 1, uids, inherited):
                yield ds
            return
        own_uids = {t: v for t, v in plan.query.path_uids.items() if t in _unique_tags(depth + 1)}
        own_uids.update(uids)
        ident = build_identifier(
            level,
            unique_keys=own_uids,
            matches=plan.keys[level],
            return_keys=plan.return_keys[level],
            character_set=self._peer.query_character_set,
        )
        if level == plan.target:
            if plan.lower_keys:
                candidates = await self._collect(ident, level)
                for ds in candidates:
                    uid = ds.get(UNIQUE_KEY[level])
                    if uid is None or not uid.value:
                        continue
                    below = {**own_uids, UNIQUE_KEY[level]: str(uid.value)}
                    if await self._acceptable(ds, plan, plan.keys[level], level) and (
                        await self._has_descendant(plan, LEVELS.index(level) + 1, below)
                    ):
                        yield _merge(inherited, ds)
                return
            async for ds in self._stream(ident, level):
                if await self._acceptable(ds, plan, plan.keys[level], level):
                    yield _merge(inherited, ds)
            return
        parents = await self._collect(ident, level)
        if LEVELS[depth + 1] == plan.target and self._peer.staged_find_concurrency > 1:
            async for ds in self._children_ahead(plan, depth, own_uids, inherited, parents):
                yield ds
            return
        async with aclosing(self._children(plan, depth, own_uids, inherited, parents)) as kids:
            async for child in kids:
                async for ds in self._staged_results(plan, depth + 1, *child):
                    yield ds

    async def _children(self, plan: _Plan, depth: int, own_uids: dict[int, str],
                        inherited: Dataset | None, parents: list[Dataset]
                        ) -> AsyncGenerator[tuple[dict[int, str], Dataset | None], None]:
        """For each accepted parent with a UID, its children's unique keys and carried
        attributes (the inherited attributes merged into the parent), in the parents' order."""
        level = LEVELS[depth]
        for parent in parents:
            if not await self._acceptable(parent, plan, plan.keys[level], level):
                continue
            uid_element = parent.get(UNIQUE_KEY[level])
            if uid_element is None or not uid_element.value:
                continue
            carried = _merge(inherited, parent) if plan.carry_upper else None
            yield {**own_uids, UNIQUE_KEY[level]: str(uid_element.value)}, carried

    async def _children_ahead(self, plan: _Plan, depth: int, own_uids: dict[int, str],
                              inherited: Dataset | None, parents: list[Dataset]
                              ) -> AsyncGenerator[Dataset, None]:
        """The target-level matches under each parent, in the parents' order, with up to
        ``staged_find_concurrency`` parents' C-FINDs running at once: a PACS without
        relational queries answers ``/series`` with one C-FIND per study, and one after the
        other they add up. Leaving early cancels the C-FINDs still running."""

        async def children(uids: dict[int, str], carried: Dataset | None) -> list[Dataset]:
            async with aclosing(self._staged_results(plan, depth + 1, uids, carried)) as found:
                return [ds async for ds in found]

        running: deque[asyncio.Task[list[Dataset]]] = deque()
        try:
            async with aclosing(self._children(plan, depth, own_uids, inherited,
                                               parents)) as kids:
                async for child in kids:
                    running.append(asyncio.ensure_future(children(*child)))
                    if len(running) >= self._peer.staged_find_concurrency:
                        for ds in await running.popleft():
                            yield ds
            while running:
                for ds in await running.popleft():
                    yield ds
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _stream(
        self, ident: Dataset, level: QueryLevel, *, relational: bool = False
    ) -> AsyncGenerator[Dataset, None]:
        """Matches of one C-FIND as they arrive (or sorted, for a PACS with unstable order)."""
        if not self._peer.stable_find_order:
            for ds in await self._collect(ident, level, relational=relational):
                yield ds
            return
        async for ds in self._matches(ident, level, relational=relational):
            yield ds

    async def _matches(
        self, ident: Dataset, level: QueryLevel, *, relational: bool = False
    ) -> AsyncGenerator[Dataset, None]:
        """Matches of one C-FIND as they arrive. When the PACS caps a STUDY-level answer, the
        matches it left out follow, found by StudyDate/StudyTime range sub-queries
        (app.services.capped); leave early to C-CANCEL."""
        seen: set[str] = set()
        uid_tag = UNIQUE_KEY[level]
        async with self._client.find(ident, relational=relational) as stream:
            async for ds in stream:
                uid = ds.get(uid_tag)
                if uid is not None and uid.value:
                    seen.add(str(uid.value).strip())
                yield ds
            outcome = stream.result
        split = (outcome.capped and level == QueryLevel.STUDY and not relational
                 and self._capped.enabled)
        _note_outcome(outcome, capped_handled=split)
        if split:
            async with aclosing(self._capped.remaining(ident, seen)) as rest:
                async for ds in rest:
                    yield ds

    async def _collect(
        self, ident: Dataset, level: QueryLevel, *, relational: bool = False
    ) -> list[Dataset]:
        """All matches of one C-FIND (at most max_find_results), in a stable order."""
        out: list[Dataset] = []
        cap = self._peer.max_find_results
        async with aclosing(self._matches(ident, level, relational=relational)) as matches:
            async for ds in matches:
                out.append(ds)
                if len(out) >= cap:
                    log.warning("C-FIND on %s capped at %d matches", self._peer.name, cap)
                    _note(CAPPED_WARNING)
                    break
        if not self._peer.stable_find_order:
            tag = UNIQUE_KEY[level]
            out.sort(key=lambda d: str(d.get(tag).value) if tag in d else "")
        return out

    async def _has_descendant(self, plan: _Plan, depth: int, uids: dict[int, str]) -> bool:
        """Whether some entity at LEVELS[depth] under ``uids`` matches the keys of its level and
        has descendants matching the deeper keys (lower-level keys on a higher-level search)."""
        if depth >= len(LEVELS) or not any(plan.keys[lvl] for lvl in LEVELS[depth:]):
            return True
        level = LEVELS[depth]
        ident = build_identifier(
            level, unique_keys=uids, matches=plan.keys[level], return_keys=[UNIQUE_KEY[level]],
            character_set=self._peer.query_character_set,
        )
        if not any(plan.keys[lvl] for lvl in LEVELS[depth + 1:]):
            return await self._any_match(ident, level)
        for ds in await self._collect(ident, level):
            uid = ds.get(UNIQUE_KEY[level])
            if uid is not None and uid.value and await self._has_descendant(
                plan, depth + 1, {**uids, UNIQUE_KEY[level]: str(uid.value)}
            ):
                return True
        return False

    async def _any_match(self, ident: Dataset, level: QueryLevel) -> bool:
        async with self._client.find(ident, maxsize=1) as stream:
            async for _ in stream:
                return True
        return False

    async def _acceptable(
        self, ds: Dataset, plan: _Plan, keys: Sequence[MatchKey], level: QueryLevel
    ) -> bool:
        """Re-check ``keys`` on the returned values; compute a missing ModalitiesInStudy first
        when it is being matched (with the series count, from the same C-FIND)."""
        if level == QueryLevel.STUDY and any(
            k.path.tag == MODALITIES_IN_STUDY and not k.is_universal for k in keys
        ) and not has_value(ds, MODALITIES_IN_STUDY):
            await self._complete_counts([ds], QueryLevel.STUDY,
                                        frozenset({MODALITIES_IN_STUDY, STUDY_RELATED_SERIES}))
        if not all(can_match(k, ds) for k in keys):
            return False
        return all(combined_range_matches(d, t, ds) for d, t in plan.combined if d in keys)

    # -- computed attributes ----------------------------------------------------------------

    async def _complete_counts(self, results: Sequence[Dataset], level: QueryLevel,
                               wanted: frozenset[int]) -> None:
        """Fill the ``wanted`` ModalitiesInStudy and NumberOf*Related* values the PACS left out,
        for all ``results`` at once (app.services.counts)."""
        if not self._peer.compute_missing_counts or level == QueryLevel.IMAGE or not wanted:
            return
        memo = _search_series.get(None)
        await self._counts.complete(results, level, wanted, {} if memo is None else memo)

    # -- finishing --------------------------------------------------------------------------

    def _finish(self, ds: Dataset, query: SearchQuery) -> Dataset:
        """Drop DIMSE bookkeeping, fill in the UIDs the query implies (PS3.18 10.6.3.3)."""
        for tag in DROPPED_FROM_RESULTS:
            if tag in ds:
                del ds[tag]
        if UNIQUE_KEY[QueryLevel.STUDY] not in ds and query.study_uid:
            ds.StudyInstanceUID = query.study_uid
        if query.level != QueryLevel.STUDY and query.series_uid and (
                "SeriesInstanceUID" not in ds or not ds.SeriesInstanceUID):
            ds.SeriesInstanceUID = query.series_uid
        return ds


def _unique_tags(depth: int) -> set[int]:
    """Unique keys of the levels above ``depth`` (those a baseline identifier may carry)."""
    return {UNIQUE_KEY[lvl] for lvl in LEVELS[:depth]}


def _merge(upper: Dataset | None, lower: Dataset) -> Dataset:
    """Lower-level result with upper-level attributes added where the lower one lacks them."""
    if upper is None:
        return lower
    for element in upper:
        if element.tag not in lower and element.tag not in DROPPED_FROM_RESULTS:
            lower.add(element)
        elif element.tag == SPECIFIC_CHARACTER_SET and SPECIFIC_CHARACTER_SET not in lower:
            lower.add(element)
    return lower


@dataclass
class _Plan:
    """How a SearchQuery is split over the three levels."""

    query: SearchQuery
    target: QueryLevel
    keys: dict[QueryLevel, list[MatchKey]]
    return_keys: dict[QueryLevel, list[AttributePath | int]]
    start_depth: int
    carry_upper: bool
    lower_keys: bool
    combined: list[tuple[MatchKey, MatchKey]] = field(default_factory=list)

    @property
    def needs_staging(self) -> bool:
        return self.start_depth < LEVELS.index(self.target)

    @property
    def all_keys(self) -> list[MatchKey]:
        return [k for lvl in LEVELS for k in self.keys[lvl]]

    @classmethod
    def of(cls, query: SearchQuery) -> _Plan:
        target = query.level
        tdepth = LEVELS.index(target)
        path = query.path_uids
        keys: dict[QueryLevel, list[MatchKey]] = {lvl: [] for lvl in LEVELS}
        for m in query.matches:
            if m.path.top in path:
                continue  # the path already fixes this UID
            lvl = _level(m.path.top, target)
            if m.path.top == UNIQUE_KEY[QueryLevel.STUDY]:
                lvl = QueryLevel.STUDY
            keys[lvl].append(m)
        includes: dict[QueryLevel, list[AttributePath | int]] = {lvl: [] for lvl in LEVELS}
        for inc in query.include:
            lvl = _level(inc.top, target)
            if LEVELS.index(lvl) <= tdepth:  # lower-level includefields are not returned
                includes[lvl].append(inc)
        carry_upper = query.relational or any(includes[lvl] for lvl in LEVELS[:tdepth])
        return_keys: dict[QueryLevel, list[AttributePath | int]] = {}
        for d, lvl in enumerate(LEVELS):
            rk: list[AttributePath | int] = []
            if d == tdepth:
                rk.extend(REQUIRED_RETURN_KEYS[lvl])
                if query.include_all:
                    rk.extend(ALL_RETURN_KEYS[lvl])
            elif d < tdepth:
                rk.append(UNIQUE_KEY[lvl])
                if carry_upper:
                    rk.extend(REQUIRED_RETURN_KEYS[lvl])
            rk.extend(includes[lvl])
            return_keys[lvl] = rk
        # The shallowest level that must be queried: one with keys or needed attributes, or one
        # whose UID the path does not give (we must enumerate it to reach the target level).
        start = tdepth
        for d in range(tdepth):
            lvl = LEVELS[d]
            if keys[lvl] or (carry_upper and lvl in (QueryLevel.STUDY, QueryLevel.SERIES)) or (
                UNIQUE_KEY[lvl] not in path
            ):
                start = d
                break
        lower = any(keys[lvl] for lvl in LEVELS[tdepth + 1:])
        combined = _split_combined_ranges(keys)
        return cls(query, target, keys, return_keys, start, carry_upper, lower, combined)


def _level(tag: int, target: QueryLevel) -> QueryLevel:
    """The level whose C-FIND carries an attribute: a private one (whose level no dictionary
    knows) goes with the query level, where a PACS such as Orthanc returns it."""
    return target if is_private(tag) else level_of(tag)


def _split_combined_ranges(
    keys: dict[QueryLevel, list[MatchKey]],
) -> list[tuple[MatchKey, MatchKey]]:
    """A date range with a time key is matched as one date-time period by the gateway: the PACS
    gets the date range and the time as a return key (PS3.18 8.3.4.1.1 note)."""
    pairs: list[tuple[MatchKey, MatchKey]] = []
    for level_keys in keys.values():
        by_tag = {k.path.tag: k for k in level_keys if len(k.path.tags) == 1}
        for date_tag, time_tag in DATE_TIME_PAIRS:
            date_key, time_key = by_tag.get(date_tag), by_tag.get(time_tag)
            if (date_key and time_key and not date_key.is_universal
                    and not time_key.is_universal and "-" in date_key.values[0]):
                level_keys[level_keys.index(time_key)] = MatchKey(time_key.path, time_key.vr, ("",))
                pairs.append((date_key, time_key))
    return pairs


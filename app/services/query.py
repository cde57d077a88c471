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

import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from app.cache.singleflight import FillContext, FillEvent, SingleFlight
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
from app.dicomweb.dicomjson import dataset_to_json, json_to_dataset
from app.dicomweb.identifiers import build_identifier
from app.dicomweb.matching import DATE_TIME_PAIRS, can_match, combined_range_matches
from app.dicomweb.search import AttributePath, MatchKey, SearchQuery, is_private
from app.dicomweb.tags import MODALITIES_IN_STUDY, SPECIFIC_CHARACTER_SET, STUDY_RELATED_SERIES
from app.dicomweb.urls import instance_url, series_url, study_url
from app.dimse.client import Client
from app.dimse.find import FindOutcome
from app.errors import GatewayError
from app.metrics import Metrics
from app.services.capped import INCOMPLETE_WARNING, CappedFind
from app.services.counts import CountsComputer, SeriesMemo
from app.services.fill_errors import error_from_event, failure_event

log = logging.getLogger(__name__)
LEVELS = (QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE)
SHARED_RESULT_TTL = 60.0
"""Seconds a coalesced search's result is kept for the identical searches that waited for it."""


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


@dataclass
class SearchResult:
    """One page of results, whether more remain, and warnings for the Warning header."""

    datasets: list[Dataset]
    more: bool
    warnings: list[str] = field(default_factory=list)


class QueryService:
    """Runs searches against one PACS through its DIMSE client."""

    def __init__(self, client: Client, cache: GatewayCache | None = None,
                 flights: SingleFlight | None = None, metrics: Metrics | None = None) -> None:
        self._client = client
        self._peer = client.peer
        self._cache = cache
        self._flights = flights
        self._metrics = metrics if metrics is not None else Metrics()
        self._counts = CountsComputer(client, _note_outcome)
        self._capped = CappedFind(client, self._metrics, _note,
                                  lambda outcome: _note_outcome(outcome, capped_handled=True))

    # -- public -----------------------------------------------------------------------------

    async def search(self, query: SearchQuery, base_url: str) -> SearchResult:
        """Answer ``query``; results carry RetrieveURL under ``base_url``.

        The cache holds results without RetrieveURL: each answer, cached or not, gets it built
        from its own UIDs and this request's (validated) base URL, so a cached answer is the
        same for every client except for that base URL."""
        digest = GatewayCache.query_digest([repr(query)]) if self._cache is not None else ""
        if self._cache is not None:
            hit = await self._cache.get_query(digest)
            if hit is not None:
                self._counted("cache")
                return _from_payload(hit, query, base_url)
        if self._cache is not None and self._flights is not None:
            shared = await self._coalesced(query, digest)
            if isinstance(shared, SearchResult):
                result = shared
            elif shared is not None:
                self._counted("shared")
                return _from_payload(shared, query, base_url)
            else:
                log.info("the result of a coalesced search on %s is gone; searching again",
                         self._peer.name)
                result = await self._run(query)
                await self._cache.put_query(digest, _payload(result))
        else:
            result = await self._run(query)
            if self._cache is not None:
                await self._cache.put_query(digest, _payload(result))
        self._counted("pacs")
        result.datasets = [with_retrieve_url(ds, query, base_url) for ds in result.datasets]
        return result

    def _counted(self, source: str) -> None:
        self._metrics.inc("qido_searches_total", peer=self._peer.name, source=source)

    async def _run(self, query: SearchQuery) -> SearchResult:
        """The C-FINDs of one search, with its own warnings and count memo."""
        notes: set[str] = set()
        token = _search_notes.set(notes)
        series_token = _search_series.set({})
        try:
            return await self._search(query, notes)
        finally:
            _search_series.reset(series_token)
            _search_notes.reset(token)

    async def _coalesced(self, query: SearchQuery,
                         digest: str) -> SearchResult | dict[str, Any] | None:
        """Run ``query`` once for every identical concurrent search (any process sharing the
        cache): the SearchResult when this request's own fill ran it, the stored result
        (without RetrieveURL) when another request's did, None when that result is gone."""
        cache, flights = self._cache, self._flights
        assert cache is not None and flights is not None
        own: list[SearchResult | GatewayError] = []

        async def fill(ctx: FillContext) -> None:
            try:
                result = await self._run(query)
            except GatewayError as exc:
                own.append(exc)
                await ctx.publish(failure_event(exc))
                return
            own.append(result)
            payload = _payload(result)
            await cache.put_query(digest, payload)
            if not await cache.put_query_flight(digest, payload, SHARED_RESULT_TTL):
                log.warning("a search's result on %s is too large to share", self._peer.name)
            await ctx.publish(FillEvent("done"))

        async def complete() -> bool:  # already answered by the query cache
            return cache.query_ttl > 0 and await cache.get_query(digest) is not None

        async for event in flights.follow(cache.keys.query_lock(digest),
                                          lambda token: cache.keys.query_events(digest, token),
                                          fill, complete):
            if event.kind == "failed":
                if own and isinstance(own[0], GatewayError):
                    raise own[0]
                raise error_from_event(event)
            if event.kind == "done":
                break
        if own and isinstance(own[0], SearchResult):
            return own[0]
        if cache.query_ttl > 0:
            hit = await cache.get_query(digest)
            if hit is not None:
                return hit
        return await cache.get_query_flight(digest)

    async def _search(self, query: SearchQuery, notes: set[str]) -> SearchResult:
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
        for parent in parents:
            if not await self._acceptable(parent, plan, plan.keys[level], level):
                continue
            uid_element = parent.get(UNIQUE_KEY[level])
            if uid_element is None or not uid_element.value:
                continue
            child_uids = {**own_uids, UNIQUE_KEY[level]: str(uid_element.value)}
            carried = _merge(inherited, parent) if plan.carry_upper else None
            async for ds in self._staged_results(plan, depth + 1, child_uids, carried):
                yield ds

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


def _payload(result: SearchResult) -> dict[str, Any]:
    """A result as stored: DICOM JSON without RetrieveURL, whether more remain, warnings."""
    return {"results": [dataset_to_json(ds) for ds in result.datasets],
            "more": result.more, "warnings": result.warnings}


def _from_payload(payload: dict[str, Any], query: SearchQuery, base_url: str) -> SearchResult:
    """A stored result with RetrieveURL under this request's ``base_url``."""
    return SearchResult([with_retrieve_url(json_to_dataset(obj), query, base_url)
                         for obj in payload["results"]],
                        bool(payload["more"]), list(payload["warnings"]))


def with_retrieve_url(ds: Dataset, query: SearchQuery, base_url: str) -> Dataset:
    """Set RetrieveURL (0008,1190) of a result from its UIDs under ``base_url``."""
    study = str(ds.StudyInstanceUID) if ds.get("StudyInstanceUID") else None
    series = str(ds.SeriesInstanceUID) if ds.get("SeriesInstanceUID") else None
    if query.level == QueryLevel.STUDY and study:
        ds.RetrieveURL = study_url(base_url, study)
    elif query.level == QueryLevel.SERIES and study and series:
        ds.RetrieveURL = series_url(base_url, study, series)
    elif query.level == QueryLevel.IMAGE and study and series and "SOPInstanceUID" in ds:
        ds.RetrieveURL = instance_url(base_url, study, series, str(ds.SOPInstanceUID))
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


"""QIDO-RS over several PACS at once (``federate``): one search fans out to every federated PACS
concurrently and their answers are merged into one result list.

- **Merge and de-duplication** by the unique key of the query level (StudyInstanceUID,
  SeriesInstanceUID or SOPInstanceUID): one result per UID. The attributes come from the first
  PACS in ``federate`` order that holds it, completed with what the others add; ModalitiesInStudy
  and SOPClassesInStudy are the union of the answers, NumberOf*Related* the largest value (a PACS
  may hold part of a study); RetrieveAETitle (0008,0054) lists the AE titles of every PACS that
  holds the match, in ``federate`` order.
- **Paging**: each PACS is asked for all its matches (up to ``federate_max_matches``, with
  ``offset`` 0), the merged list is sorted by the unique key, and ``offset``/``limit`` cut the
  page from it, so the same request gives the same page whatever order the PACS answer in.
  Counts a PACS leaves empty are computed for the page only.
- **Failures**: a PACS that fails or does not answer within ``federate_search_timeout`` is named
  in a 299 warning and the others' results are returned; only when every PACS fails is the
  search an error (the first PACS's error, or a 504 when all of them timed out).
- Each match's study is remembered as held by the PACS that answered with it
  (``StudyLocations``), so that a WADO-RS retrieval goes straight to one of them.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from app.cache.study_locations import StudyLocations
from app.dicomweb.attributes import UNIQUE_KEY, QueryLevel
from app.dicomweb.search import SearchQuery
from app.dicomweb.tags import (
    MODALITIES_IN_STUDY,
    SERIES_RELATED_INSTANCES,
    SOP_CLASSES_IN_STUDY,
    STUDY_RELATED_INSTANCES,
    STUDY_RELATED_SERIES,
)
from app.errors import GatewayError, UpstreamTimeout
from app.metrics import Metrics
from app.services.query import QueryService, SearchResult

log = logging.getLogger(__name__)
RETRIEVE_AE_TITLE = 0x00080054
UNION_TAGS = (MODALITIES_IN_STUDY, SOP_CLASSES_IN_STUDY)
MAX_TAGS = (STUDY_RELATED_SERIES, STUDY_RELATED_INSTANCES, SERIES_RELATED_INSTANCES)
FAILED_WARNING = "PACS {name} failed ({reason}); the results come from the other PACS only."
TIMEOUT_WARNING = ("PACS {name} did not answer within {seconds:g} s; the results come from the "
                   "other PACS only.")
TRUNCATED_WARNING = ("PACS {name} has more than {limit} matches; only the first {limit} were "
                     "merged. Narrow the search.")


@dataclasses.dataclass
class _Answer:
    """What one federated PACS answered: a result, or why not."""

    service: QueryService
    result: SearchResult | None = None
    error: GatewayError | None = None
    timed_out: bool = False

    @property
    def name(self) -> str:
        return self.service.peer_name


class FederatedQuery:
    """Searches every federated PACS at once and merges their answers (module docstring)."""

    def __init__(self, members: Sequence[QueryService], ae_titles: dict[str, str],
                 locations: StudyLocations, metrics: Metrics, *, max_matches: int,
                 timeout: float) -> None:
        self._members = list(members)
        self._ae_titles = ae_titles
        self._locations = locations
        self._metrics = metrics
        self._max_matches = max_matches
        self._timeout = timeout

    async def search(self, query: SearchQuery, base_url: str) -> SearchResult:
        """One page of the merged answers of every federated PACS to ``query``."""
        wide = dataclasses.replace(query, offset=0, limit=self._max_matches)
        answers = await asyncio.gather(*(self._ask(m, wide, base_url) for m in self._members))
        answered = [a for a in answers if a.result is not None]
        if not answered:
            raise self._all_failed(answers)
        warnings: set[str] = set()
        for answer in answers:
            if answer.result is None:
                warnings.add(self._failure_text(answer))
        tag = UNIQUE_KEY[query.level]
        by_uid: dict[str, list[tuple[str, Dataset]]] = {}
        truncated = False
        for answer in answered:
            assert answer.result is not None
            warnings.update(answer.result.warnings)
            if answer.result.more:
                truncated = True
                warnings.add(TRUNCATED_WARNING.format(name=answer.name, limit=self._max_matches))
            for ds in answer.result.datasets:
                uid = _text(ds, tag)
                if uid:
                    by_uid.setdefault(uid, []).append((answer.name, ds))
        ordered = sorted(by_uid)
        end = query.offset + query.limit
        page = [by_uid[uid] for uid in ordered[query.offset:end]]
        warnings.update(await self._complete_counts(page, query, answered))
        await self._remember(page, [a.name for a in answers if a.result is None])
        return SearchResult([self._combined(entries) for entries in page],
                            len(ordered) > end or truncated, sorted(warnings))

    async def _ask(self, member: QueryService, query: SearchQuery, base_url: str) -> _Answer:
        """One PACS's answer to the widened query, within the federation's time limit; counts
        are computed later, for the page only."""
        answer = _Answer(member)
        try:
            answer.result = await asyncio.wait_for(
                member.search(query, base_url, counts=False), self._timeout)
        except TimeoutError:
            answer.timed_out = True
            self._metrics.inc("federation_search_failures_total", peer=answer.name,
                              reason="timeout")
            log.warning("federated search: PACS %s did not answer within %g s", answer.name,
                        self._timeout)
        except GatewayError as exc:
            answer.error = exc
            self._metrics.inc("federation_search_failures_total", peer=answer.name,
                              reason=str(exc.http_status))
            log.warning("federated search: PACS %s failed: %s", answer.name, exc.message)
        return answer

    def _failure_text(self, answer: _Answer) -> str:
        if answer.timed_out:
            return TIMEOUT_WARNING.format(name=answer.name, seconds=self._timeout)
        assert answer.error is not None
        return FAILED_WARNING.format(name=answer.name,
                                     reason=f"{answer.error.http_status} {answer.error.message}")

    def _all_failed(self, answers: Sequence[_Answer]) -> GatewayError:
        """The error of a search no PACS answered: the first PACS's own error, or a 504 when
        every PACS timed out."""
        for answer in answers:
            if answer.error is not None:
                return answer.error
        return UpstreamTimeout(f"no federated PACS answered within {self._timeout:g} s")

    async def _complete_counts(self, page: list[list[tuple[str, Dataset]]], query: SearchQuery,
                               answered: Sequence[_Answer]) -> list[str]:
        """Counts each PACS left empty, computed for its own matches on the page (before they
        are combined, so that each PACS counts what it holds)."""
        own: dict[str, list[Dataset]] = {}
        for entries in page:
            for name, ds in entries:
                own.setdefault(name, []).append(ds)
        members = [a.service for a in answered if own.get(a.name)]

        async def one(member: QueryService) -> list[str]:
            try:
                return await member.complete_counts(own[member.peer_name], query)
            except GatewayError as exc:
                log.warning("federated search: counts from PACS %s failed: %s",
                            member.peer_name, exc.message)
                return [FAILED_WARNING.format(name=member.peer_name,
                                              reason=f"counts: {exc.message}")]

        notes = await asyncio.gather(*(one(m) for m in members))
        return [text for texts in notes for text in texts]

    async def _remember(self, page: list[list[tuple[str, Dataset]]],
                        unanswered: list[str]) -> None:
        """Record which PACS hold the studies on the page."""
        found: dict[str, set[str]] = {}
        for entries in page:
            for name, ds in entries:
                study = _text(ds, UNIQUE_KEY[QueryLevel.STUDY])
                if study:
                    found.setdefault(study, set()).add(name)
        await self._locations.remember(found, unanswered)

    def _combined(self, entries: list[tuple[str, Dataset]]) -> Dataset:
        """One result from the answers of every PACS holding the same UID (module docstring)."""
        first = entries[0][1]
        for _, other in entries[1:]:
            for element in other:
                if element.tag not in first or (not _has_value(first, element.tag)
                                                and element.value not in (None, "")):
                    first[element.tag] = copy.deepcopy(element)
            for tag in UNION_TAGS:
                values = _values(first, tag) + [v for v in _values(other, tag)
                                                if v not in _values(first, tag)]
                if values:
                    first[tag].value = sorted(values)
            for tag in MAX_TAGS:
                numbers = [n for n in (_number(first, tag), _number(other, tag)) if n is not None]
                if numbers:
                    first[tag].value = max(numbers)
        titles = list(dict.fromkeys(self._ae_titles[name] for name, _ in entries))
        first.add_new(RETRIEVE_AE_TITLE, "AE", titles if len(titles) > 1 else titles[0])
        return first


def _text(ds: Dataset, tag: int) -> str:
    """A single-valued attribute as text ('' when absent or empty)."""
    element = ds.get(tag)
    if element is None or element.value in (None, ""):
        return ""
    return str(element.value).strip()


def _has_value(ds: Dataset, tag: int) -> bool:
    element = ds.get(tag)
    return element is not None and element.value not in (None, "", [])


def _values(ds: Dataset, tag: int) -> list[str]:
    """The values of a multi-valued text attribute (empty when absent)."""
    element = ds.get(tag)
    if element is None or element.value in (None, ""):
        return []
    value = element.value
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    return [str(v) for v in items if str(v)]


def _number(ds: Dataset, tag: int) -> int | None:
    """An integer attribute, None when absent, empty or not a number."""
    element = ds.get(tag)
    if element is None or element.value in (None, ""):
        return None
    try:
        return int(element.value)
    except (TypeError, ValueError):
        return None

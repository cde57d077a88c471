"""Completing a STUDY-level C-FIND that the PACS capped (it ended with Cancel after returning
fewer matches than there are, as Orthanc does past ``LimitFindResults``).

The capped query is cut into StudyDate ranges, halved recursively while a part is capped too; a
single day that is still capped is cut into StudyTime ranges (when the query leaves StudyTime
universal). Matches are de-duplicated by StudyInstanceUID against what the capped answer
already gave, in date order. The work is bounded per PACS by ``capped_find_max_queries``
sub-queries and ``capped_find_max_depth`` halvings; an answer that could not be completed is
reported through the search's warnings (299).

Entities without a StudyDate match no date range (PS3.4 C.2.2.2.5), and studies without a
StudyTime no time range: the only query that matches them is the capped one, so those it
returned are kept, and the answer carries a warning that more of them may exist.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset

from app.dicomweb.ranges import DateSpan, TimeSpan
from app.dicomweb.tags import STUDY_DATE, STUDY_INSTANCE_UID, STUDY_TIME
from app.dimse.client import Client
from app.dimse.find import FindOutcome
from app.metrics import Metrics

log = logging.getLogger(__name__)

INCOMPLETE_WARNING = (
    "The PACS limited the number of matches it returned; the results may be incomplete."
)
EMPTY_DATES_WARNING = (
    "The PACS limited the number of matches it returned; the gateway completed the results "
    "with StudyDate and StudyTime range queries, which cannot match studies without a "
    "StudyDate (or without a StudyTime, on a day with more studies than the limit): some of "
    "those may be missing."
)


def _text(ds: Dataset, tag: int) -> str:
    element = ds.get(tag)
    if element is None or element.value is None:
        return ""
    return str(element.value).strip()


@dataclass
class _Budget:
    """What one completion may still spend, and whether it had to stop short."""

    queries_left: int
    max_depth: int
    incomplete: bool = False


class CappedFind:
    """Completes capped STUDY-level C-FINDs against one PACS."""

    def __init__(self, client: Client, metrics: Metrics,
                 note: Callable[[str], None], note_outcome: Callable[[FindOutcome], None],
                 today: Callable[[], dt.date] = dt.date.today) -> None:
        """``note`` receives warnings for the search; ``note_outcome`` each sub-query's
        outcome (e.g. optional keys the PACS did not support)."""
        self._client = client
        self._peer = client.peer
        self._metrics = metrics
        self._note = note
        self._note_outcome = note_outcome
        self._today = today

    @property
    def enabled(self) -> bool:
        """Whether capped C-FINDs of this PACS are completed at all."""
        return self._peer.capped_find_max_queries > 0

    async def remaining(self, ident: Dataset, seen: set[str]
                        ) -> AsyncGenerator[Dataset, None]:
        """The matches of ``ident`` (a STUDY-level identifier the PACS capped) that are not
        in ``seen`` (the StudyInstanceUIDs it returned; updated as more are found)."""
        date_value, time_value = _text(ident, STUDY_DATE), _text(ident, STUDY_TIME)
        dates = DateSpan.parse(date_value, self._today())
        if dates is None:
            log.warning("PACS %s capped a C-FIND whose StudyDate %r cannot be split into "
                        "ranges: the answer stays incomplete", self._peer.name, date_value)
            self._note(INCOMPLETE_WARNING)
            return
        log.info("PACS %s capped a C-FIND after %d matches: completing it with StudyDate "
                 "range queries", self._peer.name, len(seen))
        if not date_value:
            self._note(EMPTY_DATES_WARNING)
        budget = _Budget(self._peer.capped_find_max_queries, self._peer.capped_find_max_depth)
        async for ds in self._split(ident, dates, None, not time_value, 1, seen, budget):
            yield ds
        if budget.incomplete:
            self._metrics.inc("qido_capped_incomplete_total", peer=self._peer.name)
            log.warning("PACS %s: a capped C-FIND could not be completed within "
                        "capped_find_max_queries = %d and capped_find_max_depth = %d",
                        self._peer.name, self._peer.capped_find_max_queries,
                        self._peer.capped_find_max_depth)
            self._note(INCOMPLETE_WARNING)

    async def _split(self, ident: Dataset, dates: DateSpan, times: TimeSpan | None,
                     time_universal: bool, depth: int, seen: set[str], budget: _Budget,
                     ) -> AsyncIterator[Dataset]:
        """Matches of the capped part (``dates``, ``times``) from its two halves."""
        if times is None and dates.single_day:
            if not time_universal:  # StudyTime is a key of the search: not split further
                budget.incomplete = True
                return
            times = TimeSpan()
            self._note(EMPTY_DATES_WARNING)
        if times is None:
            date_halves = dates.halves()
            halves: list[tuple[DateSpan, TimeSpan | None]] = (
                [(half, None) for half in date_halves] if date_halves else [])
        else:
            time_halves = times.halves()
            halves = [(dates, half) for half in time_halves] if time_halves else []
        if not halves or depth > budget.max_depth:
            budget.incomplete = True
            return
        for part_dates, part_times in halves:
            if budget.queries_left <= 0:
                budget.incomplete = True
                return
            budget.queries_left -= 1
            self._metrics.inc("qido_capped_subqueries_total", peer=self._peer.name)
            sub = copy.deepcopy(ident)
            sub.StudyDate = part_dates.query_value()
            if part_times is not None:
                sub.StudyTime = part_times.query_value()
            async with self._client.find(sub) as stream:
                async for ds in stream:
                    uid = _text(ds, STUDY_INSTANCE_UID)
                    if uid and uid not in seen:
                        seen.add(uid)
                        yield ds
                outcome = stream.result
            self._note_outcome(outcome)
            if outcome.capped:
                async for ds in self._split(ident, part_dates, part_times, time_universal,
                                            depth + 1, seen, budget):
                    yield ds

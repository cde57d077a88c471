"""ModalitiesInStudy and NumberOf*Related* for a page of QIDO-RS results whose PACS left them
empty (optional keys, PS3.4 C.6.1.1), computed with few C-FINDs: one SERIES-level C-FIND whose
StudyInstanceUID is the list of the page's studies (UID list matching, PS3.4 C.2.2.2.2), and,
for series without NumberOfSeriesRelatedInstances, one IMAGE-level C-FIND listing those series,
each per chunk of ``max_uids_per_query`` UIDs. A PACS that refuses the lists is asked one study
(or series) at a time, as a baseline hierarchical query allows (PS3.4 C.4.1.2.1)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

from pydicom.dataset import Dataset

from app.dicomweb.attributes import QueryLevel
from app.dicomweb.counts import (
    NEEDS_SERIES_QUERY,
    SeriesRow,
    chunked,
    fill_missing,
    image_identifier,
    instance_series,
    missing_keys,
    series_identifier,
    series_row,
    study_counts,
)
from app.dicomweb.tags import (
    SERIES_INSTANCE_UID,
    SERIES_RELATED_INSTANCES,
    STUDY_INSTANCE_UID,
    STUDY_RELATED_INSTANCES,
)
from app.dimse.client import Client
from app.dimse.find import FindOutcome
from app.dimse.status import Category, category
from app.errors import GatewayError

log = logging.getLogger(__name__)

_T = TypeVar("_T")

SeriesMemo = dict[str, list[SeriesRow]]
"""Series rows already fetched during one search, by StudyInstanceUID."""


class CountsComputer:
    """Computes missing counts for one PACS; remembers whether it refuses UID lists."""

    def __init__(self, client: Client, note: Callable[[FindOutcome], None]) -> None:
        self._client = client
        self._peer = client.peer
        self._note = note
        self._lists_refused = False

    @property
    def batch_size(self) -> int:
        """UIDs per C-FIND identifier: 1 once the PACS has refused a list."""
        return 1 if self._lists_refused else self._peer.max_uids_per_query

    async def complete(self, results: Sequence[Dataset], level: QueryLevel,
                       wanted: frozenset[int], memo: SeriesMemo) -> None:
        """Fill the ``wanted`` computed attributes each result lacks."""
        todo = [ds for ds in results if missing_keys(ds, wanted)]
        if not todo:
            return
        if level == QueryLevel.STUDY:
            await self._complete_studies(todo, wanted, memo)
        elif level == QueryLevel.SERIES:
            await self._complete_series(todo)

    async def _complete_studies(self, todo: list[Dataset], wanted: frozenset[int],
                                memo: SeriesMemo) -> None:
        todo = [ds for ds in todo if _uid(ds, STUDY_INSTANCE_UID)
                and missing_keys(ds, wanted) & NEEDS_SERIES_QUERY]
        await self._fetch_series([_uid(ds, STUDY_INSTANCE_UID) for ds in todo], memo)
        uncounted = [
            (row.study_uid, row.series_uid)
            for ds in todo if STUDY_RELATED_INSTANCES in missing_keys(ds, wanted)
            for row in memo[_uid(ds, STUDY_INSTANCE_UID)] if row.instances is None
        ]
        counts = await self._count_instances(uncounted)
        for ds in todo:
            fill_missing(ds, study_counts(memo[_uid(ds, STUDY_INSTANCE_UID)], counts), wanted)

    async def _complete_series(self, todo: list[Dataset]) -> None:
        pairs = [(_uid(ds, STUDY_INSTANCE_UID), _uid(ds, SERIES_INSTANCE_UID)) for ds in todo
                 if _uid(ds, SERIES_INSTANCE_UID)]
        counts = await self._count_instances(pairs)
        for ds in todo:
            series = _uid(ds, SERIES_INSTANCE_UID)
            if series:
                fill_missing(ds, {SERIES_RELATED_INSTANCES: counts.get(series, 0)},
                             (SERIES_RELATED_INSTANCES,))

    # -- series of many studies -------------------------------------------------------------

    async def _fetch_series(self, study_uids: list[str], memo: SeriesMemo) -> None:
        """Series rows of every study not yet in ``memo``, a chunk of studies per C-FIND."""
        needed = [uid for uid in dict.fromkeys(study_uids) if uid not in memo]
        chunks = chunked(needed, self.batch_size)
        found = await asyncio.gather(*(self._series_of(chunk) for chunk in chunks))
        for part in found:
            memo.update(part)

    async def _series_of(self, studies: tuple[str, ...]) -> SeriesMemo:
        rows: SeriesMemo = {uid: [] for uid in studies}
        answer = await self._batched(series_identifier(studies), len(studies),
                                     "StudyInstanceUID", series_row)
        if answer is None:
            for part in await asyncio.gather(*(self._series_of((uid,)) for uid in studies)):
                rows.update(part)
            return rows
        for row in answer:
            # The study a single-study answer belongs to is known even if the PACS left it out.
            study = studies[0] if len(studies) == 1 else row.study_uid
            if study in rows:
                rows[study].append(row)
        # Every study has a series: one left empty by a list answer is asked again alone, so a
        # PACS that mishandles lists cannot turn into zero counts.
        if len(studies) > 1:
            empty = [uid for uid, found in rows.items() if not found]
            for part in await asyncio.gather(*(self._series_of((uid,)) for uid in empty)):
                rows.update(part)
        return rows

    # -- instances of many series -----------------------------------------------------------

    async def _count_instances(self, pairs: list[tuple[str, str]]) -> dict[str, int]:
        """Instances per SeriesInstanceUID of the (study, series) ``pairs``."""
        unique = list(dict.fromkeys(pairs))
        size = self.batch_size
        chunks = [tuple(unique[i:i + size]) for i in range(0, len(unique), size)]
        counts: dict[str, int] = {}
        for part in await asyncio.gather(*(self._instances_of(chunk) for chunk in chunks)):
            counts.update(part)
        return counts

    async def _instances_of(self, pairs: tuple[tuple[str, str], ...]) -> dict[str, int]:
        counts: dict[str, int] = {series: 0 for _, series in pairs}
        answer = await self._batched(image_identifier(pairs), len(pairs), "SeriesInstanceUID",
                                     instance_series)
        if answer is None:
            for part in await asyncio.gather(*(self._instances_of((p,)) for p in pairs)):
                counts.update(part)
            return counts
        if len(pairs) == 1:
            return {pairs[0][1]: len(answer)}
        tally = Counter(answer)
        for series in counts:
            counts[series] = tally.get(series, 0)
        empty = [p for p in pairs if not counts[p[1]]]
        for part in await asyncio.gather(*(self._instances_of((p,)) for p in empty)):
            counts.update(part)
        return counts

    # -- one C-FIND -------------------------------------------------------------------------

    async def _batched(self, ident: Dataset, listed: int, keyword: str,
                       extract: Callable[[Dataset], _T]) -> list[_T] | None:
        """``extract`` of every answer to one C-FIND listing ``listed`` UIDs of ``keyword``; None
        when the PACS refused the list or answered it incompletely (the caller then asks per
        UID). A query for a single UID is the baseline query: its failures propagate."""
        single = listed == 1
        relational = not single and await self._client.supports_relational()
        out: list[_T] = []
        try:
            async with self._client.find(ident, relational=relational) as stream:
                async for ds in stream:
                    out.append(extract(ds))
                outcome = stream.result
        except GatewayError as exc:
            if single or exc.dimse_status is None or category(exc.dimse_status) != (
                    Category.FAILURE):
                raise
            self._lists_refused = True
            log.warning(
                "PACS %s refused a %s-level C-FIND listing %d %s values (status 0x%04X); a "
                "baseline hierarchical query may carry only a single value for the unique keys "
                "above its level (PS3.4 C.4.1.2.1): computing counts one UID at a time from now "
                "on", self._peer.name, ident.QueryRetrieveLevel, listed, keyword,
                exc.dimse_status)
            return None
        if not single and (outcome.capped or any(not _key(v) for v in out)):
            log.warning("PACS %s answered a C-FIND listing %d %s values incompletely (capped, or "
                        "matches without their UIDs); asking for each one alone",
                        self._peer.name, listed, keyword)
            return None
        self._note(outcome)
        return out


def _key(value: object) -> str:
    """The UID an extracted answer is attributed to."""
    return value.study_uid if isinstance(value, SeriesRow) else str(value)


def _uid(ds: Dataset, tag: int) -> str:
    element = ds.get(tag)
    return "" if element is None or not element.value else str(element.value).strip()

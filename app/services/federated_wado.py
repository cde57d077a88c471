"""WADO-RS of a federated study (``federate``): every study-, series- or instance-addressed
retrieval goes to a PACS that holds the study, with fail-over to the next one.

Candidates, in order: the PACS remembered for the study (from a federated search, here or in
another replica through the shared cache), in ``federate`` order; then the PACS not tried yet
that answer a STUDY-level C-FIND for its StudyInstanceUID (asked concurrently, and remembered).
A candidate that fails before it has produced anything (no such study or series: 404; the PACS
is unreachable, refuses the association or times out: 503/504; the C-GET failed or the PACS
cannot do it: 502/501) is left for the next; once a first instance, frame or metadata object has
been produced, that PACS serves the whole answer. When no candidate answers, the request fails
with the first candidate's error, or 404 when no PACS holds the study.

Each PACS keeps its own cache (keys ``dwg:{pacs}:``): a retrieval is cached under the PACS that
served it, so a study two PACS hold in different states (one has more series) never mixes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import TypeVar

from app.cache.study_locations import StudyLocations
from app.dicomweb.attributes import QueryLevel
from app.dicomweb.pixels import Frame
from app.dicomweb.refs import InstanceRef, SeriesRef, StudyRef
from app.dicomweb.search import parse_search
from app.dimse.received import ReceivedInstance
from app.errors import GatewayError, NotFound
from app.metrics import Metrics
from app.services.pacs_retrieval import Ref, describe
from app.services.query import QueryService
from app.services.wado import MetadataItem, WadoService, WireInstance

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Statuses after which the next PACS holding the study is tried.
FAILOVER_STATUSES = frozenset({404, 501, 502, 503, 504})


class StudyLocator:
    """The federated PACS to try for a study, best first: remembered, then asked."""

    def __init__(self, queries: Sequence[QueryService], locations: StudyLocations,
                 timeout: float) -> None:
        self._queries = {q.peer_name: q for q in queries}
        self._locations = locations
        self._timeout = timeout

    async def candidates(self, study_uid: str) -> AsyncGenerator[str, None]:
        """PACS names to try for ``study_uid``: those remembered, then those that say they hold
        it when asked (only once the remembered ones are exhausted)."""
        tried: set[str] = set()
        for name in await self._locations.known(study_uid):
            if name in self._queries:
                tried.add(name)
                yield name
        rest = [name for name in self._queries if name not in tried]
        if not rest:
            return
        holders, unanswered = await self._ask(study_uid, rest)
        if holders:
            await self._locations.remember({study_uid: set(holders)}, unanswered)
        for name in holders:
            yield name

    async def _ask(self, study_uid: str, names: list[str]) -> tuple[list[str], list[str]]:
        """Which of ``names`` hold ``study_uid`` (one STUDY-level C-FIND each, concurrently),
        and which could not say."""
        query = parse_search([("StudyInstanceUID", study_uid)], level=QueryLevel.STUDY,
                             default_limit=1, max_limit=1)

        async def one(name: str) -> bool | None:
            try:
                result = await asyncio.wait_for(
                    self._queries[name].search(query, "", counts=False), self._timeout)
            except (GatewayError, TimeoutError) as exc:
                log.warning("federation: cannot ask PACS %s for study %s: %s", name, study_uid,
                            getattr(exc, "message", "timed out"))
                return None
            return bool(result.datasets)

        answers = await asyncio.gather(*(one(name) for name in names))
        holders = [n for n, held in zip(names, answers, strict=True) if held]
        unanswered = [n for n, held in zip(names, answers, strict=True) if held is None]
        return holders, unanswered

    async def known(self, study_uid: str) -> tuple[str, ...]:
        """The PACS remembered for ``study_uid``, without asking any."""
        return await self._locations.known(study_uid)

    async def forget(self, study_uid: str, name: str) -> None:
        """``name`` does not hold ``study_uid`` after all."""
        await self._locations.forget(study_uid, name)


class FederatedWado:
    """The WADO-RS service of the federated root: each call goes to a PACS that holds the study
    (module docstring), through that PACS's own WadoService (and cache)."""

    def __init__(self, members: Sequence[WadoService], names: Sequence[str],
                 locator: StudyLocator, metrics: Metrics) -> None:
        self._members = dict(zip(names, members, strict=True))
        self._locator = locator
        self._metrics = metrics

    # -- fail-over ---------------------------------------------------------------------------

    async def _first_answer(self, ref: Ref, what: str,
                            open_: Callable[[WadoService], AsyncIterator[T]]
                            ) -> AsyncIterator[T]:
        """The items of ``open_`` on the first candidate PACS that produces one."""
        errors: list[GatewayError] = []
        async with aclosing(self._locator.candidates(ref.study_uid)) as names:
            async for name in names:
                stream = open_(self._members[name])
                try:
                    first = await anext(stream)
                except StopAsyncIteration:
                    await _close(stream)
                    errors.append(NotFound(f"PACS {name} sent nothing for {what}"))
                    continue
                except GatewayError as exc:
                    await _close(stream)
                    await self._failed(ref, name, what, exc)
                    errors.append(exc)
                    continue
                except BaseException:  # the client left (cancelled): end that retrieval too
                    await _close(stream)
                    raise
                break
            else:
                raise _no_answer(ref.study_uid, what, errors)
        try:
            yield first
            async for item in stream:
                yield item
        finally:
            await _close(stream)

    async def _first_result(self, ref: Ref, what: str,
                            call: Callable[[WadoService], Awaitable[T]]) -> T:
        """The result of ``call`` on the first candidate PACS that answers."""
        errors: list[GatewayError] = []
        async with aclosing(self._locator.candidates(ref.study_uid)) as names:
            async for name in names:
                try:
                    return await call(self._members[name])
                except GatewayError as exc:
                    await self._failed(ref, name, what, exc)
                    errors.append(exc)
        raise _no_answer(ref.study_uid, what, errors)

    async def _failed(self, ref: Ref, name: str, what: str, exc: GatewayError) -> None:
        """Note a candidate's failure; re-raise what the next PACS would not answer better. A
        404 for a whole study means the PACS no longer holds it; for a series or an instance,
        only that the study is split across PACS."""
        if exc.http_status not in FAILOVER_STATUSES:
            raise exc
        log.warning("federation: %s from PACS %s failed (%s %s); the next PACS holding the "
                    "study, if any, is tried", what, name, exc.http_status, exc.message)
        self._metrics.inc("federation_failovers_total", peer=name, status=str(exc.http_status))
        if exc.http_status == 404 and isinstance(ref, StudyRef):
            await self._locator.forget(ref.study_uid, name)

    async def _known_member(self, study_uid: str) -> WadoService | None:
        """The first PACS remembered for a study, without asking any (None when none is)."""
        for name in await self._locator.known(study_uid):
            if name in self._members:
                return self._members[name]
        return None

    # -- the WadoService interface -------------------------------------------------------------

    def instances(self, ref: Ref, preferences: str | None | list[str | None]
                  ) -> AsyncIterator[WireInstance]:
        """Instances under ``ref`` (WadoService.instances) from a PACS that holds them."""
        return self._first_answer(ref, f"the instances of {describe(ref)}",
                                  lambda wado: wado.instances(ref, preferences))

    def metadata_json(self, ref: Ref, base_url: str) -> AsyncIterator[bytes]:
        """Metadata as DICOM JSON objects (WadoService.metadata_json)."""
        return self._first_answer(ref, f"the metadata of {describe(ref)}",
                                  lambda wado: wado.metadata_json(ref, base_url))

    def metadata_datasets(self, ref: Ref, base_url: str) -> AsyncIterator[MetadataItem]:
        """Metadata as datasets (WadoService.metadata_datasets)."""
        return self._first_answer(ref, f"the metadata of {describe(ref)}",
                                  lambda wado: wado.metadata_datasets(ref, base_url))

    def each_instance(self, ref: Ref) -> AsyncIterator[tuple[str, ReceivedInstance]]:
        """(series UID, instance as stored) for every instance under ``ref``."""
        return self._first_answer(ref, f"the instances of {describe(ref)}",
                                  lambda wado: wado.each_instance(ref))

    def frames(self, ref: InstanceRef, numbers: list[int], wanted: str | None
               ) -> AsyncIterator[Frame]:
        """Frames of an instance (WadoService.frames)."""
        return self._first_answer(ref, f"frames of {describe(ref)}",
                                  lambda wado: wado.frames(ref, numbers, wanted))

    def bulkdata(self, ref: InstanceRef, reference: str, wanted: str | None
                 ) -> AsyncIterator[Frame]:
        """A bulk data value of an instance (WadoService.bulkdata)."""
        return self._first_answer(ref, f"bulk data of {describe(ref)}",
                                  lambda wado: wado.bulkdata(ref, reference, wanted))

    async def instance(self, ref: InstanceRef) -> ReceivedInstance:
        """One instance as stored (WadoService.instance)."""
        return await self._first_result(ref, describe(ref),
                                        lambda wado: wado.instance(ref))

    async def study_series(self, study_uid: str) -> list[str]:
        """The series of a study, as the first PACS holding it lists them."""
        async def listed(wado: WadoService) -> list[str]:
            series = await wado.study_series(study_uid)
            if not series:
                raise NotFound(f"no series of study {study_uid}")
            return series

        return await self._first_result(StudyRef(study_uid), f"the series of study {study_uid}",
                                        listed)

    async def warm(self, ref: SeriesRef) -> bool:
        """Fill the cache with a series (WadoService.warm) from a PACS that holds it."""
        return await self._first_result(ref, describe(ref), lambda wado: wado.warm(ref))

    async def content_signature(self, ref: SeriesRef | StudyRef) -> list[str] | None:
        """The cached content of a series at the first PACS remembered for its study (for
        ETags); None when no PACS is remembered: validators never cost a C-FIND."""
        wado = await self._known_member(ref.study_uid)
        return await wado.content_signature(ref) if wado is not None else None

    async def encoded_series_metadata(self, ref: SeriesRef, base_url: str, variant: str,
                                      encode: Callable[[bytes], Awaitable[bytes]]
                                      ) -> bytes | None:
        """A warm series' encoded metadata from the first PACS remembered for its study; None
        (stream it, with fail-over) otherwise."""
        wado = await self._known_member(ref.study_uid)
        if wado is None:
            return None
        try:
            return await wado.encoded_series_metadata(ref, base_url, variant, encode)
        except GatewayError:
            return None


async def _close(stream: AsyncIterator[object]) -> None:
    """Close an async generator left early (its retrieval is cancelled)."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


def _no_answer(study_uid: str, what: str, errors: list[GatewayError]) -> GatewayError:
    """The error of a retrieval no PACS answered: 404 when none holds it, else the first
    PACS's own error."""
    for exc in errors:
        if exc.http_status != 404:
            return exc
    if errors:
        return errors[0]
    return NotFound(f"no federated PACS holds study {study_uid} ({what})")

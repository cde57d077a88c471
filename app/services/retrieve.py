"""WADO-RS retrieval orchestration: an inventory C-FIND, then one C-GET or C-MOVE at the level
asked for, streaming each instance on as its sub-operation completes.

The inventory tells a missing resource (404) from a failing PACS before any byte is sent, gives
the SOP classes to propose for C-GET, and the instance UIDs to route C-MOVE sub-operations by
when a PACS omits the Move Originator fields. Outcomes are checked against what arrived:
"success but nothing arrived" is an error, partial failures are logged and counted.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from pydicom.dataset import Dataset

from app.dicomweb.attributes import QueryLevel
from app.dicomweb.identifiers import build_identifier
from app.dicomweb.refs import InstanceRef, SeriesRef, StudyRef
from app.dicomweb.sop_classes import COMMON_STORAGE_SOP_CLASSES
from app.dicomweb.transfer_syntax import (
    plan_storage_contexts,
)
from app.dimse.client import PeerClient
from app.dimse.received import ReceivedInstance, RetrieveOutcome
from app.dimse.status import Category, category, retrieve_failure
from app.errors import NotFound, UpstreamError
from app.metrics import Metrics
from app.services.move_relay import MoveRelay
from app.settings import PacsPeer

log = logging.getLogger(__name__)
Ref = StudyRef | SeriesRef | InstanceRef
AS_STORED = "*"

STUDY_UID, SERIES_UID, SOP_UID, SOP_CLASS = 0x0020000D, 0x0020000E, 0x00080018, 0x00080016
PIXEL_DATA = 0x7FE00010
OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class InventoryItem:
    """An instance the PACS says exists under the requested resource."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str | None


@dataclass(frozen=True, slots=True)
class WireInstance:
    """An instance ready for the web: Part-10 bytes in a syntax allowed on the wire."""

    data: bytes
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str


def _level(ref: Ref) -> QueryLevel:
    if isinstance(ref, InstanceRef):
        return QueryLevel.IMAGE
    if isinstance(ref, SeriesRef):
        return QueryLevel.SERIES
    return QueryLevel.STUDY


def _uids(ref: Ref) -> dict[int, str]:
    out = {STUDY_UID: ref.study_uid}
    if isinstance(ref, (SeriesRef, InstanceRef)):
        out[SERIES_UID] = ref.series_uid
    if isinstance(ref, InstanceRef):
        out[SOP_UID] = ref.sop_instance_uid
    return out


def describe(ref: Ref) -> str:
    """A human name for a resource, for error messages."""
    if isinstance(ref, InstanceRef):
        return f"instance {ref.sop_instance_uid}"
    if isinstance(ref, SeriesRef):
        return f"series {ref.series_uid}"
    return f"study {ref.study_uid}"


class RetrieveService:
    """Retrieves studies, series and instances from one PACS."""

    def __init__(self, client: PeerClient, metrics: Metrics,
                 relay: MoveRelay | None = None, local_ae_title: str = "") -> None:
        self._client = client
        self._peer = client.peer
        self._metrics = metrics
        self._relay = relay
        self._local_ae = local_ae_title

    @property
    def peer(self) -> PacsPeer:
        """The PACS this service retrieves from."""
        return self._peer

    # -- inventory ----------------------------------------------------------------------------

    async def inventory(self, ref: Ref) -> list[InventoryItem]:
        """The instances under ``ref`` according to the PACS (IMAGE-level C-FINDs)."""
        if isinstance(ref, StudyRef):
            items: list[InventoryItem] = []
            for series_uid in await self.series_uids(ref.study_uid):
                items.extend(await self.inventory(SeriesRef(ref.study_uid, series_uid)))
            return items
        ident = build_identifier(QueryLevel.IMAGE, unique_keys=_uids(ref),
                                 return_keys=[SOP_UID, SOP_CLASS])
        out = []
        async for ds in self._find(ident):
            uid = ds.get(SOP_UID)
            if uid is None or not uid.value:
                continue
            if isinstance(ref, InstanceRef) and str(uid.value) != ref.sop_instance_uid:
                continue
            klass = ds.get(SOP_CLASS)
            out.append(InventoryItem(ref.study_uid, ref.series_uid, str(uid.value),
                                     str(klass.value) if klass is not None and klass.value
                                     else None))
        return out

    async def series_uids(self, study_uid: str) -> list[str]:
        """The series of a study according to the PACS (one SERIES-level C-FIND)."""
        ident = build_identifier(QueryLevel.SERIES, unique_keys={STUDY_UID: study_uid},
                                 return_keys=[SERIES_UID])
        return [str(ds.SeriesInstanceUID) async for ds in self._find(ident)
                if ds.get("SeriesInstanceUID")]

    async def _find(self, ident: Dataset) -> AsyncIterator[Dataset]:
        async with self._client.find(ident) as stream:
            async for ds in stream:
                yield ds

    # -- retrieval ----------------------------------------------------------------------------

    async def received(
        self, ref: Ref, series_of: dict[str, str] | None = None,
        report: dict[str, int] | None = None,
    ) -> AsyncIterator[ReceivedInstance]:
        """Instances under ``ref`` as the PACS sends them; raises NotFound before the first one
        if the PACS has nothing, and an upstream error if it fails before sending anything.
        ``series_of``, when given, is filled with each instance's series UID; ``report`` with
        the counts expected, received and failed once the retrieval has ended."""
        items = await self.inventory(ref)
        if series_of is not None:
            series_of.update((i.sop_instance_uid, i.series_uid) for i in items)
        if not items:
            raise NotFound(f"{describe(ref)} not found on the PACS")
        identifier = build_identifier(_level(ref), unique_keys=_uids(ref))
        relayed: AbstractAsyncContextManager[None] = contextlib.nullcontext()
        if self._peer.retrieve_method == "move":
            message_id = (await self._relay.reserve_message_id(self._local_ae)
                          if self._relay is not None else None)
            stream = self._client.move(identifier, frozenset(i.sop_instance_uid for i in items),
                                       message_id=message_id)
            if self._relay is not None:
                relayed = self._relay.running(self._local_ae, message_id)
        else:
            classes = sorted({i.sop_class_uid for i in items if i.sop_class_uid})
            if len(classes) < len(items) and not all(i.sop_class_uid for i in items):
                # The PACS does not return SOPClassUID (dcmqrscp): propose the common classes.
                classes = sorted(set(classes) | set(COMMON_STORAGE_SOP_CLASSES))
            plan = plan_storage_contexts(classes)
            if plan.left_out:
                log.warning("C-GET of %s cannot propose %d SOP classes (128-context limit): %s",
                            describe(ref), len(plan.left_out), plan.left_out[:5])
            stream = self._client.get(identifier, plan.contexts)
        operation = "C-MOVE" if self._peer.retrieve_method == "move" else "C-GET"
        self._metrics.inc("dimse_retrievals_total", peer=self._peer.name, operation=operation)
        count = 0
        async with relayed, stream:
            async for instance in stream:
                count += 1
                yield instance
            outcome: RetrieveOutcome = stream.result
        if report is not None:
            report.update(expected=len(items), received=count, failed=outcome.failed)
        self._check(outcome, count, len(items), ref, operation)

    def _check(self, outcome: RetrieveOutcome, count: int, expected: int, ref: Ref,
               operation: str) -> None:
        """Turn a retrieval's outcome into an error, a logged partial result, or nothing."""
        cat = category(outcome.status)
        if count == 0:
            if cat in (Category.SUCCESS, Category.WARNING) and outcome.completed > 0:
                self._metrics.inc("dimse_retrieve_lost_total", peer=self._peer.name)
                raise UpstreamError(
                    f"{operation} of {describe(ref)} reported {outcome.completed} instance(s) "
                    "sent, but none reached the gateway (is the gateway's AE title mapped to "
                    "this host and port on the PACS?)", dimse_status=outcome.status)
            if cat is Category.SUCCESS and outcome.completed == 0 and outcome.failed == 0:
                raise NotFound(f"{describe(ref)} not found on the PACS",
                               dimse_status=outcome.status)
            raise retrieve_failure(outcome.status, operation)
        if outcome.failed or count < expected or cat is Category.FAILURE:
            self._metrics.inc("dimse_retrieve_partial_total", peer=self._peer.name)
            log.warning(
                "%s of %s was partial: status 0x%04X, %d received of %d expected, %d failed %s",
                operation, describe(ref), outcome.status, count, expected, outcome.failed,
                list(outcome.failed_uids)[:5])

"""Retrieval from a PACS for WADO-RS: an inventory C-FIND, then one C-GET or C-MOVE at the level
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
from app.dicomweb.refs import InstanceRef, SeriesRef, StudyRef, level_and_uid
from app.dicomweb.sop_classes import COMMON_STORAGE_SOP_CLASSES, sop_classes_for_modality
from app.dicomweb.tags import (
    MODALITIES_IN_STUDY,
    MODALITY,
    SERIES_INSTANCE_UID,
    SERIES_RELATED_INSTANCES,
    SOP_CLASS_UID,
    SOP_CLASSES_IN_STUDY,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    STUDY_RELATED_INSTANCES,
)
from app.dicomweb.transfer_syntax import (
    compressed_first,
    plan_storage_contexts,
)
from app.dimse.client import Client, RetrieveStream
from app.dimse.received import ReceivedInstance, RetrieveOutcome
from app.dimse.status import (
    Category,
    ContextsRejected,
    category,
    nothing_found,
    retrieve_failure,
)
from app.errors import GatewayError, NotFound, UpstreamError, UpstreamNotSupported
from app.metrics import Metrics
from app.services.capabilities import PeerCapabilities
from app.services.move_relay import MoveRelay
from app.settings import PacsPeer

log = logging.getLogger(__name__)
MAX_RETRIES = 200
Ref = StudyRef | SeriesRef | InstanceRef


@dataclass(frozen=True, slots=True)
class InventoryItem:
    """An instance the PACS says exists under the requested resource."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str | None
    candidate_classes: tuple[str, ...] = ()


def _level(ref: Ref) -> QueryLevel:
    if isinstance(ref, InstanceRef):
        return QueryLevel.IMAGE
    if isinstance(ref, SeriesRef):
        return QueryLevel.SERIES
    return QueryLevel.STUDY


def _uids(ref: Ref) -> dict[int, str]:
    out = {STUDY_INSTANCE_UID: ref.study_uid}
    if isinstance(ref, (SeriesRef, InstanceRef)):
        out[SERIES_INSTANCE_UID] = ref.series_uid
    if isinstance(ref, InstanceRef):
        out[SOP_INSTANCE_UID] = ref.sop_instance_uid
    return out


@dataclass(frozen=True, slots=True)
class Summary:
    """What one C-FIND at a series' or study's own level says about its content: the number
    of instances (None when the PACS does not say) and the storage classes to propose."""

    count: int | None
    classes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Tally:
    """How a retrieval ended: instances expected, received, and expected but not received."""

    expected: int
    received: int
    failed: int

    @property
    def complete(self) -> bool:
        """Everything expected arrived."""
        return self.received == self.expected and not self.failed


class Retrieval:
    """One retrieval: its instances (``async for``) and what it learned on the way, typed:
    the series of each instance the inventory listed, and its ``Tally`` once it ended."""

    def __init__(self) -> None:
        self.series_of: dict[str, str] = {}
        self.tally: Tally | None = None
        self._instances: AsyncIterator[ReceivedInstance] | None = None

    def __aiter__(self) -> AsyncIterator[ReceivedInstance]:
        assert self._instances is not None, "a Retrieval is iterated once"
        instances, self._instances = self._instances, None
        return instances

    def listed(self, items: list[InventoryItem]) -> None:
        """Remember the series of each instance an inventory listed."""
        self.series_of.update((i.sop_instance_uid, i.series_uid) for i in items)


def _values(ds: Dataset, tag: int) -> list[object]:
    element = ds.get(tag)
    if element is None or element.value in (None, "", b""):
        return []
    value = element.value
    return list(value) if isinstance(value, (list, tuple)) or element.VM > 1 else [value]


def _int_value(ds: Dataset, tag: int) -> int:
    try:
        values = _values(ds, tag)
        return int(str(values[0])) if values else 0
    except ValueError:
        return 0


def _classes_of(items: list[InventoryItem]) -> list[str]:
    """Storage classes to propose for these instances: known ones, else the Modality's."""
    classes = {i.sop_class_uid for i in items if i.sop_class_uid}
    for item in items:
        if not item.sop_class_uid:
            classes.update(item.candidate_classes or COMMON_STORAGE_SOP_CLASSES)
    return sorted(classes)


class GetRefused(Exception):
    """A C-GET of an "auto" PACS was refused before any instance arrived: its association
    rejected the Query/Retrieve GET context (``certain``), or its final status was a Refused
    or Error one with no sub-operation at all (see ``refuses_get``)."""

    def __init__(self, error: GatewayError, reason: str, *, certain: bool) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.certain = certain


def refuses_get(outcome: RetrieveOutcome) -> bool:
    """Whether a C-GET's outcome reads as the PACS refusing C-GET itself: nothing received,
    no sub-operation completed, and a final status of Refused: Out of Resources (A7xx), Error:
    Unable to process (Cxxx) or SOP Class not supported (0122) (PS3.4 C.4.3.1.4). The failed
    count is not looked at: a PACS that refuses may count every instance as failed."""
    status = outcome.status
    return (outcome.received == 0 and outcome.completed == outcome.warning == 0
            and (0xA700 <= status <= 0xA7FF or 0xC000 <= status <= 0xCFFF or status == 0x0122))


def describe(ref: Ref) -> str:
    """A human name for a resource, for error messages."""
    level, uid = level_and_uid(ref)
    return f"{level} {uid}"


class PacsRetrieval:
    """Retrieves studies, series and instances from one PACS."""

    def __init__(self, client: Client, metrics: Metrics,
                 relay: MoveRelay | None = None, local_ae_title: str = "",
                 move_fallback: bool = False, storage_scp: bool = True,
                 capabilities: PeerCapabilities | None = None) -> None:
        """``move_fallback``: C-MOVE what a C-GET did not deliver (the storage SCP runs);
        ``storage_scp``: whether the gateway's storage SCP runs (C-MOVE is possible at all);
        ``capabilities``: what was learned about the PACS (shared with other services)."""
        self._client = client
        self._peer = client.peer
        self._metrics = metrics
        self._relay = relay
        self._local_ae = local_ae_title
        self._move_fallback = move_fallback
        self._storage_scp = storage_scp
        self._capabilities = (capabilities if capabilities is not None
                              else PeerCapabilities(client.peer, metrics))

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
                                 return_keys=[SOP_INSTANCE_UID, SOP_CLASS_UID])
        out: list[InventoryItem] = []
        async for ds in self._find(ident):
            uid = ds.get(SOP_INSTANCE_UID)
            if uid is None or not uid.value:
                continue
            if isinstance(ref, InstanceRef) and str(uid.value) != ref.sop_instance_uid:
                continue
            klass = ds.get(SOP_CLASS_UID)
            out.append(InventoryItem(ref.study_uid, ref.series_uid, str(uid.value),
                                     str(klass.value) if klass is not None and klass.value
                                     else None))
        if out and not all(i.sop_class_uid for i in out):
            # The PACS does not return SOPClassUID (DCMTK dcmqrscp): guess the storage classes
            # from the series' Modality, so C-GET can propose every syntax for each of them.
            guessed = sop_classes_for_modality(await self._series_modality(ref))
            if guessed:
                out = [InventoryItem(i.study_uid, i.series_uid, i.sop_instance_uid,
                                     i.sop_class_uid, guessed) for i in out]
        return out

    async def _series_modality(self, ref: SeriesRef | InstanceRef) -> str:
        ident = build_identifier(QueryLevel.SERIES,
                                 unique_keys={STUDY_INSTANCE_UID: ref.study_uid,
                                              SERIES_INSTANCE_UID: ref.series_uid},
                                 return_keys=[MODALITY])
        async for ds in self._find(ident):
            value = ds.get(MODALITY)
            if value is not None and value.value:
                return str(value.value)
        return ""

    async def series_uids(self, study_uid: str) -> list[str]:
        """The series of a study according to the PACS (one SERIES-level C-FIND)."""
        return (await self.list_series(study_uid))[0]

    async def list_series(self, study_uid: str) -> tuple[list[str], bool]:
        """The series of a study (one SERIES-level C-FIND) and whether that answer is complete:
        the C-FIND ended with Success or Warning (not capped by the PACS) and every match
        carried its SeriesInstanceUID. Only a complete list may be cached."""
        ident = build_identifier(QueryLevel.SERIES, unique_keys={STUDY_INSTANCE_UID: study_uid},
                                 return_keys=[SERIES_INSTANCE_UID])
        uids: list[str] = []
        complete = True
        async with self._client.find(ident) as stream:
            async for ds in stream:
                uid = ds.get(SERIES_INSTANCE_UID)
                if uid is None or not uid.value:
                    complete = False
                    continue
                uids.append(str(uid.value))
            outcome = stream.result
        if outcome.capped or outcome.cancelled or category(outcome.status) not in (
                Category.SUCCESS, Category.WARNING):
            complete = False
        return list(dict.fromkeys(uids)), complete

    async def _find(self, ident: Dataset) -> AsyncIterator[Dataset]:
        async with self._client.find(ident) as stream:
            async for ds in stream:
                yield ds

    # -- retrieval ----------------------------------------------------------------------------

    async def summary(self, ref: SeriesRef | StudyRef) -> Summary | None:
        """How many instances ``ref`` holds and which storage classes, from ONE C-FIND at its
        own level; None when the PACS does not say (then the IMAGE-level inventory is needed).
        Raises NotFound when the PACS does not know ``ref``."""
        if isinstance(ref, SeriesRef):
            ident = build_identifier(QueryLevel.SERIES, unique_keys=_uids(ref),
                                     return_keys=[SERIES_RELATED_INSTANCES, MODALITY])
            count_tag = SERIES_RELATED_INSTANCES
        else:
            ident = build_identifier(QueryLevel.STUDY, unique_keys=_uids(ref),
                                     return_keys=[STUDY_RELATED_INSTANCES, SOP_CLASSES_IN_STUDY,
                                                  MODALITIES_IN_STUDY])
            count_tag = STUDY_RELATED_INSTANCES
        answers = [ds async for ds in self._find(ident)]
        if not answers:
            raise nothing_found(describe(ref))
        ds = answers[0]
        count = _int_value(ds, count_tag)
        classes = [str(v) for v in _values(ds, SOP_CLASSES_IN_STUDY)]
        modalities = [str(m) for m in _values(ds, MODALITY) + _values(ds, MODALITIES_IN_STUDY)]
        if not count and not classes and not modalities and isinstance(ref, StudyRef):
            # No counts, classes or modalities at study level (DCMTK dcmqrscp): the series'
            # modalities (one small C-FIND) still let the C-GET start without listing every
            # instance first.
            modalities = await self._study_modalities(ref)
        if not classes:
            for modality in modalities:
                classes.extend(sop_classes_for_modality(modality))
        if not count and not classes:
            return None  # nothing to go on: the IMAGE-level inventory says
        return Summary(count or None,
                       tuple(dict.fromkeys(classes)) or COMMON_STORAGE_SOP_CLASSES)

    async def _study_modalities(self, ref: StudyRef) -> list[str]:
        """The distinct modalities of a study's series (one SERIES-level C-FIND)."""
        ident = build_identifier(QueryLevel.SERIES, unique_keys={STUDY_INSTANCE_UID: ref.study_uid},
                                 return_keys=[MODALITY])
        found = [str(ds.get(MODALITY).value) async for ds in self._find(ident)
                 if ds.get(MODALITY) is not None and ds.get(MODALITY).value]
        return list(dict.fromkeys(found))

    def received(self, ref: Ref, known: Summary | None = None) -> Retrieval:
        """A retrieval of ``ref``: instances as the PACS sends them; raises NotFound before the
        first one if the PACS has nothing, and an upstream error if it fails before sending
        anything. The Retrieval knows the series of each instance the inventory listed, and
        its ``tally`` (expected, received, failed) at the end.

        C-GET of a series or study starts after one C-FIND at that level (count and classes)
        when the PACS answers it, so the first instance is not delayed by listing every
        instance; the IMAGE-level inventory is used otherwise, and always for C-MOVE (whose
        sub-operations may need routing by UID). ``known`` is a summary the caller already has
        (from the cache): then that C-FIND is not sent.

        ``retrieve_method = "auto"``: C-GET unless the PACS is known to refuse it; a C-GET
        refused before any instance arrived (see ``GetRefused``) is followed by a C-MOVE of
        the same resource, and the refusal remembered for ``capability_ttl``."""
        run = Retrieval()
        run._instances = self._run(ref, known, run)
        return run

    async def _run(self, ref: Ref, known: Summary | None, run: Retrieval
                   ) -> AsyncIterator[ReceivedInstance]:
        if self._uses_move():
            async for instance in self._received(ref, True, run, known):
                yield instance
            return
        try:
            async for instance in self._received(ref, False, run, known):
                yield instance
        except GetRefused as refusal:
            async for instance in self._after_refusal(refusal, ref, run):
                yield instance

    def _uses_move(self) -> bool:
        """Whether this retrieval goes straight to C-MOVE."""
        method = self._peer.retrieve_method
        return method == "move" or (method == "auto" and self._capabilities.get_refused)

    async def _after_refusal(self, refusal: GetRefused, ref: Ref, run: Retrieval
                             ) -> AsyncIterator[ReceivedInstance]:
        """C-MOVE after a refused C-GET. A refusal the association made (no GET context) is
        learned at once; one told by a status (which a PACS may also give for one instance it
        cannot send) is learned only when the C-MOVE then delivers."""
        self._metrics.inc("dimse_get_refusals_total", peer=self._peer.name)
        if refusal.certain:
            self._capabilities.learn_get_refused(refusal.reason)
        if not self._storage_scp:
            raise self._storage_scp_off(refusal.reason, refusal.error)
        log.info("PACS %s refused the C-GET of %s (%s): trying C-MOVE", self._peer.name,
                 describe(ref), refusal.reason)
        delivered = False
        try:
            async for instance in self._received(ref, True, run, None):
                if not delivered and not refusal.certain:
                    self._capabilities.learn_get_refused(refusal.reason)
                delivered = True
                yield instance
        except GatewayError as exc:
            if delivered or isinstance(exc, NotFound):
                raise
            if refusal.certain:  # the C-MOVE's own error, saying why it was tried
                raise type(exc)(f"PACS {self._peer.name} refuses C-GET ({refusal.reason}); the "
                                f"C-MOVE instead failed: {exc.message}", detail=exc.detail,
                                dimse_status=exc.dimse_status) from exc
            first = refusal.error
            raise type(first)(f"{first.message}; a C-MOVE instead failed too: {exc.message}",
                              detail=f"{first.detail}; C-MOVE: {exc.detail}",
                              dimse_status=first.dimse_status) from exc

    def _storage_scp_off(self, refusal: str | None, error: GatewayError | None = None
                         ) -> UpstreamError:
        """502 for a C-MOVE the gateway cannot receive: its storage SCP is off. ``refusal``:
        why C-GET is not used ("auto"), None when C-MOVE is configured."""
        if refusal is None:
            return UpstreamError(
                f"PACS {self._peer.name} is retrieved from by C-MOVE (retrieve_method = "
                "\"move\"), but the gateway's storage SCP is off (storage_scp_enabled = false)")
        return UpstreamError(
            f"PACS {self._peer.name} refuses C-GET ({refusal}) and the gateway cannot retrieve "
            "by C-MOVE instead: its storage SCP is off (set storage_scp_enabled = true and "
            "declare the gateway's AE title on the PACS)",
            detail=error.detail if error is not None else None,
            dimse_status=error.dimse_status if error is not None else None)

    async def _received(self, ref: Ref, move: bool, run: Retrieval, known: Summary | None
                        ) -> AsyncIterator[ReceivedInstance]:
        """One retrieval of ``ref`` by C-MOVE or C-GET (see ``received``); a C-GET of an
        "auto" PACS refused before any instance raises GetRefused instead of its error."""
        if move and not self._storage_scp:
            raise self._storage_scp_off(
                None if self._peer.retrieve_method == "move" else
                self._capabilities.get_refusal_reason or "it was found to refuse C-GET")
        auto = not move and self._peer.retrieve_method == "auto"
        summary = None
        if not move and isinstance(ref, (SeriesRef, StudyRef)):
            summary = known if known is not None else await self.summary(ref)
        items: list[InventoryItem] | None = None
        if summary is None:
            items = await self.inventory(ref)
            if not items:
                raise nothing_found(describe(ref))
            run.listed(items)
        expected: int | None = summary.count if summary is not None else len(items or [])
        identifier = build_identifier(_level(ref), unique_keys=_uids(ref))
        relayed: AbstractAsyncContextManager[None] = contextlib.nullcontext()
        if move:
            assert items is not None
            stream, relayed = await self._move(identifier,
                                               frozenset(i.sop_instance_uid for i in items))
        else:
            classes = list(summary.classes) if summary is not None else _classes_of(items or [])
            stream = self._client.get(identifier, self._storage_contexts(classes, ref))
        operation = "C-MOVE" if move else "C-GET"
        self._metrics.inc("dimse_retrievals_total", peer=self._peer.name, operation=operation)
        count = 0
        arrived: set[str] = set()
        try:
            async with relayed, stream:
                async for instance in stream:
                    count += 1
                    arrived.add(instance.sop_instance_uid)
                    yield instance
                outcome: RetrieveOutcome = stream.result
        except (UpstreamNotSupported, ContextsRejected) as exc:
            if auto and count == 0:  # the association refused the Q/R GET context
                raise GetRefused(exc, "its association refused the C-GET service",
                                 certain=True) from exc
            raise
        if auto and count == 0 and refuses_get(outcome) and self._storage_scp:
            # Without the storage SCP, the one-instance C-GET retries below are all there is.
            raise GetRefused(retrieve_failure(outcome.status, operation),
                             f"C-GET answered 0x{outcome.status:04X} and delivered nothing",
                             certain=False)
        if auto and count:
            self._capabilities.learn_get_accepted()
        if expected is None:  # the PACS gave no count: its own sub-operation counters say
            expected = max(count, outcome.completed + outcome.failed + outcome.warning)
        if outcome.failed and not move:
            # Second chance, one instance at a time with compressed contexts first: some PACS
            # send each file over the first accepted context of its class, whatever its syntax.
            if items is None:
                items = await self.inventory(ref)
                expected = len(items)
                run.listed(items)
            missing = [i for i in items if i.sop_instance_uid not in arrived]
            for item in missing[:MAX_RETRIES]:
                async for instance in self._retry(item):
                    count += 1
                    arrived.add(instance.sop_instance_uid)
                    yield instance
            still = [i for i in missing if i.sop_instance_uid not in arrived]
            if still and self._move_fallback:
                async for instance in self._move_missing(still):
                    if instance.sop_instance_uid in arrived:
                        continue
                    count += 1
                    arrived.add(instance.sop_instance_uid)
                    yield instance
            if missing and len(arrived) >= expected:
                outcome = RetrieveOutcome(0x0000, count, 0, outcome.warning, count)
        run.tally = Tally(expected, count, max(0, expected - len(arrived)))
        unknown = [i.sop_instance_uid for i in items or []
                   if not i.sop_class_uid and i.sop_instance_uid not in arrived]
        self._check(outcome, count, expected, ref, operation,
                    self._unknown_class_note(unknown) if unknown and not move else "")

    def _unknown_class_note(self, uids: list[str]) -> str:
        """Why instances of a class the PACS does not name in C-FIND were not delivered."""
        text = (f"{len(uids)} instance(s) not delivered {uids[:5]}: their SOP class is unknown "
                f"to the gateway because PACS {self._peer.name} returns no SOPClassUID in "
                "C-FIND answers, and C-GET could propose only the storage classes guessed from "
                "the series' Modality")
        if self._move_fallback:
            return text + "; the C-MOVE fallback did not deliver them either"
        return text + ('; set retrieve_method = "move" or move_fallback = true for this PACS '
                       "(C-MOVE to the gateway's storage SCP accepts every storage class)")

    async def _move(self, identifier: Dataset, uids: frozenset[str]
                    ) -> tuple[RetrieveStream, AbstractAsyncContextManager[None]]:
        """A C-MOVE stream to the gateway's storage SCP, and the relay registration around it."""
        relayed: AbstractAsyncContextManager[None] = contextlib.nullcontext()
        message_id = (await self._relay.reserve_message_id(self._local_ae)
                      if self._relay is not None else None)
        stream = self._client.move(identifier, uids, message_id=message_id)
        if self._relay is not None:
            relayed = self._relay.running(self._local_ae, message_id)
        return stream, relayed

    async def _move_missing(self, items: list[InventoryItem]) -> AsyncIterator[ReceivedInstance]:
        """C-MOVE (IMAGE level, by SOP Instance UID) of instances a C-GET did not deliver: one
        per series and ``max_uids_per_query`` UIDs; failures are logged, not raised."""
        by_series: dict[tuple[str, str], list[str]] = {}
        for item in items:
            by_series.setdefault((item.study_uid, item.series_uid), []).append(
                item.sop_instance_uid)
        step = self._peer.max_uids_per_query
        for (study_uid, series_uid), uids in by_series.items():
            for start in range(0, len(uids), step):
                chunk = tuple(uids[start:start + step])
                log.info("C-GET from PACS %s did not deliver %d instance(s) of series %s: "
                         "falling back to C-MOVE", self._peer.name, len(chunk), series_uid)
                identifier = build_identifier(QueryLevel.IMAGE, unique_keys={
                    STUDY_INSTANCE_UID: study_uid, SERIES_INSTANCE_UID: series_uid,
                    SOP_INSTANCE_UID: chunk if len(chunk) > 1 else chunk[0]})
                self._metrics.inc("dimse_retrievals_total", peer=self._peer.name,
                                  operation="C-MOVE")
                self._metrics.inc("dimse_move_fallbacks_total", peer=self._peer.name)
                try:
                    stream, relayed = await self._move(identifier, frozenset(chunk))
                    async with relayed, stream:
                        async for instance in stream:
                            yield instance
                except GatewayError as exc:
                    log.warning("C-MOVE fallback for series %s failed: %s", series_uid,
                                exc.message)

    def _storage_contexts(self, classes: list[str], ref: Ref, *,
                          compressed_preferred: bool = False) -> list[tuple[str, tuple[str, ...]]]:
        """Storage presentation contexts for a C-GET of instances of ``classes``."""
        plan = plan_storage_contexts(sorted(set(classes)))
        if plan.left_out:
            log.warning("C-GET of %s cannot propose %d SOP classes (128-context limit): %s",
                        describe(ref), len(plan.left_out), plan.left_out[:5])
        contexts = [(cls, tuple(ts)) for cls, ts in plan.contexts]
        return compressed_first(contexts) if compressed_preferred else contexts

    async def _retry(self, item: InventoryItem) -> AsyncIterator[ReceivedInstance]:
        """One more C-GET of a single instance the first retrieval did not deliver."""
        ref = InstanceRef(item.study_uid, item.series_uid, item.sop_instance_uid)
        contexts = self._storage_contexts(_classes_of([item]), ref, compressed_preferred=True)
        stream = self._client.get(build_identifier(QueryLevel.IMAGE, unique_keys=_uids(ref)),
                                  contexts)
        self._metrics.inc("dimse_retrievals_total", peer=self._peer.name, operation="C-GET")
        try:
            async with stream:
                async for instance in stream:
                    yield instance
        except GatewayError as exc:
            log.warning("second C-GET of %s failed too: %s", describe(ref), exc.detail)

    def _check(self, outcome: RetrieveOutcome, count: int, expected: int, ref: Ref,
               operation: str, note: str = "") -> None:
        """Turn a retrieval's outcome into an error, a logged partial result, or nothing;
        ``note`` explains undelivered instances (in the error or the warning)."""
        cat = category(outcome.status)
        if count == 0 and note:
            raise UpstreamError(f"{operation} of {describe(ref)} failed with status "
                                f"0x{outcome.status:04X}: {note}", dimse_status=outcome.status)
        if count == 0:
            if cat in (Category.SUCCESS, Category.WARNING) and outcome.completed > 0:
                self._metrics.inc("dimse_retrieve_lost_total", peer=self._peer.name)
                raise UpstreamError(
                    f"{operation} of {describe(ref)} reported {outcome.completed} instance(s) "
                    "sent, but none reached the gateway (is the gateway's AE title mapped to "
                    "this host and port on the PACS?)", dimse_status=outcome.status)
            if cat is Category.SUCCESS and outcome.completed == 0 and outcome.failed == 0:
                raise nothing_found(describe(ref), outcome.status)
            raise retrieve_failure(outcome.status, operation)
        if cat is Category.FAILURE:
            # PS3.4 C.4.2.2.1: Failure means no sub-operation succeeded, yet some arrived. Do
            # not end the stream as if complete: a truncated response tells the client.
            self._metrics.inc("dimse_retrieve_partial_total", peer=self._peer.name)
            raise retrieve_failure(outcome.status, operation,
                                   f"after {count} of {expected} instance(s) arrived")
        if outcome.failed or count < expected:
            self._metrics.inc("dimse_retrieve_partial_total", peer=self._peer.name)
            log.warning(
                "%s of %s was partial: status 0x%04X, %d received of %d expected, %d failed %s%s",
                operation, describe(ref), outcome.status, count, expected, outcome.failed,
                list(outcome.failed_uids)[:5], f"; {note}" if note else "")

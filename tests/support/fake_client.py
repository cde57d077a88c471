"""A fake peer client for unit tests of service logic: the ``Client`` interface the services use
(``peer``, ``find``, ``get``, ``move``) with streams of scripted items and outcomes, and a record
of every call.

Each stream is the asyncio engine's own ``OperationStream`` running a scripted operation, so the
stream contract the services rely on (``async with``, ``async for``, ``result`` after the end,
an error raised after the items it follows) is the real one. Integration tests use real peers;
this is for the branches a real PACS will not take on request (lost sub-operations, partial
failures, refusals by status).

A test answers each call with a ``Responder``: a function of the ``Call`` returning a ``Script``.
``Archive`` answers C-FINDs from a list of instances the way a Study Root SCP would, and by
default delivers what a C-GET or C-MOVE asks for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from app.dimse.engine.stream import OperationStream, Sink
from app.dimse.find import FindOutcome
from app.dimse.received import ReceivedInstance, RetrieveOutcome
from app.settings import PacsPeer

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

STUDY_UID, SERIES_UID, SOP_UID, SOP_CLASS = 0x0020000D, 0x0020000E, 0x00080018, 0x00080016


@dataclass
class Call:
    """One operation a service asked for."""

    operation: str  # "C-FIND", "C-GET" or "C-MOVE"
    identifier: Dataset
    contexts: list[tuple[str, tuple[str, ...]]] | None = None  # C-GET storage contexts
    expected_uids: frozenset[str] | None = None  # C-MOVE
    message_id: int | None = None  # C-MOVE

    @property
    def level(self) -> str:
        return str(self.identifier.QueryRetrieveLevel)

    def uids(self, tag: int) -> list[str]:
        """The values of a unique key in the identifier (a UID list is several)."""
        element = self.identifier.get(tag)
        if element is None or element.value in (None, ""):
            return []
        value = element.value
        return [str(v) for v in value] if element.VM > 1 else [str(value)]


@dataclass
class Script:
    """What one operation does: emit ``items`` in order, then raise ``error`` or return
    ``result``."""

    items: Sequence[Any] = ()
    result: Any = None
    error: BaseException | None = None

    async def run(self, sink: Sink[Any]) -> Any:
        for item in self.items:
            await sink.emit(item)
        if self.error is not None:
            raise self.error
        return self.result


Responder = Callable[[Call], Script]


def found(*matches: Dataset, status: int = 0x0000, capped: bool = False) -> Script:
    """A C-FIND that returns ``matches`` and ends with ``status``."""
    return Script(list(matches), FindOutcome(status, False, len(matches), False, False, capped))


def retrieved(*instances: ReceivedInstance, status: int = 0x0000, completed: int | None = None,
              failed: int = 0, warning: int = 0, failed_uids: Iterable[str] = ()) -> Script:
    """A C-GET or C-MOVE that delivers ``instances`` and ends with ``status`` and these
    sub-operation counters (``completed`` defaults to the number delivered)."""
    done = len(instances) if completed is None else completed
    return Script(list(instances), RetrieveOutcome(status, done, failed, warning, len(instances),
                                                   tuple(failed_uids)))


def failing(error: BaseException, *instances: ReceivedInstance) -> Script:
    """An operation that delivers ``instances`` and then raises ``error``."""
    return Script(list(instances), error=error)


def in_turn(*scripts: Script) -> Responder:
    """A responder answering successive calls with ``scripts`` in order."""
    queue = list(scripts)

    def respond(call: Call) -> Script:
        assert queue, f"unexpected {call.operation} at level {call.level}"
        return queue.pop(0)

    return respond


def unexpected(call: Call) -> Script:
    raise AssertionError(f"unexpected {call.operation} at level {call.level}")


@dataclass(frozen=True)
class Stored:
    """One instance the fake archive holds."""

    study: str
    series: str
    sop: str
    sop_class: str = CT_IMAGE
    modality: str = "CT"

    def received(self, transfer_syntax: str = EXPLICIT_LE) -> ReceivedInstance:
        """The instance as a C-STORE sub-operation would deliver it."""
        return ReceivedInstance(f"part10:{self.sop}".encode(), self.sop_class, self.sop,
                                transfer_syntax)


@dataclass
class Archive:
    """C-FIND answers computed from ``instances`` like a Study Root SCP: matches at the
    identifier's level filtered by its unique keys, with the return keys it knows filled in.
    ``sop_classes`` False leaves SOPClassUID out (as DCMTK dcmqrscp does); ``counts`` False
    leaves the Number of ... Related Instances and SOP Classes in Study out."""

    instances: list[Stored]
    sop_classes: bool = True
    counts: bool = True
    modalities: bool = True

    def _matching(self, call: Call) -> list[Stored]:
        out = self.instances
        for tag, attr in ((STUDY_UID, "study"), (SERIES_UID, "series"), (SOP_UID, "sop")):
            wanted = call.uids(tag)
            if wanted:
                out = [i for i in out if getattr(i, attr) in wanted]
        return out

    def find(self, call: Call) -> Script:
        """Answer a C-FIND."""
        matching = self._matching(call)
        asked = {element.keyword for element in call.identifier}
        answers: list[Dataset] = []
        if call.level == "IMAGE":
            for stored in matching:
                ds = Dataset()
                ds.StudyInstanceUID, ds.SeriesInstanceUID = stored.study, stored.series
                ds.SOPInstanceUID = stored.sop
                if self.sop_classes and "SOPClassUID" in asked:
                    ds.SOPClassUID = stored.sop_class
                answers.append(ds)
        elif call.level == "SERIES":
            for series in dict.fromkeys(i.series for i in matching):
                members = [i for i in matching if i.series == series]
                ds = Dataset()
                ds.StudyInstanceUID, ds.SeriesInstanceUID = members[0].study, series
                if self.modalities and "Modality" in asked:
                    ds.Modality = members[0].modality
                if self.counts and "NumberOfSeriesRelatedInstances" in asked:
                    ds.NumberOfSeriesRelatedInstances = len(members)
                answers.append(ds)
        else:
            for study in dict.fromkeys(i.study for i in matching):
                members = [i for i in matching if i.study == study]
                ds = Dataset()
                ds.StudyInstanceUID = study
                if self.counts and "NumberOfStudyRelatedInstances" in asked:
                    ds.NumberOfStudyRelatedInstances = len(members)
                if self.counts and "SOPClassesInStudy" in asked:
                    ds.SOPClassesInStudy = sorted({i.sop_class for i in members})
                if self.modalities and "ModalitiesInStudy" in asked:
                    ds.ModalitiesInStudy = sorted({i.modality for i in members})
                answers.append(ds)
        return found(*answers)

    def deliver(self, call: Call, *, skip: Iterable[str] = (), status: int | None = None
                ) -> Script:
        """A C-GET or C-MOVE delivering every matching instance but those in ``skip``, which
        are counted as failed sub-operations (final status B000 then, unless given)."""
        left_out = set(skip)
        matching = self._matching(call)
        sent = [i.received() for i in matching if i.sop not in left_out]
        failed = [i.sop for i in matching if i.sop in left_out]
        final = status if status is not None else (0xB000 if failed else 0x0000)
        return retrieved(*sent, status=final, failed=len(failed), failed_uids=failed)


def series_of(study: str, series: str, count: int, **extra: Any) -> list[Stored]:
    """``count`` instances of one series, SOP Instance UIDs ``<series>.1`` ... ``<series>.N``."""
    return [Stored(study, series, f"{series}.{n}", **extra) for n in range(1, count + 1)]


@dataclass
class FakeClient:
    """The ``Client`` interface of ``app.dimse.client`` over scripted operations."""

    peer: PacsPeer
    on_find: Responder = unexpected
    on_get: Responder = unexpected
    on_move: Responder = unexpected
    relational: bool = False  # what supports_relational() answers
    calls: list[Call] = field(default_factory=list)

    async def supports_relational(self) -> bool:
        return self.relational

    def _stream(self, call: Call, responder: Responder) -> OperationStream[Any, Any]:
        self.calls.append(call)
        script = responder(call)
        return OperationStream(script.run, maxsize=4, deadline=10.0,
                               what=f"{call.operation} on fake PACS {self.peer.name}")

    def find(self, identifier: Dataset, *, relational: bool = False, maxsize: int = 64
             ) -> OperationStream[Dataset, FindOutcome]:
        return self._stream(Call("C-FIND", identifier), self.on_find)

    def get(self, identifier: Dataset, storage: Sequence[tuple[str, Sequence[str]]], *,
            maxsize: int = 8) -> OperationStream[ReceivedInstance, RetrieveOutcome]:
        contexts = [(cls, tuple(ts)) for cls, ts in storage]
        return self._stream(Call("C-GET", identifier, contexts=contexts), self.on_get)

    def move(self, identifier: Dataset, expected_uids: frozenset[str] = frozenset(), *,
             maxsize: int = 8, message_id: int | None = None
             ) -> OperationStream[ReceivedInstance, RetrieveOutcome]:
        return self._stream(Call("C-MOVE", identifier, expected_uids=expected_uids,
                                 message_id=message_id), self.on_move)

    def sent(self, operation: str, level: str | None = None) -> list[Call]:
        """The calls of ``operation`` (at ``level``) made so far."""
        return [c for c in self.calls
                if c.operation == operation and (level is None or c.level == level)]

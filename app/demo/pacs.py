"""An in-process Query/Retrieve SCP (pynetdicom) holding instances in memory: the demo PACS.

Serves C-ECHO, C-STORE, and C-FIND, C-GET and C-MOVE for the Patient Root and Study Root
information models (PS3.4 Annex C), so the gateway can be demonstrated and tested without a
real PACS. Matching and the information model live in ``app.demo.index``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dsutils import encode
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.transport import ThreadedAssociationServer

from app.demo.index import IdentifierError, Level, QueryIndex, answer
from app.dicomweb.sop_classes import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

__all__ = ["OPERATIONS", "DemoPacs"]

LOGGER = logging.getLogger(__name__)

OPERATIONS = ("C-ECHO", "C-FIND", "C-GET", "C-MOVE", "C-STORE")
"""Keys of :attr:`DemoPacs.operation_counts`."""

_PATIENT_ROOT = frozenset(
    {
        PatientRootQueryRetrieveInformationModelFind,
        PatientRootQueryRetrieveInformationModelGet,
        PatientRootQueryRetrieveInformationModelMove,
    }
)
_STUDY_ROOT = frozenset(
    {
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelMove,
    }
)
_GET_MODELS = frozenset(
    {PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet}
)
_MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: at most 128 presentation contexts per association

# DIMSE statuses (PS3.4 Annex C, PS3.7 Annex C)
_SUCCESS = 0x0000
_PENDING = 0xFF00
_CANCEL = 0xFE00
_IDENTIFIER_DOES_NOT_MATCH = 0xA900
_FIND_UNABLE_TO_PROCESS = 0xC000
_STORE_CANNOT_UNDERSTAND = 0xC000


def _set_tcp_nodelay(event: Event) -> None:
    """Disable Nagle's algorithm on every association socket (avoids ~40 ms stalls)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _accept_relational(event: Event) -> dict[UID, bytes]:
    """EVT_SOP_EXTENDED handler: agree to relational queries for the FIND models that asked
    (PS3.4 C.5.1.1: byte 0 of the service class application information is 1)."""
    finds = {PatientRootQueryRetrieveInformationModelFind,
             StudyRootQueryRetrieveInformationModelFind}
    return {
        UID(uid): b"\x01"
        for uid, info in getattr(event, "app_info", {}).items()
        if UID(uid) in finds and info[:1] == b"\x01"
    }


# Command Field values (PS3.7 E.1)
_C_STORE_RQ = 0x0001
_C_GET_RQ = 0x0010
_C_FIND_RQ = 0x0020
_C_MOVE_RQ = 0x0021
_C_CANCEL_RQ = 0x0FFF


class _CancelRegister:
    """Remembers C-CANCEL requests per association and Message ID.

    pynetdicom forgets a C-CANCEL that arrives before the association thread starts serving
    the request it cancels; PS3.7 9.3.2.3 allows it any time after the request. Messages
    arrive in order, so a cancel applies to the latest request with that Message ID.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled: weakref.WeakKeyDictionary[Any, set[int]] = weakref.WeakKeyDictionary()

    def on_dimse_recv(self, event: Event) -> None:
        """EVT_DIMSE_RECV handler (runs in the DUL thread, as messages arrive)."""
        command = event.message.command_set
        field = command.get("CommandField")
        with self._lock:
            if field == _C_CANCEL_RQ:
                msg_id = int(command.MessageIDBeingRespondedTo)
                self._cancelled.setdefault(event.assoc, set()).add(msg_id)
            elif field in (_C_FIND_RQ, _C_GET_RQ, _C_MOVE_RQ):
                self._cancelled.get(event.assoc, set()).discard(int(command.MessageID))

    def is_cancelled(self, event: Event) -> bool:
        """True if the request being served by ``event`` has been cancelled."""
        if event.is_cancelled:
            return True
        with self._lock:
            return int(event.request.MessageID or 0) in self._cancelled.get(event.assoc, set())


def _restore_move_originator(event: Event, originator: str) -> None:
    """EVT_DIMSE_SENT handler: C-STORE sub-operations name the C-MOVE requestor.

    PS3.7 9.1.1.1 (Table 9.1-1): Move Originator Application Entity Title is the AE that
    invoked the C-MOVE; pynetdicom 3.0 writes the SCP's own title. The event fires before
    the command set is encoded, so it is corrected here and its group length recomputed.
    """
    command = event.message.command_set
    if command.get("CommandField") != _C_STORE_RQ:
        return
    if not command.get("MoveOriginatorApplicationEntityTitle"):
        return
    command.MoveOriginatorApplicationEntityTitle = originator
    del command.CommandGroupLength
    command.CommandGroupLength = len(encode(command, True, True) or b"")


def _query_level(event: Event, identifier: Dataset) -> Level:
    """The identifier's QueryRetrieveLevel, checked against the request's information model."""
    value = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    try:
        level = Level[value]
    except KeyError:
        raise IdentifierError(f"invalid QueryRetrieveLevel {value!r}") from None
    model = UID(str(event.request.AffectedSOPClassUID))
    if model in _STUDY_ROOT and level is Level.PATIENT:
        raise IdentifierError("PATIENT level is not part of the Study Root model")
    if model not in _STUDY_ROOT and model not in _PATIENT_ROOT:
        raise IdentifierError(f"unsupported information model {model}")
    return level


def _storage_contexts(datasets: Iterable[Dataset]) -> list[PresentationContext]:
    """Requested contexts for C-MOVE sub-operations: each SOP class with its stored syntax."""
    syntaxes: dict[str, list[str]] = {}
    for ds in datasets:
        stored = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        options = syntaxes.setdefault(str(ds.SOPClassUID), [])
        for ts in (stored, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if ts and ts not in options:
                options.append(ts)
    return [build_context(uid, ts) for uid, ts in list(syntaxes.items())[:_MAX_CONTEXTS]]


class DemoPacs:
    """A Query/Retrieve SCP over an in-memory set of instances, started on a free port."""

    def __init__(
        self,
        datasets: Iterable[Dataset] = (),
        *,
        ae_title: str = "DEMO_PACS",
        move_destinations: Mapping[str, tuple[str, int]] | None = None,
        response_delay: float = 0.0,
        omit_counts: bool = False,
        strict_unique_keys: bool = False,
        relational_queries: bool = False,
        omit_sop_class: bool = False,
        refuse_get: int | Literal["context"] | None = None,
        find_limit: int = 0,
        store_status: Callable[[Dataset], int] | None = None,
    ) -> None:
        """``response_delay`` (seconds) is slept before each C-FIND match and each C-GET or
        C-MOVE sub-operation, to imitate a slow PACS in timeout and cancel tests.
        ``omit_counts`` leaves NumberOf*Related* and ModalitiesInStudy empty (like dcmqrscp);
        ``strict_unique_keys`` answers A900 to a UID list above the query level;
        ``relational_queries`` agrees to relational queries when asked (PS3.4 C.5.1.1);
        ``omit_sop_class`` leaves SOPClassUID and SOPClassesInStudy out of C-FIND answers
        (like dcmqrscp), so a C-GET client must guess the storage classes to propose.
        ``refuse_get`` imitates a PACS without C-GET: ``"context"`` rejects the Q/R GET
        presentation contexts at association time (as dcmqrscp ``--disable-get`` does); a
        status (e.g. 0xA702 or 0xC000) answers every C-GET with it before any sub-operation.
        ``find_limit`` (> 0) caps C-FIND answers like Orthanc's ``LimitFindResults``: past that
        many matches the C-FIND ends with Cancel (FE00) although nobody asked.
        ``store_status`` answers each C-STORE with the status it returns for the data set
        (a failure stores nothing; success and warnings, 0xB000-0xBFFF, store it), to imitate
        a PACS that refuses or coerces some instances."""
        self._store_status = store_status
        self._find_limit = max(0, find_limit)
        self._refuse_get = refuse_get
        self._relational_queries = relational_queries
        self._omit_sop_class = omit_sop_class
        self._omit_counts = omit_counts
        self._strict_unique_keys = strict_unique_keys
        self._ae_title = ae_title
        self.response_delay = max(0.0, response_delay)
        self._lock = threading.Lock()
        self._instances: dict[str, Dataset] = {}
        self._destinations: dict[str, tuple[str, int]] = dict(move_destinations or {})
        self._counts: dict[str, int] = dict.fromkeys(OPERATIONS, 0)
        self._associations = 0
        self._server: ThreadedAssociationServer | None = None
        self._cancels = _CancelRegister()
        self._open: set[int] = set()  # established associations, by id
        self._peak_open = 0
        for ds in datasets:
            self.add(ds)

    # -- data ---------------------------------------------------------------------------------

    def add(self, ds: Dataset) -> None:
        """Add (or replace, by SOP Instance UID) one instance."""
        with self._lock:
            self._instances[str(ds.SOPInstanceUID)] = ds

    def datasets(self) -> list[Dataset]:
        """A snapshot of the stored instances."""
        with self._lock:
            return list(self._instances.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._instances)

    def add_move_destination(self, ae_title: str, host: str, port: int) -> None:
        """Make ``ae_title`` a known C-MOVE destination at ``host:port``."""
        with self._lock:
            self._destinations[ae_title] = (host, port)

    def _index(self) -> QueryIndex:
        return QueryIndex(self.datasets(), retrieve_ae_title=self._ae_title,
                          omit_counts=self._omit_counts,
                          strict_unique_keys=self._strict_unique_keys,
                          omit_sop_class=self._omit_sop_class)

    # -- counters -----------------------------------------------------------------------------

    @property
    def operation_counts(self) -> dict[str, int]:
        """Requests served per DIMSE operation since start (a copy; thread-safe)."""
        with self._lock:
            return dict(self._counts)

    @property
    def associations(self) -> int:
        """Associations accepted since start (or the last reset)."""
        with self._lock:
            return self._associations

    def reset_operation_counts(self) -> None:
        """Set every counter (and the association count) back to zero."""
        with self._lock:
            self._counts = dict.fromkeys(OPERATIONS, 0)
            self._associations = 0

    def _on_accepted(self, event: Event) -> None:
        with self._lock:
            self._associations += 1

    @property
    def open_associations(self) -> int:
        """Associations established and not yet released, aborted or disconnected."""
        with self._lock:
            return len(self._open)

    @property
    def peak_associations(self) -> int:
        """The most associations open at once since start (or the last reset)."""
        with self._lock:
            return self._peak_open

    def reset_peak_associations(self) -> None:
        """Start counting the peak again from the associations open now."""
        with self._lock:
            self._peak_open = len(self._open)

    def _on_established(self, event: Event) -> None:
        with self._lock:
            self._open.add(id(event.assoc))
            self._peak_open = max(self._peak_open, len(self._open))

    def _on_closed(self, event: Event) -> None:
        with self._lock:
            self._open.discard(id(event.assoc))

    def _count(self, operation: str) -> None:
        with self._lock:
            self._counts[operation] += 1

    # -- server -------------------------------------------------------------------------------

    @property
    def ae_title(self) -> str:
        """The SCP's AE title."""
        return self._ae_title

    @property
    def port(self) -> int:
        """The bound TCP port (raises if the server is not running)."""
        if self._server is None:
            raise RuntimeError("DemoPacs is not running")
        return int(self._server.server_address[1])

    def _application_entity(self) -> AE:
        ae = AE(ae_title=self._ae_title)
        ae.maximum_pdu_size = 0
        ae.maximum_associations = 32
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        ae.network_timeout = 120
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for model in sorted(_PATIENT_ROOT | _STUDY_ROOT):
            if self._refuse_get == "context" and model in _GET_MODELS:
                continue
            ae.add_supported_context(model, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        # SCP for C-STORE into the PACS; with role selection, also SCU on C-GET associations.
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(
                str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
            )
        return ae

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start listening without blocking; returns the bound port (0 picks a free one)."""
        if self._server is not None:
            raise RuntimeError("DemoPacs is already running")
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, _set_tcp_nodelay),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_DIMSE_RECV, self._cancels.on_dimse_recv),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_C_MOVE, self._on_move),
        ]
        if self._relational_queries:
            handlers.append((evt.EVT_SOP_EXTENDED, _accept_relational))
        server = self._application_entity().start_server(
            (host, port), block=False, evt_handlers=handlers
        )
        assert server is not None  # block=False always returns the server
        self._server = server
        LOGGER.info("Demo PACS %s listening on %s:%d", self._ae_title, host, self.port)
        return self.port

    def stop(self) -> None:
        """Stop the server and close its associations (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()

    def __enter__(self) -> DemoPacs:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- handlers (run in pynetdicom's association threads) -----------------------------------

    def _pause(self) -> None:
        if self.response_delay:
            time.sleep(self.response_delay)

    def _on_echo(self, event: Event) -> int:
        self._count("C-ECHO")
        return _SUCCESS

    def _on_store(self, event: Event) -> int:
        self._count("C-STORE")
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            _ = ds.SOPInstanceUID
        except Exception:  # undecodable data set: "cannot understand" (PS3.4 B.2.3)
            LOGGER.exception("Demo PACS could not decode a C-STORE data set")
            return _STORE_CANNOT_UNDERSTAND
        status = self._store_status(ds) if self._store_status is not None else _SUCCESS
        if status == _SUCCESS or 0xB000 <= status <= 0xBFFF:
            self.add(ds)
        return status

    def _on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        """C-FIND SCP (PS3.4 C.4.1): pending per match, in a stable order; honours C-CANCEL."""
        self._count("C-FIND")
        try:
            identifier = event.identifier
            level = _query_level(event, identifier)
            matches = self._index().find(level, identifier)
        except IdentifierError as exc:
            LOGGER.warning("Demo PACS C-FIND refused: %s", exc)
            yield _IDENTIFIER_DOES_NOT_MATCH, None
            return
        except Exception:
            LOGGER.exception("Demo PACS C-FIND failed")
            yield _FIND_UNABLE_TO_PROCESS, None
            return
        try:
            for index, entity in enumerate(matches):
                self._pause()
                if self._cancels.is_cancelled(event) or 0 < self._find_limit <= index:
                    yield _CANCEL, None
                    return
                yield _PENDING, answer(entity, identifier, level)
        except Exception:
            LOGGER.exception("Demo PACS C-FIND failed while matching")
            yield _FIND_UNABLE_TO_PROCESS, None

    def _retrieve_matches(self, event: Event) -> list[Dataset]:
        identifier = event.identifier
        return self._index().retrieve(_query_level(event, identifier), identifier)

    def _send(self, event: Event, matches: list[Dataset]) -> Iterator[Any]:
        """The shared tail of C-GET and C-MOVE: the count, then one data set per sub-operation."""
        yield len(matches)
        for ds in matches:
            self._pause()
            if self._cancels.is_cancelled(event):
                yield _CANCEL, None
                return
            yield _PENDING, ds

    def _on_get(self, event: Event) -> Iterator[Any]:
        """C-GET SCP (PS3.4 C.4.3): sub-operations on the requestor's own association."""
        self._count("C-GET")
        if isinstance(self._refuse_get, int):
            yield 1  # pynetdicom answers Success at once to zero sub-operations
            yield self._refuse_get, None
            return
        try:
            matches = self._retrieve_matches(event)
        except IdentifierError as exc:
            LOGGER.warning("Demo PACS C-GET refused: %s", exc)
            yield 1
            yield _IDENTIFIER_DOES_NOT_MATCH, None
            return
        yield from self._send(event, matches)

    def _on_move(self, event: Event) -> Iterator[Any]:
        """C-MOVE SCP (PS3.4 C.4.2): sub-operations on a new association to the destination."""
        self._count("C-MOVE")
        destination_ae = str(event.move_destination or "").strip()
        with self._lock:
            destination = self._destinations.get(destination_ae)
        if destination is None:
            LOGGER.warning("Demo PACS C-MOVE to unknown destination %r", destination_ae)
            yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
            return
        try:
            matches = self._retrieve_matches(event)
        except IdentifierError as exc:
            LOGGER.warning("Demo PACS C-MOVE refused: %s", exc)
            yield destination[0], destination[1], {"contexts": [build_context(Verification)]}
            yield 1
            yield _IDENTIFIER_DOES_NOT_MATCH, None
            return
        options = {
            "contexts": _storage_contexts(matches) or [build_context(Verification)],
            "evt_handlers": [
                (evt.EVT_CONN_OPEN, _set_tcp_nodelay),
                (evt.EVT_DIMSE_SENT, _restore_move_originator, [event.assoc.requestor.ae_title]),
            ],
        }
        yield destination[0], destination[1], options
        yield from self._send(event, matches)

"""The audit trail: one event per access, shaped after the DICOM audit messages of PS3.15
Annex A.5 (EventIdentification, ActiveParticipant, AuditSourceIdentification,
ParticipantObjectIdentification, with DICOM's EventID codes), written as JSON lines to a file or
standard output and, optionally, sent as RFC 5424 syslog messages over UDP or TCP.

Events are handed to a writer thread, so neither a slow disk nor a syslog server that does not
answer ever holds up a response; the queue is drained when the gateway stops.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

log = logging.getLogger(__name__)

#: PS3.16 CID 400 Audit Event ID, and the codes the events use (code, meaning).
QUERY = ("110112", "Query")
INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred")
APPLICATION_ACTIVITY = ("110100", "Application Activity")
SECURITY_ALERT = ("110113", "Security Alert")
USER_AUTHENTICATION = ("110114", "User Authentication")
LOGIN = ("110122", "Login")  # CID 401 Audit Event Type Code
USE_OF_RESTRICTED_FUNCTION = ("110132", "Use of Restricted Function")  # CID 403
SOURCE_ROLE = ("110153", "Source Role ID")  # CID 402 Audit Active Participant Role ID
DESTINATION_ROLE = ("110152", "Destination Role ID")
STUDY_INSTANCE_UID = ("110180", "Study Instance UID")  # CID 404 Participant Object ID Type
SOP_CLASS_UID = ("110181", "SOP Class UID")
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
#: EventOutcomeIndicator (A.5.3.1 / RFC 3881): success, minor, serious and major failure.
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = "0", "4", "8"
SYSLOG_FACILITY_AUDIT = 13  # RFC 5424 6.2.1 "log audit"


@dataclass
class AccessEvent:
    """What the gateway knows of one finished request (no patient data beyond UIDs, unless
    ``query`` carries the search's values because ``audit_include_phi`` asks for them)."""

    action: str  # search, retrieve, store, admin, metrics or other
    method: str
    path: str
    status: int
    client: str | None = None
    subject: str | None = None
    subject_kind: str | None = None  # token, api-key, admin-token; None: not authenticated
    pacs: str | None = None
    studies: Sequence[str] = ()
    series: Sequence[str] = ()
    instances: Sequence[str] = ()
    query_keys: Sequence[str] = ()
    query: str | None = None
    bytes_sent: int = 0
    complete: bool = True  # False: the body was cut short (PACS failure, client gone)
    refusal: str | None = None  # why a credential was refused (401/403)
    dimse_status: int | None = None  # the PACS's status behind an error answer, if any
    time: datetime = field(default_factory=lambda: datetime.now(UTC))


def _code(code: tuple[str, str]) -> dict[str, str]:
    """A coded value as the DICOM audit message schema writes it (csd-code, codeSystemName,
    originalText)."""
    return {"csd-code": code[0], "codeSystemName": "DCM", "originalText": code[1]}


def _outcome(event: AccessEvent) -> str:
    if event.status in (401, 403):
        return MINOR_FAILURE
    if event.status >= 500 or not event.complete:
        return SERIOUS_FAILURE
    return MINOR_FAILURE if event.status >= 400 else SUCCESS


def _event_id(event: AccessEvent) -> tuple[tuple[str, str], str, list[tuple[str, str]]]:
    """EventID, EventActionCode and EventTypeCodes for an access (A.5.3)."""
    if event.status == 401:
        return USER_AUTHENTICATION, "E", [LOGIN]
    if event.status == 403:
        return SECURITY_ALERT, "E", [USE_OF_RESTRICTED_FUNCTION]
    if event.action == "search":
        return QUERY, "E", []
    if event.action == "retrieve":
        return INSTANCES_TRANSFERRED, "R", []
    if event.action == "store":
        return INSTANCES_TRANSFERRED, "C", []
    return APPLICATION_ACTIVITY, "E", []


def audit_message(event: AccessEvent, source_id: str) -> dict[str, Any]:
    """The event as an A.5-shaped message, plus a flat ``Gateway`` object for log search."""
    event_id, action_code, types = _event_id(event)
    identification: dict[str, Any] = {
        "EventID": _code(event_id),
        "EventActionCode": action_code,
        "EventDateTime": event.time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "EventOutcomeIndicator": _outcome(event),
        "EventOutcomeDescription": _outcome_text(event),
    }
    if types:
        identification["EventTypeCode"] = [_code(t) for t in types]
    requestor_role, gateway_role = ((SOURCE_ROLE, DESTINATION_ROLE) if event.action == "store"
                                    else (DESTINATION_ROLE, SOURCE_ROLE))
    requestor: dict[str, Any] = {
        "UserID": event.subject or event.client or "unknown",
        "UserIsRequestor": True,
        "RoleIDCode": _code(requestor_role),
    }
    if event.subject_kind:
        requestor["AlternativeUserID"] = event.subject_kind
    if event.client:
        requestor["NetworkAccessPointID"] = event.client
        requestor["NetworkAccessPointTypeCode"] = "2"  # IP address
    gateway = {"UserID": source_id, "UserIsRequestor": False, "RoleIDCode": _code(gateway_role)}
    if event.pacs:
        gateway["AlternativeUserID"] = f"pacs={event.pacs}"
    message: dict[str, Any] = {
        "EventIdentification": identification,
        "ActiveParticipant": [requestor, gateway],
        "AuditSourceIdentification": {"AuditSourceID": source_id},
        "ParticipantObjectIdentification": _objects(event),
        "Gateway": _flat(event),
    }
    return message


def _outcome_text(event: AccessEvent) -> str:
    if event.refusal:
        return f"HTTP {event.status}: {event.refusal}"
    text = f"HTTP {event.status}"
    if event.dimse_status is not None:
        text += f", DIMSE status {event.dimse_status:04X}H"
    if not event.complete:
        text += f", cut short after {event.bytes_sent} bytes"
    return text


def _objects(event: AccessEvent) -> list[dict[str, Any]]:
    """The studies touched (with their series and instances), or for a search the query."""
    objects: list[dict[str, Any]] = []
    if event.action == "search":
        text = event.query if event.query is not None else "&".join(event.query_keys)
        objects.append({
            "ParticipantObjectID": STUDY_ROOT_FIND,
            "ParticipantObjectIDTypeCode": _code(SOP_CLASS_UID),
            "ParticipantObjectTypeCode": "2",  # system object
            "ParticipantObjectTypeCodeRole": "3",  # report
            "ParticipantObjectQuery": base64.b64encode(text.encode("utf-8")).decode("ascii"),
            "ParticipantObjectDetail": [{"type": "QueryKeys",
                                         "value": ",".join(event.query_keys)}],
        })
    for study in event.studies:
        item: dict[str, Any] = {
            "ParticipantObjectID": study,
            "ParticipantObjectIDTypeCode": _code(STUDY_INSTANCE_UID),
            "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3",
        }
        described = {key: list(values) for key, values in
                     (("SeriesInstanceUID", event.series), ("SOPInstanceUID", event.instances))
                     if values}
        if described:
            item["ParticipantObjectDescription"] = described
        objects.append(item)
    return objects


def _flat(event: AccessEvent) -> dict[str, Any]:
    flat: dict[str, Any] = {
        "action": event.action, "method": event.method, "path": event.path,
        "status": event.status, "bytes": event.bytes_sent, "complete": event.complete,
        "subject": event.subject, "subject_kind": event.subject_kind, "client": event.client,
        "pacs": event.pacs, "studies": list(event.studies), "series": list(event.series),
        "instances": list(event.instances),
    }
    if event.action == "search":
        flat["query_keys"] = list(event.query_keys)
        if event.query is not None:
            flat["query"] = event.query
    if event.refusal:
        flat["refusal"] = event.refusal
    if event.dimse_status is not None:
        flat["dimse_status"] = f"{event.dimse_status:04X}"
    return flat


def syslog_frame(message: dict[str, Any], *, hostname: str, failure: bool) -> bytes:
    """One RFC 5424 message: PRI (facility log audit; severity notice, warning for a
    failure), version 1, timestamp, host, APP-NAME, PROCID, MSGID, no structured data, and the
    JSON as a UTF-8 MSG with its BOM."""
    severity = 4 if failure else 5
    stamp = message["EventIdentification"]["EventDateTime"]
    header = (f"<{SYSLOG_FACILITY_AUDIT * 8 + severity}>1 {stamp} {hostname[:255] or '-'} "
              f"dicomweb-gateway {os.getpid()} DICOM-AUDIT -")
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    return header.encode("ascii", "replace") + b" \xef\xbb\xbf" + body.encode("utf-8")


class SyslogSender:
    """Sends frames to ``host:port`` over UDP (one datagram each) or TCP (RFC 6587 octet
    counting, reconnecting after a failure)."""

    def __init__(self, address: str, transport: str) -> None:
        host, _, port = address.rpartition(":")
        self.address = (host.strip("[]"), int(port))
        self.transport = transport
        self._sock: socket.socket | None = None

    def send(self, frame: bytes) -> None:
        if self.transport == "udp":
            if self._sock is None:
                family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
                self._sock = socket.socket(family, socket.SOCK_DGRAM)
            self._sock.sendto(frame, self.address)
            return
        for attempt in (1, 2):
            try:
                if self._sock is None:
                    self._sock = socket.create_connection(self.address, timeout=5)
                self._sock.sendall(str(len(frame)).encode("ascii") + b" " + frame)
                return
            except OSError:
                self.close()
                if attempt == 2:
                    raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class AuditTrail:
    """Writes access events to the configured sinks from a thread of its own (see module)."""

    def __init__(self, *, source_id: str, path: str | None, syslog: str | None = None,
                 syslog_transport: str = "udp") -> None:
        self.source_id = source_id
        self._path = path
        self._syslog = SyslogSender(syslog, syslog_transport) if syslog else None
        self._hostname = socket.gethostname()
        self._queue: queue.SimpleQueue[AccessEvent | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Open the log file (an unwritable path fails here, at start-up) and the writer."""
        with self._lock:
            if self._thread is not None:
                return
            stream: IO[str] | None = None
            if self._path == "-":
                stream = sys.stdout
            elif self._path:
                stream = open(self._path, "a", encoding="utf-8")  # noqa: SIM115
            self._thread = threading.Thread(target=self._run, args=(stream,),
                                            name="audit-trail", daemon=True)
            self._thread.start()

    def emit(self, event: AccessEvent) -> None:
        """Queue one event (the writer starts with the first, if not started)."""
        if self._thread is None:
            self.start()
        self._queue.put(event)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _run(self, stream: IO[str] | None) -> None:
        try:
            while (event := self._queue.get()) is not None:
                self._write(event, stream)
        finally:
            if stream is not None and stream is not sys.stdout:
                stream.close()
            if self._syslog is not None:
                self._syslog.close()

    def _write(self, event: AccessEvent, stream: IO[str] | None) -> None:
        message = audit_message(event, self.source_id)
        try:
            if stream is not None:
                stream.write(json.dumps(message, separators=(",", ":"), ensure_ascii=False)
                             + "\n")
                stream.flush()
            if self._syslog is not None:
                failure = message["EventIdentification"]["EventOutcomeIndicator"] != SUCCESS
                self._syslog.send(syslog_frame(message, hostname=self._hostname,
                                               failure=failure))
        except OSError as exc:  # the trail must not take the gateway down; it says so
            log.error("audit event not written (%s %s): %s", event.method, event.path, exc)

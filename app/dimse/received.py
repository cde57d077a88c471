"""Plain values that leave the DIMSE layer from a retrieval: received instances and outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE


@dataclass(frozen=True, slots=True)
class ReceivedInstance:
    """One instance as a C-STORE sub-operation delivered it: Part-10 bytes, never decoded here."""

    data: bytes
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


@dataclass(frozen=True, slots=True)
class RetrieveOutcome:
    """The final C-GET/C-MOVE status, its sub-operation counters, and what actually arrived."""

    status: int
    completed: int
    failed: int
    warning: int
    received: int
    failed_uids: tuple[str, ...] = field(default=())

    @property
    def partial(self) -> bool:
        """Some but not all sub-operations failed (B000 with something delivered)."""
        return self.failed > 0 and self.received > 0


def store_request(event: evt.Event) -> C_STORE:
    """The C-STORE request of an EVT_C_STORE event: pynetdicom types ``Event.request`` as any
    DIMSE request primitive, and in this event it is always a C_STORE."""
    request = event.request
    if not isinstance(request, C_STORE):
        raise TypeError(f"{event.event.name} carries a {type(request).__name__}, not a C-STORE")
    return request


def instance_from_event(event: evt.Event) -> ReceivedInstance:
    """The ReceivedInstance carried by an EVT_C_STORE event (Part-10 bytes with file meta)."""
    request = store_request(event)
    return ReceivedInstance(
        data=event.encoded_dataset(include_meta=True),
        sop_class_uid=str(request.AffectedSOPClassUID),
        sop_instance_uid=str(request.AffectedSOPInstanceUID),
        transfer_syntax=str(event.context.transfer_syntax),
    )


def failed_uid_list(identifier: object) -> tuple[str, ...]:
    """FailedSOPInstanceUIDList (0008,0058) from a final response identifier, if any."""
    value = getattr(identifier, "FailedSOPInstanceUIDList", None) if identifier else None
    if not value:
        return ()
    return tuple(str(v) for v in (value if isinstance(value, (list, tuple)) or
                                  hasattr(value, "__iter__") and not isinstance(value, str)
                                  else [value]))

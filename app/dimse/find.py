"""C-FIND (PS3.4 C.4.1) as a producer for the thread bridge: matches are emitted as they arrive,
and a consumer that stops early causes a C-CANCEL followed by draining to the final response."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

from app.dicomweb.sop_classes import StudyRootQueryRetrieveInformationModelFind
from app.dimse.association import (
    abort_and_wake,
    end_association,
    next_message_id,
    open_association,
)
from app.dimse.bridge import Cancelled, Emitter
from app.dimse.status import Category, category, find_failure
from app.errors import UpstreamError, UpstreamNotSupported, UpstreamTimeout
from app.settings import PacsPeer

log = logging.getLogger(__name__)
FIND_MODEL = StudyRootQueryRetrieveInformationModelFind


@dataclass(frozen=True, slots=True)
class FindOutcome:
    """How a C-FIND ended: final status, whether we cancelled it, optional-key warnings."""

    status: int
    cancelled: bool
    matches: int
    optional_keys_unsupported: bool
    relational: bool
    capped: bool = False


def relational_negotiation() -> SOPClassExtendedNegotiation:
    """Extended negotiation asking for relational queries (PS3.4 C.5.1.1, byte 0 = 1)."""
    item = SOPClassExtendedNegotiation()
    item.sop_class_uid = FIND_MODEL
    item.service_class_application_information = b"\x01"
    return item


def peer_accepts_relational(ae: AE, peer: PacsPeer) -> bool:
    """Ask the PACS once whether it agrees to relational queries for Study Root FIND."""
    assoc = open_association(ae, peer, [build_context(FIND_MODEL)],
                             ext_neg=[relational_negotiation()])
    try:
        info = assoc.acceptor.sop_class_extended.get(FIND_MODEL, b"")
        return bool(info) and info[:1] == b"\x01"
    finally:
        assoc.release()


def c_find_producer(
    ae: AE, peer: PacsPeer, identifier: Dataset, *, relational: bool = False
) -> Callable[[Emitter[Dataset]], FindOutcome]:
    """A producer that runs one C-FIND and emits each matching identifier."""

    def run(emitter: Emitter[Dataset]) -> FindOutcome:
        ext = [relational_negotiation()] if relational else None
        assoc = open_association(ae, peer, [build_context(FIND_MODEL)], ext_neg=ext)
        emitter.on_abort(lambda: abort_and_wake(assoc))
        finished = False
        try:
            if not any(cx.abstract_syntax == FIND_MODEL for cx in assoc.accepted_contexts):
                raise UpstreamNotSupported(
                    f"PACS {peer.name} does not support Study Root Query/Retrieve FIND"
                )
            msg_id = next_message_id()
            cancel_sent = False
            unsupported_keys = False
            matches = 0
            final: int | None = None
            last = time.monotonic()
            for status, ident in assoc.send_c_find(identifier, FIND_MODEL, msg_id=msg_id):
                if not status or "Status" not in status:
                    if emitter.cancelled:
                        raise Cancelled()
                    if time.monotonic() - last >= peer.dimse_timeout * 0.9:
                        raise UpstreamTimeout(
                            f"PACS {peer.name} sent no C-FIND response within "
                            f"{peer.dimse_timeout:g} s"
                        )
                    raise UpstreamError(f"PACS {peer.name} aborted the C-FIND association")
                last = time.monotonic()
                code = int(status.Status)
                cat = category(code)
                if cat is Category.PENDING:
                    unsupported_keys = unsupported_keys or code == 0xFF01
                    if cancel_sent or ident is None:
                        continue
                    try:
                        emitter.emit(ident)
                        matches += 1
                    except Cancelled:
                        assoc.send_c_cancel(msg_id, query_model=FIND_MODEL)
                        cancel_sent = True
                    continue
                final = code
                comment = status.get("ErrorComment")
                break
            if final is None:
                raise UpstreamError(f"PACS {peer.name} ended the C-FIND without a final status")
            # A Cancel status we did not ask for: the PACS stopped early on its own, as Orthanc
            # does past LimitFindResults. Keep what arrived and report the answer as capped.
            capped = category(final) is Category.CANCEL and not cancel_sent
            if category(final) not in (Category.SUCCESS, Category.WARNING, Category.CANCEL):
                raise find_failure(final, comment=str(comment) if comment else None)
            if capped:
                log.warning("PACS %s ended a C-FIND with Cancel after %d matches (a result cap)",
                            peer.name, matches)
            finished = True
            return FindOutcome(final, cancel_sent, matches, unsupported_keys, relational, capped)
        finally:
            end_association(assoc, finished)

    return run

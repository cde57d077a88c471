"""C-GET (PS3.4 C.4.3) as a producer for the thread bridge: each C-STORE sub-operation arriving
on the same association is handed on as soon as it is complete; a slow consumer blocks the store
handler, which stops reading the socket, so the PACS slows down and memory stays flat."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, build_role, evt

from app.dicomweb.sop_classes import StudyRootQueryRetrieveInformationModelGet
from app.dimse.association import (
    abort_and_wake,
    end_association,
    next_message_id,
    open_association,
)
from app.dimse.bridge import Cancelled, Emitter
from app.dimse.received import ReceivedInstance, RetrieveOutcome, instance_from_event
from app.dimse.retrieve_responses import read_to_final
from app.errors import UpstreamNotSupported
from app.settings import PacsPeer

log = logging.getLogger(__name__)
GET_MODEL = StudyRootQueryRetrieveInformationModelGet
OUT_OF_RESOURCES = 0xA700


def c_get_producer(
    ae: AE,
    peer: PacsPeer,
    identifier: Dataset,
    storage: Sequence[tuple[str, Sequence[str]]],
) -> Callable[[Emitter[ReceivedInstance]], RetrieveOutcome]:
    """A producer running one C-GET; ``storage`` lists (SOP class, transfer syntaxes) pairs, one
    presentation context each: with one syntax per context the PACS can send every instance
    as it is stored."""

    def run(emitter: Emitter[ReceivedInstance]) -> RetrieveOutcome:
        received = 0

        def on_store(event: evt.Event) -> int:
            nonlocal received
            try:
                emitter.emit(instance_from_event(event))
            except Cancelled:
                return OUT_OF_RESOURCES
            received += 1
            return 0x0000

        classes = list(dict.fromkeys(sop for sop, _ in storage))
        contexts = [build_context(GET_MODEL)]
        contexts += [build_context(sop, list(ts)) for sop, ts in storage]
        roles = [build_role(sop, scp_role=True) for sop in classes]
        assoc = open_association(ae, peer, contexts, ext_neg=roles,
                                 evt_handlers=[(evt.EVT_C_STORE, on_store)])
        emitter.on_abort(lambda: abort_and_wake(assoc))
        finished = False
        try:
            if not any(cx.abstract_syntax == GET_MODEL for cx in assoc.accepted_contexts):
                raise UpstreamNotSupported(
                    f"PACS {peer.name} does not support Study Root Query/Retrieve GET"
                )
            responses = assoc.send_c_get(identifier, GET_MODEL, msg_id=next_message_id())
            final = read_to_final(responses, emitter, peer, "C-GET")  # type: ignore[arg-type]
            finished = True
            return RetrieveOutcome(final.status, final.completed, final.failed, final.warning,
                                   received, final.failed_uids)
        finally:
            end_association(assoc, finished)

    return run

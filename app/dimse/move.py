"""C-MOVE (PS3.4 C.4.2) as a producer for the thread bridge: the PACS opens its own association
to the gateway's Storage SCP, whose handler threads hand instances to this retrieval through the
MoveRouter (keyed by this C-MOVE's unique Message ID; only what this PACS sends is accepted)."""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context

from app.dicomweb.sop_classes import StudyRootQueryRetrieveInformationModelMove
from app.dimse.association import (
    abort_and_wake,
    end_association,
    next_message_id,
    open_association,
)
from app.dimse.bridge import Emitter
from app.dimse.move_admission import MoveRouter
from app.dimse.received import ReceivedInstance, RetrieveOutcome
from app.dimse.retrieve_responses import read_to_final
from app.errors import UpstreamNotSupported
from app.settings import PacsPeer

MOVE_MODEL = StudyRootQueryRetrieveInformationModelMove
SETTLE_GRACE_S = 5.0


def c_move_producer(
    ae: AE,
    peer: PacsPeer,
    identifier: Dataset,
    destination_ae: str,
    router: MoveRouter,
    expected_uids: frozenset[str] = frozenset(),
    message_id: int | None = None,
) -> Callable[[Emitter[ReceivedInstance]], RetrieveOutcome]:
    """A producer running one C-MOVE to ``destination_ae`` (the gateway's Storage SCP);
    ``message_id`` when several processes share the AE title and need IDs unique among them."""

    def run(emitter: Emitter[ReceivedInstance]) -> RetrieveOutcome:
        msg_id = message_id if message_id is not None else next_message_id()
        sink = router.register(ae.ae_title, msg_id, emitter, expected_uids, peer.name)
        try:
            assoc = open_association(ae, peer, [build_context(MOVE_MODEL)])
            emitter.on_abort(lambda: abort_and_wake(assoc))
            finished = False
            try:
                if not any(cx.abstract_syntax == MOVE_MODEL for cx in assoc.accepted_contexts):
                    raise UpstreamNotSupported(
                        f"PACS {peer.name} does not support Study Root Query/Retrieve MOVE"
                    )
                responses = assoc.send_c_move(identifier, destination_ae, MOVE_MODEL,
                                              msg_id=msg_id)
                final = read_to_final(responses, emitter, peer, "C-MOVE")  # type: ignore[arg-type]
                finished = True
            finally:
                end_association(assoc, finished)
            received = sink.wait_settled(final.completed + final.warning, SETTLE_GRACE_S)
            return RetrieveOutcome(final.status, final.completed, final.failed, final.warning,
                                   received, final.failed_uids)
        finally:
            router.unregister(sink)

    return run

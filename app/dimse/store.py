"""C-STORE (PS3.4 B.2) on the pynetdicom engine: the store session of one STOW-RS request keeps
one association while the instances that follow fit its contexts, and sends each data set from
a spooled Part-10 file with pynetdicom's chunked sending, so the bytes go out as the client sent
them (pynetdicom would otherwise decode and re-encode the data set)."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from pynetdicom import AE, _config, build_context
from pynetdicom.association import Association

from app.dimse.association import abort_and_wake, next_message_id, open_association
from app.dimse.budget import SlotGate
from app.dimse.engine.part10 import part10_header
from app.dimse.outgoing import (
    VERIFICATION,
    OutgoingInstance,
    StoreContexts,
    StoreStatus,
    refused_context_status,
)
from app.errors import UpstreamError, UpstreamTimeout
from app.settings import PacsPeer

log = logging.getLogger(__name__)


def send_c_store(assoc: Association, instance: OutgoingInstance, peer_name: str) -> StoreStatus:
    """One C-STORE on an established association (runs in a worker thread)."""
    accepted = [cx for cx in assoc.accepted_contexts
                if cx.abstract_syntax == instance.sop_class and cx.as_scu]
    if not any(cx.transfer_syntax[0] == instance.transfer_syntax for cx in accepted):
        results = [cx.result for cx in assoc.rejected_contexts
                   if cx.abstract_syntax == instance.sop_class]
        return StoreStatus(refused_context_status(bool(accepted), results[0] if results else None),
                           f"PACS {peer_name} accepted no context for SOP class "
                           f"{instance.sop_class} in {instance.transfer_syntax}")
    # Send the file's data set as it is: read in chunks by the DUL thread, never decoded. The
    # File Meta is written anew (the client's may lack the preamble pynetdicom needs).
    _config.STORE_SEND_CHUNKED_DATASET = True
    with tempfile.NamedTemporaryFile(prefix="dwg-stow-", suffix=".dcm") as spool:
        spool.write(part10_header(instance.sop_class, instance.sop_instance,
                                  instance.transfer_syntax))
        spool.write(instance.dataset)
        spool.flush()
        status = assoc.send_c_store(Path(spool.name), msg_id=next_message_id())
    if "Status" not in status:  # pynetdicom's empty Dataset: timeout, abort or bad response
        raise UpstreamError(f"PACS {peer_name} did not answer the C-STORE of "
                            f"{instance.sop_instance} (timeout or abort)")
    comment = status.get("ErrorComment")
    return StoreStatus(int(status.Status), str(comment) if comment else None)


class ThreadStoreSession:
    """The C-STOREs of one STOW-RS request on the pynetdicom engine: an association (and one of
    the peer's association slots) is held from the first instance to the end of the request,
    replaced when an instance needs a context it did not propose or when it died."""

    def __init__(self, ae: AE, peer: PacsPeer, executor: ThreadPoolExecutor,
                 limiter: SlotGate) -> None:
        self._ae = ae
        self._peer = peer
        self._executor = executor
        self._limiter = limiter
        self._contexts = StoreContexts()
        self._assoc: Association | None = None

    async def _call(self, fn: object, *args: object) -> object:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)  # type: ignore[arg-type]

    async def _open(self) -> Association:
        contexts = [build_context(VERIFICATION)]
        contexts += [build_context(sop, [ts]) for sop, ts in self._contexts.proposed()]
        try:
            async with asyncio.timeout(self._peer.overall_timeout):
                await self._limiter.acquire()
        except TimeoutError:
            raise UpstreamTimeout(f"PACS {self._peer.name}: no association slot for the C-STORE "
                                  "in time") from None
        try:
            assoc = await self._call(open_association, self._ae, self._peer, contexts)
        except BaseException:
            self._limiter.release()
            raise
        assert isinstance(assoc, Association)
        return assoc

    async def _close(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is None:
            return
        try:
            if assoc.is_established:
                await self._call(assoc.release)
        finally:
            self._limiter.release()

    async def store(self, instance: OutgoingInstance) -> StoreStatus:
        """C-STORE one instance; GatewayError when the PACS could not be asked."""
        new_context = self._contexts.need(instance)
        if self._assoc is not None and (new_context or not self._assoc.is_established):
            await self._close()
        if self._assoc is None:
            self._assoc = await self._open()
        assoc = self._assoc
        try:
            async with asyncio.timeout(self._peer.overall_timeout):
                status = await self._call(send_c_store, assoc, instance, self._peer.name)
        except TimeoutError:
            await self._abort()
            raise UpstreamTimeout(f"PACS {self._peer.name} did not answer the C-STORE in time"
                                  ) from None
        except BaseException:
            await self._abort()
            raise
        assert isinstance(status, StoreStatus)
        return status

    async def _abort(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is None:
            return
        try:
            await asyncio.shield(self._call(abort_and_wake, assoc))
        finally:
            self._limiter.release()

    async def __aenter__(self) -> ThreadStoreSession:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        """Release the association (abort it if the request failed midway)."""
        if exc_type is None:
            await self._close()
        else:
            await self._abort()

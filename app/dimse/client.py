"""The async face of the DIMSE layer: one PeerClient per configured PACS, sharing a bounded pool
of worker threads; each operation takes one of the peer's association slots while it runs."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from pydicom.dataset import Dataset

from app.dimse.association import make_ae
from app.dimse.bridge import ThreadStream
from app.dimse.echo import c_echo
from app.dimse.find import FindOutcome, c_find_producer, peer_accepts_relational
from app.errors import GatewayError, UpstreamTimeout
from app.settings import PacsPeer, Settings


class PeerClient:
    """DIMSE operations against one PACS, at most ``max_associations`` at a time."""

    def __init__(self, local_ae_title: str, peer: PacsPeer, executor: ThreadPoolExecutor) -> None:
        self.peer = peer
        self._ae = make_ae(local_ae_title, peer)
        self._executor = executor
        self._limiter = asyncio.Semaphore(peer.max_associations)
        self._relational: bool | None = None

    async def _call(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run a short blocking DIMSE call in the pool, holding an association slot."""
        try:
            async with asyncio.timeout(self.peer.overall_timeout):
                async with self._limiter:
                    loop = asyncio.get_running_loop()
                    return await loop.run_in_executor(self._executor, fn, *args)
        except TimeoutError:
            raise UpstreamTimeout(f"PACS {self.peer.name} did not answer in time") from None

    async def echo(self) -> float:
        """C-ECHO the peer; the round-trip time in seconds."""
        return float(await self._call(c_echo, self._ae, self.peer))

    async def supports_relational(self) -> bool:
        """Whether the PACS accepts relational queries (asked once, then remembered)."""
        if self.peer.relational_queries == "never":
            return False
        if self._relational is None:
            try:
                self._relational = bool(
                    await self._call(peer_accepts_relational, self._ae, self.peer)
                )
            except GatewayError:
                return False
        return self._relational

    def find(
        self, identifier: Dataset, *, relational: bool = False, maxsize: int = 64
    ) -> ThreadStream[Dataset, FindOutcome]:
        """A stream of C-FIND matches; leave it early to C-CANCEL the query."""
        return ThreadStream(
            c_find_producer(self._ae, self.peer, identifier, relational=relational),
            executor=self._executor,
            maxsize=maxsize,
            limiter=self._limiter,
            deadline=self.peer.overall_timeout,
            what=f"C-FIND on PACS {self.peer.name}",
        )


class DimseClients:
    """Every configured peer's client; created in the app's lifespan and closed with it."""

    def __init__(self, settings: Settings) -> None:
        workers = sum(p.max_associations for p in settings.pacs) + 4
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dimse")
        self._settings = settings
        self._clients = {
            p.name: PeerClient(settings.ae_title, p, self._executor) for p in settings.pacs
        }

    def get(self, name: str | None = None) -> PeerClient:
        """The named peer's client, or the default peer's; LookupError if unknown."""
        return self._clients[self._settings.peer(name).name]

    def close(self) -> None:
        """Stop the worker pool without waiting for stragglers (their associations abort)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

"""The services of the running gateway, per configured PACS; built once in the app's lifespan."""

from __future__ import annotations

from app.dimse.client import DimseClients
from app.metrics import Metrics
from app.services.query import QueryService
from app.services.retrieve import RetrieveService
from app.settings import PacsPeer, Settings


class Services:
    """Entry point of the HTTP layer into the gateway: one QueryService per PACS, echo, peers."""

    def __init__(self, settings: Settings, dimse: DimseClients, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._dimse = dimse
        self._query = {p.name: QueryService(dimse.get(p.name)) for p in settings.pacs}
        self._retrieve = {p.name: RetrieveService(dimse.get(p.name), metrics)
                          for p in settings.pacs}
        metrics.gauge("dimse_move_retrievals_in_progress", lambda: len(dimse.router),
                      "C-MOVE retrievals waiting for sub-operations")

    def peer(self, name: str | None = None) -> PacsPeer:
        """The named or default peer; LookupError when unknown."""
        return self.settings.peer(name)

    def query(self, name: str | None = None) -> QueryService:
        """The QIDO-RS service for the named or default peer."""
        return self._query[self.settings.peer(name).name]

    def retrieve(self, name: str | None = None) -> RetrieveService:
        """The WADO-RS service for the named or default peer."""
        return self._retrieve[self.settings.peer(name).name]

    async def echo(self, name: str | None = None) -> float:
        """C-ECHO a peer; round-trip seconds, or a GatewayError."""
        return await self._dimse.get(name).echo()

    def close(self) -> None:
        """Release worker threads."""
        self._dimse.close()

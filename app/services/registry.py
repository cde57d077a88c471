"""The services of the running gateway, per configured PACS; built once in the app's lifespan."""

from __future__ import annotations

from app.dimse.client import DimseClients
from app.services.query import QueryService
from app.settings import PacsPeer, Settings


class Services:
    """Entry point of the HTTP layer into the gateway: one QueryService per PACS, echo, peers."""

    def __init__(self, settings: Settings, dimse: DimseClients) -> None:
        self.settings = settings
        self._dimse = dimse
        self._query = {p.name: QueryService(dimse.get(p.name)) for p in settings.pacs}

    def peer(self, name: str | None = None) -> PacsPeer:
        """The named or default peer; LookupError when unknown."""
        return self.settings.peer(name)

    def query(self, name: str | None = None) -> QueryService:
        """The QIDO-RS service for the named or default peer."""
        return self._query[self.settings.peer(name).name]

    async def echo(self, name: str | None = None) -> float:
        """C-ECHO a peer; round-trip seconds, or a GatewayError."""
        return await self._dimse.get(name).echo()

    def close(self) -> None:
        """Release worker threads."""
        self._dimse.close()

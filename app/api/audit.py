"""The audit trail's HTTP side: one AccessEvent per search, retrieval, store, admin call and
refused request, written when the response has ended (app.services.audit), not when the route
returns: a streamed retrieval's bytes are counted as they are sent, and one cut short (a PACS
failure, a client that left) is recorded as incomplete with the bytes that did go out.

Requests anyone may make (/healthz, /readyz, OPTIONS, the API description) and /metrics leave no
event unless refused: probes every few seconds would bury the accesses that matter.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.access import Access
from app.api.authorization import PRINCIPAL_KEY, REFUSAL_KEY, access_of
from app.api.credentials import Principal, Refusal
from app.api.problems import DIMSE_STATUS_KEY
from app.services.audit import AccessEvent, AuditTrail
from app.settings import Settings


class AuditMiddleware:
    """Counts each response's status and body bytes and emits its AccessEvent at the end."""

    def __init__(self, app: ASGIApp, settings: Settings, trail: AuditTrail) -> None:
        self.app = app
        self.settings = settings
        self.trail = trail
        self._default_pacs = settings.peer().name if settings.pacs else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        access = access_of(scope, self.settings.dicomweb_prefix)
        status = 0
        sent = 0
        ended = False

        async def counting_send(message: Message) -> None:
            nonlocal status, sent, ended
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
                ended = ended or not message.get("more_body", False)
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self._record(scope, access, status or 500, sent, ended)

    def _record(self, scope: Scope, access: Access, status: int, sent: int,
                ended: bool) -> None:
        refusal = scope.get(REFUSAL_KEY)
        if access.kind in ("open", "metrics") and status not in (401, 403):
            return
        principal = scope.get(PRINCIPAL_KEY)
        if principal is None and isinstance(refusal, Refusal):
            principal = refusal.principal
        client = scope.get("client")
        query = None
        if access.action == "search" and self.settings.audit_include_phi:
            query = scope.get("query_string", b"").decode("latin-1")
        self.trail.emit(AccessEvent(
            action=access.action or access.kind,
            method=scope.get("method", "GET"),
            path=scope.get("path", ""),
            status=status,
            client=client[0] if client else None,
            subject=principal.subject if isinstance(principal, Principal) else None,
            subject_kind=principal.kind if isinstance(principal, Principal) else None,
            pacs=(access.pacs or self._default_pacs) if access.names_pacs else None,
            studies=access.studies, series=access.series, instances=access.instances,
            query_keys=access.query_keys, query=query, bytes_sent=sent, complete=ended,
            refusal=_refusal_text(refusal, status),
            dimse_status=scope.get(DIMSE_STATUS_KEY),
        ))


def _refusal_text(refusal: Any, status: int) -> str | None:
    if isinstance(refusal, Refusal):
        return refusal.description
    if status == 401:
        return "missing or wrong admin token"
    if status == 403:
        return "refused"
    return None

"""An outermost ASGI middleware that records every HTTP request reaching the gateway, preflights
included (the browser hides those from page listeners), with the status the gateway answered."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass
class RecordedRequest:
    """One request as the gateway saw it."""

    method: str
    path: str
    query: str
    accept: str | None
    origin: str | None
    access_control_request_headers: str | None
    status: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RequestRecorder:
    """Pure ASGI middleware; ``requests`` lists what arrived, in order (thread-safe append)."""

    def __init__(self, app: ASGIApp, *, log: list[RecordedRequest]) -> None:
        self.app = app
        self.requests = log
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        record = RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            accept=headers.get("accept"),
            origin=headers.get("origin"),
            access_control_request_headers=headers.get("access-control-request-headers"),
        )
        with self._lock:
            self.requests.append(record)

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = int(message["status"])
            await send(message)

        await self.app(scope, receive, send_and_record)

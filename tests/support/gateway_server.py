"""Run the real gateway app under uvicorn on a free loopback port, in a background thread, so
tests can use real HTTP clients (httpx, dicomweb-client) against it."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from app.api.http_protocol import GatewayHttpProtocol
from app.cli import https_options
from app.main import create_app
from app.settings import PacsPeer, Settings, load_settings
from tests.peers.ports import free_port


def peer_settings(kind: str, ae_title: str, host: str, port: int, **peer: Any) -> PacsPeer:
    """A PacsPeer for a test endpoint."""
    return PacsPeer(name=kind, ae_title=ae_title, host=host, port=port, **peer)


class GatewayServer:
    """The gateway on http://127.0.0.1:<port>; use as a context manager."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=2,
            http=GatewayHttpProtocol,
            **https_options(settings),  # HTTPS as `dicomweb-gateway serve` would, when set
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, daemon=True, name=f"gateway-{self.port}"
        )

    @property
    def url(self) -> str:
        """The server root."""
        scheme = "https" if self.settings.https_enabled else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        """The default PACS's DICOMweb root."""
        return f"{self.url}{self.settings.dicomweb_prefix}"

    def start(self) -> GatewayServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._server.started:
                return self
            if not self._thread.is_alive():
                raise RuntimeError("gateway server thread died during start-up")
            time.sleep(0.02)
        raise TimeoutError("gateway did not start within 15 s")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client rooted at the DICOMweb prefix."""
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.dicomweb, **kwargs)


def gateway_settings(*peers: PacsPeer, **overrides: Any) -> Settings:
    """Settings for a test gateway: given peers, no storage SCP unless asked."""
    values: dict[str, Any] = {
        "pacs": list(peers),
        "ae_title": "DWGW_TEST",
        "storage_scp_enabled": False,
    }
    values.update(overrides)
    return load_settings(**values)

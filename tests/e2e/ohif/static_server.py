"""Serve the built OHIF Viewer (``@ohif/app``'s ``dist/``) on a free loopback port, with our own
``app-config.js`` and the single-page-app fallback to ``index.html`` that OHIF's router needs."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

_EXTRA_TYPES = {
    ".wasm": "application/wasm",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".woff2": "font/woff2",
}


class _OhifRequestHandler(SimpleHTTPRequestHandler):
    """Static files from ``dist/``; ``/app-config.js`` from memory; unknown paths without a file
    extension (client-side routes such as ``/viewer``) answered with ``index.html``."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **_EXTRA_TYPES}

    def __init__(self, *args: Any, app_config: Callable[[], bytes], **kwargs: Any) -> None:
        self._app_config = app_config
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 - name fixed by http.server
        path = urlsplit(self.path).path
        if path == "/app-config.js":
            body = self._app_config()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
            return
        local = Path(self.translate_path(path))
        if not local.exists() and "." not in path.rsplit("/", 1)[-1]:
            self.path = "/index.html"
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature fixed
        """Quiet: the browser test records what it needs itself."""


class OhifStaticServer:
    """The OHIF viewer on http://127.0.0.1:<port>, in a background thread; a context manager.

    The port is bound at construction, so the viewer's origin is known before the gateway's
    CORS settings are made; ``app_config`` (the text of ``/app-config.js``) may be set later."""

    def __init__(self, dist: Path, app_config: str = "") -> None:
        self.app_config = app_config
        handler = functools.partial(
            _OhifRequestHandler,
            directory=str(dist),
            app_config=lambda: self.app_config.encode(),
        )
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            daemon=True,
            name=f"ohif-{self.port}",
        )

    @property
    def url(self) -> str:
        """The viewer's origin (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OhifStaticServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OhifStaticServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

"""A PACS failing after the response headers went out (issue #10 item 7): the body ends without
its closing delimiter, and the gateway logs one WARNING naming the request, the PACS and the
parts sent, with no traceback and no "unexpected error"."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom.events import Event

from app.api.streaming import ResponseCutShort, install_cut_short_filter
from app.demo.pacs import DemoPacs
from tests.component.conftest import GatewayFactory, gateway_settings, peer_config

pytestmark = pytest.mark.timeout(60)

MULTIPART_DICOM = 'multipart/related; type="application/dicom"'


class DyingPacs(DemoPacs):
    """A DemoPacs whose C-GET and C-MOVE abort the association after ``abort_after`` instances
    (a PACS killed mid-way)."""

    abort_after = 1

    def _send(self, event: Event, matches: list[Dataset]) -> Iterator[Any]:
        yield len(matches)
        for n, ds in enumerate(matches):
            if n >= self.abort_after:
                event.assoc.abort()
                return
            yield 0xFF00, ds


@pytest.fixture(scope="module")
def dying_pacs(samples: list[Dataset]) -> Iterator[DyingPacs]:
    server = DyingPacs(samples, ae_title="DYING_PACS")
    server.start("127.0.0.1", 0)
    yield server
    server.stop()


def _big_series(samples: list[Dataset]) -> tuple[str, str, int]:
    counts: dict[tuple[str, str], int] = {}
    for ds in samples:
        key = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        counts[key] = counts.get(key, 0) + 1
    (study, series), count = max(counts.items(), key=lambda kv: kv[1])
    assert count >= 3
    return study, series, count


@pytest.mark.parametrize("resource", ["", "/metadata"])
async def test_failure_after_the_headers_is_one_warning(
    gateway: GatewayFactory, dying_pacs: DyingPacs, samples: list[Dataset],
    caplog: pytest.LogCaptureFixture, resource: str,
) -> None:
    study, series, _ = _big_series(samples)
    path = f"/dicomweb/studies/{study}/series/{series}{resource}"
    settings = gateway_settings(peer_config(dying_pacs.port, ae_title="DYING_PACS", name="dying"),
                                cache_backend="none")
    async with gateway(settings) as client:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            response = await client.get(path, headers={"Accept": MULTIPART_DICOM}
                                        if not resource else {})
    assert response.status_code == 200
    closing = b"]" if resource else b"--\r\n"
    assert not response.content.endswith(closing), "the truncation must be visible"
    cut = [r for r in caplog.records if "cut short" in r.getMessage()]
    assert len(cut) == 1, [r.getMessage() for r in caplog.records]
    message = cut[0].getMessage()
    assert cut[0].levelno == logging.WARNING
    assert path in message and "'dying'" in message and "after 1 part(s) sent" in message
    assert cut[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], [
        (r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR
    ]
    assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]


def test_server_traceback_of_a_cut_short_response_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    install_cut_short_filter()
    uvicorn_log = logging.getLogger("uvicorn.error")
    with caplog.at_level(logging.ERROR, logger="uvicorn.error"):
        for exc in (ResponseCutShort("x"), RuntimeError("a real bug")):
            try:
                raise exc
            except Exception:
                uvicorn_log.exception("Exception in ASGI application\n")
    assert [r.exc_info[1] for r in caplog.records if r.exc_info] == [exc]


def test_a_real_server_closes_the_connection_with_one_warning(
    dying_pacs: DyingPacs, samples: list[Dataset], caplog: pytest.LogCaptureFixture,
) -> None:
    """Under uvicorn: the chunked body is never terminated (the client sees an incomplete
    message) and uvicorn logs nothing about it."""
    from tests.support.gateway_server import GatewayServer, peer_settings
    from tests.support.gateway_server import gateway_settings as server_settings

    study, series, _ = _big_series(samples)
    peer = peer_settings("dying", "DYING_PACS", "127.0.0.1", dying_pacs.port)
    with GatewayServer(server_settings(peer, cache_backend="none")) as server:
        caplog.clear()
        with caplog.at_level(logging.INFO), server.client() as client:
            with pytest.raises(httpx.RemoteProtocolError):
                client.get(f"/studies/{study}/series/{series}",
                           headers={"Accept": MULTIPART_DICOM})
    messages = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert [m for m in messages if "cut short" in m[2]], messages
    assert not [m for m in messages if m[1] in ("ERROR", "CRITICAL")], messages

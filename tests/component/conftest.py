"""Component fixtures: the demo PACS on a free loopback port with sample data, small pynetdicom
SCPs that misbehave on purpose (slow, picky about AE titles), and the gateway app driven through
httpx inside its lifespan."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from app.demo.pacs import DemoPacs
from app.demo.samples import generate_sample_studies
from app.main import create_app
from app.settings import Settings, load_settings

GATEWAY_AE = "TEST_GW"
FIND = StudyRootQueryRetrieveInformationModelFind


def free_port() -> int:
    """A loopback TCP port nobody listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def samples() -> list[Dataset]:
    """The deterministic sample studies (8 studies, 6 patients, non-ASCII names)."""
    return generate_sample_studies()


@pytest.fixture(scope="session")
def sample_pacs(samples: list[Dataset]) -> Iterator[DemoPacs]:
    """A DemoPacs holding the sample studies, listening on 127.0.0.1 on a free port."""
    pacs = DemoPacs(samples, ae_title="DEMO_PACS")
    pacs.start("127.0.0.1", 0)
    yield pacs
    pacs.stop()


def peer_config(port: int, ae_title: str = "DEMO_PACS", **extra: Any) -> dict[str, Any]:
    """A PacsPeer mapping for a PACS on 127.0.0.1 with short test timeouts."""
    config: dict[str, Any] = {
        "name": "demo",
        "ae_title": ae_title,
        "host": "127.0.0.1",
        "port": port,
        "connect_timeout": 2,
        "acse_timeout": 2,
        "dimse_timeout": 5,
        "overall_timeout": 10,
    }
    config.update(extra)
    return config


def gateway_settings(*peers: dict[str, Any], **extra: Any) -> Settings:
    """Settings for an in-process gateway without its storage SCP."""
    return load_settings(
        ae_title=GATEWAY_AE, pacs=list(peers), storage_scp_enabled=False, **extra
    )


GatewayFactory = Callable[..., Any]


@pytest.fixture
def gateway() -> GatewayFactory:
    """``async with gateway(settings) as client``: an httpx client talking to a fresh app
    through ASGI, inside the app's lifespan (so DIMSE clients exist and are closed after)."""

    @asynccontextmanager
    async def open_gateway(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app, raise_app_exceptions=False)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://gw.test", timeout=20
            ) as client:
                yield client

    return open_gateway


@pytest.fixture
async def demo_client(
    gateway: GatewayFactory, sample_pacs: DemoPacs
) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway in front of the sample DemoPacs."""
    async with gateway(gateway_settings(peer_config(sample_pacs.port))) as client:
        yield client


# -- deliberately awkward SCPs -------------------------------------------------------------------


@dataclass
class ScriptedScp:
    """A pynetdicom Study Root FIND SCP whose C-FIND answers come from a test-supplied handler;
    it records what it saw (cancels, releases, aborts, concurrency)."""

    port: int
    ae_title: str
    stop_event: threading.Event
    lock: threading.Lock = field(default_factory=threading.Lock)
    finds: int = 0
    cancels_seen: int = 0
    released: int = 0
    aborted: int = 0
    active: int = 0
    peak_active: int = 0


@pytest.fixture
def scripted_scp() -> Iterator[Callable[..., ScriptedScp]]:
    """Factory: ``scripted_scp(answer, require_called_aet=False)`` where
    ``answer(event, scp)`` yields (status, identifier) like a pynetdicom C-FIND handler."""
    servers: list[Any] = []
    scps: list[ScriptedScp] = []

    def start(
        answer: Callable[[Any, ScriptedScp], Iterator[tuple[int, Dataset | None]]],
        *,
        ae_title: str = "SCRIPTED",
        require_called_aet: bool = False,
    ) -> ScriptedScp:
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = require_called_aet
        ae.add_supported_context(FIND)
        ae.add_supported_context(Verification)
        ae.acse_timeout = 5
        ae.dimse_timeout = 30
        ae.network_timeout = 30
        ae.maximum_associations = 32
        scp = ScriptedScp(port=0, ae_title=ae_title, stop_event=threading.Event())

        def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
            with scp.lock:
                scp.finds += 1
            try:
                for status, ident in answer(event, scp):
                    if event.is_cancelled:
                        with scp.lock:
                            scp.cancels_seen += 1
                        yield 0xFE00, None
                        return
                    yield status, ident
            finally:
                if event.is_cancelled:
                    with scp.lock:
                        scp.cancels_seen = max(scp.cancels_seen, 1)

        established: set[int] = set()

        def on_open(event: Any) -> None:
            with scp.lock:
                established.add(id(event.assoc))
                scp.active += 1
                scp.peak_active = max(scp.peak_active, scp.active)

        def on_close(event: Any) -> None:
            with scp.lock:
                if id(event.assoc) in established:
                    established.discard(id(event.assoc))
                    scp.active -= 1

        def on_released(event: Any) -> None:
            with scp.lock:
                scp.released += 1

        def on_aborted(event: Any) -> None:
            with scp.lock:
                scp.aborted += 1

        server = ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[
                (evt.EVT_C_FIND, on_find),
                (evt.EVT_ESTABLISHED, on_open),
                (evt.EVT_CONN_CLOSE, on_close),
                (evt.EVT_RELEASED, on_released),
                (evt.EVT_ABORTED, on_aborted),
            ],
        )
        scp.port = int(server.server_address[1])
        servers.append(server)
        scps.append(scp)
        return scp

    yield start
    for scp in scps:
        scp.stop_event.set()
    for server in servers:
        server.shutdown()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def study_result(uid: str, name: str = "Test^Patient") -> Dataset:
    """A minimal STUDY-level C-FIND answer."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uid
    ds.PatientName = name
    ds.PatientID = "P1"
    ds.StudyDate = "20200101"
    ds.ModalitiesInStudy = "CT"
    ds.NumberOfStudyRelatedSeries = 1
    ds.NumberOfStudyRelatedInstances = 1
    return ds

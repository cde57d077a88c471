"""Component fixtures: the demo PACS on a free loopback port with sample data, small pynetdicom
SCPs that misbehave on purpose (slow, picky about AE titles), and the gateway app driven through
httpx inside its lifespan."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, evt

from app.demo.pacs import DemoPacs
from app.demo.samples import generate_sample_studies
from app.settings import Settings, load_settings
from tests.support.redis_cache import redis_cache_settings
from tests.support.threads import worker_pool

GATEWAY_AE = "TEST_GW"
FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")  # Study Root Q/R FIND (PS3.4 C.6.2)
VERIFICATION = UID("1.2.840.10008.1.1")


def free_port() -> int:
    """A loopback TCP port nobody listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def executor(request: pytest.FixtureRequest) -> AsyncIterator[ThreadPoolExecutor]:
    """A thread pool for the pynetdicom engine's producers; every one must have returned by
    the end of the test: shutdown cannot block for longer than the test module's
    ``EXECUTOR_SHUTDOWN_S`` (default 10 s), and no worker thread is left."""
    within = getattr(request.module, "EXECUTOR_SHUTDOWN_S", 10.0)
    async with worker_pool("test-executor", shutdown_within=within) as pool:
        yield pool


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
        "connect_timeout": 5,  # an in-process PACS on a loaded 2-CPU machine may answer late
        "acse_timeout": 5,
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


@asynccontextmanager
async def open_app(settings: Settings, timeout: float = 30
                   ) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """An httpx client talking to a fresh app through ASGI, inside the app's lifespan (so
    DIMSE clients exist and are closed after), and the app's Services."""
    from app.main import create_app  # here, so DIMSE-only tests do not need the HTTP app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gw.test", timeout=timeout
        ) as client:
            yield client, app.state.services


@pytest.fixture
def gateway() -> GatewayFactory:
    """``async with gateway(settings) as client``: ``open_app``'s client alone."""

    @asynccontextmanager
    async def open_gateway(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
        async with open_app(settings, timeout=20) as (client, _):
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
    answer: Callable[[Any, ScriptedScp], Iterator[tuple[int, Dataset | None]]]
    stop_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    finds: int = 0
    cancels_seen: int = 0
    released: int = 0
    aborted: int = 0
    active: int = 0
    peak_active: int = 0


class _ScpServer:
    """One listening pynetdicom server, reused across tests (starting and stopping one costs
    half a second); each test installs its own ScriptedScp as ``current``."""

    def __init__(self, ae_title: str, require_called_aet: bool) -> None:
        self.current: ScriptedScp | None = None
        self._established: set[int] = set()
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = require_called_aet
        ae.add_supported_context(FIND)
        ae.add_supported_context(VERIFICATION)
        ae.acse_timeout = 5
        ae.dimse_timeout = 30
        ae.network_timeout = 30
        ae.maximum_associations = 32
        server = ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[
                (evt.EVT_C_FIND, self._on_find),
                (evt.EVT_ESTABLISHED, self._on_open),
                (evt.EVT_CONN_CLOSE, self._on_close),
                (evt.EVT_RELEASED, self._on_released),
                (evt.EVT_ABORTED, self._on_aborted),
            ],
        )
        assert server is not None  # block=False returns the server
        self.server = server
        self.port = int(server.server_address[1])

    def _on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        scp = self.current
        if scp is None:
            yield 0xC000, None
            return
        with scp.lock:
            scp.finds += 1
        for status, ident in scp.answer(event, scp):
            if event.is_cancelled:
                with scp.lock:
                    scp.cancels_seen += 1
                yield 0xFE00, None
                return
            yield status, ident

    def _on_open(self, event: Any) -> None:
        scp = self.current
        if scp is not None:
            with scp.lock:
                self._established.add(id(event.assoc))
                scp.active += 1
                scp.peak_active = max(scp.peak_active, scp.active)

    def _on_close(self, event: Any) -> None:
        scp = self.current
        if scp is not None:
            with scp.lock:
                if id(event.assoc) in self._established:
                    self._established.discard(id(event.assoc))
                    scp.active -= 1

    def _on_released(self, event: Any) -> None:
        scp = self.current
        if scp is not None:
            with scp.lock:
                scp.released += 1

    def _on_aborted(self, event: Any) -> None:
        scp = self.current
        if scp is not None:
            with scp.lock:
                scp.aborted += 1


@pytest.fixture(scope="session")
def _scp_servers() -> Iterator[dict[tuple[str, bool], _ScpServer]]:
    servers: dict[tuple[str, bool], _ScpServer] = {}
    yield servers
    for server in servers.values():
        server.server.shutdown()


@pytest.fixture
def scripted_scp(
    _scp_servers: dict[tuple[str, bool], _ScpServer],
) -> Iterator[Callable[..., ScriptedScp]]:
    """Factory: ``scripted_scp(answer, ae_title=..., require_called_aet=False)`` where
    ``answer(event, scp)`` yields (status, identifier) like a pynetdicom C-FIND handler."""
    used: list[tuple[_ScpServer, ScriptedScp]] = []

    def start(
        answer: Callable[[Any, ScriptedScp], Iterator[tuple[int, Dataset | None]]],
        *,
        ae_title: str = "SCRIPTED",
        require_called_aet: bool = False,
    ) -> ScriptedScp:
        key = (ae_title, require_called_aet)
        if key not in _scp_servers:
            _scp_servers[key] = _ScpServer(ae_title, require_called_aet)
        server = _scp_servers[key]
        scp = ScriptedScp(port=server.port, ae_title=ae_title, answer=answer)
        server.current = scp
        used.append((server, scp))
        return scp

    yield start
    for server, scp in used:
        scp.stop_event.set()  # wake handlers that are still "thinking"
        wait_until(lambda scp=scp: scp.active <= 0, 3)  # type: ignore[misc]
        server.current = None


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> bool:
    """Like wait_until, without blocking the event loop."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


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


# -- cache backends ------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def cache_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each cache backend in turn (Redis emptied first), as gateway settings."""
    if request.param == "memory":
        return {"cache_backend": "memory"}
    url: str = request.getfixturevalue("redis_url")
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        client.flushall()
    return redis_cache_settings(url)

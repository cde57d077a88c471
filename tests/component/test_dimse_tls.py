"""DICOM TLS between the gateway's own DIMSE pieces on real loopback sockets: each engine's
client against each engine's Storage SCP (Verification), on asyncio's and uvloop's event loops.

What the Orthanc tests (tests/integration/test_dicom_tls.py) cannot show: that the asyncio
engine's socket policy (TCP_NODELAY, the receive buffer, TCP_QUICKACK before reads) reaches
the TCP socket under the TLS transport, that its BufferedProtocol reader runs on both loops'
SSL transports, and that a client which connects to the pynetdicom Storage SCP and never
starts its handshake does not stop the SCP from serving others.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from app.dimse.client import PeerClient
from app.dimse.engine import operations
from app.dimse.engine.association import Association, AssociationRequest, ContextProposal
from app.dimse.engine.client import AsyncPeerClient
from app.dimse.engine.operations import Progress
from app.dimse.engine.storescp import AsyncStorageSCP
from app.dimse.engine.transport import RECEIVE_BUFFER
from app.dimse.move_admission import MoveAdmission, MoveRouter, MoveSource
from app.dimse.storescp import StorageSCP
from app.dimse.tls import client_tls
from app.errors import UpstreamUnavailable
from app.settings import PacsPeer
from app.tlsfiles import server_context
from tests.support.certs import Issued, TestCA

pytestmark = pytest.mark.timeout(60)
PACS_AE = "MOVE_PACS"  # the calling AE title the Storage SCP admits
VERIFICATION = "1.2.840.10008.1.1"
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
T = TypeVar("T")


@dataclass
class Pki:
    ca: TestCA
    scp: Issued
    client: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = TestCA(tmp_path_factory.mktemp("pki"))
    return Pki(ca, ca.issue("scp", dns=("localhost",)), ca.issue("pacs", client=True))


def _run(loop: str, coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(coro)


def _scp_context(pki: Pki) -> ssl.SSLContext:
    """The Storage SCP's TLS: its certificate, client certificates of the test CA required."""
    return server_context(str(pki.scp.cert_file), str(pki.scp.key_file), None,
                          str(pki.ca.cert_file), "storage_scp_tls")


def _peer(port: int, pki: Pki, *, with_cert: bool = True) -> PacsPeer:
    """The Storage SCP seen as a PACS by a client that calls itself PACS_AE."""
    tls: dict[str, Any] = {"ca_file": str(pki.ca.cert_file), "server_name": "localhost"}
    if with_cert:
        tls.update(cert_file=str(pki.client.cert_file), key_file=str(pki.client.key_file))
    return PacsPeer(name="scp", ae_title="SCP_GW", host="127.0.0.1", port=port,
                    connect_timeout=3, acse_timeout=3, dimse_timeout=5, tls=tls)


def _admission() -> MoveAdmission:
    return MoveAdmission([MoveSource("pacs", PACS_AE, ("127.0.0.1",))])


async def _async_scp(pki: Pki) -> AsyncStorageSCP:
    scp = AsyncStorageSCP("SCP_GW", MoveRouter(), "127.0.0.1", 0, admission=_admission(),
                          reuse_port=False, acse_timeout=2, ssl_context=_scp_context(pki))
    await scp.start()
    return scp


@pytest.fixture
def threaded_scp(pki: Pki) -> Iterator[StorageSCP]:
    """The pynetdicom engine's Storage SCP with TLS, in its own threads."""
    scp = StorageSCP("SCP_GW", MoveRouter(), "127.0.0.1", 0, admission=_admission(),
                     reuse_port=False, ssl_context=_scp_context(pki))
    scp.start()
    yield scp
    scp.stop()


async def _echo_checking_the_socket(port: int, pki: Pki) -> str:
    """Associate over TLS with the asyncio engine, check the socket policy under the TLS
    transport, C-ECHO, release; the negotiated TLS version."""
    tls = client_tls(_peer(port, pki))
    request = AssociationRequest(PACS_AE, "SCP_GW",
                                 (ContextProposal(VERIFICATION, ("1.2.840.10008.1.2",)),),
                                 (), (), 1 << 20)
    assoc = await Association.request("127.0.0.1", port, request, connect_timeout=3,
                                      acse_timeout=3, use_quickack=True, label="test", tls=tls)
    try:
        transport = assoc._transport
        assert transport is not None
        raw = transport.get_extra_info("socket")
        assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= RECEIVE_BUFFER
        assert assoc.reader._sock is not None  # QUICKACK is set on this very socket
        version = transport.get_extra_info("ssl_object").version()
        status = await operations.c_echo(assoc, Progress(), model=VERIFICATION, message_id=7,
                                         timeout=5)
        assert status == 0x0000
        await assoc.release()
        return str(version)
    finally:
        assoc.abort()


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_asyncio_engine_to_asyncio_scp(loop: str, pki: Pki) -> None:
    async def main() -> str:
        scp = await _async_scp(pki)
        try:
            version = await _echo_checking_the_socket(scp.port, pki)
            client = AsyncPeerClient(PACS_AE, _peer(scp.port, pki), router=None,
                                     max_receive=1 << 20, use_quickack=True)
            try:
                assert await client.echo() > 0
            finally:
                await client.close()
            return version
        finally:
            await scp.stop()

    assert _run(loop, main()) == "TLSv1.3"


@pytest.mark.parametrize("engine", ["asyncio", "pynetdicom"])
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_asyncio_scp_requires_the_client_certificate(loop: str, engine: str, pki: Pki) -> None:
    """Python's TLS server closes without an alert the client could read: a 503 saying that
    the PACS closed the connection after the handshake."""
    async def main() -> str:
        scp = await _async_scp(pki)
        peer = _peer(scp.port, pki, with_cert=False)
        try:
            with pytest.raises(UpstreamUnavailable) as refused:
                if engine == "asyncio":
                    client = AsyncPeerClient(PACS_AE, peer, router=None, max_receive=1 << 20,
                                             use_quickack=True)
                    try:
                        await client.echo()
                    finally:
                        await client.close()
                else:
                    with ThreadPoolExecutor(2) as pool:
                        await PeerClient(PACS_AE, peer, pool).echo()
            return refused.value.detail or ""
        finally:
            await scp.stop()

    detail = _run(loop, main())
    assert "DICOM TLS: the PACS " in detail and "certificate" in detail, detail


def test_pynetdicom_engine_to_asyncio_scp(pki: Pki) -> None:
    async def main() -> float:
        scp = await _async_scp(pki)
        try:
            with ThreadPoolExecutor(2) as pool:
                return await PeerClient(PACS_AE, _peer(scp.port, pki), pool).echo()
        finally:
            await scp.stop()

    assert _run("asyncio", main()) > 0


@pytest.mark.parametrize("engine", ["asyncio", "pynetdicom"])
def test_both_engines_to_the_pynetdicom_scp(engine: str, threaded_scp: StorageSCP,
                                            pki: Pki) -> None:
    """Also while another client sits on the port without starting its handshake: the SCP
    handshakes in each association's thread, not in its accepting one."""
    idle = socket.create_connection(("127.0.0.1", threaded_scp.port))
    try:
        async def main() -> float:
            peer = _peer(threaded_scp.port, pki)
            if engine == "asyncio":
                client = AsyncPeerClient(PACS_AE, peer, router=None, max_receive=1 << 20,
                                         use_quickack=True)
                try:
                    return await client.echo()
                finally:
                    await client.close()
            with ThreadPoolExecutor(2) as pool:
                return await PeerClient(PACS_AE, peer, pool).echo()

        assert 0 < _run("asyncio", main()) < 3
    finally:
        idle.close()


def test_a_plain_client_gets_nothing_from_a_tls_scp(threaded_scp: StorageSCP,
                                                    tmp_path: Path) -> None:
    """A plain-DICOM A-ASSOCIATE-RQ to the TLS port is not answered with DICOM."""
    with socket.create_connection(("127.0.0.1", threaded_scp.port), timeout=5) as sock:
        sock.sendall(b"\x01\x00\x00\x00\x00\x04abcd")
        try:
            answer = sock.recv(64)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert not answer.startswith((b"\x02", b"\x03"))  # no A-ASSOCIATE-AC or -RJ

"""Clients hanging up mid-stream against real Orthanc and DCMTK dcmqrscp, with C-GET and C-MOVE:
after ten disconnects the peer has no connection left open, the gateway's threads and
associations are back to their baseline, no C-MOVE is left registered, and a normal retrieval
of the same series succeeds at once."""

from __future__ import annotations

import io
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import Dataset, dcmread

from tests.component.test_wado_streaming import PartReader, read_parts
from tests.peers import PacsEndpoint
from tests.peers.fixtures import GATEWAY_AE
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings
from tests.support.threads import (
    association_threads,
    eventually,
    new_threads,
    non_pool_threads,
)

pytestmark = pytest.mark.timeout(90)

DISCONNECTS = 10
OPEN_TCP_STATES = {"01", "08"}  # ESTABLISHED, CLOSE_WAIT (/proc/net/tcp, include/net/tcp_states.h)


@pytest.fixture(params=["get", "move"])
def gateway(request: pytest.FixtureRequest, pacs: PacsEndpoint,
            gateway_storage_port: int) -> Iterator[GatewayServer]:
    """A gateway without a cache (every request reaches the PACS) and two association slots;
    pooled associations end after 0.5 s idle, so "no connection left" checks for leaks."""
    method = request.param
    peer = peer_settings(pacs.kind, pacs.ae_title, pacs.host, pacs.port, retrieve_method=method,
                         max_associations=2, dimse_timeout=15, overall_timeout=30,
                         association_idle_timeout=0.5)
    settings = gateway_settings(peer, ae_title=GATEWAY_AE, storage_scp_enabled=method == "move",
                                storage_scp_host="127.0.0.1", storage_scp_port=gateway_storage_port,
                                cache_backend="none")
    with GatewayServer(settings) as server:
        yield server


TCP_STATE_NAMES = {"01": "ESTABLISHED", "08": "CLOSE_WAIT"}


def open_connections(port: int, end: str = "either") -> list[str]:
    """Open TCP connections on ``port`` on this machine, from /proc: ``local->remote STATE`` per
    socket. ``end``: "server" (sockets bound to ``port``), "client" (sockets connected to it) or
    "either" (both ends of a loopback connection appear)."""
    found = []
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            lport, rport = int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)
            wanted = {"server": lport == port, "client": rport == port,
                      "either": port in (lport, rport)}[end]
            if state in OPEN_TCP_STATES and wanted:
                found.append(f"{lport}->{rport} {TCP_STATE_NAMES[state]}")
    return found


def moves_in_progress(gateway: GatewayServer) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("dimse_move_retrievals_in_progress "):
            return float(line.split()[1])
    raise AssertionError("dimse_move_retrievals_in_progress missing from /metrics")


def ten_slice_series(datasets: list[Dataset]) -> list[Dataset]:
    counts = Counter(str(d.SeriesInstanceUID) for d in datasets if d.Modality == "CT")
    series_uid, count = counts.most_common(1)[0]
    assert count >= 10
    return [d for d in datasets if str(d.SeriesInstanceUID) == series_uid]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
def test_disconnects_mid_stream_leave_nothing_behind(
    gateway: GatewayServer, pacs: PacsEndpoint, gateway_storage_port: int,
    sample_datasets: list[Dataset],
) -> None:
    series = ten_slice_series(sample_datasets)
    expected = {str(d.SOPInstanceUID) for d in series}
    path = f"/studies/{series[0].StudyInstanceUID}/series/{series[0].SeriesInstanceUID}"

    def full_retrieval(client: httpx.Client) -> float:
        began = time.monotonic()
        with client.stream("GET", path) as response:
            assert response.status_code == 200, response.read()[:300]
            reader = PartReader(response.headers["content-type"])
            parts = read_parts(response.iter_raw(65536), reader, len(expected) + 1)
            assert reader.closed
        assert {str(dcmread(io.BytesIO(p)).SOPInstanceUID) for p in parts} == expected
        return time.monotonic() - began

    with gateway.client() as client:
        full_retrieval(client)  # warm up, then take the baseline
        assert eventually(lambda: not association_threads()), association_threads()
        assert eventually(lambda: not open_connections(pacs.port, "server")), (
            open_connections(pacs.port, "server"))
        assert eventually(lambda: not open_connections(gateway_storage_port)), (
            open_connections(gateway_storage_port))
        baseline = non_pool_threads()
        sockets_before = set(open_connections(pacs.port, "client"))  # earlier tests' leftovers

        for _ in range(DISCONNECTS):
            with client.stream("GET", path) as response:
                assert response.status_code == 200, response.read()[:300]
                reader = PartReader(response.headers["content-type"])
                # Small instances: the first chunk may already hold several parts.
                assert read_parts(response.iter_raw(4096), reader, 1)
                assert not reader.closed
            # leaving the block closes the unread response: httpx drops the connection

        # The peer sees every association (and its TCP connection) closed; the gateway has no
        # association thread left and no C-MOVE sub-operation connection open.
        assert eventually(lambda: not association_threads()), association_threads()
        assert eventually(lambda: not open_connections(pacs.port, "server")), (
            open_connections(pacs.port, "server"))
        assert eventually(lambda: not open_connections(gateway_storage_port)), (
            open_connections(gateway_storage_port))
        assert eventually(lambda: not new_threads(baseline)), new_threads(baseline)
        assert eventually(lambda: moves_in_progress(gateway) == 0)
        # Every association slot is free again: a normal retrieval is served promptly.
        took = full_retrieval(client)
        assert took < 10, took

    # The gateway's own end of every connection to the PACS is closed too.
    def leaked() -> set[str]:
        return set(open_connections(pacs.port, "client")) - sockets_before

    if not eventually(lambda: not leaked(), 4):
        raise AssertionError(f"gateway sockets to the PACS left open: {sorted(leaked())}")

"""WADO-RS really streams: the first multipart part reaches an HTTP client while the PACS still
holds back its last sub-operation, for C-GET and C-MOVE; and a slow client slows the PACS down
(the bounded bridge queue), so the gateway never buffers a whole series.

The gateway runs under real uvicorn on a free loopback port; the client reads raw bytes with
httpx streaming. Evidence comes from the PACS side (sub-operations started), not from timing.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES

from app.demo.pacs import DemoPacs
from app.demo.samples import generate_ct_series
from tests.peers.ports import free_port
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings

pytestmark = pytest.mark.timeout(60)

GATEWAY_AE = "STREAM_GW"
RETRIEVE_QUEUE_MAXSIZE = 8  # PeerClient.get/move default: the bound under test
HOLD_TIMEOUT_S = 10.0
VERIFICATION = "1.2.840.10008.1.1"
QR_MODELS = (  # Study Root and Patient Root FIND, MOVE, GET (PS3.4 C.6)
    "1.2.840.10008.5.1.4.1.2.2.1", "1.2.840.10008.5.1.4.1.2.2.2", "1.2.840.10008.5.1.4.1.2.2.3",
    "1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.1.3",
)


class ObservedPacs(DemoPacs):
    """A DemoPacs that counts the C-GET/C-MOVE sub-operations it has started, sleeps
    ``suboperation_delay`` before each (C-FIND stays fast), and can hold one back (``hold_at``,
    1-based) until the test calls ``release()`` (or HOLD_TIMEOUT_S passes)."""

    def __init__(self, datasets: list[Dataset], suboperation_delay: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(datasets, **kwargs)
        self.suboperation_delay = suboperation_delay
        self.hold_at: int | None = None
        self.held = threading.Event()
        self._release = threading.Event()
        self._started = 0
        self._count_lock = threading.Lock()

    @property
    def suboperations_started(self) -> int:
        """Sub-operations handed to pynetdicom for sending since the last reset."""
        with self._count_lock:
            return self._started

    def reset(self) -> None:
        """Zero the counter and re-arm the hold."""
        with self._count_lock:
            self._started = 0
        self.held.clear()
        self._release.clear()

    def _application_entity(self) -> AE:
        """A leaner AE than the demo's (only the SOP classes held): association negotiation
        with every storage class costs ~50 ms, which adds up over many requests."""
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = 0
        ae.maximum_associations = 32
        ae.add_supported_context(VERIFICATION)
        for model in QR_MODELS:
            ae.add_supported_context(model, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        for sop_class in sorted({str(ds.SOPClassUID) for ds in self.datasets()}):
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES, scu_role=True,
                                     scp_role=True)
        return ae

    def release(self) -> None:
        """Let a held sub-operation go."""
        self._release.set()

    def _send(self, event: Any, matches: list[Dataset]) -> Iterator[Any]:
        inner = super()._send(event, matches)
        yield next(inner)  # the number of sub-operations
        for number, item in enumerate(inner, start=1):
            time.sleep(self.suboperation_delay)
            if number == self.hold_at:
                self.held.set()
                self._release.wait(HOLD_TIMEOUT_S)
            with self._count_lock:
                self._started += 1
            yield item


class PartReader:
    """Incremental parser of a multipart/related body read as raw chunks: completed part
    bodies come out as soon as their last byte has arrived (parts carry Content-Length)."""

    def __init__(self, content_type: str) -> None:
        match = re.search(r'boundary="?([^";]+)"?', content_type)
        assert match, content_type
        self._delimiter = b"--" + match.group(1).encode("ascii")
        self._buffer = b""
        self.closed = False
        self.bytes_read = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes; return the bodies of the parts completed by them."""
        self.bytes_read += len(chunk)
        self._buffer += chunk
        done: list[bytes] = []
        while not self.closed:
            if self._buffer.startswith(self._delimiter + b"--"):
                self.closed = True
                break
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            head = self._buffer[:head_end].decode("ascii")
            assert head.startswith(self._delimiter.decode("ascii") + "\r\n"), head[:80]
            length = re.search(r"(?im)^content-length:\s*(\d+)\s*$", head)
            assert length, head
            start = head_end + 4
            end = start + int(length.group(1))
            if len(self._buffer) < end + 2:
                break
            assert self._buffer[end:end + 2] == b"\r\n"
            done.append(self._buffer[start:end])
            self._buffer = self._buffer[end + 2:]
        return done


def read_parts(chunks: Iterator[bytes], reader: PartReader, wanted: int) -> list[bytes]:
    """Read raw chunks until ``wanted`` more parts are complete (fewer if the body ends)."""
    parts: list[bytes] = []
    for chunk in chunks:
        parts.extend(reader.feed(chunk))
        if len(parts) >= wanted:
            break
    return parts


def start_gateway(pacs: DemoPacs, method: str, cache: str = "none", **peer: Any
                  ) -> GatewayServer:
    """A gateway (not started: use ``with``) under uvicorn in front of ``pacs`` retrieving by
    ``method``, with ``cache`` as its cache backend (none: every request goes to the PACS); for
    C-MOVE its storage SCP listens on a free port the PACS knows as GATEWAY_AE."""
    options: dict[str, Any] = {"connect_timeout": 2, "acse_timeout": 5, "dimse_timeout": 15,
                               "overall_timeout": 30}
    options.update(peer)
    settings_extra: dict[str, Any] = {"ae_title": GATEWAY_AE, "cache_backend": cache}
    if method == "move":
        scp_port = free_port()
        pacs.add_move_destination(GATEWAY_AE, "127.0.0.1", scp_port)
        settings_extra.update(storage_scp_enabled=True, storage_scp_host="127.0.0.1",
                              storage_scp_port=scp_port)
    peer_obj = peer_settings("demo", pacs.ae_title, "127.0.0.1", pacs.port,
                             retrieve_method=method, **options)
    return GatewayServer(gateway_settings(peer_obj, **settings_extra))


def moves_in_progress(gateway: GatewayServer) -> float:
    """The gateway's ``dimse_move_retrievals_in_progress`` gauge (C-MOVEs routed to it now)."""
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("dimse_move_retrievals_in_progress "):
            return float(line.split()[1])
    raise AssertionError(f"dimse_move_retrievals_in_progress missing from /metrics:\n{text}")


def series_path(datasets: list[Dataset]) -> str:
    """The WADO-RS path (under the DICOMweb prefix) of the series ``datasets`` belong to."""
    first = datasets[0]
    return f"/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"


@pytest.fixture(scope="module")
def ct_series() -> list[Dataset]:
    """Ten 512x512 16-bit CT slices (about 0.5 MB each)."""
    return list(generate_ct_series(10, seed=41))


@pytest.fixture(scope="module")
def big_series() -> list[Dataset]:
    """32 CT slices of 1024x1024 (2 MB each, 64 MB): far more than the bridge queue holds, and
    big enough that the loopback socket buffers (a few MB) cannot hold more than a few."""
    return list(generate_ct_series(32, rows=1024, columns=1024, seed=42))


@pytest.fixture
def observed_pacs(ct_series: list[Dataset]) -> Iterator[ObservedPacs]:
    pacs = ObservedPacs(ct_series, ae_title="STREAM_PACS", suboperation_delay=0.02)
    pacs.start("127.0.0.1", 0)
    yield pacs
    pacs.release()
    pacs.stop()


@pytest.mark.parametrize("cache", ["none", "memory"])
@pytest.mark.parametrize("method", ["get", "move"])
def test_first_part_arrives_before_the_last_sub_operation(
    method: str, cache: str, observed_pacs: ObservedPacs, ct_series: list[Dataset]
) -> None:
    """Straight from the retrieval (no cache) and through a cache fill (the default)."""
    total = len(ct_series)
    observed_pacs.hold_at = total  # the last sub-operation waits for the test
    expected = {str(ds.SOPInstanceUID) for ds in ct_series}
    with start_gateway(observed_pacs, method, cache) as gateway, gateway.client() as client:
        with client.stream("GET", series_path(ct_series)) as response:
            assert response.status_code == 200
            reader = PartReader(response.headers["content-type"])
            chunks = response.iter_raw(65536)
            first = read_parts(chunks, reader, 1)
            started_when_first_arrived = observed_pacs.suboperations_started
            if method == "move":  # the retrieval is registered with the storage SCP's router
                assert moves_in_progress(gateway) == 1
            observed_pacs.release()
            assert len(first) == 1
            # The whole first part is here while the PACS has not yet started its last
            # sub-operation (it is held back until now): the gateway did not buffer the series.
            assert started_when_first_arrived < total, started_when_first_arrived
            assert started_when_first_arrived >= 1
            ds = dcmread(io.BytesIO(first[0]))
            assert str(ds.SOPInstanceUID) in expected
            rest = read_parts(chunks, reader, total)
            assert reader.closed, "the closing delimiter never came"
        assert observed_pacs.held.is_set(), "the PACS never reached its last sub-operation"
        assert observed_pacs.suboperations_started == total
        assert moves_in_progress(gateway) == 0
        got = {str(dcmread(io.BytesIO(body)).SOPInstanceUID) for body in first + rest}
        assert got == expected


@pytest.mark.parametrize("method", ["get", "move"])
def test_a_slow_client_holds_the_pacs_back(method: str, big_series: list[Dataset]) -> None:
    """Without a cache the client's pace reaches the PACS (with the cache on, a fill runs at the
    PACS's pace into the size-capped cache, by design)."""
    total = len(big_series)
    pacs = ObservedPacs(big_series, ae_title="SLOW_PACS")
    pacs.start("127.0.0.1", 0)
    try:
        with start_gateway(pacs, method) as gateway, gateway.client() as client:
            with client.stream("GET", series_path(big_series)) as response:
                assert response.status_code == 200
                reader = PartReader(response.headers["content-type"])
                chunks = response.iter_raw(65536)
                assert len(read_parts(chunks, reader, 1)) == 1
                # The client now stops reading. With no delay on the PACS side, only
                # back-pressure can keep the PACS from sending all 32 instances: wait until the
                # count stops rising.
                started = _settled(lambda: pacs.suboperations_started, quiet=0.6, within=8)
                # The part read + one being written to the socket + the queue (8) + one blocked
                # in the store handler + what fits in the loopback socket buffers (2-3 parts).
                assert started <= 1 + 1 + RETRIEVE_QUEUE_MAXSIZE + 1 + 3, started
                assert started < total
                rest = read_parts(chunks, reader, total)
                assert reader.closed
            assert 1 + len(rest) == total
            assert pacs.suboperations_started == total
    finally:
        pacs.stop()


def _settled(read: Callable[[], int], *, quiet: float, within: float) -> int:
    """Poll ``read()`` until it has not changed for ``quiet`` seconds (or ``within`` passes)."""
    value = read()
    changed = time.monotonic()
    end = changed + within
    while time.monotonic() < end:
        time.sleep(0.05)
        now = read()
        if now != value:
            value, changed = now, time.monotonic()
        elif time.monotonic() - changed >= quiet:
            break
    return value


async def test_c_get_without_counts_starts_without_listing_every_instance(
        gateway: Any) -> None:
    """A PACS that gives no counts (like dcmqrscp): a study C-GET starts after the study-level
    C-FIND (whose SOPClassesInStudy says what to propose), not after an IMAGE-level listing of
    every instance (4 C-FINDs here before); every instance still arrives. (Against dcmqrscp,
    which gives no classes either, one SERIES-level C-FIND for the modalities is added: the
    integration suite retrieves from it.)"""
    from app.demo.samples import generate_sample_studies
    from app.dicomweb.multipart import parse_multipart
    from tests.component.conftest import gateway_settings as component_settings
    from tests.component.conftest import peer_config

    samples = generate_sample_studies()
    pacs = DemoPacs(samples, ae_title="NOCOUNT_PACS", omit_counts=True)
    pacs.start("127.0.0.1", 0)
    try:
        study = max({str(d.StudyInstanceUID) for d in samples},
                    key=lambda uid: sum(str(d.StudyInstanceUID) == uid for d in samples))
        expected = {str(d.SOPInstanceUID) for d in samples if str(d.StudyInstanceUID) == study}
        settings = component_settings(peer_config(pacs.port, ae_title="NOCOUNT_PACS"),
                                      cache_backend="none")
        async with gateway(settings) as client:
            pacs.reset_operation_counts()
            r = await client.get(f"/dicomweb/studies/{study}", headers={
                "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
            assert r.status_code == 200, r.text[:300]
            parts = parse_multipart(r.content, r.headers["content-type"])
            assert {str(dcmread(io.BytesIO(p.body)).SOPInstanceUID) for p in parts} == expected
            counts = pacs.operation_counts
            assert counts["C-GET"] == 1
            assert counts["C-FIND"] == 1, counts
    finally:
        pacs.stop()

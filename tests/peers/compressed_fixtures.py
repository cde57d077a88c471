"""Module-scoped real peers holding the compressed demo study (``generate_compressed_samples``):
an Orthanc and a dcmqrscp of their own, each knowing the gateway as a C-MOVE destination on a
port of their own (registered as a pytest plugin from tests/conftest.py).

dcmqrscp has no codecs: it can only send a file in its stored syntax, and with its default
options it accepts (C-GET) and proposes (C-MOVE) uncompressed syntaxes only. It is therefore
started with ``+xr -xr`` (accept and propose RLE Lossless too), the one configuration in which it
can serve the RLE part of the study at all; it cannot serve JPEG 2000, JPEG or JPEG-LS files in
the same run (one compressed syntax per process).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset

from app.demo.compressed import SampleSpec, compressed_sample_arrays, generate_compressed_samples
from tests.peers import (
    DcmqrscpServer,
    OrthancServer,
    dcmtk_environment,
    find_binary,
    find_dicomweb_plugin,
    free_port,
    require_binary,
    skip_or_fail,
    wait_for_port,
)
from tests.peers.fixtures import GATEWAY_AE
from tests.peers.process import ManagedProcess

#: dcmqrscp options: prefer RLE Lossless on incoming associations (C-GET storage contexts) and
#: propose it on outgoing ones (C-MOVE sub-associations), besides the uncompressed syntaxes.
DCMQRSCP_RLE_OPTIONS = ("+xr", "-xr")


class OptionedDcmqrscp(DcmqrscpServer):
    """A DcmqrscpServer started with extra command-line options."""

    def __init__(self, workdir: Path, *, options: Sequence[str], **kwargs: Any) -> None:
        super().__init__(workdir, **kwargs)
        self.options = tuple(options)

    def start(self, timeout: float = 15.0) -> None:
        """Start dcmqrscp with ``options`` and wait until it accepts connections."""
        binary = find_binary("dcmqrscp")
        if binary is None:
            raise RuntimeError("dcmqrscp is not installed (run scripts/install-deps)")
        self._process = ManagedProcess(
            [binary, "--config", str(self.config_path), "--disable-host-lookup", *self.options],
            self.log_path, env=dcmtk_environment(), cwd=self.workdir, own_group=True)
        popen = self._process.start()
        try:
            wait_for_port(self.host, self.port, timeout, process=popen)
        except (TimeoutError, RuntimeError) as error:
            tail = self._process.log_tail()
            self.stop()
            raise RuntimeError(f"dcmqrscp did not start on port {self.port}:\n{tail}") from error


@pytest.fixture(scope="session")
def compressed_datasets() -> list[Dataset]:
    """The compressed demo study: RLE, JPEG 2000 lossless, JPEG baseline, multi-frame RLE and
    (with pyjpegls) JPEG-LS instances."""
    return generate_compressed_samples()


@pytest.fixture(scope="session")
def compressed_specs(compressed_datasets: list[Dataset]) -> dict[str, SampleSpec]:
    """Each compressed instance's original pixels and syntax, by SOP Instance UID."""
    specs = compressed_sample_arrays()
    assert len(specs) == len(compressed_datasets)
    return {str(ds.SOPInstanceUID): spec for ds, spec in zip(compressed_datasets, specs,
                                                               strict=True)}


@pytest.fixture(scope="module")
def compressed_storage_port() -> int:
    """A free port for the C-MOVE storage SCP of the gateways in front of the compressed peers."""
    return free_port()


@pytest.fixture(scope="module")
def compressed_orthanc(tmp_path_factory: pytest.TempPathFactory,
                       compressed_datasets: list[Dataset],
                       compressed_storage_port: int) -> Iterator[OrthancServer]:
    """An Orthanc of its own, loaded with the compressed study through its REST API."""
    require_binary("Orthanc")
    if find_dicomweb_plugin() is None:
        skip_or_fail("the Orthanc DICOMweb plugin is not installed (run scripts/install-deps)")
    server = OrthancServer(
        tmp_path_factory.mktemp("orthanc-compressed"), ae_title="ORTHANC_CMP",
        modalities={"gateway": (GATEWAY_AE, "127.0.0.1", compressed_storage_port)})
    server.start()
    try:
        server.load(compressed_datasets)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def compressed_dcmqrscp(tmp_path_factory: pytest.TempPathFactory,
                        compressed_datasets: list[Dataset],
                        compressed_storage_port: int) -> Iterator[DcmqrscpServer]:
    """A dcmqrscp of its own (``+xr -xr``), indexed with the compressed study by dcmqridx."""
    require_binary("dcmqrscp")
    require_binary("dcmqridx")
    server = OptionedDcmqrscp(
        tmp_path_factory.mktemp("dcmqrscp-compressed"), options=DCMQRSCP_RLE_OPTIONS,
        ae_titles=("DCMQR_CMP",),
        move_destinations={"gateway": (GATEWAY_AE, compressed_storage_port)})
    server.load(compressed_datasets)
    server.start()
    try:
        yield server
    finally:
        server.stop()

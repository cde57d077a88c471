"""Session-wide real peers shared by integration and conformance tests: Orthanc and dcmqrscp
holding the sample studies (registered as a pytest plugin from tests/conftest.py).

Both peers hold exactly ``generate_sample_studies()`` and know the gateway (``GATEWAY_AE`` on
``gateway_storage_port``) as a C-MOVE destination. Tests must not add data to these shared
servers; a test that needs other data starts its own ``OrthancServer`` or ``DcmqrscpServer``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom import Dataset

from tests.peers import (
    DcmqrscpServer,
    OrthancServer,
    PacsEndpoint,
    RedisServer,
    find_dicomweb_plugin,
    free_port,
    require_binary,
    skip_or_fail,
)

GATEWAY_AE = "DWGW_TEST"
"""AE title of the gateway under test; both peers accept it as a C-MOVE destination."""


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free loopback port for the module (tests empty it)."""
    require_binary("redis-server")
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def sample_datasets() -> list[Dataset]:
    """The deterministic sample studies that both peers hold."""
    from app.demo.samples import generate_sample_studies

    return generate_sample_studies()


@pytest.fixture(scope="session")
def gateway_storage_port() -> int:
    """A free port reserved for the gateway's C-MOVE storage SCP (peers send to it)."""
    return free_port()


@pytest.fixture(scope="session")
def orthanc(
    tmp_path_factory: pytest.TempPathFactory,
    sample_datasets: list[Dataset],
    gateway_storage_port: int,
) -> Iterator[OrthancServer]:
    """A real Orthanc with the DICOMweb plugin, loaded with the sample studies."""
    require_binary("Orthanc")
    if find_dicomweb_plugin() is None:
        skip_or_fail("the Orthanc DICOMweb plugin is not installed (run scripts/install-deps)")
    server = OrthancServer(
        tmp_path_factory.mktemp("orthanc"),
        modalities={"gateway": (GATEWAY_AE, "127.0.0.1", gateway_storage_port)},
    )
    server.start()
    try:
        server.load(sample_datasets)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dcmqrscp(
    tmp_path_factory: pytest.TempPathFactory,
    sample_datasets: list[Dataset],
    gateway_storage_port: int,
) -> Iterator[DcmqrscpServer]:
    """A real DCMTK dcmqrscp (one AE title), loaded with the sample studies."""
    require_binary("dcmqrscp")
    require_binary("dcmqridx")
    server = DcmqrscpServer(
        tmp_path_factory.mktemp("dcmqrscp"),
        move_destinations={"gateway": (GATEWAY_AE, gateway_storage_port)},
    )
    server.load(sample_datasets)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["orthanc", "dcmqrscp"])
def pacs(request: pytest.FixtureRequest) -> PacsEndpoint:
    """Each real peer in turn, as an endpoint; only the peer a test instance needs is started."""
    kind: str = request.param
    if kind == "orthanc":
        orthanc: OrthancServer = request.getfixturevalue("orthanc")
        return PacsEndpoint(kind, orthanc.ae_title, orthanc.host, orthanc.dicom_port)
    dcmqrscp: DcmqrscpServer = request.getfixturevalue("dcmqrscp")
    return PacsEndpoint(kind, dcmqrscp.ae_title, dcmqrscp.host, dcmqrscp.port)


# -- peers that tests store into (STOW-RS) ---------------------------------------------------------


@pytest.fixture(scope="module")
def writable_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """An empty Orthanc of the module's own, for tests that store into it (the shared one
    must keep exactly the sample studies). ``DicomAlwaysAllowStore`` admits the gateway."""
    require_binary("Orthanc")
    if find_dicomweb_plugin() is None:
        skip_or_fail("the Orthanc DICOMweb plugin is not installed (run scripts/install-deps)")
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-stow"), ae_title="ORTHANC_STOW")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def writable_dcmqrscp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DcmqrscpServer]:
    """An empty dcmqrscp of the module's own, for tests that store into it. Its AETable entry
    is ``RW`` with peers ``ANY``, so it accepts C-STORE from the gateway's AE title; started
    with its default options, it accepts uncompressed transfer syntaxes only."""
    require_binary("dcmqrscp")
    server = DcmqrscpServer(tmp_path_factory.mktemp("dcmqrscp-stow"), ae_titles=("DCMQR_STOW",))
    server.start()
    try:
        yield server
    finally:
        server.stop()

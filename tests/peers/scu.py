"""A minimal reference SCU (pynetdicom) for checking peers independently of the gateway's code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pydicom import Dataset
from pynetdicom import AE, Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import time
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from tests.peers.endpoint import PacsEndpoint

_PENDING = (0xFF00, 0xFF01)


@contextmanager
def associate(
    endpoint: PacsEndpoint, calling_ae: str = "PEERS_SCU", timeout: float = 10.0
) -> Iterator[Association]:
    """Open an association proposing Verification and Study Root C-FIND; release it on exit."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(endpoint.host, endpoint.port, ae_title=endpoint.ae_title)
    if not assoc.is_established:
        raise ConnectionError(f"association with {endpoint} was not established")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def c_echo(endpoint: PacsEndpoint) -> int:
    """Send one C-ECHO and return its DIMSE status."""
    with associate(endpoint) as assoc:
        status = assoc.send_c_echo()
        if not status:
            raise ConnectionError(f"no C-ECHO response from {endpoint}")
        return int(status.Status)


def c_find_study_root(endpoint: PacsEndpoint, identifier: Dataset) -> list[Dataset]:
    """Run a Study Root C-FIND and return the pending identifiers; raise on a failure status."""
    matches: list[Dataset] = []
    with associate(endpoint) as assoc:
        responses = assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
        for status, match in responses:
            if not status:
                raise ConnectionError(f"C-FIND to {endpoint} got no response")
            code = int(status.Status)
            if code in _PENDING and match is not None:
                matches.append(match)
            elif code != 0x0000:
                raise RuntimeError(f"C-FIND to {endpoint} ended with status 0x{code:04X}")
    return matches

"""A real DICOMweb client (dicomweb-client) storing through the gateway into a real Orthanc:
``store_instances`` (with and without a study in the URL) gets the Store Instances Response
Module it can read, an instance of the wrong study fails with A900 (the client raises on the
409), and what was stored is searched and retrieved with the same client."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from pydicom.uid import generate_uid
from requests.exceptions import HTTPError

from tests.peers import OrthancServer
from tests.peers.fixtures import GATEWAY_AE
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def gateway(writable_orthanc: OrthancServer) -> Iterator[GatewayServer]:
    peer = peer_settings("orthanc", writable_orthanc.ae_title, writable_orthanc.host,
                         writable_orthanc.dicom_port)
    with GatewayServer(gateway_settings(peer, ae_title=GATEWAY_AE, read_only=False)) as server:
        yield server


@pytest.fixture
def client(gateway: GatewayServer) -> DICOMwebClient:
    # dicomweb-client sends Host without the port (see test_dicomweb_client_wado.py)
    return DICOMwebClient(url=gateway.dicomweb,
                          headers={"X-Forwarded-Host": f"127.0.0.1:{gateway.port}"})


def _renamed(datasets: list[Dataset]) -> list[Dataset]:
    """Copies in a new study and series, with new SOP Instance UIDs."""
    study, series = generate_uid(), generate_uid()
    out = []
    for ds in datasets:
        copied = copy.deepcopy(ds)
        copied.StudyInstanceUID, copied.SeriesInstanceUID = study, series
        copied.SOPInstanceUID = generate_uid()
        copied.file_meta.MediaStorageSOPInstanceUID = copied.SOPInstanceUID
        out.append(copied)
    return out


def _series(datasets: list[Dataset]) -> list[Dataset]:
    first = next(ds for ds in datasets if ds.Modality == "CT")
    return [ds for ds in datasets if ds.SeriesInstanceUID == first.SeriesInstanceUID]


def test_store_instances_then_search_and_retrieve(client: DICOMwebClient,
                                                  gateway: GatewayServer,
                                                  sample_datasets: list[Dataset]) -> None:
    stored = _renamed(_series(sample_datasets)[:4])
    study, series = str(stored[0].StudyInstanceUID), str(stored[0].SeriesInstanceUID)
    result = client.store_instances(stored)
    assert isinstance(result, Dataset)
    assert result.RetrieveURL.endswith(f"/studies/{study}")
    assert sorted(item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence) == \
        sorted(str(ds.SOPInstanceUID) for ds in stored)
    assert "FailedSOPSequence" not in result
    item = result.ReferencedSOPSequence[0]
    assert item.RetrieveURL.startswith(gateway.url)

    found = client.search_for_instances(study, series)
    assert len(found) == len(stored)
    by_sop = {str(ds.SOPInstanceUID): ds for ds in stored}
    for got in client.retrieve_series(study, series):
        original = by_sop[str(got.SOPInstanceUID)]
        assert np.array_equal(got.pixel_array, original.pixel_array)


def test_store_instances_of_a_study(client: DICOMwebClient,
                                    sample_datasets: list[Dataset]) -> None:
    stored = _renamed(_series(sample_datasets)[:2])
    study = str(stored[0].StudyInstanceUID)
    stranger = _renamed(_series(sample_datasets)[2:3])[0]
    result = client.store_instances([*stored, stranger], study_instance_uid=study)
    assert len(result.ReferencedSOPSequence) == 2
    failed = result.FailedSOPSequence
    assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in failed] == [
        (str(stranger.SOPInstanceUID), 0xA900)]
    with pytest.raises(HTTPError) as caught:  # nothing stored: 409
        client.store_instances([stranger], study_instance_uid=study)
    assert caught.value.response.status_code == 409

"""Issue #10 item 18: instances whose SOP class the PACS does not return in C-FIND, and which
are not among the storage classes guessed from the series' Modality, cannot be received by C-GET.
Without ``move_fallback`` the error (or the partial-retrieval warning) says which and why; with
it, one C-MOVE to the gateway's storage SCP delivers them.

The demo PACS answers C-FIND without SOPClassUID (``omit_sop_class``, like dcmqrscp) and holds a
CT series with one Multi-frame Grayscale Word Secondary Capture (a workstation's reformat saved
into the series): not in the CT guess of app/dicomweb/sop_classes.py.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from io import BytesIO

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import MultiFrameGrayscaleWordSecondaryCaptureImageStorage, generate_uid

from app.demo.pacs import DemoPacs
from app.demo.samples import generate_ct_series
from app.dicomweb.multipart import parse_multipart
from app.dicomweb.sop_classes import sop_classes_for_modality
from app.settings import Settings
from tests.component.conftest import GATEWAY_AE, free_port, gateway_settings, open_app, peer_config

pytestmark = pytest.mark.timeout(60)

SC_CLASS = str(MultiFrameGrayscaleWordSecondaryCaptureImageStorage)


def _series() -> list[Dataset]:
    """Four small CT slices and one secondary capture in the same series."""
    slices = list(generate_ct_series(4, rows=64, columns=64, seed=18))
    sc = copy.deepcopy(slices[-1])
    sc.SOPClassUID = SC_CLASS
    sc.SOPInstanceUID = generate_uid(entropy_srcs=["move18-sc"])
    sc.file_meta.MediaStorageSOPClassUID = sc.SOPClassUID
    sc.file_meta.MediaStorageSOPInstanceUID = sc.SOPInstanceUID
    sc.InstanceNumber = len(slices) + 1
    sc.NumberOfFrames = 1
    return [*slices, sc]


@pytest.fixture(scope="module")
def series() -> list[Dataset]:
    return _series()


@pytest.fixture(scope="module")
def pacs(series: list[Dataset]) -> Iterator[DemoPacs]:
    """A demo PACS that leaves SOPClassUID out of its C-FIND answers."""
    server = DemoPacs(series, ae_title="NOCLASS_PACS", omit_sop_class=True)
    server.start("127.0.0.1", 0)
    yield server
    server.stop()


def settings_for(pacs: DemoPacs, fallback: bool) -> Settings:
    """A gateway in front of ``pacs`` retrieving by C-GET, with its storage SCP on a free port
    the PACS knows as the gateway's AE title."""
    port = free_port()
    pacs.add_move_destination(GATEWAY_AE, "127.0.0.1", port)
    peer = peer_config(pacs.port, ae_title=pacs.ae_title, retrieve_method="get",
                       move_fallback=fallback, dimse_timeout=10, overall_timeout=20)
    settings = gateway_settings(peer, cache_backend="none", storage_scp_host="127.0.0.1",
                                storage_scp_port=port)
    return settings.model_copy(update={"storage_scp_enabled": True})


@asynccontextmanager
async def open_gateway(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to a fresh app through ASGI, inside its lifespan."""
    async with open_app(settings) as (client, _):
        yield client


def instances(response: httpx.Response) -> dict[str, Dataset]:
    """The data sets of a multipart/related application/dicom response, by SOP Instance UID."""
    assert response.status_code == 200, response.text[:300]
    parts = parse_multipart(response.content, response.headers["content-type"])
    datasets = [dcmread(BytesIO(p.body)) for p in parts]
    return {str(ds.SOPInstanceUID): ds for ds in datasets}


def path_of(ds: Dataset, instance: bool = False) -> str:
    """The WADO-RS path of ``ds``'s series (or of ``ds`` itself)."""
    path = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    return f"{path}/instances/{ds.SOPInstanceUID}" if instance else path


def test_the_secondary_capture_is_outside_the_ct_guess() -> None:
    """The premise: C-GET cannot propose the secondary capture's class for a CT series."""
    assert SC_CLASS not in sop_classes_for_modality("CT")


async def test_without_fallback_the_warning_names_the_undelivered_instance(
    pacs: DemoPacs, series: list[Dataset], caplog: pytest.LogCaptureFixture
) -> None:
    sc_uid = str(series[-1].SOPInstanceUID)
    with caplog.at_level(logging.WARNING, logger="app.services.pacs_retrieval"):
        async with open_gateway(settings_for(pacs, fallback=False)) as client:
            pacs.reset_operation_counts()
            got = instances(await client.get(path_of(series[0])))
    assert set(got) == {str(ds.SOPInstanceUID) for ds in series[:-1]}
    assert pacs.operation_counts["C-MOVE"] == 0
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "1 instance(s) not delivered" in text, text
    assert sc_uid in text
    assert "returns no SOPClassUID" in text
    assert "move_fallback" in text


async def test_without_fallback_the_instance_answers_502_saying_why(
    pacs: DemoPacs, series: list[Dataset]
) -> None:
    sc = series[-1]
    async with open_gateway(settings_for(pacs, fallback=False)) as client:
        response = await client.get(path_of(sc, instance=True))
    assert response.status_code == 502, response.text[:300]
    assert str(sc.SOPInstanceUID) in response.text
    assert "returns no SOPClassUID" in response.text
    assert 'retrieve_method = \\"move\\"' in response.text or "move_fallback" in response.text


@pytest.mark.parametrize("instance", [False, True], ids=["series", "instance"])
async def test_with_move_fallback_every_instance_arrives(
    pacs: DemoPacs, series: list[Dataset], instance: bool
) -> None:
    wanted = series if not instance else series[-1:]
    async with open_gateway(settings_for(pacs, fallback=True)) as client:
        pacs.reset_operation_counts()
        got = instances(await client.get(path_of(wanted[-1], instance=instance)))
    assert set(got) == {str(ds.SOPInstanceUID) for ds in wanted}
    for ds in wanted:
        received = got[str(ds.SOPInstanceUID)]
        assert str(received.SOPClassUID) == str(ds.SOPClassUID)
        assert received.PixelData == ds.PixelData
    assert pacs.operation_counts["C-MOVE"] == 1
    assert pacs.operation_counts["C-GET"] >= 1


async def test_a_get_that_delivers_everything_does_not_move(
    pacs: DemoPacs, series: list[Dataset]
) -> None:
    """The fallback costs nothing when C-GET delivers: the CT slices alone."""
    async with open_gateway(settings_for(pacs, fallback=True)) as client:
        pacs.reset_operation_counts()
        got = instances(await client.get(path_of(series[0], instance=True)))
    assert list(got) == [str(series[0].SOPInstanceUID)]
    assert pacs.operation_counts["C-MOVE"] == 0

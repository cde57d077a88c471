"""Frame lists cannot amplify a request (issue #10, item 3): at most ``max_frames_per_request``
frames, no frame twice (400 with a DICOM JSON body, before any PACS traffic), and the frames
response is sent part by part, each frame made only when the one before has been sent."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import app.services.wado as wado_service
from app.demo.pacs import DemoPacs
from app.dicomweb.multipart import parse_multipart
from app.settings import Settings

from .conftest import GatewayFactory, gateway_settings, peer_config

pytestmark = pytest.mark.timeout(60)

FRAMES = 'multipart/related; type="application/octet-stream"'
BIG_FRAMES = 64
ROWS = COLUMNS = 256  # 16-bit: 128 KiB a frame, 8 MiB in all


@pytest.fixture(scope="module")
def big(samples: list[Dataset]) -> Dataset:
    """A 64-frame 16-bit instance in a series of its own."""
    (source,) = [d for d in samples if int(d.get("NumberOfFrames", 1) or 1) > 1]
    ds = copy.deepcopy(source)
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Rows, ds.Columns, ds.NumberOfFrames = ROWS, COLUMNS, BIG_FRAMES
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    frames = np.arange(BIG_FRAMES, dtype="<u2").repeat(ROWS * COLUMNS)
    ds.PixelData = frames.tobytes()
    return ds


@pytest.fixture(scope="module")
def pacs(samples: list[Dataset], big: Dataset) -> Iterator[DemoPacs]:
    server = DemoPacs([*samples, big], ae_title="FRAME_PACS")
    server.start("127.0.0.1", 0)
    yield server
    server.stop()


def settings_for(pacs: DemoPacs, **extra: Any) -> Settings:
    return gateway_settings(peer_config(pacs.port, ae_title=pacs.ae_title),
                            cache_backend="memory", **extra)


def frames_url(ds: Dataset, frames: str, suffix: str = "") -> str:
    return (f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/frames/{frames}{suffix}")


def assert_problem(response: Any, text: str) -> None:
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/dicom+json")
    assert text in response.json()["00000902"]["Value"][0]


@pytest.mark.parametrize("suffix", ["", "/rendered", "/thumbnail"])
async def test_duplicates_and_long_lists_are_400_before_any_dimse(
        gateway: GatewayFactory, pacs: DemoPacs, big: Dataset, suffix: str) -> None:
    pacs.reset_operation_counts()
    async with gateway(settings_for(pacs)) as client:
        thousand = ",".join(["1"] * 1000)
        assert_problem(await client.get(frames_url(big, thousand, suffix)),
                       "max_frames_per_request")
        assert_problem(await client.get(frames_url(big, "1,1", suffix)), "more than once")
        assert_problem(await client.get(frames_url(big, "2,3, 02", suffix)), "more than once")
        many = ",".join(str(n) for n in range(1, 258))
        assert_problem(await client.get(frames_url(big, many, suffix)), "at most 256")
        assert_problem(await client.get(frames_url(big, "1," + "9" * 5000, suffix)),
                       "out of range")
    assert sum(pacs.operation_counts.values()) == 0


async def test_max_frames_per_request_is_a_setting(
        gateway: GatewayFactory, pacs: DemoPacs, big: Dataset) -> None:
    async with gateway(settings_for(pacs, max_frames_per_request=3)) as client:
        ok = await client.get(frames_url(big, "3,1,2"), headers={"Accept": FRAMES})
        assert ok.status_code == 200
        parts = parse_multipart(ok.content, ok.headers["content-type"])
        frame = ROWS * COLUMNS * 2
        assert [p.body for p in parts] == [
            np.full(ROWS * COLUMNS, n, dtype="<u2").tobytes() for n in (2, 0, 1)]
        assert all(len(p.body) == frame for p in parts)
        assert_problem(await client.get(frames_url(big, "1,2,3,4")), "at most 3")
        rendered = await client.get(frames_url(big, "1,2,3", "/rendered"))
        assert rendered.status_code == 200
        assert_problem(await client.get(frames_url(big, "1,2,3,4", "/rendered")), "at most 3")
        # more distinct frames than the instance has cannot all exist: 404 for the first beyond
        beyond = await client.get(frames_url(big, f"1,{BIG_FRAMES + 1}"))
        assert beyond.status_code == 404


async def test_frames_are_streamed_part_by_part(
        pacs: DemoPacs, big: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """Driven as ASGI to see each body message: one per part at most a frame long, and the
    first is sent before most frames have been made."""
    from app.main import create_app

    made: list[int] = []
    real = wado_service.get_frames

    def counting(ds: Dataset, numbers: Any, **kwargs: Any) -> Any:
        made.extend(numbers)
        return real(ds, numbers, **kwargs)

    monkeypatch.setattr(wado_service, "get_frames", counting)
    application = create_app(settings_for(pacs))
    wanted = ",".join(str(n) for n in range(1, BIG_FRAMES + 1))
    path = frames_url(big, wanted)
    bodies: list[bytes] = []
    made_at_first_body: list[int] = []
    status: list[int] = []

    requested = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not requested.is_set():
            requested.set()
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body" and message.get("body"):
            if not bodies:
                made_at_first_body.append(len(made))
            bodies.append(message["body"])

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "server": ("gw.test", 80),
             "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"gw.test"), (b"accept", FRAMES.encode())]}
    async with application.router.lifespan_context(application):
        await application(scope, receive, send)
    assert status == [200]
    frame = ROWS * COLUMNS * 2
    assert sorted(made) == list(range(1, BIG_FRAMES + 1))
    assert made_at_first_body[0] <= 2, "the first part went out before the other frames"
    assert len(bodies) >= BIG_FRAMES
    assert max(len(b) for b in bodies) <= frame
    payload = b"".join(bodies)
    assert payload.count(b"Content-Type: application/octet-stream") == BIG_FRAMES

"""CacheFill (read-through via the cache) against the fake peer client, on the in-process cache
and on a throwaway Redis: one retrieval however many requests follow it, what the index says
afterwards, a failure passed to every follower with nothing left behind, an instance request
that waits for the running series fill, and what is not cached (unverifiable, over the cap)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite

from app.cache.backend import CacheBackend
from app.cache.memory import MemoryBackend
from app.cache.redisbackend import RedisBackend
from app.cache.singleflight import SingleFlight
from app.cache.store import GatewayCache
from app.dicomweb.refs import InstanceRef, SeriesRef
from app.dimse.received import ReceivedInstance
from app.errors import UpstreamError
from app.metrics import Metrics
from app.services.cache_fill import CacheFill
from app.services.pacs_retrieval import PacsRetrieval
from app.settings import PacsPeer
from tests.peers import RedisServer, require_binary
from tests.support.fake_client import (
    CT_IMAGE,
    EXPLICIT_LE,
    Archive,
    Call,
    FakeClient,
    Script,
    failing,
    retrieved,
    series_of,
)

pytestmark = pytest.mark.timeout(30)
STUDY, SERIES = "1.2.3", "1.2.3.4"
REF = SeriesRef(STUDY, SERIES)
UIDS = [f"{SERIES}.{n}" for n in (1, 2, 3)]


def part10(sop: str, pixels: int = 16) -> bytes:
    """A small, complete CT instance as Part-10 bytes (what a C-STORE delivers)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = EXPLICIT_LE
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, pixels // 2, 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(pixels)
    out = DicomBytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def instance(sop: str, pixels: int = 16) -> ReceivedInstance:
    return ReceivedInstance(part10(sop, pixels), CT_IMAGE, sop, EXPLICIT_LE)


class Pacs:
    """The fake archive of one series; C-GETs deliver real Part-10 instances, optionally held
    at a gate after the first one (so that requests can join the running fill)."""

    def __init__(self, pixels: dict[str, int] | None = None) -> None:
        self.archive = Archive(series_of(STUDY, SERIES, 3))
        self.pixels = pixels or {}
        self.gate: asyncio.Event | None = None
        self.broken: str = ""  # deliver this instance's bytes under another UID

    def get(self, call: Call) -> Script:
        wanted = {s for s in call.uids(0x00080018)}
        items = [instance(i.sop, self.pixels.get(i.sop, 16)) for i in self.archive.instances
                 if not wanted or i.sop in wanted]
        if self.broken:
            items = [ReceivedInstance(part10(UIDS[0]), CT_IMAGE, i.sop_instance_uid,
                                      EXPLICIT_LE) if i.sop_instance_uid == self.broken else i
                     for i in items]
        gate = self.gate
        if gate is None:
            return retrieved(*items)
        outcome = retrieved(*items).result

        async def run(sink: object) -> object:
            for n, item in enumerate(items):
                if n == 1:
                    await gate.wait()
                await sink.emit(item)  # type: ignore[attr-defined]
            return outcome

        script = Script()
        script.run = run  # type: ignore[method-assign]
        return script


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[CacheBackend]:
    if request.param == "memory":
        yield MemoryBackend(10_000_000, 2_000)
        return
    require_binary("redis-server")
    with RedisServer(tmp_path_factory.mktemp("redis-fill")) as server:
        redis = RedisBackend(server.url, max_object_bytes=2_000)
        try:
            yield redis
        finally:
            await redis.close()


def fill_over(backend: CacheBackend, pacs: Pacs, metrics: Metrics | None = None
              ) -> tuple[CacheFill, FakeClient, GatewayCache]:
    client = FakeClient(PacsPeer(name="fake", ae_title="PACS", retrieve_method="get"),
                        on_find=pacs.archive.find, on_get=pacs.get)
    metrics = metrics or Metrics()
    retrieval = PacsRetrieval(client, metrics, local_ae_title="GW")  # type: ignore[arg-type]
    cache = GatewayCache(backend, "fake", ttl=60, query_ttl=0)
    return CacheFill(retrieval, cache, SingleFlight(backend, lock_ttl=3), metrics), client, cache


async def read(fill: CacheFill, ref: SeriesRef = REF) -> list[str]:
    return [i.sop_instance_uid async for i in fill.series(ref)]


def uids(items: Iterable[ReceivedInstance]) -> list[str]:
    return [i.sop_instance_uid for i in items]


async def test_concurrent_readers_share_one_retrieval(backend: CacheBackend) -> None:
    pacs = Pacs()
    pacs.gate = asyncio.Event()
    fill, client, cache = fill_over(backend, pacs)
    readers = [asyncio.ensure_future(read(fill)) for _ in range(5)]
    await asyncio.sleep(0.2)
    pacs.gate.set()
    assert [sorted(r) for r in await asyncio.gather(*readers)] == [UIDS] * 5
    assert len(client.sent("C-GET")) == 1
    index = await cache.complete_series(SERIES)
    assert index is not None and [i[0] for i in index.instances] == UIDS
    assert await cache.get_summary(SERIES) == (3, (CT_IMAGE,))


async def test_a_complete_series_is_read_without_the_pacs(backend: CacheBackend) -> None:
    metrics = Metrics()
    fill, client, _ = fill_over(backend, Pacs(), metrics)
    assert await read(fill) == UIDS
    calls = len(client.calls)
    assert await read(fill) == UIDS
    assert len(client.calls) == calls
    assert metrics.value("cache_hits_total", kind="series") == 1


async def test_a_failed_fill_fails_every_reader_and_leaves_nothing(
        backend: CacheBackend) -> None:
    pacs = Pacs()
    fill, client, cache = fill_over(backend, pacs)
    client.on_get = lambda call: failing(UpstreamError("association aborted"),
                                         instance(UIDS[0]))
    results = await asyncio.gather(*(read(fill) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, UpstreamError) for r in results), results
    assert await cache.get_instance(SERIES, UIDS[0]) is None
    assert await cache.get_series_index(SERIES) is None


async def test_a_partial_retrieval_leaves_an_incomplete_index(backend: CacheBackend) -> None:
    pacs = Pacs()
    fill, client, cache = fill_over(backend, pacs)

    def on_get(call: Call) -> Script:
        if call.level == "SERIES":
            return retrieved(instance(UIDS[0]), instance(UIDS[1]), status=0xB000, failed=1,
                             failed_uids=[UIDS[2]])
        return retrieved(status=0xA702, completed=0, failed=1)  # the one-instance retry

    client.on_get = on_get
    assert await read(fill) == UIDS[:2]
    index = await cache.get_series_index(SERIES)
    assert index is not None and not index.complete
    assert await cache.get_summary(SERIES) is None


async def test_an_instance_request_waits_for_the_running_series_fill(
        backend: CacheBackend) -> None:
    pacs = Pacs()
    pacs.gate = asyncio.Event()
    fill, client, _ = fill_over(backend, pacs)
    series = asyncio.ensure_future(read(fill))
    await asyncio.sleep(0.2)  # the series fill holds its lock, one instance in
    single = asyncio.ensure_future(fill.instance(InstanceRef(STUDY, SERIES, UIDS[2])))
    await asyncio.sleep(0.2)
    assert not single.done()
    pacs.gate.set()
    assert (await single).sop_instance_uid == UIDS[2]
    assert sorted(await series) == UIDS
    assert len(client.sent("C-GET")) == 1


async def test_an_instance_alone_is_filled_under_its_own_lock(backend: CacheBackend) -> None:
    fill, client, cache = fill_over(backend, Pacs())
    got = await fill.instance(InstanceRef(STUDY, SERIES, UIDS[1]))
    assert got.sop_instance_uid == UIDS[1]
    [get] = client.sent("C-GET")
    assert get.level == "IMAGE"
    assert await cache.get_instance(SERIES, UIDS[1]) is not None
    assert await cache.get_series_index(SERIES) is None  # an instance says nothing of a series


async def test_an_instance_over_the_cap_is_handed_to_local_readers(
        backend: CacheBackend) -> None:
    pacs = Pacs(pixels={UIDS[1]: 4_000})  # beyond the 2,000-byte object cap
    fill, client, cache = fill_over(backend, pacs)
    assert await read(fill) == UIDS
    assert await cache.get_instance(SERIES, UIDS[1]) is None
    index = await cache.get_series_index(SERIES)
    assert index is not None and not index.complete  # the next read fills again
    assert len(client.sent("C-GET")) == 1


async def test_an_instance_failing_verification_is_not_cached(backend: CacheBackend) -> None:
    pacs = Pacs()
    pacs.broken = UIDS[2]  # its bytes are another instance's
    fill, _, cache = fill_over(backend, pacs)
    assert await read(fill) == UIDS[:2]
    assert await cache.get_instance(SERIES, UIDS[2]) is None
    index = await cache.get_series_index(SERIES)
    assert index is not None and not index.complete

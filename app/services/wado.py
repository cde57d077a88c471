"""WADO-RS transactions (instances, metadata, frames, bulk data) of one PACS.

Instances come through the cache when there is one (``cache_fill.CacheFill``: cached, or
brought by the one fill of their series), else straight from the PACS retrieval (and a client
that leaves aborts it). Transcoding happens on the way out, per instance; UIDs never change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

from pydicom.dataset import Dataset

from app.cache.singleflight import SingleFlight
from app.cache.store import GatewayCache
from app.dicomweb.bulkdata import bulk_value, decode_bulkdata_path, encode_bulkdata_path
from app.dicomweb.dicomjson import BulkDataRef, dataset_to_json, encode_json
from app.dicomweb.mediatypes import AS_STORED, OCTET_STREAM
from app.dicomweb.part10_identity import series_uid_of
from app.dicomweb.pixels import (
    Frame,
    FrameOutOfRange,
    TranscodeError,
    dataset_transfer_syntax,
    frame_count,
    get_frames,
    read_part10,
    to_wire,
    transcode_part10,
)
from app.dicomweb.rawjson import raw_dataset_to_json
from app.dicomweb.refs import InstanceRef, SeriesRef, StudyRef
from app.dicomweb.tags import PIXEL_DATA
from app.dicomweb.transfer_syntax import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    NOT_ON_THE_WIRE,
    is_lossy,
    is_video,
)
from app.dicomweb.urls import fill_base_url, instance_url, new_base_token
from app.dimse.received import ReceivedInstance
from app.dimse.status import nothing_found
from app.errors import BadRequest, NotAcceptable, NotFound
from app.metrics import Metrics
from app.services.cache_fill import CacheFill
from app.services.keyed_locks import KeyedLocks
from app.services.pacs_retrieval import PacsRetrieval, Ref, describe
from app.services.ready_batches import ready_batches

log = logging.getLogger(__name__)
METADATA_BATCH = 8
"""Most instances whose metadata is built in one thread hop and stored in one cache write."""


@dataclass(frozen=True, slots=True)
class WireInstance:
    """An instance ready for the web: Part-10 bytes in a syntax allowed on the wire."""

    data: bytes
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str


@dataclass(frozen=True, slots=True)
class MetadataItem:
    """One instance's dataset and its instance URL (under which BulkDataURIs are minted)."""

    dataset: Dataset
    instance_url: str


def bulk_uri_minter(url: str) -> Callable[[BulkDataRef], str]:
    """Mint BulkDataURIs under an instance URL; each resolves via retrieve_bulkdata."""

    def mint(ref: BulkDataRef) -> str:
        return f"{url}/bulkdata/{encode_bulkdata_path(ref.path, ref.tag)}"

    return mint


def metadata_json(data: bytes, url: str) -> bytes:
    """One instance's DICOM JSON with BulkDataURIs under ``url`` (CPU work: run in a thread)."""
    minter = bulk_uri_minter(url)
    obj = raw_dataset_to_json(data, bulk_data_uri=minter)  # None: not the common case
    if obj is None:
        obj = dataset_to_json(read_part10(data), bulk_data_uri=minter)
    return encode_json(obj)


def _metadata_of(items: list[tuple[bytes, str]]) -> list[bytes]:
    """``metadata_json`` of several (instance, URL) pairs, in one thread hop."""
    return [metadata_json(data, url) for data, url in items]


class WadoService:
    """WADO-RS for one PACS: reads through the cache when there is one."""

    def __init__(self, retrieval: PacsRetrieval, metrics: Metrics,
                 cache: GatewayCache | None = None, flights: SingleFlight | None = None) -> None:
        self._retrieval = retrieval
        self._metrics = metrics
        self._cache = cache
        self.retrieval = retrieval
        self._fills = (CacheFill(retrieval, cache, flights, metrics)
                       if cache is not None and flights is not None else None)
        self._metadata_builds = KeyedLocks()

    # -- the source of instances -------------------------------------------------------------

    async def _source(self, ref: Ref) -> AsyncIterator[tuple[str, ReceivedInstance]]:
        """(series UID, instance) for every instance under ``ref``: through the cache when
        there is one, else straight from the PACS."""
        fills = self._fills
        if fills is None:
            retrieval = self._retrieval.received(ref)
            async for item in retrieval:
                series = retrieval.series_of.get(item.sop_instance_uid) or (
                    ref.series_uid if isinstance(ref, (SeriesRef, InstanceRef))
                    else series_uid_of(item.data, item.transfer_syntax))
                yield series, item
            return
        if isinstance(ref, InstanceRef):
            yield ref.series_uid, await fills.instance(ref)
            return
        if isinstance(ref, SeriesRef):
            async for item in fills.series(ref):
                yield ref.series_uid, item
            return
        series_list = await fills.study_series(ref.study_uid)
        if not series_list:
            raise nothing_found(describe(ref))
        for series_uid in series_list:
            async for item in fills.series(SeriesRef(ref.study_uid, series_uid)):
                yield series_uid, item

    async def study_series(self, study_uid: str) -> list[str]:
        """The series of a study (through the cache when there is one)."""
        if self._fills is not None:
            return await self._fills.study_series(study_uid)
        return (await self._retrieval.list_series(study_uid))[0]

    async def warm(self, ref: SeriesRef) -> bool:
        """Fill the cache with a series (prefetch) without reading it back; False when there
        was nothing to do (no cache, or the series is cached already)."""
        return await self._fills.warm(ref) if self._fills is not None else False

    async def content_signature(self, ref: SeriesRef | StudyRef) -> list[str] | None:
        """The SOP Instance UIDs a series holds, when the cache knows it complete (for ETags);
        None otherwise (a study's content is not tracked, so it gets no ETag)."""
        if self._cache is None or not isinstance(ref, SeriesRef):
            return None
        index = await self._cache.get_series_index(ref.series_uid)
        if index is None or not index.complete:
            return None
        return sorted(i[0] for i in index.instances)

    # -- WADO-RS resources ---------------------------------------------------------------------

    async def instances(self, ref: Ref, preferences: str | None | list[str | None]
                        ) -> AsyncIterator[WireInstance]:
        """Instances under ``ref``, each in the first acceptable syntax it can be had in.

        Each preference is a UID, None (Explicit VR Little Endian, or as stored when only lossy
        pixels exist) or ``*`` (as stored); transcoding where needed, per instance."""
        wanted = preferences if isinstance(preferences, list) else [preferences]
        async for series_uid, item in self._source(ref):
            yield await self._first_possible(item, wanted, series_uid)

    async def _first_possible(self, item: ReceivedInstance, preferences: list[str | None],
                              series_uid: str) -> WireInstance:
        failure: NotAcceptable | None = None
        for wanted in preferences:
            try:
                return await self._to_syntax(item, wanted, series_uid)
            except NotAcceptable as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def _to_syntax(self, item: ReceivedInstance, wanted: str | None,
                         series_uid: str) -> WireInstance:
        target = wanted
        if wanted is None:
            target = AS_STORED if is_lossy(item.transfer_syntax) else EXPLICIT_VR_LITTLE_ENDIAN
        if target == AS_STORED and item.transfer_syntax in NOT_ON_THE_WIRE:
            data, syntax = await asyncio.to_thread(to_wire, item.data)
            return WireInstance(data, syntax, item.sop_class_uid, item.sop_instance_uid,
                                series_uid)
        if target in (AS_STORED, item.transfer_syntax):
            return WireInstance(item.data, item.transfer_syntax, item.sop_class_uid,
                                item.sop_instance_uid, series_uid)
        assert target is not None
        try:
            data = await asyncio.to_thread(transcode_part10, item.data, target)
        except TranscodeError as exc:
            raise NotAcceptable(
                f"cannot provide {item.sop_instance_uid} in {target}: {exc}") from None
        return WireInstance(data, target, item.sop_class_uid, item.sop_instance_uid, series_uid)

    async def metadata_json(self, ref: Ref, base_url: str) -> AsyncIterator[bytes]:
        """Each instance's DICOM JSON object (bytes), from the metadata cache when present.

        A series request retrieves the whole series once and fills the cache, so the frame
        requests a viewer sends next are served without PACS traffic. A study's metadata is
        its series' metadata, one series after the other, each from the cache when it can."""
        cache = self._cache
        if cache is not None and self._fills is not None and isinstance(ref, StudyRef):
            series_list = await self.study_series(ref.study_uid)
            if not series_list:
                raise nothing_found(describe(ref))
            for series_uid in series_list:
                async for part in self.metadata_json(SeriesRef(ref.study_uid, series_uid),
                                                     base_url):
                    yield part
            return
        if cache is not None and isinstance(ref, SeriesRef):
            complete, cached = await self._cached_metadata(cache, ref, base_url)
            if complete and cached is None:
                # Instances cached, metadata not: one request of this process builds it;
                # identical requests wait for it and then read the cache, instead of each
                # parsing every instance of the series at the same time. (A series still
                # being retrieved is streamed to each request as its instances arrive.)
                async with self._metadata_builds.hold(ref.series_uid):
                    complete, cached = await self._cached_metadata(cache, ref, base_url)
                    if cached is None:
                        async for part in self._built_metadata(ref, base_url):
                            yield part
                        return
            if cached is not None:
                self._metrics.inc("cache_hits_total", kind="metadata")
                for raw in cached:
                    yield raw
                return
        async for part in self._built_metadata(ref, base_url):
            yield part

    async def _cached_metadata(self, cache: GatewayCache, ref: SeriesRef,
                               base_url: str) -> tuple[bool, list[bytes] | None]:
        """Whether the series is complete in the cache, and then every instance's metadata
        when all of it is cached too."""
        index = await cache.complete_series(ref.series_uid)
        if index is None:
            return False, None
        cached = await cache.get_metadata(ref.series_uid, [i[0] for i in index.instances],
                                          base_url)
        parts = [c for c in cached if c is not None]
        return True, (parts if len(parts) == len(cached) else None)

    async def _built_metadata(self, ref: Ref, base_url: str) -> AsyncIterator[bytes]:
        """Each instance's metadata made from the instance itself (stored for the next
        request when there is a cache), a list of ready instances at a time: one thread hop
        and one cache write per list, not per instance (each is a trip through a busy loop)."""
        cache = self._cache
        batches = ready_batches(self._source(ref), METADATA_BATCH)
        async with aclosing(batches):
            async for batch in batches:
                # Cached under a token, never under this client's URL (which the next client
                # must not see); the token is replaced by each reader's own base URL.
                base = base_url if cache is None else new_base_token()
                raws = await asyncio.to_thread(_metadata_of, [
                    (item.data, instance_url(base, ref.study_uid, series_uid,
                                             item.sop_instance_uid))
                    for series_uid, item in batch])
                if cache is None:
                    for raw in raws:
                        yield raw
                    continue
                await cache.put_metadata_many(
                    [(series_uid, item.sop_instance_uid, raw)
                     for (series_uid, item), raw in zip(batch, raws, strict=True)], base)
                for raw in raws:
                    yield fill_base_url(raw, base, base_url)

    async def encoded_series_metadata(self, ref: SeriesRef, base_url: str, variant: str,
                                      encode: Callable[[bytes], Awaitable[bytes]]
                                      ) -> bytes | None:
        """A warm series' whole DICOM JSON metadata response, encoded by ``encode`` (e.g.
        compressed) once and kept under ``variant`` (which names the base URL, the coding and
        the content), so that later requests send the stored bytes; None when the series is
        not complete in the cache (the caller streams it instead)."""
        cache = self._cache
        if cache is None:
            return None
        body = await cache.get_encoded_metadata(ref.series_uid, variant)
        if body is not None:
            self._metrics.inc("cache_hits_total", kind="encoded_metadata")
            return body
        index = await cache.complete_series(ref.series_uid)
        if index is None:
            return None
        parts = await cache.get_metadata(ref.series_uid, [i[0] for i in index.instances],
                                         base_url)
        if not parts or any(p is None for p in parts):
            return None
        self._metrics.inc("cache_misses_total", kind="encoded_metadata")
        body = await encode(b"[" + b",".join(p for p in parts if p is not None) + b"]")
        await cache.put_encoded_metadata(ref.series_uid, variant, body)
        return body

    async def metadata_datasets(self, ref: Ref, base_url: str) -> AsyncIterator[MetadataItem]:
        """Each instance's dataset with its instance URL (for the XML representation)."""
        async for series_uid, item in self._source(ref):
            ds = await asyncio.to_thread(read_part10, item.data)
            yield MetadataItem(ds, instance_url(base_url, ref.study_uid, series_uid,
                                                item.sop_instance_uid))

    async def instance(self, ref: InstanceRef) -> ReceivedInstance:
        """One instance as stored (from the cache, or retrieved and cached)."""
        return await self._single(ref)

    def each_instance(self, ref: Ref) -> AsyncIterator[tuple[str, ReceivedInstance]]:
        """(series UID, instance as stored) for every instance under ``ref``."""
        return self._source(ref)

    async def _single(self, ref: InstanceRef) -> ReceivedInstance:
        async for _, item in self._source(ref):
            if item.sop_instance_uid == ref.sop_instance_uid:
                return item
        raise NotFound(f"{describe(ref)} was not among what the PACS sent")

    async def frames(self, ref: InstanceRef, numbers: list[int], wanted: str | None
                     ) -> AsyncIterator[Frame]:
        """The listed 1-based frames of an instance, in ``wanted`` (None or ``*``: as stored),
        one at a time: each is sliced (or transcoded) only when the one before has been taken,
        so a response holds one frame besides the instance. Every number is checked against
        the instance (NotFound) before the first frame."""
        item = await self._single(ref)
        ds = await asyncio.to_thread(_pixel_dataset, item.data, numbers)
        async for frame in _each_frame(ds, numbers, wanted):
            yield frame

    async def bulkdata(self, ref: InstanceRef, reference: str, wanted: str | None
                       ) -> AsyncIterator[Frame]:
        """The value a BulkDataURI names: pixel data as frames (one at a time), anything else
        as one part."""
        try:
            path, tag = decode_bulkdata_path(reference)
        except ValueError as exc:
            raise BadRequest(f"bulk data reference {reference!r} is malformed: {exc}") from None
        item = await self._single(ref)
        ds = await asyncio.to_thread(read_part10, item.data)
        if not path and tag == PIXEL_DATA:
            numbers = list(range(1, frame_count(ds) + 1))
            _check_frames(ds, numbers)
            async for frame in _each_frame(ds, numbers, wanted):
                yield frame
            return
        for value in await asyncio.to_thread(_bulk_of, ds, path, tag):
            yield value


def _check_frames(ds: Dataset, numbers: list[int]) -> None:
    """NotFound unless the dataset has pixel data holding every frame in ``numbers``."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise NotFound("the instance has no pixel data, hence no frames")
    total = frame_count(ds)
    beyond = [n for n in numbers if not 1 <= n <= total]
    if beyond:
        raise NotFound(f"frame {beyond[0]} is out of range: the instance has {total}")


def _pixel_dataset(data: bytes, numbers: list[int]) -> Dataset:
    """The instance parsed, once its frames ``numbers`` are known to exist (CPU: a thread)."""
    ds = read_part10(data)
    _check_frames(ds, numbers)
    return ds


async def _each_frame(ds: Dataset, numbers: list[int], wanted: str | None
                      ) -> AsyncIterator[Frame]:
    """Frames of ``ds`` one by one, each computed in a worker thread when asked for."""
    if is_video(dataset_transfer_syntax(ds)):  # one stream, however many frames are named
        numbers = numbers[:1]
    for number in numbers:
        (frame,) = await asyncio.to_thread(_frames_of, ds, [number], wanted)
        yield frame


def _frames_of(ds: Dataset, numbers: list[int], wanted: str | None) -> list[Frame]:
    try:
        return get_frames(ds, numbers, transfer_syntax=None if wanted == AS_STORED else wanted)
    except FrameOutOfRange as exc:
        raise NotFound(str(exc)) from None
    except TranscodeError as exc:
        raise NotAcceptable(str(exc)) from None


def _bulk_of(ds: Dataset, path: tuple[tuple[int, int], ...], tag: int) -> list[Frame]:
    try:
        value = bulk_value(ds, path, tag)
    except (KeyError, IndexError) as exc:
        raise NotFound(f"no such bulk data element: {exc}") from None
    if isinstance(value, list):
        return [Frame(i + 1, v, OCTET_STREAM, str(ds.file_meta.TransferSyntaxUID))
                for i, v in enumerate(value)]
    return [Frame(1, value, OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN)]

"""WADO-RS answers (instances, metadata, frames, bulk data) from the cache or the PACS.

With a cache, every request reads through it: a complete series is served with no DIMSE
traffic; otherwise one fill per series (or instance) runs under a single-flight lock, writes
each verified instance to the cache as it arrives, and every waiting request streams the
instances as they land. Without a cache, instances stream straight from the PACS retrieval (and
a client that leaves aborts it). Transcoding happens on the way out; UIDs never change.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.dataset import Dataset

from app.cache.singleflight import FillContext, FillEvent, SingleFlight
from app.cache.store import CachedInstance, GatewayCache, SeriesIndex
from app.cache.write_behind import WriteBehind
from app.dicomweb.bulkdata import bulk_value, decode_bulkdata_path, encode_bulkdata_path
from app.dicomweb.dicomjson import BulkDataRef, dataset_to_json, encode_json
from app.dicomweb.integrity import Malformed, top_level_text, walk_part10
from app.dicomweb.mediatypes import AS_STORED, OCTET_STREAM
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
from app.dicomweb.tags import PIXEL_DATA, SERIES_INSTANCE_UID
from app.dicomweb.transfer_syntax import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    NOT_ON_THE_WIRE,
    is_lossy,
    is_video,
)
from app.dicomweb.urls import fill_base_url, instance_url, new_base_token
from app.dimse.received import ReceivedInstance
from app.dimse.status import nothing_found
from app.errors import (
    BadRequest,
    GatewayError,
    NotAcceptable,
    NotFound,
)
from app.metrics import Metrics
from app.services.fill_errors import error_from_event
from app.services.fresh import FreshInstances
from app.services.retrieve import Ref, RetrieveService, Summary, describe

log = logging.getLogger(__name__)
HANDOFF_GRACE_S = 10.0
READ_AHEAD = 4


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


def verify_instance(item: ReceivedInstance) -> bool:
    """A received instance is complete and well-formed and is the instance its C-STORE said it
    was: walked element by element where the syntax allows (microseconds), else parsed."""
    try:
        walked = walk_part10(item.data, item.transfer_syntax)
    except Malformed as exc:
        log.warning("instance %s is malformed: %s", item.sop_instance_uid, exc)
        return False
    if walked is not None:
        return walked == item.sop_instance_uid
    try:
        ds = dcmread(io.BytesIO(item.data), stop_before_pixels=True)
    except Exception:
        return False
    return str(ds.get("SOPInstanceUID", "")) == item.sop_instance_uid


def series_uid_of(item: ReceivedInstance) -> str:
    """The SeriesInstanceUID of a received instance: walked to in microseconds where the syntax
    allows, else read with pydicom (header only)."""
    try:
        walked = top_level_text(item.data, item.transfer_syntax, SERIES_INSTANCE_UID)
    except Malformed:
        walked = None
    if walked:
        return walked
    data = item.data
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True,
                     specific_tags=["SeriesInstanceUID"])
    except Exception:
        return ""
    return str(ds.get("SeriesInstanceUID", ""))


def _received(item: CachedInstance) -> ReceivedInstance:
    return ReceivedInstance(item.data, item.sop_class_uid, item.sop_instance_uid,
                            item.transfer_syntax)


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


class WadoService:
    """WADO-RS for one PACS: reads through the cache when there is one."""

    def __init__(self, retrieval: RetrieveService, metrics: Metrics,
                 cache: GatewayCache | None = None, flights: SingleFlight | None = None) -> None:
        self._retrieval = retrieval
        self._metrics = metrics
        self._cache = cache
        self._flights = flights
        self._peer = retrieval.peer
        self.retrieval = retrieval
        # Instances a fill could not cache (over the size cap), for followers in this process.
        self._handoff: dict[tuple[str, str], ReceivedInstance] = {}
        # Instances a fill of this process just cached: its local readers take them from here.
        self._fresh = FreshInstances()
        self._writing: set[WriteBehind] = set()  # fills of this process writing to the cache

    # -- the source of instances -------------------------------------------------------------

    async def _source(self, ref: Ref) -> AsyncIterator[tuple[str, ReceivedInstance]]:
        """(series UID, instance) for every instance under ``ref``."""
        if self._cache is None or self._flights is None:
            series_of: dict[str, str] = {}
            async for item in self._retrieval.received(ref, series_of):
                series = series_of.get(item.sop_instance_uid) or (
                    ref.series_uid if isinstance(ref, (SeriesRef, InstanceRef))
                    else series_uid_of(item))
                yield series, item
            return
        if isinstance(ref, InstanceRef):
            yield ref.series_uid, await self._cached_instance(ref)
            return
        if isinstance(ref, SeriesRef):
            async for item in self._cached_series(ref):
                yield ref.series_uid, item
            return
        series_list = await self.study_series(ref.study_uid)
        if not series_list:
            raise nothing_found(describe(ref))
        for series_uid in series_list:
            async for item in self._cached_series(SeriesRef(ref.study_uid, series_uid)):
                yield series_uid, item

    async def study_series(self, study_uid: str) -> list[str]:
        """The series of a study: from the cache when a complete C-FIND listed them before,
        else from the PACS (one SERIES-level C-FIND), cached when that answer was complete."""
        cache = self._cache
        if cache is not None:
            cached = await cache.get_study_series(study_uid)
            if cached:
                self._metrics.inc("cache_hits_total", kind="study_series")
                return cached
            self._metrics.inc("cache_misses_total", kind="study_series")
        uids, complete = await self._retrieval.list_series(study_uid)
        if cache is not None and complete and uids:
            await cache.put_study_series(study_uid, uids)
        return uids

    async def _cached_series(self, ref: SeriesRef) -> AsyncIterator[ReceivedInstance]:
        cache, flights = self._cache, self._flights
        assert cache is not None and flights is not None
        sent: set[str] = set()
        index = await cache.complete_series(ref.series_uid)
        if index is not None:
            self._metrics.inc("cache_hits_total", kind="series")
            all_read = True
            async for sop, item in self._read_ahead(ref.series_uid,
                                                    [i[0] for i in index.instances]):
                if item is None:
                    all_read = False  # evicted meanwhile: the rest comes from a fill
                    break
                sent.add(sop)
                yield _received(item)
            if all_read:
                return
        self._metrics.inc("cache_misses_total", kind="series")

        async def complete() -> bool:
            return await cache.complete_series(ref.series_uid) is not None

        events = flights.follow(cache.keys.lock(ref.series_uid),
                                lambda token: cache.keys.events(ref.series_uid, token),
                                functools.partial(self._fill, ref), complete)
        async for event in events:
            if event.kind == "instance" and event.sop not in sent:
                sent.add(event.sop)
                yield await self._instance_after_fill(ref, event.sop)
            elif event.kind == "failed":
                raise error_from_event(event)
            elif event.kind == "done":
                final = await cache.get_series_index(ref.series_uid)
                for sop, _, _ in (final.instances if final else ()):
                    if sop not in sent:
                        sent.add(sop)
                        yield await self._instance_after_fill(ref, sop)
                if not sent:
                    raise nothing_found(describe(ref))

    async def warm(self, ref: SeriesRef) -> bool:
        """Fill the cache with a series (prefetch) without reading it back; False when there
        was nothing to do (no cache, or the series is cached already)."""
        cache, flights = self._cache, self._flights
        if cache is None or flights is None:
            return False
        if await cache.complete_series(ref.series_uid) is not None:
            return False

        async def complete() -> bool:
            return await cache.complete_series(ref.series_uid) is not None

        async for event in flights.follow(cache.keys.lock(ref.series_uid),
                                          lambda token: cache.keys.events(ref.series_uid, token),
                                          functools.partial(self._fill, ref), complete):
            if event.kind in ("done", "failed"):
                break
        return True

    async def _read_ahead(self, series: str, sops: list[str]
                          ) -> AsyncIterator[tuple[str, CachedInstance | None]]:
        """Cached instances in order, fetching the next few while the current one is sent (a
        shared cache costs a round trip per instance otherwise)."""
        cache = self._cache
        assert cache is not None
        pending: list[tuple[str, asyncio.Task[CachedInstance | None]]] = []
        upcoming = iter(sops)
        try:
            for sop in upcoming:
                pending.append((sop, asyncio.ensure_future(cache.get_instance(series, sop))))
                if len(pending) > READ_AHEAD:
                    break
            while pending:
                sop, task = pending.pop(0)
                nxt = next(upcoming, None)
                if nxt is not None:
                    pending.append((nxt, asyncio.ensure_future(cache.get_instance(series, nxt))))
                yield sop, await task
        finally:
            for _, task in pending:
                task.cancel()

    async def _instance_after_fill(self, ref: SeriesRef, sop: str) -> ReceivedInstance:
        """An instance a fill announced: handed over directly when the fill ran in this
        process, else read from the cache; fetched on its own if the cache could not keep it."""
        assert self._cache is not None
        fresh = self._fresh.get(ref.series_uid, sop) or self._being_written(ref.series_uid, sop)
        if fresh is not None:
            return fresh
        item = await self._cache.get_instance(ref.series_uid, sop)
        if item is not None:
            return _received(item)
        handed = self._handoff.get((ref.series_uid, sop))
        if handed is not None:
            return handed
        log.info("instance %s announced but not in the cache (size cap or eviction)", sop)
        return await self._direct_instance(InstanceRef(ref.study_uid, ref.series_uid, sop))

    def _being_written(self, series_uid: str, sop: str) -> ReceivedInstance | None:
        """An instance a fill of this process has queued for the cache but not yet written."""
        for writer in self._writing:
            if writer.series == series_uid and (item := writer.pending(sop)) is not None:
                return _received(item)
        return None

    async def _direct_instance(self, ref: InstanceRef) -> ReceivedInstance:
        found = [item async for item in self._retrieval.received(ref)]
        for item in found:
            if item.sop_instance_uid == ref.sop_instance_uid:
                return item
        raise NotFound(f"{describe(ref)} was not among what the PACS sent")

    async def _cached_instance(self, ref: InstanceRef) -> ReceivedInstance:
        cache, flights = self._cache, self._flights
        assert cache is not None and flights is not None
        fresh = (self._fresh.get(ref.series_uid, ref.sop_instance_uid)
                 or self._being_written(ref.series_uid, ref.sop_instance_uid))
        if fresh is not None:
            self._metrics.inc("cache_hits_total", kind="instance")
            return fresh
        item = await cache.get_instance(ref.series_uid, ref.sop_instance_uid)
        if item is not None:
            self._metrics.inc("cache_hits_total", kind="instance")
            return _received(item)
        self._metrics.inc("cache_misses_total", kind="instance")
        # A fill of the whole series may be running (e.g. prefetch by a metadata request):
        # wait for our instance rather than starting another retrieval.
        series_lock = cache.keys.lock(ref.series_uid)
        token = await cache.backend.lock_holder(series_lock)
        if token is not None:
            key = cache.keys.events(ref.series_uid, token)
            position = 0
            while await cache.backend.lock_holder(series_lock) == token:
                events = await cache.backend.wait_events(key, position, 5.0)
                position += len(events)
                decoded = [FillEvent.decode(e) for e in events]
                if any(e.kind == "instance" and e.sop == ref.sop_instance_uid for e in decoded):
                    break
                if any(e.kind in ("done", "failed") for e in decoded):
                    break
            item = await cache.get_instance(ref.series_uid, ref.sop_instance_uid)
            if item is not None:
                return _received(item)

        async def present() -> bool:
            return await cache.backend.exists(
                [cache.keys.instance(ref.series_uid, ref.sop_instance_uid)]) == 1

        instance_fill = flights.follow(
            cache.keys.lock(ref.series_uid, ref.sop_instance_uid),
            lambda t: cache.keys.events(ref.series_uid, t, ref.sop_instance_uid),
            functools.partial(self._fill, ref), present)
        async for event in instance_fill:
            if event.kind == "failed":
                raise error_from_event(event)
            if event.kind == "done":
                break
        item = await cache.get_instance(ref.series_uid, ref.sop_instance_uid)
        if item is not None:
            return _received(item)
        handed = self._handoff.get((ref.series_uid, ref.sop_instance_uid))
        return handed if handed is not None else await self._direct_instance(ref)

    async def _fill(self, ref: SeriesRef | InstanceRef, ctx: FillContext) -> None:
        """Retrieve ``ref`` from the PACS into the cache, announcing each verified instance."""
        cache = self._cache
        assert cache is not None
        handed: list[tuple[str, str]] = []
        items: list[tuple[str, str, str]] = []
        report: dict[str, int] = {}
        loop = asyncio.get_running_loop()
        by_get = isinstance(ref, SeriesRef) and self._peer.retrieve_method != "move"

        def hand_over(item: CachedInstance) -> None:  # too big to cache: for local followers
            handed.append((ref.series_uid, item.sop_instance_uid))
            self._handoff[handed[-1]] = _received(item)

        writer = WriteBehind(cache, ref.series_uid, ctx, on_declined=hand_over)
        self._writing.add(writer)
        try:
            known = None
            if by_get:
                stored = await cache.get_summary(ref.series_uid)
                known = Summary(*stored) if stored is not None else None
            async for item in self._retrieval.received(ref, report=report, known=known):
                if not verify_instance(item):
                    log.warning("instance %s from PACS %s failed verification; not cached",
                                item.sop_instance_uid, self._peer.name)
                    continue
                self._fresh.put(ref.series_uid, item)
                items.append((item.sop_instance_uid, item.sop_class_uid, item.transfer_syntax))
                await writer.add(CachedInstance(item.sop_instance_uid, item.sop_class_uid,
                                                item.transfer_syntax, item.data))
            await writer.finish()
            written = writer.written
            if isinstance(ref, SeriesRef):
                complete = (report.get("received") == report.get("expected") == len(written)
                            and not report.get("failed"))
                await cache.put_series_index(
                    SeriesIndex(ref.study_uid, ref.series_uid, complete, tuple(items)))
                if by_get and complete:  # what arrived, verified: the next fill needs no C-FIND
                    await cache.put_summary(ref.series_uid, len(items),
                                            sorted({i[1] for i in items}))
                elif by_get:  # a summary that did not match what the PACS sent is dropped
                    await cache.backend.delete(cache.keys.summary(ref.series_uid))
            await ctx.publish(FillEvent("done"))
        except GatewayError as exc:
            if exc.detail != exc.message:  # what the clients will not be told (PACS address)
                log.warning("cache fill of %s failed: %s", describe(ref), exc.detail)
            writer.stop()
            await writer.settle()
            if writer.written:  # a failed retrieval leaves no partial entry behind
                self._fresh.forget(ref.series_uid, writer.written)
                await cache.backend.delete(
                    *[cache.keys.instance(ref.series_uid, s) for s in writer.written])
            await ctx.publish(FillEvent("failed", http_status=exc.http_status,
                                        dimse_status=exc.dimse_status, message=exc.message))
        finally:
            writer.stop()
            self._writing.discard(writer)
            for key in handed:  # followers have had the fill's events; keep briefly for laggards
                loop.call_later(HANDOFF_GRACE_S, self._handoff.pop, key, None)

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
        if cache is not None and self._flights is not None and isinstance(ref, StudyRef):
            series_list = await self.study_series(ref.study_uid)
            if not series_list:
                raise nothing_found(describe(ref))
            for series_uid in series_list:
                async for part in self.metadata_json(SeriesRef(ref.study_uid, series_uid),
                                                     base_url):
                    yield part
            return
        if cache is not None and isinstance(ref, SeriesRef):
            index = await cache.complete_series(ref.series_uid)
            if index is not None:
                sops = [i[0] for i in index.instances]
                cached = await cache.get_metadata(ref.series_uid, sops, base_url)
                if all(c is not None for c in cached):
                    self._metrics.inc("cache_hits_total", kind="metadata")
                    for raw in cached:
                        assert raw is not None
                        yield raw
                    return
        async for series_uid, item in self._source(ref):
            if cache is None:
                url = instance_url(base_url, ref.study_uid, series_uid, item.sop_instance_uid)
                yield await asyncio.to_thread(metadata_json, item.data, url)
                continue
            # Cached under a token, never under this client's URL (which the next client
            # must not see); the token is replaced by each reader's own base URL.
            token = new_base_token()
            url = instance_url(token, ref.study_uid, series_uid, item.sop_instance_uid)
            raw = await asyncio.to_thread(metadata_json, item.data, url)
            await cache.put_metadata(series_uid, item.sop_instance_uid, raw, token)
            yield fill_base_url(raw, token, base_url)

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

"""Rendered images and thumbnails (PS3.18 10.4.1.1.4, 10.4.1.1.6) and WADO-URI rendering, built
on the WADO-RS service: instances come through its cache, rendering runs in worker threads.

Thumbnails pick a representative instance with a C-FIND (through the QIDO service) and
retrieve only that one: the middle instance (by Instance Number) of a series, and for a study
the middle instance of its first series (by Series Number) holding images.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from pydicom.dataset import Dataset

from app.dicomweb.attributes import QueryLevel
from app.dicomweb.pixels import FrameOutOfRange, frame_count, read_part10
from app.dicomweb.refs import InstanceRef, SeriesRef, StudyRef
from app.dicomweb.render import (
    NotRenderable,
    RenderParameterError,
    RenderParams,
    has_pixels,
    render_frames,
)
from app.dicomweb.search import parse_search
from app.dimse.received import ReceivedInstance
from app.dimse.status import nothing_found
from app.errors import BadRequest, NotAcceptable, NotFound
from app.services.federated_query import FederatedQuery
from app.services.federated_wado import FederatedWado
from app.services.pacs_retrieval import describe
from app.services.query import QueryService
from app.services.wado import WadoService

log = logging.getLogger(__name__)

#: Modalities of series that hold no images (structured reports, presentation states, key
#: object selections, documents, registrations...): never chosen for a study thumbnail.
NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "DOC", "REG", "RTSTRUCT", "RTPLAN",
                                  "RTRECORD", "FID", "AU", "ECG", "HD", "PLAN"})
#: How many instances of a series are tried (middle first) before a thumbnail gives up.
THUMBNAIL_ATTEMPTS = 5


class FrameNotFound(NotFound):
    """A requested frame number is beyond the instance's Number of Frames."""


@dataclass(frozen=True, slots=True)
class RenderedImage:
    """One rendered image and the instance (and frame) it shows."""

    data: bytes
    media_type: str
    series_uid: str
    sop_instance_uid: str
    frame: int | None = None


def _render(data: bytes, frames: list[int] | None, params: RenderParams,
            representative: bool) -> bytes:
    """Parse and render (CPU work, run in a thread). ``frames`` None: frame 1, or all frames
    as an animation for GIF; the middle frame when ``representative`` (thumbnails)."""
    ds = read_part10(data)
    if not has_pixels(ds):
        raise NotRenderable("the instance has no pixel data")
    if frames is None:
        total = frame_count(ds)
        if representative:
            frames = [(total + 1) // 2]
        elif params.media_type == "image/gif":
            frames = list(range(1, total + 1))
        else:
            frames = [1]
    return render_frames(ds, frames, params)


async def render_instance(item: ReceivedInstance, frames: list[int] | None,
                          params: RenderParams, *, representative: bool = False) -> bytes:
    """Render a received instance in a worker thread; gateway errors for every failure."""
    try:
        return await asyncio.to_thread(_render, item.data, frames, params, representative)
    except FrameOutOfRange as exc:
        raise FrameNotFound(str(exc)) from None
    except RenderParameterError as exc:
        raise BadRequest(str(exc)) from None
    except NotRenderable as exc:
        raise NotAcceptable(
            f"{item.sop_instance_uid} cannot be rendered as {params.media_type}: {exc}"
        ) from None


def _number(ds: Dataset, keyword: str) -> int:
    try:
        return int(ds.get(keyword) or 0)
    except (TypeError, ValueError):
        return 0


def middle_first(items: list[Dataset], keyword: str) -> list[Dataset]:
    """``items`` ordered by ``keyword`` (a number), then reordered middle first, alternating
    outwards, so the most representative candidate comes first."""
    ordered = sorted(items, key=lambda ds: (_number(ds, keyword), str(ds.get("SOPInstanceUID"))))
    if not ordered:
        return []
    middle = (len(ordered) - 1) // 2
    out = [ordered[middle]]
    for step in range(1, len(ordered)):
        for index in (middle + step, middle - step):
            if 0 <= index < len(ordered):
                out.append(ordered[index])
    return out


class RenderService:
    """Rendered resources and thumbnails for one PACS."""

    def __init__(self, wado: WadoService | FederatedWado,
                 query: QueryService | FederatedQuery) -> None:
        self._wado = wado
        self._query = query

    async def rendered_instance(self, ref: InstanceRef, params: RenderParams,
                                frames: list[int] | None = None) -> RenderedImage:
        """One instance (or the listed frames of it) as one image."""
        item = await self._wado.instance(ref)
        data = await render_instance(item, frames, params)
        frame = frames[0] if frames and len(frames) == 1 else None
        return RenderedImage(data, params.media_type, ref.series_uid, ref.sop_instance_uid,
                             frame)

    async def rendered_frames(self, ref: InstanceRef, numbers: list[int],
                              params: RenderParams) -> AsyncGenerator[RenderedImage, None]:
        """Each listed frame as its own image (the instance is retrieved once)."""
        item = await self._wado.instance(ref)
        for number in numbers:
            data = await render_instance(item, [number], params)
            yield RenderedImage(data, params.media_type, ref.series_uid, ref.sop_instance_uid,
                                number)

    async def rendered_instances(self, ref: StudyRef | SeriesRef, params: RenderParams
                                 ) -> AsyncGenerator[RenderedImage, None]:
        """Every image instance under ``ref`` (its first frame), as the instances arrive;
        instances without pixel data are skipped. NotAcceptable when none can be rendered."""
        rendered = 0
        async for series_uid, item in self._wado.each_instance(ref):
            try:
                data = await render_instance(item, [1], params)
            except NotAcceptable as exc:
                log.info("rendered %s: skipping %s", describe(ref), exc.detail)
                continue
            rendered += 1
            yield RenderedImage(data, params.media_type, series_uid, item.sop_instance_uid, 1)
        if not rendered:
            raise NotAcceptable(f"nothing in {describe(ref)} can be rendered as an image")

    async def thumbnail(self, ref: StudyRef | SeriesRef | InstanceRef, params: RenderParams,
                        base_url: str) -> RenderedImage:
        """One small image standing for ``ref``: the middle frame of an instance, the middle
        image instance of a series, the first image series of a study."""
        if isinstance(ref, InstanceRef):
            item = await self._wado.instance(ref)
            data = await render_instance(item, None, params, representative=True)
            return RenderedImage(data, params.media_type, ref.series_uid, ref.sop_instance_uid)
        if isinstance(ref, SeriesRef):
            return await self._series_thumbnail(ref, params, base_url)
        series = await self._search(QueryLevel.SERIES, base_url, ref.study_uid)
        if not series:
            raise nothing_found(describe(ref))
        candidates = sorted(
            (s for s in series if str(s.get("Modality", "")).upper() not in NON_IMAGE_MODALITIES),
            key=lambda s: (_number(s, "SeriesNumber"), str(s.get("SeriesInstanceUID"))))
        for ds in candidates:
            try:
                return await self._series_thumbnail(
                    SeriesRef(ref.study_uid, str(ds.SeriesInstanceUID)), params, base_url)
            except (NotAcceptable, NotFound) as exc:
                log.info("thumbnail of %s: series %s skipped: %s", describe(ref),
                         ds.get("SeriesInstanceUID"), exc.detail)
        raise NotAcceptable(f"no series of {describe(ref)} holds an image for a thumbnail")

    async def _series_thumbnail(self, ref: SeriesRef, params: RenderParams,
                                base_url: str) -> RenderedImage:
        found = await self._search(QueryLevel.IMAGE, base_url, ref.study_uid, ref.series_uid)
        if not found:
            raise nothing_found(describe(ref))
        images = [ds for ds in found if ds.get("Rows") not in (None, "", 0)] or found
        for ds in middle_first(images, "InstanceNumber")[:THUMBNAIL_ATTEMPTS]:
            instance = InstanceRef(ref.study_uid, ref.series_uid, str(ds.SOPInstanceUID))
            try:
                item = await self._wado.instance(instance)
                data = await render_instance(item, None, params, representative=True)
            except NotAcceptable as exc:
                log.info("thumbnail of %s: %s", describe(ref), exc.detail)
                continue
            return RenderedImage(data, params.media_type, ref.series_uid,
                                 instance.sop_instance_uid)
        raise NotAcceptable(f"no instance of {describe(ref)} can be rendered as a thumbnail")

    async def _search(self, level: QueryLevel, base_url: str, study_uid: str,
                      series_uid: str | None = None) -> list[Dataset]:
        keys = [("includefield", "Modality,SeriesNumber")] if level == QueryLevel.SERIES else []
        query = parse_search(keys, level=level, study_uid=study_uid, series_uid=series_uid,
                             default_limit=10_000, max_limit=10_000)
        result = await self._query.search(query, base_url)
        return result.datasets

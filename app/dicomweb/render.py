"""Rendering of DICOM image frames to JPEG, PNG or GIF for WADO-RS rendered resources and WADO-URI.

Pure functions: Dataset + 1-based frame number + RenderParams -> image bytes. The grayscale
pipeline follows PS3.4 N.2: Modality LUT (rescale or LUT, pydicom), then VOI (the window asked
for, else the instance's window or VOI LUT, else the frame's full range), then MONOCHROME1
inversion; colour frames are decoded to RGB (YBR_* converted, palettes applied). Then the source
region is cropped and scaled to the viewport (PS3.18 8.3.5.1.3, 9.x region/rows/columns), and the
8-bit result encoded with Pillow. Nothing patient-related is ever written into the image.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import SupportsFloat, SupportsIndex

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset

from app.dicomweb.mediatypes import MULTIPART_RELATED, MediaRange, Offer, negotiate
from app.dicomweb.numbers import NotANumber, NumberTooLong, parse_integer, preview
from app.dicomweb.pixels import FrameOutOfRange, dataset_transfer_syntax, frame_count
from app.dicomweb.tags import PIXEL_DATA, PIXEL_DATA_TAGS

__all__ = [
    "GIF",
    "JPEG",
    "MAX_ANIMATION_FRAMES",
    "MAX_OUTPUT_SIDE",
    "PNG",
    "RENDERED_OFFERS",
    "FrameOutOfRange",
    "NotRenderable",
    "RenderParameterError",
    "RenderParams",
    "Region",
    "SourceRegion",
    "Viewport",
    "Window",
    "WindowFunction",
    "display_frame",
    "encode_image",
    "fit_size",
    "has_pixels",
    "is_dicom_media_range",
    "negotiate_rendered",
    "parse_quality",
    "parse_region",
    "parse_viewport",
    "parse_window",
    "render_frame",
    "render_frames",
]

JPEG = "image/jpeg"
PNG = "image/png"
GIF = "image/gif"

#: Rendered media types for single images, default first (PS3.18 Table 8.7.4-1).
RENDERED_OFFERS: tuple[Offer, ...] = (Offer(JPEG), Offer(PNG), Offer(GIF))

#: Largest width or height the gateway renders (a guard against absurd viewports).
MAX_OUTPUT_SIDE = 4096
#: Most frames an animated GIF of a multi-frame instance holds (the first ones).
MAX_ANIMATION_FRAMES = 512
DEFAULT_JPEG_QUALITY = 90
_PIL_FORMAT = {JPEG: "JPEG", PNG: "PNG", GIF: "GIF"}
_DICOM_TYPES = ("application/dicom", "application/dicom+json", "application/dicom+xml",
                "application/octet-stream")


class RenderParameterError(ValueError):
    """A rendering parameter is malformed or does not fit the image (HTTP 400)."""


class NotRenderable(ValueError):
    """The instance has no pixel data the gateway can render (HTTP 406)."""


class WindowFunction(StrEnum):
    """VOI LUT Function (0028,1056) values, as spelled in the ``window`` parameter
    (PS3.18 8.3.5.1.4; PS3.3 C.11.2.1.2)."""

    LINEAR = "linear"
    LINEAR_EXACT = "linear-exact"
    SIGMOID = "sigmoid"


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window: centre, width and function, in modality (e.g. Hounsfield) units."""

    center: float
    width: float
    function: WindowFunction = WindowFunction.LINEAR


@dataclass(frozen=True, slots=True)
class SourceRegion:
    """A source rectangle in image pixels (PS3.18 viewport sx, sy, sw, sh); a negative width
    or height flips the region horizontally or vertically. None means up to the image edge."""

    x: int = 0
    y: int = 0
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class Viewport:
    """The output box the (cropped) image is scaled to fit, keeping its aspect ratio.

    ``width``/``height`` None means "derive from the other side" (WADO-URI rows/columns);
    ``upscale`` False keeps images smaller than the box at their size (thumbnails)."""

    width: int | None
    height: int | None
    source: SourceRegion | None = None
    upscale: bool = True


@dataclass(frozen=True, slots=True)
class Region:
    """A WADO-URI region: normalised coordinates 0..1 of the top-left and bottom-right corners."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float


@dataclass(frozen=True, slots=True)
class RenderParams:
    """How to render: output media type, JPEG quality, window, region, viewport, ICC profile."""

    media_type: str = JPEG
    quality: int | None = None
    window: Window | None = None
    region: Region | None = None
    viewport: Viewport | None = None
    embed_icc_profile: bool = False


# -- parameter parsing (PS3.18 8.3.5.1 and chapter 9) ----------------------------------------


_MAX_DIGITS = 9  # far beyond any image side or source offset; int() stays cheap


def _number(text: str, what: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise RenderParameterError(f"{what} {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise RenderParameterError(f"{what} must be finite")
    return value


def _integer(text: str, what: str) -> int:
    try:
        return parse_integer(text, max_digits=_MAX_DIGITS, signed=True)
    except NotANumber:
        raise RenderParameterError(f"{what} {preview(text.strip())} is not an integer") from None
    except NumberTooLong:
        raise RenderParameterError(f"{what} {preview(text.strip())} is too large") from None


def check_window(window: Window) -> Window:
    """``window`` if its width suits its function: at least 1 for LINEAR, above 0 otherwise
    (PS3.3 C.11.2.1.2)."""
    if window.function == WindowFunction.LINEAR and window.width < 1:
        raise RenderParameterError("window width must be at least 1 for the linear function")
    if window.width <= 0:
        raise RenderParameterError("window width must be greater than 0")
    return window


def parse_window(text: str) -> Window:
    """``center,width[,function]`` (PS3.18 8.3.5.1.4); function is linear (the default),
    linear-exact or sigmoid, in any case."""
    pieces = text.split(",")
    if len(pieces) not in (2, 3):
        raise RenderParameterError("window must be center,width,function")
    function = WindowFunction.LINEAR
    if len(pieces) == 3:
        try:
            function = WindowFunction(pieces[2].strip().lower().replace("_", "-"))
        except ValueError:
            raise RenderParameterError(
                f"window function {pieces[2].strip()!r} is not linear, linear-exact or sigmoid"
            ) from None
    return check_window(Window(_number(pieces[0], "window center"),
                               _number(pieces[1], "window width"), function))


def parse_viewport(text: str, *, allow_source: bool = True) -> Viewport:
    """``vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3). The source values may be empty (defaults:
    0, 0 and up to the image edge); only ``vw,vh`` when ``allow_source`` is False (thumbnails)."""
    pieces = text.split(",")
    if len(pieces) == 2 or (allow_source and len(pieces) == 6):
        width = _integer(pieces[0], "viewport width")
        height = _integer(pieces[1], "viewport height")
    else:
        expected = "vw,vh,sx,sy,sw,sh or vw,vh" if allow_source else "vw,vh"
        raise RenderParameterError(f"viewport must be {expected}")
    if not (0 < width <= MAX_OUTPUT_SIDE and 0 < height <= MAX_OUTPUT_SIDE):
        raise RenderParameterError(f"viewport sides must be between 1 and {MAX_OUTPUT_SIDE}")
    source = None
    if len(pieces) == 6:
        sx, sy, sw, sh = (p.strip() for p in pieces[2:])
        source = SourceRegion(
            _integer(sx, "viewport sx") if sx else 0,
            _integer(sy, "viewport sy") if sy else 0,
            _integer(sw, "viewport sw") if sw else None,
            _integer(sh, "viewport sh") if sh else None,
        )
        if source.x < 0 or source.y < 0 or source.width == 0 or source.height == 0:
            raise RenderParameterError("viewport sx, sy must be >= 0 and sw, sh non-zero")
    return Viewport(width, height, source)


def parse_quality(text: str) -> int:
    """An image quality 1..100 (PS3.18 8.3.5.1.2, WADO-URI imageQuality)."""
    quality = _integer(text, "quality")
    if not 1 <= quality <= 100:
        raise RenderParameterError("quality must be between 1 and 100")
    return quality


def parse_region(text: str) -> Region:
    """``xmin,ymin,xmax,ymax`` normalised to 0..1, with xmin < xmax and ymin < ymax."""
    pieces = text.split(",")
    if len(pieces) != 4:
        raise RenderParameterError("region must be xmin,ymin,xmax,ymax")
    xmin, ymin, xmax, ymax = (_number(p, "region value") for p in pieces)
    if not all(0.0 <= v <= 1.0 for v in (xmin, ymin, xmax, ymax)):
        raise RenderParameterError("region values must be between 0.0 and 1.0")
    if not (xmin < xmax and ymin < ymax):
        raise RenderParameterError("region must have xmin < xmax and ymin < ymax")
    return Region(xmin, ymin, xmax, ymax)


# -- Accept negotiation for rendered resources (PS3.18 8.7.4, 8.7.8) ---------------------------


def is_dicom_media_range(media_range: MediaRange) -> bool:
    """True for a range naming a DICOM (non-rendered) type, directly or as a multipart part."""
    if media_range.media_type in _DICOM_TYPES:
        return True
    part = media_range.part_type
    return media_range.media_type == MULTIPART_RELATED and part in _DICOM_TYPES


def _as_part_range(media_range: MediaRange) -> MediaRange:
    """``multipart/related; type=image/png`` stands for its parts; without a type, any part."""
    if media_range.media_type != MULTIPART_RELATED:
        return media_range
    part = (media_range.part_type or "*/*").lower()
    kind, _, sub = part.partition("/")
    return MediaRange(kind or "*", sub or "*", {}, media_range.q, media_range.position)


def negotiate_rendered(ranges: Sequence[MediaRange]) -> tuple[str | None, bool]:
    """The rendered media type to produce from parsed Accept ranges, and whether it was
    defaulted (no Accept at all). (None, False) when nothing acceptable: a 406.

    Multipart ranges count as their part type, so ``multipart/related; type="image/png"``
    asks for PNG parts. Mixing DICOM and rendered types is the caller's 400 (PS3.18 8.7.8)."""
    chosen = negotiate([_as_part_range(r) for r in ranges], RENDERED_OFFERS)
    if chosen is None:
        return None, False
    return chosen.offer.media_type, chosen.defaulted


# -- the pixel pipeline ----------------------------------------------------------------------


def has_pixels(ds: Dataset) -> bool:
    """True when the dataset carries (integer or float) pixel data."""
    return any(tag in ds for tag in PIXEL_DATA_TAGS)


def _frame_attributes(ds: Dataset, index: int) -> Dataset:
    """The dataset with per-frame Pixel Value Transformation and Frame VOI LUT values of an
    enhanced multi-frame image (shared, then per-frame functional groups) moved to the top
    level, where pydicom's LUT functions look for them."""
    groups = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    if not groups:
        return ds
    view = Dataset()
    for elem in ds:  # top level only
        if elem.tag not in PIXEL_DATA_TAGS:
            view.add(elem)
    for group in groups:
        for sequence in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            items = group.get(sequence)
            if items:
                for elem in items[0]:
                    view.add(elem)
    return view


def _decode(ds: Dataset, index: int) -> tuple[np.ndarray, str]:
    """Frame ``index`` (0-based) as an array and its photometric interpretation after decoding
    (YBR_FULL and YBR_FULL_422 come back as RGB; JPEG 2000 colour transforms are undone)."""
    from pydicom.pixels import get_decoder

    syntax = dataset_transfer_syntax(ds)
    if PIXEL_DATA not in ds:
        array = ds.pixel_array  # float / double float pixel data
        if frame_count(ds) > 1:
            array = array[index]
        return array, str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    decoder = get_decoder(syntax)
    if not decoder.is_available:
        raise NotRenderable(f"no decoder available for transfer syntax {syntax}")
    try:
        array, props = decoder.as_array(ds, index=index)
    except Exception as exc:  # plugins raise many exception types
        raise NotRenderable(f"cannot decode frame {index + 1}: {exc}") from exc
    photometric = str(props.get("photometric_interpretation",
                                ds.get("PhotometricInterpretation", "MONOCHROME2")))
    return array, photometric


def _apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2 with output range 0..255, as float."""
    c, w = window.center, window.width
    if window.function == WindowFunction.SIGMOID:
        return 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    if window.function == WindowFunction.LINEAR_EXACT:
        scaled = ((values - c) / w + 0.5) * 255.0
        low, high = c - w / 2.0, c + w / 2.0
    else:
        scaled = ((values - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0 if w > 1 else values * 0.0
        low, high = c - 0.5 - (w - 1.0) / 2.0, c - 0.5 + (w - 1.0) / 2.0
    out = np.where(values <= low, 0.0, np.where(values > high, 255.0, scaled))
    return np.asarray(out, dtype=np.float64)


def _first(value: object) -> float:
    """The first value of a multi-valued element (or the one value) as a float; TypeError,
    ValueError or IndexError when there is none."""
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        value = list(value)[0]
    if not isinstance(value, (str, bytes, SupportsFloat, SupportsIndex)):
        raise TypeError(f"not a number: {value!r}")
    return float(value)


def instance_window(ds: Dataset) -> Window | None:
    """The first window of (0028,1050)/(0028,1051) with (0028,1056), if valid."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center in (None, "") or width in (None, ""):
        return None
    try:
        function = WindowFunction(str(ds.get("VOILUTFunction", "LINEAR")).lower().replace("_", "-"))
    except ValueError:
        function = WindowFunction.LINEAR
    try:
        return check_window(Window(_first(center), _first(width), function))
    except (RenderParameterError, TypeError, ValueError, IndexError):
        return None


def _grayscale(array: np.ndarray, ds: Dataset, index: int, window: Window | None) -> np.ndarray:
    """Modality LUT, VOI and Presentation (MONOCHROME1 inverted) to 8 bits."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    view = _frame_attributes(ds, index)
    if array.dtype.kind == "f":
        values = array.astype(np.float64)
    else:
        values = np.asarray(apply_modality_lut(array, view), dtype=np.float64)
    chosen = window or instance_window(view)
    display: npt.NDArray[np.float64]
    if chosen is not None:
        display = _apply_window(values, chosen)
    elif view.get("VOILUTSequence"):
        item = view.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2]) or 16
        lut_out = np.asarray(apply_voi(values.astype(np.int64), view), dtype=np.float64)
        display = lut_out * (255.0 / float(2**bits - 1))
    elif array.dtype == np.uint8 and np.array_equal(values, array):
        display = values  # plain 8-bit data without any transformation: shown as it is
    else:
        low, high = float(values.min()), float(values.max())
        display = _apply_window(values, Window((low + high) / 2.0, max(high - low, 1.0),
                                               WindowFunction.LINEAR_EXACT))
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        display = 255.0 - display
    return np.clip(np.rint(display), 0, 255).astype(np.uint8)


def _colour(array: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """Colour frames to 8-bit RGB."""
    from pydicom.pixels import apply_color_lut, convert_color_space

    if photometric == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(array, ds))
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return (rgb.astype(np.float64) * (255.0 / float(2**bits - 1))).round().astype(np.uint8)
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        array = convert_color_space(array, photometric, "RGB")
    elif photometric not in ("RGB", "YBR_ICT", "YBR_RCT"):
        raise NotRenderable(f"photometric interpretation {photometric} is not supported")
    bits = int(ds.get("BitsStored", 8) or 8)
    if array.dtype != np.uint8 or bits > 8:
        scale = 255.0 / float(2 ** min(bits, 16) - 1)
        return np.clip(np.rint(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    return array


def display_frame(ds: Dataset, number: int, window: Window | None = None) -> np.ndarray:
    """Frame ``number`` (1-based) as 8-bit display values: (rows, cols) grey or (rows, cols, 3)
    RGB. ``window`` replaces the instance's own VOI (grayscale only)."""
    if not has_pixels(ds):
        raise NotRenderable("the instance has no pixel data")
    total = frame_count(ds)
    if not 1 <= number <= total:
        raise FrameOutOfRange(f"frame {number} is out of range: the instance has {total}")
    array, photometric = _decode(ds, number - 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 1 and photometric != "PALETTE COLOR":
        return _grayscale(array, ds, number - 1, window)
    if array.ndim != 3 and photometric != "PALETTE COLOR":
        raise NotRenderable(f"unexpected colour frame shape {array.shape}")
    return _colour(array, ds, photometric)


# -- geometry ----------------------------------------------------------------------------------


def fit_size(width: int, height: int, box_width: int | None, box_height: int | None,
             *, upscale: bool = True) -> tuple[int, int]:
    """The size of a ``width`` x ``height`` image scaled to fit the box, aspect kept; a missing
    box side follows from the other; neither side goes below 1."""
    scales = [s for s in (box_width / width if box_width else None,
                          box_height / height if box_height else None) if s is not None]
    if not scales:
        return width, height
    scale = min(scales)
    if not upscale:
        scale = min(scale, 1.0)
    return (max(1, min(MAX_OUTPUT_SIDE, round(width * scale))),
            max(1, min(MAX_OUTPUT_SIDE, round(height * scale))))


def _crop_region(image: np.ndarray, region: Region) -> np.ndarray:
    rows, cols = image.shape[:2]
    x0, x1 = math.floor(region.xmin * cols), math.ceil(region.xmax * cols)
    y0, y1 = math.floor(region.ymin * rows), math.ceil(region.ymax * rows)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    return image[y0:min(y1, rows), x0:min(x1, cols)]


def _crop_source(image: np.ndarray, source: SourceRegion) -> np.ndarray:
    rows, cols = image.shape[:2]
    if source.x >= cols or source.y >= rows:
        raise RenderParameterError(
            f"viewport source offset ({source.x},{source.y}) is outside the {cols}x{rows} image")
    width = source.width if source.width is not None else cols - source.x
    height = source.height if source.height is not None else rows - source.y
    out = image[source.y:min(source.y + abs(height), rows),
                source.x:min(source.x + abs(width), cols)]
    if width < 0:
        out = out[:, ::-1]
    if height < 0:
        out = out[::-1]
    return out


def _transform(image: np.ndarray, params: RenderParams) -> Image.Image:
    """Region crop, viewport source crop, then scaling to the viewport."""
    if params.region is not None:
        image = _crop_region(image, params.region)
    viewport = params.viewport
    if viewport is not None and viewport.source is not None:
        image = _crop_source(image, viewport.source)
    picture = Image.fromarray(np.ascontiguousarray(image), mode="L" if image.ndim == 2 else "RGB")
    if viewport is not None:
        size = fit_size(picture.width, picture.height, viewport.width, viewport.height,
                        upscale=viewport.upscale)
        if size != picture.size:
            picture = picture.resize(size, Image.Resampling.LANCZOS)
    return picture


# -- encoding ----------------------------------------------------------------------------------


def encode_image(pictures: Sequence[Image.Image], media_type: str, *, quality: int | None = None,
                 icc_profile: bytes | None = None, frame_ms: int = 100) -> bytes:
    """Encode one picture (or, for GIF, several as an animation) as ``media_type``. Only
    pixels (and an ICC profile when asked) are written: no comments, EXIF or text chunks."""
    if media_type not in _PIL_FORMAT:
        raise NotRenderable(f"{media_type} is not a rendered media type the gateway produces")
    out = io.BytesIO()
    first = pictures[0]
    options: dict[str, object] = {}
    if icc_profile and media_type in (JPEG, PNG):
        options["icc_profile"] = icc_profile
    if media_type == JPEG:
        first.save(out, format="JPEG", quality=quality or DEFAULT_JPEG_QUALITY, **options)
    elif media_type == PNG:
        first.save(out, format="PNG", **options)
    else:
        frames = [p if p.mode in ("L", "P") else p.quantize(256) for p in pictures]
        if len(frames) > 1:
            frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:],
                           duration=frame_ms, loop=0)
        else:
            frames[0].save(out, format="GIF")
    return out.getvalue()


def _frame_ms(ds: Dataset) -> int:
    try:
        return max(20, round(float(ds.get("FrameTime", 100) or 100)))
    except (TypeError, ValueError):
        return 100


def render_frames(ds: Dataset, numbers: Sequence[int], params: RenderParams) -> bytes:
    """Render frames (1-based) into one image: one frame for JPEG and PNG, an animation of
    them for GIF (at most MAX_ANIMATION_FRAMES, the first ones)."""
    if not numbers:
        raise FrameOutOfRange("no frame number requested")
    if len(numbers) > 1 and params.media_type != GIF:
        raise RenderParameterError(f"{params.media_type} holds a single frame")
    numbers = list(numbers)[:MAX_ANIMATION_FRAMES]
    pictures = [_transform(display_frame(ds, n, params.window), params) for n in numbers]
    icc = None
    if params.embed_icc_profile and pictures[0].mode == "RGB" and "ICCProfile" in ds:
        icc = bytes(ds.ICCProfile)
    return encode_image(pictures, params.media_type, quality=params.quality, icc_profile=icc,
                        frame_ms=_frame_ms(ds))


def render_frame(ds: Dataset, number: int, params: RenderParams) -> bytes:
    """Render frame ``number`` (1-based) of ``ds`` as ``params.media_type``."""
    return render_frames(ds, [number], params)


def with_media_type(params: RenderParams, media_type: str) -> RenderParams:
    """A copy of ``params`` producing ``media_type``."""
    return replace(params, media_type=media_type)


def describe_params(params: RenderParams) -> Mapping[str, str]:
    """A stable description of ``params`` (for ETags)."""
    return {"media": params.media_type, "quality": str(params.quality),
            "window": repr(params.window), "region": repr(params.region),
            "viewport": repr(params.viewport), "icc": str(params.embed_icc_profile)}

"""Rendering frames to JPEG/PNG/GIF (PS3.18 8.3.5, PS3.3 C.11.2.1.2, PS3.4 N.2): windows,
rescale, MONOCHROME1, signed data, colour, multi-frame, viewport and region, output formats."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from app.demo.compressed import compressed_sample_arrays, generate_compressed_samples
from app.demo.samples import generate_sample_studies
from app.dicomweb.mediatypes import parse_accept
from app.dicomweb.render import (
    GIF,
    JPEG,
    PNG,
    FrameOutOfRange,
    NotRenderable,
    Region,
    RenderParameterError,
    RenderParams,
    SourceRegion,
    Viewport,
    Window,
    WindowFunction,
    display_frame,
    fit_size,
    instance_window,
    negotiate_rendered,
    parse_quality,
    parse_region,
    parse_viewport,
    parse_window,
    render_frame,
    render_frames,
)


def image(pixels: np.ndarray, photometric: str = "MONOCHROME2", **attributes: object) -> Dataset:
    """A native Explicit VR LE image dataset holding ``pixels`` ((frames,) rows, cols[, 3])."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    colour = photometric == "RGB"
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    frames = pixels.ndim == (4 if colour else 3)
    if frames:
        ds.NumberOfFrames = pixels.shape[0]
    shape = pixels.shape[1:] if frames else pixels.shape
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def decode(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


RAMP = np.arange(0, 256, dtype=np.uint16).reshape(16, 16) * 4  # 0..1020


# -- window functions (PS3.3 C.11.2.1.2), output range 0..255 -----------------------------------

@pytest.mark.parametrize(("function", "center", "width", "value", "expected"), [
    ("linear", 100, 101, 49, 0),
    ("linear", 100, 101, 50, 1),       # ((50 - 99.5) / 100 + 0.5) * 255 = 1.275
    ("linear", 100, 101, 100, 129),    # 0.505 * 255 = 128.775
    ("linear", 100, 101, 150, 255),
    ("linear-exact", 100, 100, 50, 0),
    ("linear-exact", 100, 100, 75, 64),  # 0.25 * 255 = 63.75
    ("linear-exact", 100, 100, 150, 255),
    ("sigmoid", 100, 100, 100, 128),   # 127.5
    ("sigmoid", 100, 100, 150, 225),   # 255 / (1 + e^-2) = 224.67
    ("sigmoid", 100, 100, 50, 30),     # 255 / (1 + e^2) = 30.33
])
def test_window_functions(function: str, center: float, width: float, value: int,
                          expected: int) -> None:
    ds = image(np.full((4, 4), value, dtype=np.uint16))
    shown = display_frame(ds, 1, Window(center, width, WindowFunction(function)))
    assert shown.dtype == np.uint8
    assert int(shown[0, 0]) == expected


def test_instance_window_and_voi_lut_function_are_used() -> None:
    ds = image(np.full((4, 4), 150, dtype=np.uint16), WindowCenter=100, WindowWidth=100,
               VOILUTFunction="SIGMOID")
    assert instance_window(ds) == Window(100.0, 100.0, WindowFunction.SIGMOID)
    assert int(display_frame(ds, 1)[0, 0]) == 225


def test_multi_valued_window_uses_the_first() -> None:
    ds = image(np.full((2, 2), 100, dtype=np.uint16), WindowCenter=[100, 0], WindowWidth=[2, 9])
    assert instance_window(ds) == Window(100.0, 2.0)


def test_request_window_overrides_the_instance_window() -> None:
    ds = image(RAMP, WindowCenter=10, WindowWidth=2)
    shown = display_frame(ds, 1, Window(510, 1021, WindowFunction.LINEAR_EXACT))
    assert int(shown[0, 0]) == 0 and int(shown[-1, -1]) == 255
    assert 120 < int(shown[8, 0]) < 135  # 512: mid-grey


def test_rescale_is_applied_before_the_window() -> None:
    # stored 0..1020, slope 2, intercept -1000: HU -1000..1040; window 40/400 (soft tissue)
    ds = image(RAMP, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=40, WindowWidth=400)
    shown = display_frame(ds, 1)
    hu = RAMP.astype(np.float64) * 2 - 1000
    low, high = 40 - 0.5 - 399 / 2, 40 - 0.5 + 399 / 2
    expected = np.where(hu <= low, 0, np.where(hu > high, 255,
                        ((hu - 39.5) / 399 + 0.5) * 255))
    assert np.array_equal(shown, np.rint(expected).astype(np.uint8))


def test_voi_lut_sequence_when_there_is_no_window() -> None:
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = list(range(255, -1, -1))  # an inverting LUT
    item["LUTData"].VR = "US"
    ds = image(np.arange(256, dtype=np.uint8).reshape(16, 16), VOILUTSequence=Sequence([item]))
    shown = display_frame(ds, 1)
    assert np.array_equal(shown, 255 - np.arange(256, dtype=np.uint8).reshape(16, 16))


def test_enhanced_functional_groups_supply_rescale_and_window() -> None:
    transform, voi, group = Dataset(), Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -100, "US"
    voi.WindowCenter, voi.WindowWidth = 0, 100
    group.PixelValueTransformationSequence = Sequence([transform])
    group.FrameVOILUTSequence = Sequence([voi])
    ds = image(np.array([[40, 100], [160, 100]], dtype=np.uint16),
               SharedFunctionalGroupsSequence=Sequence([group]))
    shown = display_frame(ds, 1)  # values -60, 0, 60 against window 0/100
    assert int(shown[0, 0]) == 0 and int(shown[1, 0]) == 255 and 120 < int(shown[0, 1]) < 135


# -- presentation -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "window", [None, Window(500, 800), Window(300, 200, WindowFunction.SIGMOID)])
def test_monochrome1_is_the_inverse_of_monochrome2(window: Window | None) -> None:
    two = display_frame(image(RAMP, "MONOCHROME2"), 1, window)
    one = display_frame(image(RAMP, "MONOCHROME1"), 1, window)
    difference = one.astype(int) - (255 - two.astype(int))
    assert np.abs(difference).max() <= 1  # rounding of x.5 only
    assert one[0, 0] > 200 and one[-1, -1] < 55


def test_monochrome1_sample_shows_its_spine_dark() -> None:
    cr = next(ds for ds in generate_sample_studies()
              if ds.PhotometricInterpretation == "MONOCHROME1")
    shown = display_frame(cr, 1)
    column = int(cr.Columns) // 2  # the spine: highest stored values
    assert shown[:, column].mean() < 40
    assert shown.mean() > 60


def test_signed_data_without_window_spans_the_full_range() -> None:
    pixels = np.array([[-1000, -500], [0, 1000]], dtype=np.int16)
    shown = display_frame(image(pixels), 1)
    assert shown.min() == 0 and shown.max() == 255
    assert list(shown.ravel()) == sorted(shown.ravel())  # order preserved
    assert int(shown[0, 1]) == 64  # (-500 + 1000) / 2000 -> 0.25 * 255 = 63.75


def test_plain_8_bit_data_is_shown_unchanged() -> None:
    pixels = (np.arange(64, dtype=np.uint8) * 3).reshape(8, 8) + 10
    assert np.array_equal(display_frame(image(pixels), 1), pixels)


def test_rgb_is_kept_exactly() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    shown = decode(render_frame(image(rgb, "RGB"), 1, RenderParams(media_type=PNG)))
    assert shown.mode == "RGB" and shown.size == (10, 12)
    assert np.array_equal(np.asarray(shown), rgb)


def test_palette_colour_goes_through_its_lookup_tables() -> None:
    index = np.arange(256, dtype=np.uint8).reshape(16, 16)
    ds = image(index, "PALETTE COLOR")
    for colour, values in (("Red", np.arange(256)), ("Green", 255 - np.arange(256)),
                           ("Blue", np.zeros(256, dtype=int))):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData",
                (values * 257).astype("<u2").tobytes())
    shown = display_frame(ds, 1)
    assert shown.shape == (16, 16, 3)
    assert np.array_equal(shown[..., 0], index) and np.array_equal(shown[..., 1], 255 - index)
    assert not shown[..., 2].any()


def test_planar_configuration_1_is_interleaved_for_display() -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    ds = image(rgb, "RGB")
    ds.PlanarConfiguration = 1
    ds.PixelData = np.moveaxis(rgb, -1, 0).tobytes()  # RRR...GGG...BBB
    assert np.array_equal(display_frame(ds, 1), rgb)


def test_ybr_full_422_jpeg_sample_becomes_rgb() -> None:
    spec = next(s for s in compressed_sample_arrays() if s.key == "jpeg-rgb")
    ds = next(d for d in generate_compressed_samples()
              if d.PhotometricInterpretation == "YBR_FULL_422")
    shown = decode(render_frame(ds, 1, RenderParams(media_type=PNG)))
    assert shown.mode == "RGB" and shown.size == (spec.pixels.shape[1], spec.pixels.shape[0])
    error = np.abs(np.asarray(shown).astype(int) - spec.pixels.astype(int))
    assert error.mean() < 4, error.mean()  # lossy JPEG, but colours are right (not YCbCr)


def test_compressed_grayscale_renders_like_its_original() -> None:
    spec = next(s for s in compressed_sample_arrays() if s.key == "rle-ct-0")
    ds = next(d for d in generate_compressed_samples()
              if str(d.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.5")
    original = image(spec.pixels, WindowCenter=40, WindowWidth=400, RescaleSlope=1,
                     RescaleIntercept=0)
    assert np.array_equal(display_frame(ds, 1), display_frame(original, 1))


# -- frames -------------------------------------------------------------------------------------

def test_multi_frame_frame_selection() -> None:
    cube = np.stack([np.full((6, 7), 20 * (k + 1), dtype=np.uint8) for k in range(5)])
    ds = image(cube)
    for number in range(1, 6):
        shown = decode(render_frame(ds, number, RenderParams(media_type=PNG)))
        assert np.array_equal(np.asarray(shown), cube[number - 1])
    with pytest.raises(FrameOutOfRange):
        render_frame(ds, 6, RenderParams())
    with pytest.raises(FrameOutOfRange):
        render_frame(ds, 0, RenderParams())


def test_gif_animation_holds_every_frame() -> None:
    cube = np.stack([np.full((6, 7), 40 * k, dtype=np.uint8) for k in range(4)])
    data = render_frames(image(cube, FrameTime=40), [1, 2, 3, 4], RenderParams(media_type=GIF))
    picture = Image.open(io.BytesIO(data))
    assert getattr(picture, "n_frames", 1) == 4
    for k in range(4):
        picture.seek(k)
        assert np.asarray(picture.convert("L"))[0, 0] == 40 * k


def test_several_frames_need_gif() -> None:
    with pytest.raises(RenderParameterError):
        render_frames(image(np.zeros((2, 3, 3), dtype=np.uint8)), [1, 2], RenderParams())


def test_no_pixel_data_is_not_renderable() -> None:
    ds = image(np.zeros((2, 2), dtype=np.uint8))
    del ds.PixelData
    with pytest.raises(NotRenderable):
        render_frame(ds, 1, RenderParams())


# -- geometry -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "box", "upscale", "expected"), [
    ((64, 64), (32, 16), True, (16, 16)),
    ((64, 32), (128, 128), True, (128, 64)),
    ((64, 32), (128, 128), False, (64, 32)),
    ((100, 50), (None, 25), True, (50, 25)),   # one side given: the other follows
    ((100, 50), (40, None), True, (40, 20)),
    ((300, 1), (10, 10), True, (10, 1)),       # never below one pixel
])
def test_fit_size(size: tuple[int, int], box: tuple[int | None, int | None], upscale: bool,
                  expected: tuple[int, int]) -> None:
    assert fit_size(*size, *box, upscale=upscale) == expected


def test_viewport_scales_keeping_aspect() -> None:
    ds = image(np.zeros((20, 40), dtype=np.uint8))
    shown = decode(render_frame(ds, 1, RenderParams(media_type=PNG, viewport=Viewport(10, 10))))
    assert shown.size == (10, 5)


def test_viewport_source_region_crops_and_flips() -> None:
    pixels = np.arange(80, dtype=np.uint8).reshape(8, 10)
    ds = image(pixels)
    crop = Viewport(4, 3, SourceRegion(2, 1, 4, 3))
    shown = np.asarray(decode(render_frame(ds, 1, RenderParams(media_type=PNG, viewport=crop))))
    assert np.array_equal(shown, pixels[1:4, 2:6])
    flipped = Viewport(4, 3, SourceRegion(2, 1, -4, -3))
    shown = np.asarray(decode(render_frame(ds, 1, RenderParams(media_type=PNG,
                                                                viewport=flipped))))
    assert np.array_equal(shown, pixels[1:4, 2:6][::-1, ::-1])
    with pytest.raises(RenderParameterError):
        render_frame(ds, 1, RenderParams(viewport=Viewport(4, 4, SourceRegion(10, 0))))


def test_region_crops_normalised_coordinates() -> None:
    pixels = np.arange(100, dtype=np.uint8).reshape(10, 10)
    params = RenderParams(media_type=PNG, region=Region(0.2, 0.5, 0.6, 1.0))
    shown = np.asarray(decode(render_frame(image(pixels), 1, params)))
    assert np.array_equal(shown, pixels[5:10, 2:6])


# -- output formats -----------------------------------------------------------------------------

@pytest.mark.parametrize(("media_type", "pil_format", "exact"), [
    (JPEG, "JPEG", False), (PNG, "PNG", True), (GIF, "GIF", True),
])
def test_output_formats_decode_to_the_expected_image(media_type: str, pil_format: str,
                                                     exact: bool) -> None:
    pixels = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (24, 1))  # 24 x 64 ramp
    data = render_frame(image(pixels), 1, RenderParams(media_type=media_type))
    picture = decode(data)
    assert picture.format == pil_format and picture.size == (64, 24)
    grey = np.asarray(picture.convert("L")).astype(int)
    if exact:
        assert np.array_equal(grey, pixels)
    else:
        assert np.abs(grey - pixels).mean() < 3


def test_jpeg_quality_changes_the_size() -> None:
    noise = np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)
    small = render_frame(image(noise), 1, RenderParams(quality=10))
    large = render_frame(image(noise), 1, RenderParams(quality=95))
    assert len(small) < len(large)


def test_rendered_images_carry_no_text() -> None:
    ds = image(RAMP.astype(np.uint16), PatientName="Secret^Name", PatientID="PID-42")
    for media_type in (JPEG, PNG, GIF):
        data = render_frame(ds, 1, RenderParams(media_type=media_type))
        assert b"Secret" not in data and b"PID-42" not in data
        assert not decode(data).info.get("comment")


# -- parameters ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("40,400", Window(40, 400)),
    ("40,400,linear", Window(40, 400)),
    ("-600,1500,LINEAR-EXACT", Window(-600, 1500, WindowFunction.LINEAR_EXACT)),
    ("0.5,0.5,sigmoid", Window(0.5, 0.5, WindowFunction.SIGMOID)),
])
def test_parse_window(text: str, expected: Window) -> None:
    assert parse_window(text) == expected


@pytest.mark.parametrize("text", ["40", "a,400", "40,0", "40,0.5,linear", "40,-1,sigmoid",
                                  "40,400,cubic", "1,2,3,4", "nan,4"])
def test_parse_window_rejects(text: str) -> None:
    with pytest.raises(RenderParameterError):
        parse_window(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("512,512", Viewport(512, 512)),
    ("100,50,10,20,30,40", Viewport(100, 50, SourceRegion(10, 20, 30, 40))),
    ("100,50,,,-30,", Viewport(100, 50, SourceRegion(0, 0, -30, None))),
])
def test_parse_viewport(text: str, expected: Viewport) -> None:
    assert parse_viewport(text) == expected


@pytest.mark.parametrize("text", ["512", "0,10", "10,-1", "a,b", "1,2,3", "10,10,-1,0,5,5",
                                  "10,10,0,0,0,5", "99999,10"])
def test_parse_viewport_rejects(text: str) -> None:
    with pytest.raises(RenderParameterError):
        parse_viewport(text)


def test_thumbnail_viewport_takes_no_source_region() -> None:
    with pytest.raises(RenderParameterError):
        parse_viewport("64,64,0,0,10,10", allow_source=False)


@pytest.mark.parametrize(("text", "ok"), [("1", True), ("100", True), ("0", False),
                                          ("101", False), ("x", False), ("50.5", False)])
def test_parse_quality(text: str, ok: bool) -> None:
    if ok:
        assert parse_quality(text) == int(text)
    else:
        with pytest.raises(RenderParameterError):
            parse_quality(text)


@pytest.mark.parametrize(("text", "ok"), [("0,0,1,1", True), ("0.25,0.5,0.75,1", True),
                                          ("0,0,0,1", False), ("0.5,0,0.4,1", False),
                                          ("0,0,1.5,1", False), ("0,0,1", False),
                                          ("a,0,1,1", False)])
def test_parse_region(text: str, ok: bool) -> None:
    if ok:
        region = parse_region(text)
        assert math.isclose(region.xmax, float(text.split(",")[2]))
    else:
        with pytest.raises(RenderParameterError):
            parse_region(text)


@pytest.mark.parametrize(("accept", "expected"), [
    (None, (JPEG, True)),
    ("*/*", (JPEG, False)),
    ("image/*", (JPEG, False)),
    ("image/png", (PNG, False)),
    ("image/gif, image/png;q=0.5", (GIF, False)),
    ("image/jpeg;q=0.1, image/png", (PNG, False)),
    ('multipart/related; type="image/png"', (PNG, False)),
    ("multipart/related", (JPEG, False)),
    ("image/webp,image/apng,*/*;q=0.8", (JPEG, False)),
    ("image/webp", (None, False)),
    ("application/dicom", (None, False)),
    ("*/*, image/jpeg;q=0", (PNG, False)),
])
def test_negotiate_rendered(accept: str | None, expected: tuple[str | None, bool]) -> None:
    assert negotiate_rendered(parse_accept(accept)) == expected

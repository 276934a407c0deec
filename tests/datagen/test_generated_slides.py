"""Generated whole slides (midog_dev.generated_slides): a pyramid OpenSlide reads as a slide,
tissue where the cells say, figures where the truth says, and whole-slide inference over it
finds them all while reading only the tissue."""

import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
from conftest import CONFIGS, make_cfg

from midog_d2.fileio import clear_cache, read_region
from midog_d2.inference import SlidePredictor, TiledPredictor
from midog_dev.generated_slides import GLASS, SlideBlock, write_generated_slide

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
from fake_models import BlobDetector  # noqa: E402


def blocks(n=3, size=512, seed=0):
    """Pink textured blocks with pure-blue 20-px blobs (what BlobDetector finds)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        rgb = np.clip(rng.normal((205, 130, 175), 12, (size, size, 3)), 0, 250).astype(np.uint8)
        pts = rng.uniform(60, size - 60, (2 + k, 2)).round()
        for x, y in pts.astype(int):
            rgb[y - 10 : y + 10, x - 10 : x + 10] = (0, 0, 255)
        out.append(SlideBlock(rgb, pts))
    return out


def test_a_generated_slide_is_a_pyramid_with_tissue_and_figures_where_it_says(tmp_path):
    clear_cache()
    g = write_generated_slide(str(tmp_path / "g.tif"), (9000, 5000), blocks(), seed=1)
    s = openslide.OpenSlide(g.path)
    assert s.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
    assert s.dimensions == (9000, 5000) and s.level_count == 2
    assert s.level_downsamples[1] == pytest.approx(4.0)
    assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
    assert g.tissue_fraction == pytest.approx(0.4, abs=0.02)
    assert len(g.figures) > 10
    for x, y in g.figures[:10].astype(int):
        px = read_region(g.path, x - 2, y - 2, 4, 4)
        assert (np.abs(px.astype(int) - (0, 0, 255)) < 40).all()  # JPEG keeps the blue
    # glass between: far from every figure, some pixel is plain glass
    assert (read_region(g.path, 0, 0, 9000, 64) >= GLASS - 8).all(axis=2).any()


def test_whole_slide_inference_on_a_generated_slide_finds_every_figure(tmp_path):
    clear_cache()
    # lossless tiles: BlobDetector wants its blue exact
    g = write_generated_slide(
        str(tmp_path / "g.tif"), (6144, 4096), blocks(), seed=2, compression="deflate"
    )
    cfg = make_cfg(
        CONFIGS / "Base-MultiTask-RetinaNet.yaml",
        "TEST.TILE.SIZE", 512, "TEST.TISSUE.THUMBNAIL_SIZE", 1024,
    )  # fmt: skip
    model = BlobDetector().eval()
    res = SlidePredictor(cfg, model).predict(g.path)
    assert res.tiles_read < res.tiles_total  # glass is not read
    assert len(res.xy) == len(g.figures)
    d = np.linalg.norm(res.xy[:, None, :] - g.figures[None, :, :], axis=2)
    assert (d.min(axis=0) < 1.5).all() and (d.min(axis=1) < 1.5).all()
    assert res.tissue_mm2 == pytest.approx(6144 * 4096 * 0.4 * 0.25**2 / 1e6, rel=0.15)

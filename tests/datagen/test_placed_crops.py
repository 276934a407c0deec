"""Placed-crop metrics and baselines (midog_dev.placed_crops)."""

import cv2
import numpy as np
import pytest
import torch
from datagen_helpers import DEV_CONFIGS, make_datagen_cfg

from midog_dev.canvas import PlacedCrop
from midog_dev.nuclei import darkest_blob
from midog_dev.placed_crops import (
    baseline_rank1,
    chance_rank1,
    evaluate_placed,
    false_detections_per_mm2,
    predict_points,
    select_threshold,
)


def _sample(figure=(100.0, 100.0), window=(60, 60, 150, 140), atypical=False, image=None):
    if image is None:
        image = np.full((256, 256, 3), 220, np.uint8)
    return PlacedCrop(image, figure, window, atypical, "x.png", "tile")


def _det(*rows):
    a = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    return a[:, :2], a[:, 2]


def test_darkest_blob_finds_the_dark_disc_and_respects_the_region():
    img = np.full((200, 200, 3), 200, np.uint8)
    cv2.circle(img, (50, 60), 8, (30, 30, 30), -1)
    cv2.circle(img, (150, 140), 8, (90, 90, 90), -1)
    assert darkest_blob(img) == pytest.approx((50, 60), abs=1)
    assert darkest_blob(img, region=(100, 100, 200, 200)) == pytest.approx((150, 140), abs=1)
    with pytest.raises(ValueError, match="empty region"):
        darkest_blob(img, region=(10, 10, 10, 50))


def test_evaluate_placed_counts_recall_rank1_and_false_detections():
    samples = [_sample(), _sample(atypical=True), _sample()]
    dets = [
        # found, top-scoring; one false detection inside the window, one outside the
        # neighbourhood (ignored)
        _det((105, 98, 0.9), (140, 70, 0.6), (250, 250, 0.99)),
        # found but not rank-1: a false detection outranks it
        _det((96, 104, 0.5), (70, 130, 0.8)),
        # missed: the only detection near the figure is under the threshold
        _det((101, 101, 0.2)),
    ]
    r = evaluate_placed(samples, dets, threshold=0.4)
    assert r["normal"] == pytest.approx(
        {"crops": 2, "recall": 0.5, "rank1": 1.0, "fp_per_crop": 0.5, "precision": 0.5, "f1": 0.5}
    )
    assert (
        r["atypical"]["recall"] == 1.0
        and r["atypical"]["rank1"] == 0.0
        and r["atypical"]["fp_per_crop"] == 1.0
    )
    a = r["all"]
    assert (a["crops"], a["recall"], a["fp_per_crop"]) == (
        3,
        pytest.approx(2 / 3),
        pytest.approx(2 / 3),
    )
    assert a["f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    # a second detection on the figure is a duplicate: a false detection, as in MIDOG's matching
    r2 = evaluate_placed([_sample()], [_det((100, 100, 0.9), (110, 100, 0.8))], threshold=0.5)
    assert r2["all"]["recall"] == 1.0 and r2["all"]["fp_per_crop"] == 1.0
    with pytest.raises(ValueError, match="2 samples but 1"):
        evaluate_placed(samples[:2], dets[:1], 0.5)


def test_select_threshold_drops_the_false_detections():
    samples = [_sample(), _sample()]
    dets = [_det((100, 100, 0.9), (70, 70, 0.3)), _det((102, 99, 0.8), (140, 130, 0.35))]
    t, f1 = select_threshold(samples, dets)
    assert 0.35 < t <= 0.8 and f1 == 1.0


def test_baselines_on_a_drawn_window():
    img = np.full((256, 256, 3), 200, np.uint8)
    for x, y in [(80, 80), (130, 80), (80, 120), (130, 120)]:
        cv2.circle(img, (x, y), 6, (110, 110, 110), -1)
    cv2.circle(img, (105, 100), 7, (40, 40, 40), -1)  # the darkest: the figure
    cv2.circle(img, (20, 20), 9, (0, 0, 0), -1)  # darker, but outside the neighbourhood
    s = _sample(figure=(105.0, 100.0), window=(70, 70, 140, 130), image=img)
    assert baseline_rank1([s])["all"] == 1.0
    assert baseline_rank1([s], use_window=False)["all"] == 0.0
    # chance: one pick among the five blobs; those within 30 px of the figure count as hits
    ch = chance_rank1([s])["all"]
    far = [(80, 80), (130, 80), (80, 120), (130, 120)]
    near = sum(np.hypot(x - 105, y - 100) <= 30 for x, y in far)
    assert ch == pytest.approx((1 + near) / 5)


def test_false_detections_per_mm2():
    dets = [_det((1, 1, 0.9), (2, 2, 0.1)), _det((3, 3, 0.7))]
    # two 1000 x 1000 px images at 0.25 µm/px = 2 x 0.0625 mm²
    assert false_detections_per_mm2(dets, [(1000, 1000), (1000, 1000)], 0.5) == pytest.approx(
        2 / 0.125
    )
    with pytest.raises(ValueError, match="no image area"):
        false_detections_per_mm2(dets, [], 0.5)


def test_predict_points_on_the_cpu_model():
    torch.manual_seed(0)
    from detectron2.modeling import build_model

    cfg = make_datagen_cfg(
        DEV_CONFIGS / "RealFigures-CPU-R18.yaml", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"
    )
    model = build_model(cfg)
    model.train()
    imgs = [
        np.random.default_rng(i).integers(0, 255, (128, 160, 3), dtype=np.uint8) for i in range(3)
    ]
    out = predict_points(model, imgs, cfg.INPUT.FORMAT, batch_size=2)
    assert model.training  # the mode is put back
    assert len(out) == 3
    for pts, scores in out:
        assert pts.shape == (len(scores), 2) and len(scores) > 0
        assert (pts[:, 0] >= 0).all() and (pts[:, 0] <= 160).all() and (pts[:, 1] <= 128).all()


def test_false_detections_per_mm2_count_the_crops_own_tissue_outside_every_figure():
    from midog_d2.evaluation.prevalence import expected_f1
    from midog_dev.placed_crops import CROP_MPP, placed_curve, window_points

    # Window 100 x 80 px; another labelled mitotic figure at (130, 80), a labelled
    # non-mitotic cell (an imposter) at (70, 120).
    s = _sample()
    s.extra["other_cells"] = [(130.0, 80.0, 0), (70.0, 120.0, 1)]
    dets = [
        _det(
            (102, 99, 0.9),  # the figure: found
            (131, 82, 0.8),  # the other figure: neither found nor false
            (72, 118, 0.7),  # on the imposter: false
            (90, 75, 0.5),  # in the window: false
            (55, 100, 0.95),  # in the margin only: not the crop's tissue
        ),
        _det((40, 40, 0.99)),  # a second crop: its figure missed, nothing in its window
    ]
    samples = [s, _sample()]
    area = 2 * 90 * 80 * (CROP_MPP * 1e-3) ** 2
    pts = window_points(s, dets[0])
    assert len(pts.gt) == 2 and len(pts.pred) == 4
    assert pts.area_mm2 == pytest.approx(area / 2)
    curve = placed_curve(samples, dets, thresholds=[0.4, 0.6, 0.75, 0.85])
    assert curve.area_mm2 == pytest.approx(area)
    assert list(curve.false_detections) == [2, 1, 0, 0]
    assert list(curve.recall) == [0.5, 0.5, 0.5, 0.5]
    at = curve.at(0.4)
    assert at["fp_per_mm2"] == pytest.approx(2 / area)
    assert at["expected_f1"] == pytest.approx(expected_f1(0.5, 2 / area, 4.4))
    # No false detection left at 0.75: the best expected F1 is there, 2R / (1 + R).
    assert curve.best_threshold(4.4) == (0.75, pytest.approx(2 / 3))
    with pytest.raises(ValueError, match="not one of the curve's thresholds"):
        curve.at(0.5)

"""Scoring at the mitotic density of real tissue (midog_d2.evaluation.prevalence): the
expected F1 against a direct count, the density threshold as the argmax, the evaluator's and
the calibration's use of it, and the MIDOG++ density table."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, SHARED

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from midog_d2.constants import MIDOGPP_DENSITY, MIDOGPP_TUMOR_DENSITY
from midog_d2.engine.protocol import operating_threshold
from midog_d2.evaluation import ImagePoints, MidogEvaluator, count_matches
from midog_d2.evaluation.prevalence import (
    evaluate_at_density,
    expected_f1,
    expected_precision,
    operating_density,
    prevalence_curve,
    searched_area_mm2,
)

MPP = 0.25
SIDE = 400  # px: one window / tissue patch is 0.01 mm² at 0.25 µm/px
AREA = (SIDE * MPP * 1e-3) ** 2


def _patch(rng, figure: bool, image_id):
    """One 400-px patch: a figure at its centre (found with a score, or missed) or none,
    plus false detections with random scores at random places away from it."""
    gt = [(200.0, 200.0)] if figure else []
    pred, scores = [], []
    if figure and rng.random() < 0.85:
        pred.append((200.0 + rng.normal(0, 5), 200.0 + rng.normal(0, 5)))
        scores.append(rng.uniform(0.3, 1.0))
    for _ in range(rng.poisson(1.5)):
        while True:
            p = rng.uniform(0, SIDE, 2)
            if np.hypot(*(p - 200.0)) > 60:
                break
        pred.append(tuple(p))
        scores.append(rng.uniform(0.0, 0.9) ** 2)
    return ImagePoints(gt, pred, scores, mpp=MPP, image_id=image_id, area_mm2=AREA)


def _offset(image: ImagePoints, dx: float, dy: float) -> ImagePoints:
    shift = np.array([dx, dy])
    return ImagePoints(image.gt + shift, image.pred + shift, image.scores, mpp=MPP)


def test_expected_f1_equals_a_direct_count_on_a_composite_image():
    """Recall measured on figure windows, false detections per mm² on figure-free tissue;
    the windows placed among the tissue at density ρ make one composite image, scored whole:
    its F1 is the expected F1 at ρ, at every threshold."""
    rng = np.random.default_rng(0)
    windows = [_patch(rng, True, f"w{i}") for i in range(40)]
    tissue = [_patch(rng, False, f"t{i}") for i in range(960)]
    # 40 figures in 1,000 patches of 0.01 mm²: 4 figures per mm².
    patches = windows + tissue
    order = rng.permutation(len(patches))
    parts = []
    for k, i in enumerate(order):
        parts.append(_offset(patches[i], SIDE * (k % 40), SIDE * (k // 40)))
    composite = ImagePoints(
        np.concatenate([p.gt for p in parts]),
        np.concatenate([p.pred for p in parts]),
        np.concatenate([p.scores for p in parts]),
        mpp=MPP,
        area_mm2=len(parts) * AREA,
    )
    density = 40 / (len(parts) * AREA)
    assert density == pytest.approx(4.0)
    curve = prevalence_curve(windows, fp_images=patches, thresholds=[0.1, 0.3, 0.5, 0.7])
    for t, want in zip(curve.thresholds, curve.expected_f1(density)):
        tp, fp, fn = count_matches(composite, threshold=t)
        assert tp > 0 and fp > 0
        assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(want, rel=1e-12)
    # Hand check of the formula: R = 0.85, f = 60 per mm² at 4.4 per mm².
    assert expected_f1(0.85, 60.0, 4.4) == pytest.approx(2 * 0.85 * 4.4 / (1.85 * 4.4 + 60))
    assert expected_f1(0.85, 60.0, 4.4) == pytest.approx(0.110, abs=1e-3)
    assert expected_precision(0.85, 5.0, 4.4) == pytest.approx(0.428, abs=1e-3)


def test_at_its_own_density_the_expected_f1_is_the_pooled_f1():
    rng = np.random.default_rng(1)
    images = [_patch(rng, i % 3 == 0, i) for i in range(90)]
    own = evaluate_at_density(images, threshold=0.4, density=0)
    assert own["figures_per_mm2"] == pytest.approx(30 / (90 * AREA))
    assert own["expected_f1"] == pytest.approx(own["f1"], rel=1e-12)
    assert own["density_threshold"] == own["best_threshold"]
    assert own["density_f1"] == pytest.approx(own["best_f1"], rel=1e-12)
    assert own["fp_per_mm2"] == pytest.approx(own["fp"] / (90 * AREA))


def _brute_force_argmax(images, density, thresholds):
    best, best_t = -1.0, None
    area = sum(i.area_mm2 for i in images)
    for t in thresholds:
        c = np.sum([count_matches(i, threshold=t) for i in images], axis=0)
        f1 = expected_f1(c[0] / (c[0] + c[2]), c[1] / area, density)
        if f1 > best + 1e-12:
            best, best_t = f1, t
    return best_t, best


@pytest.mark.parametrize("density", [MIDOGPP_DENSITY, 1.6, 32.5])
def test_the_density_threshold_is_the_argmax_at_the_stated_density(density):
    rng = np.random.default_rng(2)
    images = [_patch(rng, i % 2 == 0, i) for i in range(60)]  # 50 figures per mm²
    r = evaluate_at_density(images, threshold=0.5, density=density)
    thresholds = np.arange(100) / 100.0
    want_t, want_f1 = _brute_force_argmax(images, density, thresholds)
    assert r["density_threshold"] == want_t and r["density_f1"] == pytest.approx(want_f1)
    assert r["density"] == density
    # At real density fewer false detections pay: the threshold rises above the in-window one.
    if density < 10:
        assert r["density_threshold"] > r["best_threshold"]


def test_searched_area_is_required_and_named():
    image = ImagePoints([(1, 1)], [(1, 1)], [0.9], image_id="roi-7")
    with pytest.raises(ValueError, match="roi-7.*no searched area"):
        searched_area_mm2([image])
    assert "fp_per_mm2" not in evaluate_at_density([image])  # unknown area: no rates
    with pytest.raises(ValueError, match="area must be >= 0"):
        ImagePoints([], [], [], area_mm2=-1.0)
    with pytest.raises(ValueError, match="positive number per mm²"):
        expected_f1(0.8, 1.0, 0.0)


@pytest.fixture
def roi_dataset():
    """Two 4,000 x 4,000 px ROIs at 0.25 µm/px (1 mm² each) with 3 and 2 figures."""
    name = "prevalence_rois"

    def ann(x, y):
        return {"bbox": [x - 25, y - 25, x + 25, y + 25], "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": 0}  # fmt: skip

    dicts = [
        {"image_id": 1, "file_name": "a.tiff", "height": 4000, "width": 4000, "labelled": True,
         "tumor_type": "A", "annotations": [ann(500, 500), ann(1500, 900), ann(3000, 3000)]},
        {"image_id": 2, "file_name": "b.tiff", "height": 4000, "width": 4000, "labelled": True,
         "tumor_type": "A", "annotations": [ann(100, 3900), ann(2000, 2000)]},
    ]  # fmt: skip
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).set(thing_classes=["mitotic figure", "hard negative"], mpp=MPP)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _instances(points, scores):
    inst = Instances((4000, 4000))
    inst.pred_boxes = Boxes(
        torch.tensor([[x - 25, y - 25, x + 25, y + 25] for x, y in points]).reshape(-1, 4)
    )
    inst.scores = torch.tensor(scores)
    inst.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
    return inst


def test_the_evaluator_reports_rates_per_mm2_and_the_density_threshold(roi_dataset):
    inputs = [{"image_id": 1}, {"image_id": 2}]
    outputs = [
        {"instances": _instances([(505, 500), (1500, 905), (800, 800), (3100, 100)],
                                 [0.9, 0.5, 0.7, 0.3])},
        {"instances": _instances([(2000, 1990), (400, 400), (900, 2000)], [0.8, 0.6, 0.2])},
    ]  # fmt: skip
    results = {}
    for density in (MIDOGPP_DENSITY, 0.0):
        ev = MidogEvaluator(roi_dataset, score_threshold=0.5, density=density, distributed=False)
        ev.reset()
        ev.process(inputs, outputs)
        results[density] = ev.evaluate()["midog"]
    r = results[MIDOGPP_DENSITY]
    assert r["area_mm2"] == pytest.approx(2.0) and r["figures_per_mm2"] == pytest.approx(2.5)
    assert (r["TP"], r["FP"], r["FN"]) == (3, 2, 2) and r["FP_per_mm2"] == pytest.approx(1.0)
    assert r["expected_F1"] == pytest.approx(expected_f1(0.6, 1.0, 4.4))
    # By hand, at 4.4 per mm²: >= 0.21: R 0.6, f 1.5 -> 0.618; >= 0.31: R 0.6, f 1.0 -> 0.657;
    # >= 0.61: R 0.4, f 0.5 -> 0.528; >= 0.71: R 0.4, f 0 -> 0.571. The lowest best: 0.31.
    assert r["density_threshold"] == pytest.approx(0.31)
    assert r["density_F1"] == pytest.approx(expected_f1(0.6, 1.0, 4.4))
    # At a lymphoma's 32.5 per mm² false detections weigh less: the same 0.31, and 0.21
    # would lose less there than at 4.4.
    assert expected_f1(0.6, 1.5, 32.5) / expected_f1(0.6, 1.0, 32.5) > 0.618 / 0.657
    assert operating_threshold(r)[0] == r["density_threshold"]
    # Density 0: the ROIs' own density, where expected F1 is the F1 itself.
    own = results[0.0]
    assert own["density"] == pytest.approx(2.5) and own["expected_F1"] == pytest.approx(own["F1"])
    assert own["density_threshold"] == own["best_threshold"]
    assert operating_threshold(own)[0] == own["best_threshold"]
    # Without areas the plain best F1 is the rule.
    assert operating_threshold({"best_threshold": 0.3})[0] == 0.3


def test_density_table_of_the_real_midogpp_file_gives_the_constants(tmp_path):
    gt = SHARED / "data" / "MIDOGpp.json"
    if not gt.is_file():
        pytest.skip("shared MIDOG++ annotations not available")
    out = tmp_path / "density.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "midog_density.py"), "--json", str(gt),
         "--output", str(out)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    table = json.loads(out.read_text())
    assert table["all"]["regions"] == 503
    assert round(table["all"]["median"], 1) == MIDOGPP_DENSITY
    for tumor, median in MIDOGPP_TUMOR_DENSITY.items():
        assert round(table[tumor]["median"], 1) == median, tumor
    assert "| all | 503 | 4.4 |" in proc.stdout


def test_density_tool_names_a_bad_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "midog_density.py"), "--json", str(bad)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "bad.json" in proc.stderr


def test_rate_interval_is_garwoods_exact_poisson_interval():
    from midog_d2.evaluation.prevalence import rate_interval

    # the classic table values for 0, 1 and 10 events (95 %)
    assert rate_interval(0, 1.0) == pytest.approx((0.0, 0.0, 3.6889), abs=1e-4)
    assert rate_interval(1, 1.0) == pytest.approx((1.0, 0.0253, 5.5716), abs=1e-4)
    assert rate_interval(10, 2.0) == pytest.approx((5.0, 4.7954 / 2, 18.3904 / 2), abs=1e-4)
    # one false detection in one run's crop tissue: anywhere from 0.6 to 139 per mm²
    rate, lo, hi = rate_interval(1, 0.04)
    assert rate == 25.0 and lo < 1 and hi > 100
    with pytest.raises(ValueError, match="area 0"):
        rate_interval(1, 0)


def test_the_operating_density_is_read_one_way():
    assert operating_density(None) == MIDOGPP_DENSITY
    assert operating_density(2.7, own=9.0) == 2.7
    assert operating_density(0.0, own=9.0) == 9.0  # 0: the scored set's own
    with pytest.raises(ValueError, match="has none"):
        operating_density(0.0)  # figures in windows have no density of their own
    with pytest.raises(ValueError, match=">= 0"):
        operating_density(-1.0, own=9.0)

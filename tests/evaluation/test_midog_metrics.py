"""MIDOG scoring: hand-worked matching cases, the sweep, AP50 against pycocotools, the
Detectron2 evaluators and tools/evaluate_midog.py end to end."""

import contextlib
import io
import json
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
from conftest import REPO, SHARED

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from midog_d2.evaluation import (
    ImagePoints,
    MidogEvaluator,
    MitoticCOCOEvaluator,
    ap50_points,
    best_threshold,
    box_centres,
    build_midog_evaluators,
    count_matches,
    evaluate_points,
    evaluate_prediction_file,
    format_results_table,
    greedy_match,
    image_points,
    precision_recall_f1,
    roc_auc,
    sweep_thresholds,
)
from midog_d2.evaluation.metrics import SWEEP_THRESHOLDS
from midog_d2.fileio import instances_to_points_json, load_point_predictions

sys.path.insert(0, str(REPO / "tools"))
import evaluate_midog  # noqa: E402


def img(gt, pred, scores=None, mpp=0.25, tumor="t", selected=None):
    pred = np.asarray(pred, dtype=float).reshape(-1, 2)
    scores = np.full(len(pred), 0.9) if scores is None else scores
    return ImagePoints(gt=gt, pred=pred, scores=scores, mpp=mpp, tumor=tumor, selected=selected)


# --- matching -----------------------------------------------------------------------


def test_two_detections_of_one_cell_are_one_tp_and_one_fp():
    assert count_matches(img([[100, 100]], [[102, 100], [98, 103]])) == (1, 1, 0)


def test_distance_exactly_at_radius_is_a_hit_and_beyond_is_not():
    # 7.5 µm at 0.25 µm/px = 30 px.
    assert count_matches(img([[100, 100]], [[130, 100]])) == (1, 0, 0)
    assert count_matches(img([[100, 100]], [[100, 70]])) == (1, 0, 0)
    assert count_matches(img([[100, 100]], [[130.01, 100]])) == (0, 1, 1)
    assert count_matches(img([[100, 100]], [[118, 124.01]])) == (0, 1, 1)  # 30.008 px


def test_image_without_ground_truth_makes_every_prediction_false_positive():
    assert count_matches(img(np.zeros((0, 2)), [[1, 1], [50, 50], [900, 20]])) == (0, 3, 0)
    assert count_matches(img([[5, 5], [60, 60]], np.zeros((0, 2)))) == (0, 0, 2)


def test_threshold_keeps_scores_at_or_above_it():
    image = img(
        [[100, 100], [300, 300]], [[100, 100], [300, 300], [600, 600]], scores=[0.9, 0.5, 0.7]
    )
    assert count_matches(image) == (2, 1, 0)
    assert count_matches(image, threshold=0.5) == (2, 1, 0)
    assert count_matches(image, threshold=0.51) == (1, 1, 1)
    assert count_matches(image, threshold=0.95) == (0, 0, 2)


def test_selected_points_count_when_no_threshold_is_given():
    image = img(
        [[100, 100], [300, 300]],
        [[100, 100], [300, 300]],
        scores=[0.9, 0.2],
        selected=[True, False],
    )
    assert count_matches(image) == (1, 0, 1)
    assert count_matches(image, threshold=0.1) == (2, 0, 0)


def test_radius_is_converted_with_each_images_microns_per_pixel():
    gt, pred = [[100, 100]], [[131, 100]]  # 31 px apart
    assert count_matches(img(gt, pred, mpp=0.25)) == (0, 1, 1)  # 7.75 µm > 7.5
    assert count_matches(img(gt, pred, mpp=0.23)) == (1, 0, 0)  # 7.13 µm <= 7.5 (32.6 px)
    # The radius itself is a parameter: 8 µm at 0.25 µm/px = 32 px.
    assert count_matches(img(gt, pred, mpp=0.25), radius_um=8.0) == (1, 0, 0)


def test_matching_is_greedy_in_ground_truth_order():
    # P (x=25) is in reach of both GT points, Q (x=62) only of the second (x=40).
    preds = [[25, 0], [62, 0]]
    first, second = [0, 0], [40, 0]
    assert greedy_match(np.array([first, second]), np.array(preds), 30).tolist() == [0, 1]
    # In the other order the second GT takes P (nearest to it, 15 px) and the first,
    # which only P could serve, stays unmatched: greedy, not an optimal assignment.
    assert greedy_match(np.array([second, first]), np.array(preds), 30).tolist() == [0, -1]
    assert count_matches(img([second, first], preds)) == (1, 1, 1)


def test_nearest_free_prediction_is_taken_and_ties_go_to_the_lower_index():
    assert greedy_match(np.array([[0, 0]]), np.array([[20, 0], [10, 0], [0, 25]]), 30).tolist() == [
        1
    ]
    assert greedy_match(np.array([[0, 0]]), np.array([[10, 0], [0, 10]]), 30).tolist() == [0]
    assert greedy_match(np.array([[0, 0]]), np.array([[0, 10], [10, 0]]), 30).tolist() == [0]


def test_rates_are_nan_when_undefined():
    p, r, f1 = precision_recall_f1(0, 0, 4)
    assert np.isnan(p) and r == 0.0 and f1 == 0.0
    assert all(np.isnan(v) for v in precision_recall_f1(0, 0, 0))
    assert precision_recall_f1(3, 1, 2) == (0.75, 0.6, 6 / 9)


def test_f1_is_pooled_over_images_and_within_tumor_types():
    a1 = img([[100, 100]], [[100, 100]], tumor="A")  # TP
    a2 = img([[100, 100], [400, 400]], [[900, 900]], tumor="A")  # FP, 2 FN
    b1 = img([[100, 100]] * 1, [[100, 100], [500, 500], [700, 700]], tumor="B")  # TP, 2 FP
    r = evaluate_points([a1, a2, b1], threshold=0.5)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 3, 2)
    assert r["f1"] == pytest.approx(4 / 9)
    assert r["per_tumor"]["A"]["f1"] == pytest.approx(2 / 5)  # TP 1, FP 1, FN 2
    assert r["per_tumor"]["B"]["f1"] == pytest.approx(2 / 4)  # TP 1, FP 2
    # Pooled F1 is not the mean of per-image or per-tumor F1.
    assert r["f1"] != pytest.approx((2 / 5 + 2 / 4) / 2)
    assert r["per_tumor"]["A"]["num_images"] == 2 and r["num_images"] == 3


def test_sweep_finds_the_known_best_threshold():
    gt = [[100, 100], [300, 300], [500, 500]]
    pred = [[100, 100], [300, 300], [500, 500], [800, 800], [900, 900]]
    scores = [0.9, 0.8, 0.35, 0.30, 0.20]
    r = evaluate_points([img(gt, pred, scores)], threshold=0.5)
    # Thresholds 0.31..0.35 keep exactly the three hits: F1 = 1; the lowest is reported.
    assert r["best_f1"] == 1.0
    assert r["best_threshold"] == pytest.approx(0.31)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 0, 1)
    tp, fp, fn = sweep_thresholds([img(gt, pred, scores)])
    assert (tp[0], fp[0], fn[0]) == (3, 2, 0)  # threshold 0.00 keeps all
    assert (tp[99], fp[99], fn[99]) == (0, 0, 3)


def test_best_threshold_is_the_one_sweep_and_its_tie_rule():
    gt = [[100, 100], [300, 300], [500, 500]]
    pred = [[100, 100], [300, 300], [500, 500], [800, 800], [900, 900]]
    images = [img(gt, pred, [0.9, 0.8, 0.35, 0.30, 0.20])]
    assert best_threshold(images) == (1.0, pytest.approx(0.31))
    # on a coarser grid the best is found among its own thresholds only
    f1, t = best_threshold(images, thresholds=[0.1, 0.5, 0.85])
    assert t == 0.5 and f1 == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    nothing = [img([], [], [])]
    f1, t = best_threshold(nothing)
    assert np.isnan(f1) and np.isnan(t)


def test_image_points_is_what_both_scorers_score():
    record = {
        "image_id": 7,
        "tumor_type": "canine lymphoma",
        "annotations": [
            {"bbox": [0, 0, 50, 50], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},
            {"bbox": [100, 100, 150, 150], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1},
            {"bbox": [200, 0, 50, 50], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
        ],
    }
    pred = [[25, 25], [125, 125], [400, 400]]
    points = image_points(record, pred, [0.9, 0.8, 0.7], 0.25, selected=[True, False, True])
    assert points.gt.tolist() == [[25, 25], [225, 25]]  # mitotic figures only, XYWH converted
    assert points.tumor == "canine lymphoma" and points.image_id == 7 and points.mpp == 0.25
    assert points.selected.tolist() == [True, False, True]
    inside = image_points(record, pred, [0.9, 0.8, 0.7], 0.25, region=(0, 0, 200, 200))
    assert inside.gt.tolist() == [[25, 25]] and inside.pred.tolist() == [[25, 25], [125, 125]]
    assert inside.scores.tolist() == [0.9, 0.8]
    assert box_centres(record).tolist() == [[25, 25], [125, 125], [225, 25]]  # both classes
    assert image_points(dict(record, labelled=False), pred, [0.9, 0.8, 0.7], 0.25) is None
    assert image_points(dict(record, annotations=[]), pred, [0.9, 0.8, 0.7], 0.25) is None


def test_sweep_equals_matching_at_every_threshold():
    rng = np.random.default_rng(0)
    images = []
    for i in range(30):
        gt = rng.uniform(0, 400, (int(rng.integers(0, 12)), 2))
        near = (
            gt[rng.integers(0, max(len(gt), 1), 3)] + rng.normal(0, 15, (3, 2))
            if len(gt)
            else np.zeros((0, 2))
        )
        pred = np.concatenate([near, rng.uniform(0, 400, (int(rng.integers(0, 15)), 2))])
        images.append(
            img(gt, pred, rng.uniform(0, 1, len(pred)), mpp=rng.choice([0.23, 0.25, 0.26]))
        )
    tp, fp, fn = sweep_thresholds(images)
    for k, t in enumerate(SWEEP_THRESHOLDS):
        counts = np.sum([count_matches(im, threshold=t) for im in images], axis=0)
        assert tuple(counts) == (tp[k], fp[k], fn[k]), t


# --- AP50 ---------------------------------------------------------------------------


def test_ap50_hand_worked():
    # Squares of ±11.25 µm (45 px at 0.25): IoU is exactly 0.5 at 30 px horizontal offset.
    gt = [[100, 100], [300, 300], [200, 500]]
    pred = [[100, 100], [600, 600], [200, 530], [300, 300], [200, 531]]
    scores = [0.9, 0.8, 0.6, 0.4, 0.3]
    # Ranked: TP, FP, TP (IoU 0.5), TP, FP (the ground truth is taken) ->
    # precision envelope 1 up to recall 1/3, 0.75 up to recall 1.
    assert ap50_points([img(gt, pred, scores)]) == pytest.approx((34 * 1.0 + 67 * 0.75) / 101)
    assert ap50_points([img(gt, gt, [0.5, 0.6, 0.7])]) == pytest.approx(1.0)
    assert np.isnan(ap50_points([img(np.zeros((0, 2)), pred, scores)]))
    assert ap50_points([img(gt, np.zeros((0, 2)))]) == 0.0


def test_ap50_matches_pycocotools():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(1)
    images, gt_anns, dts, coco_images = [], [], [], []
    for image_id in range(1, 21):
        mpp = float(rng.choice([0.23, 0.25, 0.26]))
        half = 11.25 / mpp
        gt = rng.uniform(0, 600, (int(rng.integers(0, 8)), 2))
        near = gt + rng.normal(0, 12, gt.shape)
        pred = np.concatenate([near, rng.uniform(0, 600, (int(rng.integers(0, 10)), 2))])
        scores = rng.uniform(0, 1, len(pred))
        images.append(img(gt, pred, scores, mpp=mpp))
        coco_images.append({"id": image_id, "width": 700, "height": 700})
        for x, y in gt:
            gt_anns.append(
                {
                    "id": len(gt_anns) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "bbox": [x - half, y - half, 2 * half, 2 * half],
                    "area": 4 * half * half,
                }
            )
        for (x, y), s in zip(pred, scores):
            dts.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "score": float(s),
                    "bbox": [x - half, y - half, 2 * half, 2 * half],
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {
            "images": coco_images,
            "annotations": gt_anns,
            "categories": [{"id": 1, "name": "mf"}],
        }
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dts), "bbox")
        ev.params.maxDets = [1, 10, 10000]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ap50_points(images) == pytest.approx(ev.stats[1], abs=1e-12)


def test_roc_auc():
    assert roc_auc([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.3, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert roc_auc([0.9, 0.3, 0.5, 0.1], [1, 1, 0, 0]) == 0.75
    assert roc_auc([0.5, 0.5], [1, 0]) == 0.5
    assert np.isnan(roc_auc([0.5, 0.7], [1, 1]))


# --- evaluators ---------------------------------------------------------------------


def box(cx, cy, half=25.0):
    return [cx - half, cy - half, cx + half, cy + half]


def ann(cx, cy, cls):
    return {"bbox": box(cx, cy), "bbox_mode": BoxMode.XYXY_ABS, "category_id": cls}


@pytest.fixture
def dataset():
    """Image 1 (tumor A): mitotic figures at (100, 100), (300, 300), a hard negative at
    (500, 500); image 2 (tumor B): one at (200, 200); image 3: never annotated."""
    name = f"midog_eval_test_{uuid.uuid4().hex[:8]}"
    dicts = [
        {
            "image_id": 1,
            "file_name": "/x/001.tiff",
            "height": 1000,
            "width": 1000,
            "tumor_type": "A",
            "domain_label": 0,
            "labelled": True,
            "annotations": [ann(100, 100, 0), ann(300, 300, 0), ann(500, 500, 1)],
        },
        {
            "image_id": 2,
            "file_name": "/x/002.tiff",
            "height": 1000,
            "width": 1000,
            "tumor_type": "B",
            "domain_label": 1,
            "labelled": True,
            "annotations": [ann(200, 200, 0)],
        },
        {
            "image_id": 3,
            "file_name": "/x/003.tiff",
            "height": 1000,
            "width": 1000,
            "tumor_type": "B",
            "domain_label": 1,
            "labelled": False,
            "annotations": [],
        },
    ]
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).set(thing_classes=["mitotic figure", "hard negative"], mpp=0.25)
    yield name
    for n in (name, f"{name}_mitotic_only"):
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)


def outputs_for(tiles=True):
    def inst(centres, scores, classes):
        i = Instances((1000, 1000))
        i.pred_boxes = Boxes(
            torch.tensor([box(*c) for c in centres], dtype=torch.float32).reshape(-1, 4)
        )
        i.scores = torch.tensor(scores, dtype=torch.float32)
        i.pred_classes = torch.tensor(classes, dtype=torch.int64)
        return i

    inputs = [
        {"image_id": k, "file_name": f"/x/00{k}.tiff", "height": 1000, "width": 1000}
        for k in (1, 2, 3)
    ]
    outputs = [
        # TP; FP on the hard negative; TP only below 0.5; a class-1 detection (not scored).
        {
            "instances": inst(
                [(105, 100), (500, 500), (300, 300), (700, 700)],
                [0.9, 0.8, 0.4, 0.95],
                [0, 0, 0, 1],
            ),
            "domain_probs": torch.tensor([0.7, 0.3]),
        },
        # A hit exactly at the radius (30 px).
        {"instances": inst([(200, 230)], [0.6], [0]), "domain_probs": torch.tensor([0.6, 0.4])},
        # Unlabelled image: not scored.
        {"instances": inst([(50, 50)], [0.99], [0]), "domain_probs": torch.tensor([0.2, 0.8])},
    ]
    if tiles:
        tile_sets = [
            (
                [
                    [0, 0, 256, 256],
                    [256, 256, 512, 512],
                    [600, 600, 800, 800],
                    [480, 480, 520, 520],
                ],
                [0.9, 0.3, 0.5, 0.95],
            ),
            ([[0, 0, 100, 100]], [0.1]),
            ([[0, 0, 1000, 1000]], [0.0]),
        ]
        for out, (t, p) in zip(outputs, tile_sets):
            out["tiles"] = torch.tensor(t, dtype=torch.float32)
            out["foreground_prob"] = torch.tensor(p)
    return inputs, outputs


def test_midog_evaluator_hand_worked(dataset, tmp_path, cfg):
    ev = MidogEvaluator(dataset, cfg, str(tmp_path))
    ev.reset()
    inputs, outputs = outputs_for()
    ev.process(inputs[:2], outputs[:2])
    ev.process(inputs[2:], outputs[2:])
    res = ev.evaluate()["midog"]
    assert (res["TP"], res["FP"], res["FN"]) == (2, 1, 1)
    assert res["F1"] == pytest.approx(4 / 6)
    assert res["precision"] == pytest.approx(2 / 3) and res["recall"] == pytest.approx(2 / 3)
    assert res["threshold"] == 0.5 and res["num_images"] == 2
    assert res["best_F1"] == pytest.approx(6 / 7) and res["best_threshold"] == 0.0
    assert res["F1/A"] == pytest.approx(0.5) and res["F1/B"] == pytest.approx(1.0)
    # Ranked TP, FP, TP (IoU exactly 0.5 at 30 px), TP of 3 ground-truth points.
    assert res["AP50_points"] == pytest.approx((34 + 67 * 0.75) / 101)
    assert res["domain_accuracy"] == pytest.approx(2 / 3)
    # Tiles of labelled images: positives 0.9, 0.3, 0.95 (hard negative only), negatives 0.5, 0.1.
    assert res["foreground_AUC"] == pytest.approx(5 / 6)
    metrics = json.loads((tmp_path / "midog_metrics.json").read_text())
    assert metrics["tp"] == 2 and metrics["unlabelled_images_skipped"] == 1
    assert metrics["per_tumor"]["A"]["fn"] == 1
    points = json.loads((tmp_path / "midog_points.json").read_text())
    assert sorted(points) == ["001.tiff", "002.tiff", "003.tiff"]
    p = points["001.tiff"]["points"]
    assert len(p) == 3  # the class-1 detection is not a mitotic figure
    assert p[0]["point"] == pytest.approx([105 * 0.25e-3, 100 * 0.25e-3, 0])
    assert [q["name"] for q in p] == ["mitotic figure", "mitotic figure", "non-mitotic figure"]
    assert "midog/F1" in format_results_table({"midog": res})


def test_midog_evaluator_region_restricts_ground_truth(dataset):
    ev = MidogEvaluator(dataset, radius_um=7.5, score_threshold=0.5)
    ev.reset()
    inputs, outputs = outputs_for(tiles=False)
    inputs[0]["region"] = (0, 0, 200, 200)  # only (100, 100) of image 1 lies inside
    ev.process(inputs[:1], outputs[:1])
    res = ev.evaluate()["midog"]
    assert (res["TP"], res["FP"], res["FN"]) == (1, 0, 0)
    assert "foreground_AUC" not in res


def test_mitotic_coco_evaluator_scores_the_mitotic_class_only(dataset, tmp_path):
    evaluators = build_midog_evaluators(None, dataset, str(tmp_path))
    evaluators.reset()
    inputs, outputs = outputs_for()
    evaluators.process(inputs, outputs)
    with contextlib.redirect_stdout(io.StringIO()):
        results = evaluators.evaluate()
    assert set(results) == {"midog", "bbox"}
    # 50-px boxes: (105, 100) IoU 0.82 hit, (500, 500) on the hard negative is a false
    # positive, (200, 230) IoU 0.25 false positive, (300, 300) hit; 3 ground truths.
    # Envelope 1 to recall 1/3, 0.5 to 2/3, 0 beyond: AP50 = (34 + 33 * 0.5) / 101 = 50%.
    assert results["bbox"]["AP50"] == pytest.approx(50.0)
    gt = json.loads((tmp_path / f"{dataset}_mitotic_only_coco_format.json").read_text())
    assert len(gt["annotations"]) == 3 and [c["name"] for c in gt["categories"]] == [
        "mitotic figure"
    ]
    assert {i["id"] for i in gt["images"]} == {1, 2}


def test_coco_evaluator_scores_only_processed_images(dataset, tmp_path):
    ev = MitoticCOCOEvaluator(dataset, str(tmp_path))
    ev.reset()
    inputs, outputs = outputs_for()
    ev.process(inputs[1:2], outputs[1:2])  # image 2 alone: one FP (IoU 0.25), its one GT missed
    with contextlib.redirect_stdout(io.StringIO()):
        res = ev.evaluate()
    assert res["bbox"]["AP50"] == pytest.approx(0.0)


# --- challenge files and the CLI ----------------------------------------------------


def write_gt(path, category_names=("mitotic figure", "not mitotic figure")):
    """001.tiff (breast): mitotic figures at (100, 100), (300, 300), hard negative at
    (500, 500); 002.tiff (lymphosarcoma): one at (200, 200); 003.tiff: never annotated."""
    anns = []
    for image_id, (cx, cy), cat in [
        (1, (100, 100), 1),
        (1, (300, 300), 1),
        (1, (500, 500), 2),
        (2, (200, 200), 1),
    ]:
        anns.append(
            {"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": box(cx, cy)}
        )
    data = {
        "images": [
            {
                "id": 1,
                "file_name": "001.tiff",
                "width": 1000,
                "height": 1000,
                "tumor_type": "human breast cancer",
            },
            {
                "id": 2,
                "file_name": "002.tiff",
                "width": 1000,
                "height": 1000,
                "tumor_type": "canine lymphosarcoma",
            },
            {
                "id": 3,
                "file_name": "003.tiff",
                "width": 1000,
                "height": 1000,
                "tumor_type": "human melanoma",
            },
        ],
        "categories": [{"id": 1, "name": category_names[0]}, {"id": 2, "name": category_names[1]}],
        "annotations": anns,
    }
    path.write_text(json.dumps(data))
    return path


# (image, centre px, score): TP, FP on the hard negative, TP below 0.5, unlabelled image.
PREDICTIONS = [
    (1, (102, 100), 0.9),
    (1, (500, 500), 0.8),
    (1, (300, 310), 0.4),
    (2, (200, 229), 0.6),
    (3, (50, 50), 0.99),
]


def write_coco(path, category_id=0):
    path.write_text(
        json.dumps(
            [
                {
                    "image_id": i,
                    "category_id": category_id,
                    "bbox": [x - 25, y - 25, 50, 50],
                    "score": s,
                }
                for i, (x, y), s in PREDICTIONS
            ]
        )
    )
    return path


def points_obj(image_id, threshold=0.5, mpp=0.25):
    inst = Instances((1000, 1000))
    rows = [(c, s) for i, c, s in PREDICTIONS if i == image_id]
    inst.pred_boxes = Boxes(
        torch.tensor([box(*c) for c, _ in rows], dtype=torch.float64).reshape(-1, 4)
    )
    inst.scores = torch.tensor([s for _, s in rows], dtype=torch.float64)
    inst.pred_classes = torch.zeros(len(rows), dtype=torch.int64)
    return instances_to_points_json(inst, mpp, threshold)


def check_expected(r):
    assert r["unlabelled_images"] == 1 and r["ignored_predictions"] == 1
    assert set(r["per_tumor"]) == {"human breast cancer", "canine lymphoma"}
    assert r["best_f1"] == pytest.approx(6 / 7) and r["best_threshold"] == 0.0


def test_cli_coco_results(tmp_path):
    gt = write_gt(tmp_path / "gt.json")
    out = tmp_path / "out" / "metrics.json"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        evaluate_midog.main(
            [
                "--ground-truth",
                str(gt),
                "--predictions",
                str(write_coco(tmp_path / "p.json")),
                "--output",
                str(out),
            ]
        )
    r = json.loads(out.read_text())
    for key in (
        "tp",
        "fp",
        "fn",
        "precision",
        "recall",
        "f1",
        "threshold",
        "best_f1",
        "best_threshold",
        "per_tumor",
    ):
        assert key in r
    # No threshold: every detection of the labelled images counts.
    assert (
        (r["tp"], r["fp"], r["fn"]) == (3, 1, 0)
        and r["threshold"] is None
        and r["format"] == "coco"
    )
    check_expected(r)
    assert "all/f1" in printed.getvalue()
    r = evaluate_midog.main(
        ["--ground-truth", str(gt), "--predictions", str(tmp_path / "p.json"), "--threshold", "0.5"]
    )
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1) and r["f1"] == pytest.approx(4 / 6)
    assert r["per_tumor"]["canine lymphoma"]["f1"] == 1.0
    # µm/px: at 0.3 µm/px the radius is 25 px, and (200, 229) misses.
    r = evaluate_midog.main(
        ["--ground-truth", str(gt), "--predictions", str(tmp_path / "p.json"), "--mpp", "0.3"]
    )
    assert (r["tp"], r["fp"], r["fn"]) == (2, 2, 1)


def test_cli_coco_results_with_several_categories_needs_the_mitotic_id(tmp_path):
    gt = write_gt(tmp_path / "gt.json")
    p = write_coco(tmp_path / "p.json", category_id=1)
    data = json.loads(p.read_text()) + [
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 50, 50], "score": 0.9}
    ]
    p.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"p\.json.*several categories"):
        evaluate_prediction_file(gt, p)
    r = evaluate_prediction_file(gt, p, pred_category_id=1)
    assert (r["tp"], r["fp"], r["fn"]) == (3, 1, 0)
    with pytest.raises(ValueError, match=r"p\.json: no detection has category_id 0"):
        evaluate_prediction_file(gt, p, pred_category_id=0)


@pytest.mark.parametrize("form", ["mapping", "directory", "mapping_by_id"])
def test_cli_midog_points(tmp_path, form):
    gt = write_gt(tmp_path / "gt.json", ("Mitose", "Hard negative"))
    objs = {name: points_obj(i) for i, name in [(1, "001.tiff"), (2, "002.tiff"), (3, "003.tiff")]}
    if form == "mapping":
        pred = tmp_path / "points.json"
        pred.write_text(json.dumps(objs))
    elif form == "mapping_by_id":
        pred = tmp_path / "points.json"
        pred.write_text(json.dumps({"1": objs["001.tiff"], "2": objs["002.tiff"]["points"]}))
    else:
        pred = tmp_path / "points"
        pred.mkdir()
        for name, obj in objs.items():
            (pred / f"{name.split('.')[0]}.json").write_text(json.dumps(obj))
    r = evaluate_midog.main(
        [
            "--ground-truth",
            str(gt),
            "--predictions",
            str(pred),
            "--output",
            str(tmp_path / "m.json"),
        ]
    )
    assert r["format"] == "points"
    # Without --threshold every point counts...
    assert (r["tp"], r["fp"], r["fn"]) == (3, 1, 0)
    # ...or, on request, only those named "mitotic figure" (score >= 0.5 here).
    r = evaluate_midog.main(
        ["--ground-truth", str(gt), "--predictions", str(pred), "--use-point-names"]
    )
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)
    assert r["best_f1"] == pytest.approx(6 / 7)
    assert r["ignored_predictions"] == (0 if form == "mapping_by_id" else 1)
    r = evaluate_midog.main(
        ["--ground-truth", str(gt), "--predictions", str(pred), "--threshold", "0.3"]
    )
    assert (r["tp"], r["fp"], r["fn"]) == (3, 1, 0)


def test_single_points_file_is_matched_by_its_name(tmp_path):
    gt = write_gt(tmp_path / "gt.json")
    pred = tmp_path / "002.json"
    pred.write_text(json.dumps(points_obj(2)))
    r = evaluate_prediction_file(gt, pred)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 2)  # image 1's two mitotic figures are missed


def test_points_round_trip_microns(tmp_path):
    gt = write_gt(tmp_path / "gt.json")
    pred = tmp_path / "points.json"
    pred.write_text(json.dumps({"001.tiff": points_obj(1, mpp=0.23)}))
    ((xy, prob, named),) = load_point_predictions(
        pred, [{"image_id": 1, "file_name": "001.tiff"}]
    ).values()
    assert xy[0] == pytest.approx([102 * 0.23e-3, 100 * 0.23e-3])
    assert prob.tolist() == [0.9, 0.8, 0.4] and named.tolist() == [True, True, False]
    r = evaluate_prediction_file(gt, pred, mpp=0.23, threshold=0.0)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)


def test_cli_bad_inputs_name_the_file(tmp_path):
    gt = write_gt(tmp_path / "gt.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        evaluate_prediction_file(gt, tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="nogt.json"):
        evaluate_prediction_file(tmp_path / "nogt.json", write_coco(tmp_path / "p.json"))
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        evaluate_prediction_file(gt, bad)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"predictions": 3}))
    with pytest.raises(ValueError, match=r"unknown\.json: unknown prediction format"):
        evaluate_prediction_file(gt, unknown)
    stray = tmp_path / "stray.json"
    stray.write_text(json.dumps({"999.tiff": points_obj(1)}))
    with pytest.raises(ValueError, match=r"stray\.json.*'999\.tiff' is not in the ground truth"):
        evaluate_prediction_file(gt, stray)
    badpoint = tmp_path / "badpoint.json"
    badpoint.write_text(
        json.dumps({"001.tiff": {"type": "Multiple points", "points": [{"point": ["a"]}]}})
    )
    with pytest.raises(ValueError, match=r"badpoint\.json.*point #0"):
        evaluate_prediction_file(gt, badpoint)
    wrong_id = tmp_path / "wrong_id.json"
    wrong_id.write_text(
        json.dumps([{"image_id": 42, "category_id": 0, "bbox": [0, 0, 50, 50], "score": 0.5}])
    )
    with pytest.raises(ValueError, match=r"wrong_id\.json: image_id 42"):
        evaluate_prediction_file(gt, wrong_id)


def test_cli_entry_point_exits_with_the_error(tmp_path):
    gt = write_gt(tmp_path / "gt.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "evaluate_midog.py"),
            "--ground-truth",
            str(gt),
            "--predictions",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "bad.json: not valid JSON" in proc.stderr


def test_real_midogpp_annotations(tmp_path):
    gt = SHARED / "data" / "MIDOGpp.json"
    if not gt.is_file():
        pytest.skip("shared MIDOG++ annotations not available")
    data = json.loads(gt.read_text())
    wanted = {1, 2, 3, 200, 201}  # 200 is one of the never-annotated images (151-200)
    mitotic = [a for a in data["annotations"] if a["category_id"] == 1 and a["image_id"] in wanted]
    preds = [
        {
            "image_id": a["image_id"],
            "category_id": 0,
            "score": 0.8,
            "bbox": [a["bbox"][0], a["bbox"][1], 50, 50],
        }
        for a in mitotic
    ]
    preds.append({"image_id": 200, "category_id": 0, "bbox": [10, 10, 50, 50], "score": 0.9})
    p = tmp_path / "p.json"
    p.write_text(json.dumps(preds))
    r = evaluate_prediction_file(gt, p, mpp=0.25, threshold=0.5)
    n_all = sum(1 for a in data["annotations"] if a["category_id"] == 1)
    assert r["tp"] == len(mitotic) and r["fp"] == 0 and r["fn"] == n_all - len(mitotic)
    assert r["unlabelled_images"] == 50 and r["ignored_predictions"] == 1
    assert r["num_images"] == 503
    breast = sum(1 for a in mitotic if a["image_id"] in {1, 2, 3})  # 201 is another tumor type
    assert r["per_tumor"]["human breast cancer"]["tp"] == breast > 0
    assert sum(t["tp"] for t in r["per_tumor"].values()) == r["tp"]


@pytest.mark.parametrize(
    "entry",
    [
        {"image_id": 1, "category_id": 1, "bbox": [75.0, 75.0, 50.0, 50.0], "score": float("nan")},
        {"image_id": 1, "category_id": 1, "bbox": [75.0, 75.0, 50.0, 50.0], "score": float("inf")},
        {"image_id": 1, "category_id": 1, "bbox": [float("nan"), 75.0, 50.0, 50.0], "score": 0.9},
    ],
)
def test_non_finite_scores_or_boxes_are_refused_naming_the_entry(tmp_path, entry):
    gt = write_gt(tmp_path / "gt.json")
    good = {"image_id": 1, "category_id": 1, "bbox": [275.0, 275.0, 50.0, 50.0], "score": 0.8}
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([good, entry]))  # json writes NaN / Infinity as Python reads it
    with pytest.raises(ValueError, match=r"p\.json: entry #1 has a non-finite bbox or score"):
        evaluate_midog.main(["--ground-truth", str(gt), "--predictions", str(preds)])

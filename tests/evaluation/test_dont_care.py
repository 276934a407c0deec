"""Don't-care zones (an evaluation set's label, category "don't care"): the loader reads them,
training drops them, and a detection in one, and near no mitotic figure, is neither true nor
false; whole MIDOG-style files register from DATASETS.MIDOG.EXTRA."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import make_cfg
from midog_fixtures import write_tiled_tiff

from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances

from midog_d2.constants import DEFAULT_DONT_CARE_RADIUS_UM, DONT_CARE, MITOTIC_FIGURE
from midog_d2.data import load_midog_json
from midog_d2.data.mapper import _boxes_and_classes
from midog_d2.data.register import register_from_config
from midog_d2.evaluation import ImagePoints, count_matches, evaluate_points
from midog_d2.evaluation.scoring import image_points, zones_area_px


def _write(tmp_path, extra_categories=True):
    write_tiled_tiff(tmp_path / "a.tiff", np.full((512, 512, 3), 200, np.uint8))
    cats = [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "not mitotic figure"}]
    if extra_categories:
        cats.append({"id": 3, "name": "don't care"})
    box = lambda x, y: [x - 25, y - 25, x + 25, y + 25]  # noqa: E731
    doc = {
        "images": [{"id": 1, "file_name": "a.tiff", "width": 512, "height": 512}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": box(100, 100)},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": box(300, 300)},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": box(400, 100)},
        ],
        "categories": cats,
    }
    path = tmp_path / "rois.json"
    path.write_text(json.dumps(doc))
    return path


def test_the_loader_reads_dont_care_zones_and_training_drops_them(tmp_path):
    (d,) = load_midog_json(str(_write(tmp_path)), str(tmp_path))
    classes = [a["category_id"] for a in d["annotations"]]
    assert classes == [MITOTIC_FIGURE, DONT_CARE, 1]
    boxes, cls = _boxes_and_classes(d)
    assert cls.tolist() == [MITOTIC_FIGURE, 1] and len(boxes) == 2


def test_a_detection_in_a_zone_is_neither_true_nor_false():
    gt, zone = [(100.0, 100.0)], [(300.0, 300.0)]
    # a hit, one in the zone (10 px off), one far from everything
    pred = [(102.0, 100.0), (310.0, 300.0), (450.0, 450.0)]
    scores = [0.9, 0.8, 0.7]
    plain = ImagePoints(gt, pred, scores, mpp=0.25)
    zoned = ImagePoints(gt, pred, scores, mpp=0.25, ignore=zone)
    assert count_matches(plain, threshold=0.5) == (1, 2, 0)
    assert count_matches(zoned, threshold=0.5) == (1, 1, 0)
    # the sweep, AP and the density numbers see the same detections
    res = evaluate_points([zoned], threshold=0.5)
    assert (res["tp"], res["fp"], res["num_pred"]) == (1, 1, 2)
    # a zone does not take a hit away from a figure it overlaps
    near = ImagePoints(gt, [(101.0, 100.0)], [0.9], mpp=0.25, ignore=[(105.0, 100.0)])
    assert count_matches(near, threshold=0.5) == (1, 0, 0)
    # a second detection of a figure, also in a zone next to it: near the figure, so kept,
    # and a false one as MIDOG counts a double detection
    twice = ImagePoints(gt, [(100.0, 100.0), (101.0, 101.0)], [0.9, 0.8], ignore=[(110.0, 100.0)])
    assert count_matches(twice, threshold=0.5) == (1, 1, 0)


def test_the_evaluator_scores_zones_from_the_dataset_dicts(tmp_path):
    (d,) = load_midog_json(str(_write(tmp_path)), str(tmp_path))
    pts = image_points(d, np.array([[100.0, 100.0], [305.0, 300.0]]), np.array([0.9, 0.9]), 0.25)
    assert pts.ignore.tolist() == [[300.0, 300.0]]
    assert count_matches(pts, threshold=0.5) == (1, 0, 0)


def test_whole_files_register_from_extra(tmp_path):
    path = _write(tmp_path)
    cfg = make_cfg()
    cfg.DATASETS.MIDOG.EXTRA = [["rois_extra_test", str(path), str(tmp_path)]]
    assert register_from_config(cfg) == ["rois_extra_test"]
    (d,) = DatasetCatalog.get("rois_extra_test")
    assert d["file_name"].endswith("a.tiff") and len(d["annotations"]) == 3
    cfg.DATASETS.MIDOG.EXTRA = [["missing", str(tmp_path / "nope.json"), str(tmp_path)]]
    with pytest.raises(FileNotFoundError, match="nope.json"):
        register_from_config(cfg)
    cfg.DATASETS.MIDOG.EXTRA = [["two", str(path)]]
    with pytest.raises(ValueError, match=r"\[name, json_file, image_root\]"):
        register_from_config(cfg)


def test_loaders_and_coco_evaluation_take_the_zones_as_detectron2_can(tmp_path):
    from midog_d2.data.register import register_midog
    from midog_d2.data.sampler import build_midog_test_loader
    from midog_d2.evaluation.evaluator import register_mitotic_only

    register_midog("rois_zones_loader", str(_write(tmp_path)), str(tmp_path))
    cfg = make_cfg()
    cfg.DATALOADER.NUM_WORKERS = 0
    (batch,) = list(build_midog_test_loader(cfg, "rois_zones_loader"))
    assert batch[0]["instances"].gt_classes.tolist() == [MITOTIC_FIGURE, 1]
    # the catalog keeps them for the evaluators
    (d,) = DatasetCatalog.get("rois_zones_loader")
    assert [a["category_id"] for a in d["annotations"]].count(DONT_CARE) == 1
    (m,) = DatasetCatalog.get(register_mitotic_only("rois_zones_loader"))
    assert [(a["category_id"], a.get("iscrowd", 0)) for a in m["annotations"]] == [(0, 0), (0, 1)]


def test_a_zone_reaches_the_whole_figure_and_its_radius_is_a_setting(tmp_path):
    (d,) = load_midog_json(str(_write(tmp_path)), str(tmp_path))
    # 10 µm (40 px at 0.25 µm/px) off the zone's centre: an off-centre detection of that
    # figure (a telophase's other half), beyond the 7.5-µm hit radius
    pred, scores = np.array([[100.0, 100.0], [340.0, 300.0], [370.0, 300.0]]), np.ones(3)
    by_default = image_points(d, pred, scores, 0.25)
    assert by_default.ignore_radius_um == DEFAULT_DONT_CARE_RADIUS_UM == 15.0
    # 40 px is within 15 µm (60 px), 70 px is not
    assert count_matches(by_default, threshold=0.5) == (1, 1, 0)
    narrow = image_points(d, pred, scores, 0.25, ignore_radius_um=7.5)
    assert count_matches(narrow, threshold=0.5) == (1, 2, 0)
    # no detection in a zone can be false: false detections per mm² count over the rest
    px2 = (0.25e-3) ** 2
    assert 512**2 - by_default.area_mm2 / px2 == pytest.approx(math.pi * 60**2, rel=0.02)
    assert 512**2 - narrow.area_mm2 / px2 == pytest.approx(math.pi * 30**2, rel=0.02)
    # overlapping zones count once, and only inside the image
    two = zones_area_px(
        np.array([[100.0, 100.0], [160.0, 100.0], [0.0, 300.0]]), 60, (0, 0, 512, 512)
    )
    lens = 60**2 * (2 * math.pi / 3 - math.sqrt(3) / 2)
    assert two == pytest.approx(2 * math.pi * 60**2 - lens + math.pi * 60**2 / 2, rel=0.02)
    # the evaluator reads TEST.MIDOG.DONT_CARE_RADIUS_UM
    from midog_d2.data.register import register_midog
    from midog_d2.evaluation import MidogEvaluator

    register_midog("rois_zone_radius", str(tmp_path / "rois.json"), str(tmp_path))
    cfg = make_cfg()
    assert cfg.TEST.MIDOG.DONT_CARE_RADIUS_UM == 15.0
    inst = Instances((512, 512))
    inst.pred_boxes = Boxes(torch.tensor([[x - 25, y - 25, x + 25, y + 25] for x, y in pred]))
    inst.scores = torch.ones(3)
    inst.pred_classes = torch.zeros(3, dtype=torch.int64)
    counts = {}
    for radius in (15.0, 7.5, 20.0):
        cfg.TEST.MIDOG.DONT_CARE_RADIUS_UM = radius
        ev = MidogEvaluator("rois_zone_radius", cfg, score_threshold=0.5, distributed=False)
        ev.reset()
        ev.process([{"image_id": 1, "height": 512, "width": 512}], [{"instances": inst}])
        res = ev.evaluate()["midog"]
        counts[radius] = (res["TP"], res["FP"], res["FN"])
    # 70 px = 17.5 µm: inside a 20-µm zone
    assert counts == {15.0: (1, 1, 0), 7.5: (1, 2, 0), 20.0: (1, 0, 0)}

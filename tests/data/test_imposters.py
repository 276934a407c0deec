"""Imposter mining (midog_d2.data.imposters, tools/mine_imposters.py): which detections
become hard negatives, how they are written, and the tool end to end on generated data."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import CONFIGS, REPO, tiny_train_opts
from midog_fixtures import write_midog_dataset

from midog_d2.constants import BOX_SIZE, HARD_NEGATIVE, MITOTIC_FIGURE
from midog_d2.data import load_midog_json
from midog_d2.data.imposters import add_mined_annotations, mine_imposters


def test_only_confident_detections_away_from_every_cell_once_each():
    cells = np.array([[100.0, 100.0], [300.0, 300.0]])  # a figure and a labelled imposter
    det = np.array(
        [
            [105.0, 100.0],  # on the figure
            [300.0, 329.0],  # within the radius of the labelled imposter
            [200.0, 200.0],  # free, confident
            [210.0, 200.0],  # the same cell, lower score
            [500.0, 500.0],  # free, not confident
            [300.0, 331.0],  # just beyond the radius
        ]
    )
    scores = np.array([0.9, 0.8, 0.7, 0.75, 0.2, 0.6])
    pts, s = mine_imposters(cells, det, scores, threshold=0.5, radius=30.0)
    assert pts.tolist() == [[210.0, 200.0], [300.0, 331.0]] and s.tolist() == [0.75, 0.6]
    assert mine_imposters(np.zeros((0, 2)), det, scores, 0.95, 30.0)[0].shape == (0, 2)
    with pytest.raises(ValueError, match="3 detections but 2 scores"):
        mine_imposters(cells, det[:3], scores[:2], 0.5, 30.0)


@pytest.mark.parametrize("seed", range(5))
def test_mined_points_never_lie_within_the_radius_of_an_annotated_cell(seed):
    rng = np.random.default_rng(seed)
    cells = rng.uniform(0, 1000, (40, 2))
    det = np.concatenate([cells + rng.normal(0, 20, cells.shape), rng.uniform(0, 1000, (200, 2))])
    pts, scores = mine_imposters(cells, det, rng.uniform(0, 1, len(det)), 0.3, 32.6)
    assert len(pts) > 10 and (scores >= 0.3).all()
    d_cells = np.hypot(*(pts[:, None, :] - cells[None]).transpose(2, 0, 1))
    assert (d_cells > 32.6).all()
    d_self = np.hypot(*(pts[:, None, :] - pts[None]).transpose(2, 0, 1))
    assert (d_self[~np.eye(len(pts), dtype=bool)] > 32.6).all()


def test_mined_annotations_are_hard_negatives_flagged_and_the_rest_unchanged():
    data = {
        "images": [{"id": 7, "file_name": "a.tiff", "width": 500, "height": 500}],
        "categories": [
            {"id": 1, "name": "mitotic figure"},
            {"id": 2, "name": "not mitotic figure"},
        ],
        "annotations": [{"id": 40, "image_id": 7, "category_id": 1, "bbox": [0, 0, 50, 50]}],
    }
    out = add_mined_annotations(data, {7: (np.array([[100.0, 120.0]]), np.array([0.8]))}, round_=2)
    assert data["annotations"] == out["annotations"][:1] and len(data["annotations"]) == 1
    new = out["annotations"][1]
    assert new["id"] == 41 and new["category_id"] == 2 and new["mined"] and new["round"] == 2
    assert new["bbox"] == [75.0, 95.0, 125.0, 145.0] and new["score"] == 0.8
    with pytest.raises(ValueError, match="x.json: mined points for image id 8"):
        add_mined_annotations(data, {8: (np.zeros((1, 2)), np.ones(1))}, "x.json")
    no_negatives = dict(data, categories=[{"id": 1, "name": "mitotic figure"}])
    with pytest.raises(ValueError, match="y.json: no hard-negative category"):
        add_mined_annotations(no_negatives, {}, "y.json")


def _run(tool, *args, cwd):
    r = subprocess.run(
        [sys.executable, str(REPO / "tools" / tool), *args],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_mine_imposters_tool_then_training_on_its_output(tmp_path):
    data = write_midog_dataset(tmp_path / "data", seed=3)
    config = ["--config-file", str(CONFIGS / "dev" / "Demo-CPU-R18.yaml")]
    opts = tiny_train_opts(data, tmp_path / "round0")
    _run("train_net.py", *config, *opts, cwd=tmp_path)
    weights = tmp_path / "round0" / "model_final.pth"
    mined_file = tmp_path / "mined.json"
    r = _run(
        "mine_imposters.py", *config, "--output", str(mined_file), "--threshold", "0.05",
        *opts, "MODEL.WEIGHTS", str(weights), cwd=tmp_path,
    )  # fmt: skip
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["imposters"] > 0
    before = json.loads(open(data["json_file"]).read())
    after = json.loads(mined_file.read_text())
    mined = [a for a in after["annotations"] if a.get("mined")]
    assert (
        len(mined) == summary["imposters"]
        and after["annotations"][: len(before["annotations"])] == before["annotations"]
    )
    train = {d["image_id"] for d in load_midog_json(str(data["json_file"]), csv_file=str(data["csv_file"])) if d["split"] == "train"}  # fmt: skip
    assert {a["image_id"] for a in mined} <= train  # the training images only
    radius_px = 7.5 / 0.25
    for d in load_midog_json(str(mined_file)):
        cls = np.array([a["category_id"] for a in d["annotations"]])
        xy = np.array([[(a["bbox"][0] + a["bbox"][2]) / 2, (a["bbox"][1] + a["bbox"][3]) / 2]
                       for a in d["annotations"]]).reshape(-1, 2)  # fmt: skip
        flag = np.array([bool(a.get("mined")) for a in d["annotations"]], dtype=bool)
        assert (cls[flag] == HARD_NEGATIVE).all()
        if flag.any() and (~flag).any():
            dist = np.hypot(*(xy[flag][:, None] - xy[~flag][None]).transpose(2, 0, 1))
            assert (dist > radius_px).all()
        assert (cls[~flag] == MITOTIC_FIGURE).sum() == sum(
            1 for a in before["annotations"] if a["image_id"] == d["image_id"] and a["category_id"] == 1
        )  # fmt: skip
        assert all(a["bbox"][2] - a["bbox"][0] == BOX_SIZE for a in d["annotations"])
    # The next round trains on the mined file.
    opts1 = tiny_train_opts(data, tmp_path / "round1", {"DATASETS.MIDOG.JSON_FILE": mined_file})
    _run("train_net.py", *config, *opts1, cwd=tmp_path)
    assert (tmp_path / "round1" / "model_final.pth").is_file()


@pytest.mark.parametrize(
    "tool, extra, message",
    [
        ("mine_imposters.py", ["--output", "x.json"], "MODEL.WEIGHTS is empty: name the weights to mine with"),
        ("calibrate_threshold.py", [], "MODEL.WEIGHTS is empty: name the weights to calibrate"),
        ("mine_imposters.py", ["--output", "x.json", "MODEL.WEIGHTS", "w.pth", "DATASETS.TRAIN", "()"],
         "no --dataset and DATASETS.TRAIN is empty"),
        ("calibrate_threshold.py", ["MODEL.WEIGHTS", "w.pth", "DATASETS.TEST", "()"],
         "no --dataset and DATASETS.TEST is empty"),
        ("mine_imposters.py", ["--output", "x.json", "MODEL.WEIGHTS", "missing.pth",
                               "MODEL.DEVICE", "cpu"], "MODEL.WEIGHTS missing.pth: no such file"),
        ("calibrate_threshold.py", ["MODEL.WEIGHTS", "missing.pth", "MODEL.DEVICE", "cpu"],
         "MODEL.WEIGHTS missing.pth: no such file"),
    ],
)  # fmt: skip
def test_tools_that_run_weights_say_what_is_missing(tmp_path, tool, extra, message):
    r = subprocess.run(
        [sys.executable, str(REPO / "tools" / tool), "--config-file",
         str(CONFIGS / "dev" / "Demo-CPU-R18.yaml"), *extra],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a CUDA GPU")
def test_a_cuda_config_without_a_gpu_is_one_sentence(tmp_path):
    r = subprocess.run(
        [sys.executable, str(REPO / "tools" / "mine_imposters.py"), "--config-file",
         str(CONFIGS / "dev" / "Demo-CPU-R18.yaml"), "--output", "x.json",
         "MODEL.WEIGHTS", "w.pth", "MODEL.DEVICE", "cuda"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "no CUDA GPU: add MODEL.DEVICE cpu" in r.stderr

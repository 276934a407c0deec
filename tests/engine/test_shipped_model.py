"""The model that ships with the project (midog_d2/model_zoo/reference, docs/model_card.md):
its files are there and small, the weights load without running code into the model its
config builds, which configs/Reference-R18-BN.yaml builds too, its threshold record is bound
to the weights' SHA-256, ``midog-d2://`` paths resolve to it, and it finds real mitotic
figures."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from conftest import CONFIGS, SHARED, make_cfg

from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from midog_d2.checkpoint import (
    REFERENCE_CONFIG,
    REFERENCE_WEIGHTS,
    file_sha256,
    load_model_weights,
    load_threshold,
    load_torch_weights,
    local_path,
    reference_model,
)
from midog_d2.engine import setup_cfg
from midog_d2.fileio import read_rgb
from midog_d2.inference import predict_images


@pytest.fixture(scope="module")
def shipped():
    config, weights = reference_model()
    cfg = setup_cfg(config, ["MODEL.DEVICE", "cpu", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.05"])
    model = build_model(cfg)
    load_model_weights(cfg, model, cfg.MODEL.WEIGHTS)  # complete, or WeightsError
    return cfg, model.eval(), weights


def test_the_files_are_there_small_and_bound_together(shipped):
    cfg, _, weights = shipped
    assert cfg.MODEL.WEIGHTS == REFERENCE_WEIGHTS
    assert local_path(REFERENCE_WEIGHTS) == weights and PathManager.isfile(REFERENCE_WEIGHTS)
    assert os.path.getsize(weights) <= 30 * 2**20
    state = load_torch_weights(weights)  # weights_only: tensors and containers, no code
    floats = [v for v in state["model"].values() if torch.is_tensor(v) and v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert any(k.startswith("second_stage.") for k in state["model"])
    record = load_threshold(REFERENCE_WEIGHTS)  # None when the SHA-256 does not match
    assert record is not None and 0.0 < record["threshold"] < 1.0
    assert record["weights_sha256"] == file_sha256(weights)
    with open(weights + ".threshold.json", encoding="utf-8") as f:
        assert json.load(f)["weights_sha256"] == file_sha256(weights)
    assert (CONFIGS.parent / "docs" / "model_card.md").is_file()


def test_the_product_config_builds_the_same_model(shipped):
    _, model, _ = shipped
    theirs = build_model(make_cfg(CONFIGS / "Reference-R18-BN.yaml")).state_dict()
    ours = model.state_dict()
    assert sorted(theirs) == sorted(ours)
    assert all(theirs[k].shape == ours[k].shape for k in ours)
    finetune = setup_cfg(str(CONFIGS / "finetune" / "Reference-R18-NewDomain.yaml"), [])
    assert finetune.MODEL.WEIGHTS == REFERENCE_WEIGHTS


def test_a_path_outside_the_shipped_models_is_refused():
    with pytest.raises(ValueError, match="outside the shipped models"):
        local_path("midog-d2://../../setup.py")
    assert local_path("output/model_final.pth") == "output/model_final.pth"
    assert REFERENCE_CONFIG.startswith("midog-d2://")


@pytest.mark.skipif(not (SHARED / "data" / "real").is_dir(), reason="needs ../shared/data/real")
def test_it_finds_real_mitotic_figures(shipped):
    """Held-out real figures (crops of the scanner it never trained on), each in the middle of
    a 256-px input of mirrored tissue: most get a detection on them, scoring higher than
    the best detection anywhere else in the input. (Its stored threshold is chosen for whole
    regions at 4.4 figures per mm², far stricter: docs/model_card.md.)"""
    cfg, model, _ = shipped
    folder = SHARED / "data" / "real" / "ami-br-midog21"
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    crops = [folder / r["file"] for r in rows if r["scanner"] == "Aperio CS2"][:40]
    images = [np.pad(read_rgb(str(p)), ((64, 64), (64, 64), (0, 0)), mode="reflect") for p in crops]
    found = 0
    for out in predict_images(model, images, cfg.INPUT.FORMAT, batch_size=8):
        inst = out["instances"]
        c = inst.pred_boxes.get_centers().numpy()
        near = np.hypot(c[:, 0] - 128, c[:, 1] - 128) <= 30
        s = inst.scores.numpy()
        on, off = s[near].max(initial=0.0), s[~near].max(initial=0.0)
        found += bool(on >= 0.5 and on > off)
    assert found >= 0.6 * len(images), f"{found} of {len(images)} figures found"

"""Shared helpers for the test suite: small configs and synthetic model inputs."""

import os
from pathlib import Path

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances

from midog_d2 import add_midog_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# Study files (midog_d2.engine.study) are not Detectron2 configs.
PRODUCT_STUDY_FILES = sorted((CONFIGS / "study").glob("*.yaml"))
STUDY_FILES = PRODUCT_STUDY_FILES + sorted((CONFIGS / "dev" / "study").glob("*.yaml"))


def needs_datagen_keys(config_file: Path) -> bool:
    """Whether a project config names the development-data keys (or inherits a config that
    does), so that it builds only with ``midog_d2.datagen.add_datagen_config``."""
    text = config_file.read_text()
    return any(k in text for k in ("REAL_FIGURES", "CANVAS:", "RealFigures-", "ScannerStudy-"))


PROJECT_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if p not in STUDY_FILES)
DATAGEN_CONFIGS = [p for p in PROJECT_CONFIGS if needs_datagen_keys(p)]
SHARED = REPO.parent / "shared"

# Two cores are shared by everything on this machine; more threads only thrash.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def make_cfg(config_file: Path = CONFIGS / "Base-MultiTask-RetinaNet.yaml", *opts):
    """A config from a project YAML, on the CPU, without ImageNet weights."""
    cfg = get_cfg()
    add_midog_config(cfg)
    cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    return cfg


def make_inputs(n: int = 2, size: int = 128, seed: int = 0, with_boxes: bool = True):
    """``n`` image dicts as a DatasetMapper would give them: random pixels, one
    mitotic figure and one hard negative each, tumor labels 0..n-1."""
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for i in range(n):
        image = torch.randint(0, 256, (3, size, size), generator=g).float()
        inst = Instances((size, size))
        if with_boxes:
            xy = torch.randint(0, size - 50, (2, 2), generator=g).float()
            inst.gt_boxes = Boxes(torch.cat([xy, xy + 50], dim=1))
            inst.gt_classes = torch.tensor([0, 1])
        else:
            inst.gt_boxes = Boxes(torch.zeros((0, 4)))
            inst.gt_classes = torch.zeros((0,), dtype=torch.int64)
        inputs.append(
            {"image": image, "instances": inst, "tumor_label": i, "height": size, "width": size}
        )
    return inputs


def assert_model_matches_config(cfg):
    """Build the model of ``cfg`` and check it is the configured MultiTaskRetinaNet: each
    auxiliary head present exactly when switched on, the tumor head as wide as TUMOR_TYPES."""
    from detectron2.modeling import build_model

    from midog_d2.modeling import MultiTaskRetinaNet

    model = build_model(cfg)
    assert isinstance(model, MultiTaskRetinaNet)
    mt = cfg.MODEL.MULTITASK
    assert (model.tumor_head is not None) == mt.TUMOR_HEAD_ON
    assert (model.foreground_head is not None) == mt.FOREGROUND_HEAD_ON
    if mt.TUMOR_HEAD_ON:
        assert model.tumor_head.predictor.out_features == len(mt.TUMOR_TYPES)


@pytest.fixture
def cfg():
    return make_cfg()

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
# Study files (midog_d2.jobs.study) are not Detectron2 configs.
PRODUCT_STUDY_FILES = sorted((CONFIGS / "study").glob("*.yaml"))
STUDY_FILES = PRODUCT_STUDY_FILES + sorted((CONFIGS / "dev" / "study").glob("*.yaml"))


def needs_datagen_keys(config_file: Path) -> bool:
    """Whether a project config names the development-data keys (or inherits a config that
    does), so that it builds only with ``midog_dev.add_datagen_config``."""
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


def save_firing_model(folder: Path, config_file: Path, *opts):
    """A model of ``config_file`` (+ ``opts``) with random weights whose classifier fires
    (its bias at -1: scores about 0.27-0.5 everywhere), saved as Detectron2 saves checkpoints
    in ``folder/model.pth``; returns the model (eval mode) and that path."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(make_cfg(config_file, "MODEL.DEVICE", "cpu", *opts))
    with torch.no_grad():
        model.head.cls_score.bias.fill_(-1.0)
    DetectionCheckpointer(model, str(folder)).save("model")
    return model.eval(), str(Path(folder) / "model.pth")


def tiny_train_opts(data, out, overrides=None) -> list:
    """Config overrides (a flat KEY VALUE list) that train the demo's R-18 on a tiny
    dataset (``data``: what ``midog_fixtures.write_midog_dataset`` returns) for a few iterations,
    on the CPU, into ``out``; ``overrides`` ({KEY: value}) replace or add keys."""
    opts = {
        "MODEL.DEVICE": "cpu",
        "DATASETS.MIDOG.JSON_FILE": str(data["json_file"]),
        "DATASETS.MIDOG.IMAGE_ROOT": str(data["image_root"]),
        "DATASETS.MIDOG.CSV_FILE": str(data["csv_file"]),
        "DATASETS.MIDOG.SPLIT": "csv",
        "DATASETS.MIDOG.VAL_FRACTION": "0.0",
        "DATASETS.TRAIN": "('midog_train',)",
        "DATASETS.TEST": "('midog_test',)",
        "SOLVER.IMS_PER_BATCH": "2",
        "SOLVER.MAX_ITER": "3",
        "SOLVER.WARMUP_ITERS": "1",
        "SOLVER.STEPS": "()",
        "INPUT.PATCH.SIZE": "128",
        "TEST.TILE.SIZE": "256",
        "MODEL.RETINANET.SCORE_THRESH_TEST": "0.0",
        "DATALOADER.NUM_WORKERS": "0",
        "TEST.EVAL_PERIOD": "0",
        "OUTPUT_DIR": str(out),
    }
    opts.update({k: str(v) for k, v in (overrides or {}).items()})
    return [x for kv in opts.items() for x in kv]


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
            {"image": image, "instances": inst, "domain_label": i, "height": size, "width": size}
        )
    return inputs


def assert_model_matches_config(cfg):
    """Build the model of ``cfg`` and check it is the configured MultiTaskRetinaNet: each
    auxiliary head present exactly when switched on, the domain head as wide as DOMAINS."""
    from detectron2.modeling import build_model

    from midog_d2.modeling import MultiTaskRetinaNet

    model = build_model(cfg)
    assert isinstance(model, MultiTaskRetinaNet)
    mt = cfg.MODEL.MULTITASK
    assert (model.domain_head is not None) == mt.DOMAIN_HEAD_ON
    assert (model.foreground_head is not None) == mt.FOREGROUND_HEAD_ON
    if mt.DOMAIN_HEAD_ON:
        assert model.domain_head.predictor.out_features == len(mt.DOMAINS)


@pytest.fixture
def cfg():
    return make_cfg()

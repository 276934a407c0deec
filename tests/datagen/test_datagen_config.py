"""The development-data config keys (midog_dev.add_datagen_config)."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONFIGS, DATAGEN_CONFIGS, REPO, STUDY_FILES, assert_model_matches_config
from datagen_helpers import DEV_CONFIGS, make_datagen_cfg

from detectron2.config import get_cfg

from midog_d2 import add_midog_config
from midog_d2.engine import setup_cfg
from midog_d2.engine.trainer import DEVELOPMENT_KEYS
from midog_dev import add_datagen_config
from midog_dev.canvas import CanvasOptions, canvas_options_from_config

REAL_FIGURE_CONFIGS = sorted(DEV_CONFIGS.glob("RealFigures-*.yaml"))


def test_the_product_config_has_no_datagen_key():
    cfg = get_cfg()
    add_midog_config(cfg)
    assert "REAL_FIGURES" not in cfg.DATASETS and "CANVAS" not in cfg.INPUT
    assert "ATYPICAL_WEIGHT" not in cfg.DATALOADER
    add_datagen_config(cfg)
    assert cfg.DATALOADER.ATYPICAL_WEIGHT == 1.0 and cfg.DATASETS.REAL_FIGURES.EVAL_TILES == []


def test_canvas_defaults_are_the_options_defaults():
    cfg = get_cfg()
    add_midog_config(cfg)
    add_datagen_config(cfg)
    assert canvas_options_from_config(cfg) == CanvasOptions()


@pytest.mark.parametrize("config_file", REAL_FIGURE_CONFIGS, ids=lambda p: p.name)
def test_every_real_figure_config_builds(config_file):
    cfg = make_datagen_cfg(config_file)
    assert_model_matches_config(cfg)
    assert cfg.DATALOADER.ATYPICAL_WEIGHT == 3.0


@pytest.mark.parametrize("config_file", DATAGEN_CONFIGS, ids=lambda p: p.name)
def test_every_datagen_config_builds(config_file):
    # test_model.py's test_every_config_builds, for the configs that need the datagen keys
    assert_model_matches_config(make_datagen_cfg(config_file))


DEV_STUDY_FILES = [p for p in STUDY_FILES if p.parent == CONFIGS / "dev" / "study"]


@pytest.mark.parametrize("study_file", DEV_STUDY_FILES, ids=lambda p: p.name)
def test_every_run_of_every_study_has_a_valid_config(study_file):
    from midog_d2.jobs.study import load_study

    study = load_study(str(study_file))
    for run in study.runs():
        cfg = make_datagen_cfg(Path(study.config_file), *run.opts)
        assert cfg.SEED == run.seed
    # the cells of the leave-one-scanner-out studies switch exactly what their names say
    if "loso" in study_file.name:
        fold = next(iter(study.folds.values()))
        for name, opts in study.cells.items():
            cfg = make_datagen_cfg(Path(study.config_file), *fold, *opts)
            mt = cfg.MODEL.MULTITASK
            assert mt.FOREGROUND_HEAD_ON == ("fg" in name.split("+")), name
            assert mt.DOMAIN_HEAD_ON == ("dom" in name.split("+")), name
            assert cfg.INPUT.COLOR_JITTER.ENABLED == ("cj" in name.split("+")), name
            assert cfg.INPUT.HED.ENABLED == ("hed" in name.split("+")), name
            assert (cfg.INPUT.CANVAS.HARD_NEGATIVE_FRACTION > 0) == ("hnm" in name.split("+"))
            assert len(cfg.DATASETS.REAL_FIGURES.TRAIN_DOMAINS) == 2


def _flat_keys(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _flat_keys(v, prefix + k + ".")
        else:
            yield prefix + k


def test_the_product_knows_which_keys_are_the_development_tools():
    """engine.trainer.DEVELOPMENT_KEYS (what a product tool ignores in a saved config) holds
    every key add_datagen_config adds, and only those."""
    product = get_cfg()
    add_midog_config(product)
    dev = product.clone()
    add_datagen_config(dev)
    added = set(_flat_keys(dev)) - set(_flat_keys(product))
    assert added and all(
        any(k == p or k.startswith(p + ".") for p in DEVELOPMENT_KEYS) for k in added
    )
    assert all(any(k == p or k.startswith(p + ".") for k in added) for p in DEVELOPMENT_KEYS)


def test_a_development_models_saved_config_runs_infer_slides(tmp_path):
    """The config.yaml a scanner-study run saves beside its weights runs
    tools/infer_slides.py as it is (its development keys are ignored, said in the log);
    a key nobody knows is still an error."""
    import numpy as np
    from PIL import Image

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    cfg = make_datagen_cfg(DEV_CONFIGS / "ScannerStudy-CPU-R18.yaml", "MODEL.DEVICE", "cpu")
    saved = tmp_path / "config.yaml"
    saved.write_text(cfg.dump())
    with pytest.raises(ValueError, match="Non-existent config key: "):
        setup_cfg(str(saved))
    product = setup_cfg(str(saved), ignore_development_keys=True)
    assert product.MODEL.MULTITASK.DOMAINS == cfg.MODEL.MULTITASK.DOMAINS
    bad = tmp_path / "typo.yaml"
    bad.write_text(cfg.dump() + "NOT_A_KEY: 1\n")
    with pytest.raises(ValueError, match="NOT_A_KEY"):
        setup_cfg(str(bad), ignore_development_keys=True)

    model = build_model(cfg)
    DetectionCheckpointer(model, str(tmp_path)).save("model_final")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(90, 200, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    r = subprocess.run(
        [sys.executable, str(REPO / "tools" / "infer_slides.py"), "--config-file", str(saved),
         "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "out"),
         "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"), "TEST.TILE.SIZE", "256",
         "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "ignoring the development tools' keys" in (tmp_path / "out" / "log.txt").read_text()
    assert "Warning" not in r.stderr  # the upstream warnings are silenced at their source

"""The development-data config keys (midog_d2.datagen.add_datagen_config)."""

from pathlib import Path

import pytest
from conftest import CONFIGS, DATAGEN_CONFIGS, STUDY_FILES, assert_model_matches_config
from datagen_helpers import DEV_CONFIGS, make_datagen_cfg

from detectron2.config import get_cfg

from midog_d2 import add_midog_config
from midog_d2.datagen import add_datagen_config
from midog_d2.datagen.canvas import CanvasOptions, canvas_options_from_config

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
    from midog_d2.engine.study import load_study

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
            assert mt.TUMOR_HEAD_ON == ("dom" in name.split("+")), name
            assert cfg.INPUT.COLOR_JITTER.ENABLED == ("cj" in name.split("+")), name
            assert cfg.INPUT.HED.ENABLED == ("hed" in name.split("+")), name
            assert (cfg.INPUT.CANVAS.HARD_NEGATIVE_FRACTION > 0) == ("hnm" in name.split("+"))
            assert len(cfg.DATASETS.REAL_FIGURES.TRAIN_DOMAINS) == 2

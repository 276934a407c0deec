"""Helpers of the datagen tests (imported as ``datagen_helpers``: a second ``conftest.py``
would shadow ``tests/conftest.py`` for the directories collected after this one)."""

from pathlib import Path

from conftest import CONFIGS

from detectron2.config import get_cfg

from midog_d2 import add_midog_config
from midog_dev import add_datagen_config

DEV_CONFIGS = CONFIGS / "dev"


def make_datagen_cfg(config_file: Path = DEV_CONFIGS / "RealFigures-CPU-R18.yaml", *opts):
    """``conftest.make_cfg`` with the development-data keys (:func:`add_datagen_config`):
    a config from a project YAML, on the CPU, without ImageNet weights."""
    cfg = get_cfg()
    add_midog_config(cfg)
    add_datagen_config(cfg)
    cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    return cfg

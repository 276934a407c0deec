"""A trained model set up to run outside training: the one way the slide tool
(``tools/infer_slides.py``) and the MIDOG container (``tools/midog_container.py``) build the
config, the model and its operating threshold."""

import argparse
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.modeling import build_model

from ..checkpoint import load_model_weights, local_path, resolve_score_threshold
from .trainer import setup_cfg

__all__ = ["deployment_parser", "deployment_opts", "deployment_cfg", "load_deployed_model"]


def deployment_parser(description: str, config_help: str, default_config: bool):
    """The arguments every tool that runs a trained model takes: ``--config-file``
    (required unless ``default_config``), ``--threshold`` and the config overrides
    (``opts``); the tool adds its own."""
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--config-file", default=None, required=not default_config, metavar="FILE", help=config_help
    )
    ap.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="operating score threshold (default: the one stored with the weights)",
    )
    ap.add_argument("opts", nargs="*", help="config overrides: KEY VALUE ...")
    return ap


def deployment_opts(
    opts: Sequence[str],
    threshold: Optional[float] = None,
    mpp: Optional[float] = None,
    defaults: Sequence[str] = (),
) -> List[str]:
    """Config overrides of a run: ``defaults`` (KEY VALUE pairs the user's ``opts`` may
    override), the user's ``opts`` (a leading ``--`` dropped), ``threshold``
    (``TEST.MIDOG.SCORE_THRESHOLD``), ``mpp`` (``TEST.SLIDE_MPP``) and ``MODEL.DEVICE`` (the
    GPU when there is one) unless given. ValueError for an odd number of overrides or a
    value out of range."""
    opts = list(opts)
    if opts and opts[0] == "--":
        opts = opts[1:]
    if len(opts) % 2:
        raise ValueError(
            "the config overrides must be KEY VALUE pairs, got an odd number: " + " ".join(opts)
        )
    out = list(defaults) + opts
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"--threshold must be in [0, 1], got {threshold}")
        out += ["TEST.MIDOG.SCORE_THRESHOLD", str(threshold)]
    if mpp is not None:
        if not 0.01 <= mpp <= 50:
            raise ValueError(f"--mpp must be a microscope's µm/px (0.01 to 50), got {mpp}")
        out += ["TEST.SLIDE_MPP", str(mpp)]
    if "MODEL.DEVICE" not in out[0::2]:
        out += ["MODEL.DEVICE", "cuda" if torch.cuda.is_available() else "cpu"]
    return out


def deployment_cfg(config_file: str, opts: Sequence[str]) -> CfgNode:
    """``config_file`` + ``opts`` (:func:`deployment_opts`), frozen, development keys ignored
    (a config saved by a development tool runs as it is), a ``midog-d2://`` weights path
    resolved to the installed file."""
    cfg = setup_cfg(config_file, list(opts), ignore_development_keys=True)
    if cfg.MODEL.WEIGHTS:
        cfg.defrost()
        cfg.MODEL.WEIGHTS = local_path(cfg.MODEL.WEIGHTS)
        cfg.freeze()
    return cfg


def load_deployed_model(cfg: CfgNode, allow_partial: bool = False) -> Tuple[nn.Module, float, str]:
    """The model of ``cfg`` with ``MODEL.WEIGHTS`` loaded safely (all of them unless
    ``allow_partial``), in eval mode, and its operating threshold with where it came from
    (:func:`~midog_d2.checkpoint.resolve_score_threshold`)."""
    if not cfg.MODEL.WEIGHTS:
        raise ValueError("MODEL.WEIGHTS is empty: name the trained weights to run")
    model = build_model(cfg)
    load_model_weights(cfg, model, cfg.MODEL.WEIGHTS, allow_partial=allow_partial)
    return model.eval(), *resolve_score_threshold(cfg)

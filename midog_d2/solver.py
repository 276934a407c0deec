"""Optimizers selectable by ``SOLVER.OPTIMIZER`` (Detectron2 only builds SGD)."""

import torch

from detectron2.config import CfgNode
from detectron2.solver import build_optimizer as build_d2_optimizer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

_ADAM_FAMILY = {"ADAM": torch.optim.Adam, "ADAMW": torch.optim.AdamW}


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD exactly as Detectron2 builds it, or Adam/AdamW with the same parameter
    groups (norm/bias weight decay, LR factors) and gradient clipping."""
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        return build_d2_optimizer(cfg, model)
    if name not in _ADAM_FAMILY:
        raise ValueError(
            f"SOLVER.OPTIMIZER must be one of SGD, ADAM, ADAMW; got {cfg.SOLVER.OPTIMIZER!r}"
        )
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    optimizer_cls = maybe_add_gradient_clipping(cfg, _ADAM_FAMILY[name])
    return optimizer_cls(
        params,
        lr=cfg.SOLVER.BASE_LR,
        betas=tuple(cfg.SOLVER.BETAS),
        eps=cfg.SOLVER.EPS,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )

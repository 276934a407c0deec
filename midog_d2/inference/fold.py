"""BatchNorm folded into the convolution before it, for inference: in eval mode a BatchNorm
with running statistics is an affine map per channel, which the convolution's weights and bias
can carry, so one pass over the feature map is saved and the scores stay the same (to float
rounding). GroupNorm, and the per-level BatchNorms RetinaNet's head cycles through, are left
as they are."""

import torch
from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d

__all__ = ["fold_batchnorm", "prepare_for_inference"]


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every ``Conv2d(norm=BatchNorm2d | FrozenBatchNorm2d)`` of ``model`` (Detectron2's
    convolutions carry their norm) in place; returns how many were folded. Only for a model
    that will not train again: ValueError when ``model`` is in training mode."""
    if model.training:
        raise ValueError("fold_batchnorm: the model is in training mode (fold for inference only)")
    folded = 0
    for m in model.modules():
        norm = getattr(m, "norm", None)
        if not isinstance(m, Conv2d) or not isinstance(norm, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            continue
        if isinstance(norm, nn.BatchNorm2d) and not (norm.track_running_stats and norm.affine):
            continue
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
        m.weight.copy_(m.weight * scale.reshape(-1, 1, 1, 1))
        bias = m.bias if m.bias is not None else torch.zeros_like(shift)
        new_bias = bias * scale + shift
        if m.bias is None:
            m.bias = nn.Parameter(new_bias, requires_grad=False)
        else:
            m.bias.copy_(new_bias)
        m.norm = None
        folded += 1
    return folded


def prepare_for_inference(model: nn.Module, cfg) -> nn.Module:
    """A model that only infers from now on (whole-slide inference, ``--eval-only``), made
    faster without changing its arithmetic beyond rounding: BatchNorm folded
    (``TEST.TILE.FOLD_BATCHNORM``) and the weights in channels-last memory format
    (``TEST.TILE.CHANNELS_LAST``). In place; returns the model, in eval mode."""
    model.eval()
    if cfg.TEST.TILE.FOLD_BATCHNORM:
        fold_batchnorm(model)
    if cfg.TEST.TILE.CHANNELS_LAST:
        model.to(memory_format=torch.channels_last)
    return model

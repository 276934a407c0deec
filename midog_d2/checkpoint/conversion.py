"""torchvision ResNet state dicts -> Detectron2 checkpoints (ImageNet weights for the
backbone without Detectron2's model zoo)."""

from typing import Dict

import numpy as np
import torch


def convert_torchvision_resnet(state_dict: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """
    Rename a torchvision ResNet state dict to Detectron2's ResNet names
    (Detectron2's ``convert-torchvision-to-d2`` recipe). The classifier (``fc``)
    and BatchNorm counters are dropped: a detector has no use for them.
    """
    missing = [
        k for k in ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight") if k not in state_dict
    ]
    if missing:
        raise ValueError(
            f"No ResNet weights found in the state dict (missing {', '.join(missing)})"
        )
    out = {}
    for old_k, v in state_dict.items():
        if old_k.startswith("fc.") or old_k.endswith("num_batches_tracked"):
            continue
        k = old_k if "layer" in old_k else "stem." + old_k
        for t in (1, 2, 3, 4):
            k = k.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            k = k.replace(f"bn{t}", f"conv{t}.norm")
        k = k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[k] = v.detach().cpu().numpy()
    return out


def torchvision_to_d2_checkpoint(state_dict: Dict[str, torch.Tensor]) -> dict:
    """A checkpoint dict that ``DetectionCheckpointer`` loads into a ResNet backbone
    (``matching_heuristics`` maps ``res2...`` onto ``backbone.bottom_up.res2...``)."""
    return {
        "model": convert_torchvision_resnet(state_dict),
        "__author__": "torchvision",
        "matching_heuristics": True,
    }

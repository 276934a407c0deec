"""Fully-connected auxiliary classifiers on one backbone feature map."""

from typing import List

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import ShapeSpec


class AuxiliaryClassifier(nn.Module):
    """Global average pooling, ``num_hidden_fc`` × (FC + ReLU), then an FC to ``num_outputs``."""

    def __init__(
        self, input_shape: ShapeSpec, hidden_dim: int, num_hidden_fc: int, num_outputs: int
    ):
        super().__init__()
        if num_outputs < 1:
            raise ValueError(
                f"An auxiliary classifier needs at least one output, got {num_outputs}"
            )
        layers: List[nn.Module] = []
        in_dim = input_shape.channels
        for _ in range(num_hidden_fc):
            layers += [nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True)]
            in_dim = hidden_dim
        self.hidden = nn.Sequential(*layers)
        self.predictor = nn.Linear(in_dim, num_outputs)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0.0)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) feature map -> (N, num_outputs) logits."""
        x = F.adaptive_avg_pool2d(feature, 1).flatten(1)
        return self.predictor(self.hidden(x))

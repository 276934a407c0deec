"""The second stage: a small CNN that re-scores the detector's candidates from a patch around
each (the two-stage design of the MIDOG 2021 and 2022 winners).

It lives inside :class:`~.multitask_retinanet.MultiTaskRetinaNet` (``MODEL.SECOND_STAGE``), so
its weights are saved and loaded with the checkpoint and every caller of the model
(evaluation, ``TiledPredictor``, ``tools/infer_slides.py``) gets the re-scored detections.
It is trained on its own, with the detector frozen (``tools/train_second_stage.py``).
"""

from typing import List, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import roi_align

__all__ = ["CandidateClassifier", "crop_patches", "combine_scores"]


def crop_patches(images: Tensor, centres: Sequence[Tensor], size: int) -> Tensor:
    """(sum N_i, C, size, size) patches of ``images`` (B, C, H, W) centred at each image's
    ``centres[i]`` (N_i, 2), in the images' pixels (``roi_align``, bilinear); more than a
    pixel outside the image is 0 (the mean, for images normalised as the model does)."""
    half = size / 2.0
    boxes = [
        torch.cat([c - half, c + half], dim=1).to(images.dtype).reshape(-1, 4) for c in centres
    ]
    return roi_align(images, boxes, output_size=(size, size), spatial_scale=1.0, aligned=True)


def combine_scores(detector: Tensor, classifier: Tensor) -> Tensor:
    """The re-scored candidates: the geometric mean of the detector's score and the
    classifier's probability, so that both must agree and the detector's scale (and its
    thresholds' meaning, roughly) is kept."""
    return torch.sqrt(detector.clamp(min=0) * classifier.clamp(min=0))


class CandidateClassifier(nn.Module):
    """Three stages of two 3x3 conv + GroupNorm + ReLU (then 2x2 max pooling), global
    average pooling and one logit: "this patch's centre is a mitotic figure"."""

    def __init__(self, in_channels: int = 3, width: int = 32, patch_size: int = 64):
        super().__init__()
        layers: List[nn.Module] = []
        c_in = in_channels
        for k in range(3):
            c_out = width * 2**k
            for _ in range(2):
                layers += [
                    nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                    nn.GroupNorm(min(8, c_out), c_out),
                    nn.ReLU(inplace=True),
                ]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.logit = nn.Linear(c_in, 1)
        self.patch_size = patch_size

    def forward(self, patches: Tensor) -> Tensor:
        """(N,) logits of (N, C, patch_size, patch_size) patches."""
        x = self.features(patches)
        return self.logit(F.adaptive_avg_pool2d(x, 1).flatten(1)).reshape(-1)

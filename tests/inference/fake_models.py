"""Stand-ins for a detector and a slide reader, shared by the inference tests: what they
find is known exactly, so tiling, merging and coordinates can be checked to the pixel."""

import cv2
import numpy as np
import torch
from torch import nn

from detectron2.structures import Boxes, Instances

from midog_d2.fileio import resample_region
from midog_d2.modeling.outputs import DOMAIN_PROBS, FOREGROUND_PROB

# Markers are pure blue in RGB: (0, 0, 255). The fake model sees them only if tiles
# reach it in BGR (channel 0 = 255), so it also checks the format conversion.
BLUE = (0, 0, 255)


class BlobDetector(nn.Module):
    """Deterministic stand-in for a detector: one 50 x 50 box per blue blob visible in
    the input, centred on the visible part (so a blob cut by the tile edge is found
    off-centre, as a real detector might), score 0.9 - 0.1 * (blob cut), class 0.
    foreground_prob = "any blob", domain_probs = [0.9, 0.1] with a blob, else [0.1, 0.9]."""

    # declared as MultiTaskRetinaNet declares them (midog_d2.modeling.outputs)
    extra_outputs = [DOMAIN_PROBS, FOREGROUND_PROB]

    def __init__(self):
        super().__init__()
        self.calls = []
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, batched_inputs):
        assert not self.training
        outs = []
        for x in batched_inputs:
            img = x["image"].numpy()
            self.calls.append(tuple(img.shape))
            mask = ((img[0] == 255) & (img[2] == 0)).astype(np.uint8)
            n, _, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
            boxes, scores = [], []
            h, w = mask.shape
            for i in range(1, n):
                bx, by, bw, bh, _ = stats[i]
                cut = bx == 0 or by == 0 or bx + bw == w or by + bh == h
                cx, cy = centroids[i]
                boxes.append([cx + 0.5 - 25, cy + 0.5 - 25, cx + 0.5 + 25, cy + 0.5 + 25])
                scores.append(0.8 if cut else 0.9)
            inst = Instances((x["height"], x["width"]))
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.tensor(scores, dtype=torch.float32)
            inst.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
            outs.append(
                {
                    "instances": inst,
                    "domain_probs": torch.tensor([0.9, 0.1] if n > 1 else [0.1, 0.9]),
                    "foreground_prob": torch.tensor(float(n > 1)),
                }
            )
        return outs


def make_image(size_hw, blobs, half=10):
    """White image with blue (2*half)^2 blobs centred at ``blobs`` (x, y)."""
    img = np.full((*size_hw, 3), 255, dtype=np.uint8)
    for x, y in blobs:
        img[y - half : y + half, x - half : x + half] = BLUE
    return img


class ArrayReader:
    """read_region_scaled over an in-memory RGB array (white outside it, resampled with
    the library's own maths); records every request (x, y, w, h) and its scale."""

    def __init__(self, image):
        self.image = image
        self.requests = []
        self.scales = []

    def level0(self, x, y, w, h):
        out = np.full((h, w, 3), 255, np.uint8)
        H, W = self.image.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x0 < x1 and y0 < y1:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self.image[y0:y1, x0:x1]
        return out

    def __call__(self, path, x, y, w, h, scale=1.0):
        self.requests.append((x, y, w, h))
        self.scales.append(scale)
        return resample_region(self.level0, x, y, w, h, scale)

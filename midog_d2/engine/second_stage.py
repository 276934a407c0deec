"""Training the second stage (:mod:`midog_d2.modeling.second_stage`) with the detector frozen:
the detector's candidates on training patches, labelled by the ground truth, then a few
hundred steps of the candidate classifier on them (``tools/train_second_stage.py``; the
real-figure study's runs, ``midog_dev.scanner_study``)."""

import itertools
import logging
from typing import Any, Dict, Iterable, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..constants import MITOTIC_FIGURE
from ..modeling.second_stage import crop_patches

__all__ = ["collect_candidates", "train_candidate_classifier", "train_second_stage"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def collect_candidates(
    model: nn.Module,
    batches: Iterable[list],
    num_batches: int,
    candidate_threshold: float,
    radius_px: float,
) -> Tuple[Tensor, Tensor]:
    """(patches (N, C, S, S), labels (N,)) from ``num_batches`` batches of a Detectron2
    training loader (dicts with ``image`` and ``instances``): every detection of the
    detector scoring ``>= candidate_threshold`` (1 when within ``radius_px`` of a mitotic
    figure, else 0: an imposter) and every mitotic figure itself (1), each a patch of the
    model's normalised input, as the model crops them at inference."""
    size = model.second_stage.patch_size
    was_training = model.training
    model.eval()
    patches, labels = [], []
    try:
        for batch in itertools.islice(batches, num_batches):
            images = model.preprocess_image(batch)
            results, _ = model.detect(images, rescore=False)
            centres, targets = [], []
            for r, d in zip(results, batch):
                gt = d["instances"]
                figures = (
                    gt.gt_boxes[gt.gt_classes == MITOTIC_FIGURE].get_centers().to(model.device)
                )
                cand = r.pred_boxes.get_centers()[r.scores >= candidate_threshold]
                hit = (
                    (torch.cdist(cand, figures) <= radius_px).any(dim=1)
                    if len(figures) and len(cand)
                    else torch.zeros(len(cand), dtype=torch.bool, device=cand.device)
                )
                centres.append(torch.cat([cand, figures]))
                targets.append(
                    torch.cat([hit.float(), torch.ones(len(figures), device=cand.device)])
                )
            patches.append(crop_patches(images.tensor, centres, size).cpu())
            labels.append(torch.cat(targets).cpu())
    finally:
        model.train(was_training)
    return torch.cat(patches), torch.cat(labels)


def _dihedral(x: Tensor, generator: torch.Generator) -> Tensor:
    k = int(torch.randint(4, (1,), generator=generator))
    x = torch.rot90(x, k, dims=(2, 3))
    return x.flip(3) if bool(torch.randint(2, (1,), generator=generator)) else x


def train_candidate_classifier(
    classifier: nn.Module,
    patches: Tensor,
    labels: Tensor,
    max_iter: int,
    base_lr: float,
    batch_size: int,
    seed: int = 0,
) -> Dict[str, Any]:
    """``max_iter`` Adam steps of ``classifier`` on batches of half positives, half
    negatives (drawn with replacement; without negatives, a warning, the batch is all
    positives), each randomly rotated and flipped; binary cross-entropy. Returns counts and
    the last losses. No positive (no mitotic figure in the batches drawn) is an error: a
    classifier that never saw a figure would only learn to reject."""
    g = torch.Generator().manual_seed(max(int(seed), 0))
    pos = torch.nonzero(labels > 0.5).flatten()
    neg = torch.nonzero(labels <= 0.5).flatten()
    if not len(pos):
        raise ValueError(
            f"second stage: no mitotic figure among the {len(labels)} candidates collected; "
            "draw more training batches (MODEL.SECOND_STAGE.CANDIDATE_BATCHES)"
        )
    if not len(neg):
        logger.warning("second stage: no imposter among the candidates; it sees figures only")
    device = next(classifier.parameters()).device
    classifier.requires_grad_(True)  # the model keeps it frozen while the detector trains
    opt = torch.optim.Adam(classifier.parameters(), lr=base_lr)
    classifier.train()
    losses = []
    for _ in range(max_iter):
        parts = [
            p[torch.randint(len(p), (batch_size // 2,), generator=g)] for p in (pos, neg) if len(p)
        ]
        idx = torch.cat(parts)
        x = _dihedral(patches[idx], g).to(device)
        loss = F.binary_cross_entropy_with_logits(classifier(x), labels[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    classifier.eval()
    return {
        "candidates": int(len(labels)),
        "positives": int(len(pos)),
        "negatives": int(len(neg)),
        "iterations": max_iter,
        "final_loss": float(np.mean(losses[-20:])) if losses else float("nan"),
    }


def train_second_stage(cfg, model: nn.Module, loader: Iterable[list]) -> Dict[str, Any]:
    """Collect the frozen detector's candidates from ``loader`` and train ``model``'s second
    stage on them, as ``cfg.MODEL.SECOND_STAGE`` says (radius ``TEST.MIDOG.RADIUS_UM`` at
    ``INPUT.MODEL_MPP``). Only the second stage's weights change."""
    ss = cfg.MODEL.SECOND_STAGE
    if getattr(model, "second_stage", None) is None:
        raise ValueError("MODEL.SECOND_STAGE.ON is False: the model has no second stage")
    radius_px = cfg.TEST.MIDOG.RADIUS_UM / cfg.INPUT.MODEL_MPP
    patches, labels = collect_candidates(
        model, loader, ss.CANDIDATE_BATCHES, ss.CANDIDATE_THRESHOLD, radius_px
    )
    stats = train_candidate_classifier(
        model.second_stage, patches, labels, ss.MAX_ITER, ss.BASE_LR, ss.IMS_PER_BATCH, cfg.SEED
    )
    logger.info("Second stage trained: %s", stats)
    return stats

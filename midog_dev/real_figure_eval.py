"""The real-figure evaluation protocol (``tools/dev/eval_real_figures.py``): held-out real
figures placed in unseen real H&E context.

The score threshold is the one with the best F1 on the placed *validation* crops; the
figures reported are on the placed *test* crops, on the shortcut-control sets (windows cut
around a random other nucleus, and the same nuclei in their whole crops) and on the
evaluation context tiles alone (false detections per mm²).
"""

from typing import Any, Dict, List, Optional

import torch

from midog_d2.constants import DEFAULT_MPP

from .canvas import PlacedCrop, build_placed_crops, context_tile_names
from .context import ContextTile, load_context_tiles
from .placed_crops import (
    baseline_rank1,
    chance_rank1,
    evaluate_placed,
    false_detections_per_mm2,
    predict_points,
    select_threshold,
)
from .real_figures import load_real_figures

__all__ = ["build_evaluation_sets", "evaluate_real_figure_model"]


def build_evaluation_sets(
    cfg, tiles: List[ContextTile], seed: int = 0, size: int = 256, limit: int = 0
) -> Dict[str, List[PlacedCrop]]:
    """The placed-crop sets of ``cfg.DATASETS.REAL_FIGURES``: ``val`` (seed + 1), ``test``
    (seed), and on the test crops ``control`` (windows around a random other nucleus) and
    ``control_whole`` (the same nuclei in their whole crops); ``limit`` > 0 keeps only the
    first crops of each split."""
    rf = cfg.DATASETS.REAL_FIGURES
    sets = {}
    for split, path, split_seed in (("val", rf.VAL_JSON, seed + 1), ("test", rf.TEST_JSON, seed)):
        dicts = load_real_figures(path)
        if limit:
            dicts = dicts[:limit]
        sets[split] = build_placed_crops(dicts, tiles, size=size, seed=split_seed)
        if split == "test":
            # The shortcut check: windows cut around a random other nucleus instead.
            sets["control"] = build_placed_crops(
                dicts, tiles, size=size, seed=split_seed, control=True
            )
            # The same random nuclei in their whole crops: no window says where they are.
            sets["control_whole"] = build_placed_crops(
                dicts, tiles, size=size, seed=split_seed, control=True, whole_crop=True
            )
    return sets


def evaluate_real_figure_model(
    cfg,
    model: Optional[torch.nn.Module] = None,
    seed: int = 0,
    size: int = 256,
    limit: int = 0,
    mpp: float = DEFAULT_MPP,
) -> Dict[str, Any]:
    """
    The protocol's results on ``cfg`` (``DATASETS.REAL_FIGURES``, ``INPUT.FORMAT``): the
    darkest-blob and chance baselines, and with ``model`` its threshold (best F1 on
    ``val``), the test and control sets' scores at it (:func:`evaluate_placed`) and the
    evaluation tiles' false detections per mm² at ``mpp`` µm/px.

    ``seed`` seeds the placed-crop sets, ``size`` is their canvas side, ``limit`` > 0 uses
    only the first crops of each split.
    """
    _, eval_names = context_tile_names(cfg)
    tiles = load_context_tiles(cfg.DATASETS.REAL_FIGURES.TILE_DIR, eval_names)
    sets = build_evaluation_sets(cfg, tiles, seed, size, limit)
    result: Dict[str, Any] = {
        "eval_tiles": eval_names,
        "size": size,
        "seed": seed,
        "darkest_blob_rank1": baseline_rank1(sets["test"]),
        "chance_rank1": chance_rank1(sets["test"]),
        "control_set_chance_rank1": chance_rank1(sets["control"]),
        "control_whole_set_chance_rank1": chance_rank1(sets["control_whole"]),
    }
    if model is None:
        return result
    fmt = cfg.INPUT.FORMAT
    det = {k: predict_points(model, [s.image for s in v], fmt) for k, v in sets.items()}
    thr, val_f1 = select_threshold(sets["val"], det["val"])
    tile_det = predict_points(model, [t.image for t in tiles], fmt, batch_size=1)
    result.update(
        weights=cfg.MODEL.WEIGHTS,
        threshold=thr,
        val_f1=val_f1,
        test=evaluate_placed(sets["test"], det["test"], thr),
        # rank-1 on the random-nucleus windows: how often the top detection is
        # the window's (position-only) nucleus rather than anything else
        control_set=evaluate_placed(sets["control"], det["control"], thr),
        control_whole_set=evaluate_placed(sets["control_whole"], det["control_whole"], thr),
        tiles_fp_per_mm2=false_detections_per_mm2(
            tile_det, [t.image.shape[:2] for t in tiles], thr, mpp
        ),
        tiles_mm2=sum(t.image.shape[0] * t.image.shape[1] for t in tiles) * (mpp * 1e-3) ** 2,
        tiles_detections={t.name: int((sc >= thr).sum()) for t, (_, sc) in zip(tiles, tile_det)},
    )
    return result

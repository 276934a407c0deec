"""The leave-one-scanner-out study on real pixels (``tools/dev/run_scanner_study.py``).

The MIDOG 2021 crops of AMi-Br (``ami-br-midog21``, converted by
:mod:`.real_figures`: split by slide within each scanner) carry their scanner, which is the
domain label (``MODEL.MULTITASK.DOMAIN_FIELD: scanner``). One run trains on the canvases of
two scanners' training crops (``DATASETS.REAL_FIGURES.TRAIN_DOMAINS``) and is scored, with
the crops placed in unseen evaluation tissue (:func:`~.canvas.build_placed_crops`), on

* ``in_domain``: the test crops (held-out slides) of the training scanners, and
* ``held_out``: the test crops of the scanner it never saw,

at the threshold with the best F1 on the validation crops of the training scanners. The
study runner (:func:`midog_d2.jobs.study.run_study`) calls :func:`train_and_score` once a
run, in a fresh process.
"""

import json
import logging
import os
from typing import Any, Dict, List, Sequence, Tuple

import torch

from midog_d2.checkpoint import MidogCheckpointer, threshold_record
from midog_d2.constants import MIDOGPP_DENSITY
from midog_d2.data import box_centres
from midog_d2.data.imposters import add_mined_annotations, mine_imposters
from midog_d2.engine import MidogTrainer
from midog_d2.engine.runs import train_calibrate_score, train_detector
from midog_d2.evaluation import ap50_points, points_in_region
from midog_d2.evaluation.prevalence import operating_density
from midog_d2.jobs.study import reused_weights

from .canvas import (
    PlacedCrop,
    build_placed_crops,
    build_real_figure_train_loader,
    context_tile_names,
    real_figure_split,
    real_figure_train_set,
    select_domains,
)
from .context import load_context_tiles, read_crop
from .placed_crops import (
    CROP_MPP,
    RADIUS,
    baseline_rank1,
    evaluate_placed,
    false_detections_per_mm2,
    placed_curve,
    placed_points,
    predict_points,
    select_threshold,
)

__all__ = [
    "RealFigureTrainer",
    "domain_evaluation_sets",
    "evaluate_placed_domains",
    "finetune_and_score",
    "mine_training_crops",
    "score_set",
    "tile_false_detections",
    "train_and_score",
]

logger = logging.getLogger(__name__)


class RealFigureTrainer(MidogTrainer):
    """:class:`MidogTrainer` fed with real-figure canvases."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_real_figure_train_loader(cfg)


def domain_evaluation_sets(
    cfg, seed: int = 0, size: int = 256, limit: int = 0
) -> Dict[str, List[PlacedCrop]]:
    """Placed-crop sets: ``val`` (validation crops of ``TRAIN_DOMAINS``, seed + 1),
    ``in_domain`` (their test crops) and ``held_out`` (test crops of every other domain),
    in the evaluation context tiles; ``limit`` > 0 keeps the first crops of each."""
    rf = cfg.DATASETS.REAL_FIGURES
    field = cfg.MODEL.MULTITASK.DOMAIN_FIELD
    _, eval_names = context_tile_names(cfg)
    tiles = load_context_tiles(rf.TILE_DIR, eval_names)
    val = select_domains(real_figure_split(cfg, "val"), field, rf.TRAIN_DOMAINS)
    test = real_figure_split(cfg, "test")
    parts = {
        "val": (val, seed + 1),
        "in_domain": (select_domains(test, field, rf.TRAIN_DOMAINS), seed),
        "held_out": (select_domains(test, field, rf.TRAIN_DOMAINS, keep=False), seed),
    }
    sets = {}
    for name, (dicts, s) in parts.items():
        if limit:
            dicts = dicts[:limit]
        sets[name] = build_placed_crops(dicts, tiles, size=size, seed=s) if dicts else []
    return sets


def score_set(
    samples: Sequence[PlacedCrop],
    detections: Sequence,
    threshold: float,
    density_threshold: float,
    density: float = MIDOGPP_DENSITY,
) -> Dict[str, Any]:
    """One set's figures at ``threshold``: F1, precision, recall, rank-1 and false
    detections per crop (all crops, and per normal / atypical group), plus its best F1
    over thresholds, that threshold, and AP50 on points (50 px boxes). At real density
    (:func:`~.placed_crops.placed_curve`): false detections per mm² of the crops' own
    tissue and the F1 expected at ``density`` figures per mm², at ``threshold``
    (``fp_per_mm2``, ``expected_f1``) and at ``density_threshold`` (``density_recall``,
    ``density_fp_per_mm2``, ``density_false_detections``, ``density_expected_f1``), and
    the set's own best expected F1 over thresholds (``best_expected_f1``)."""
    if not samples:
        return {}
    groups = evaluate_placed(samples, detections, threshold)
    images = [placed_points(s, d) for s, d in zip(samples, detections)]
    best_thr, best_f1 = select_threshold(samples, detections)
    curve = placed_curve(samples, detections)
    at_thr, at_density = curve.at(threshold, density), curve.at(density_threshold, density)
    return {
        **groups["all"],
        "best_f1": best_f1,
        "best_threshold": best_thr,
        "ap50": ap50_points(images, box_half_um=25.0),
        "groups": groups,
        "darkest_blob_rank1": baseline_rank1(samples)["all"],
        "window_area_mm2": curve.area_mm2,
        "fp_per_mm2": at_thr["fp_per_mm2"],
        "expected_f1": at_thr["expected_f1"],
        "density_recall": at_density["recall"],
        "density_fp_per_mm2": at_density["fp_per_mm2"],
        "density_false_detections": at_density["false_detections"],
        "density_expected_f1": at_density["expected_f1"],
        "best_expected_f1": curve.best_threshold(density)[1],
    }


def tile_false_detections(
    model: torch.nn.Module, cfg, thresholds: Dict[str, float]
) -> Dict[str, float]:
    """False detections per mm² on the evaluation context tiles alone (never seen in
    training; they hold few if any figures, so every detection counts) at each threshold."""
    _, eval_names = context_tile_names(cfg)
    tiles = load_context_tiles(cfg.DATASETS.REAL_FIGURES.TILE_DIR, eval_names)
    det = predict_points(model, [t.image for t in tiles], cfg.INPUT.FORMAT, batch_size=1)
    shapes = [t.image.shape[:2] for t in tiles]
    out = {"area_mm2": sum(h * w for h, w in shapes) * (CROP_MPP * 1e-3) ** 2}
    for name, t in thresholds.items():
        out[name] = false_detections_per_mm2(det, shapes, t, CROP_MPP)
    return out


def evaluate_placed_domains(
    cfg, model: torch.nn.Module, seed: int = 0, size: int = 256, limit: int = 0
) -> Dict[str, Any]:
    """The run's scores: the in-window threshold (best F1 on ``val``), the density
    threshold (best F1 expected on ``val`` at ``TEST.MIDOG.OPERATING_DENSITY``; placed
    crops have no density of their own, so 0 is an error), :func:`score_set` of the
    ``in_domain`` and ``held_out`` sets at both (:func:`domain_evaluation_sets`) and the
    evaluation tiles' false detections per mm² at both (``tiles``)."""
    sets = domain_evaluation_sets(cfg, seed, size, limit)
    fmt = cfg.INPUT.FORMAT
    det = {k: predict_points(model, [s.image for s in v], fmt) for k, v in sets.items() if v}
    threshold, val_f1 = select_threshold(sets["val"], det["val"])
    density = operating_density(cfg.TEST.MIDOG.OPERATING_DENSITY)
    density_threshold, val_expected = placed_curve(sets["val"], det["val"]).best_threshold(density)
    out: Dict[str, Any] = {
        "threshold": threshold,
        "val_f1": val_f1,
        "radius_px": RADIUS,
        "density": density,
        "density_threshold": density_threshold,
        "val_expected_f1": val_expected,
    }
    for name in ("in_domain", "held_out"):
        out[name] = score_set(sets[name], det.get(name, []), threshold, density_threshold, density)
    out["tiles"] = tile_false_detections(
        model, cfg, {"fp_per_mm2": threshold, "density_fp_per_mm2": density_threshold}
    )
    out["crops"] = {k: len(v) for k, v in sets.items()}
    return out


def _run_logging(output_dir: str) -> None:
    """One log file per run; the study's own output stays readable with two runs at once."""
    handler = logging.FileHandler(os.path.join(output_dir, "log.txt"))
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s"))
    for name in ("detectron2", "fvcore", "midog_d2"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
        lg.propagate = False


def _start_run(config_file: str, run, output_dir: str, threads: int, extra_opts) -> Any:
    """The run's config (``config_file`` + ``run.opts`` + ``extra_opts``, ``OUTPUT_DIR``
    ``output_dir``) with its thread count and log file set."""
    from .config import setup_datagen_cfg

    torch.set_num_threads(threads)
    os.makedirs(output_dir, exist_ok=True)
    opts = list(run.opts) + list(extra_opts) + ["OUTPUT_DIR", output_dir]
    cfg = setup_datagen_cfg(config_file, opts)
    _run_logging(output_dir)
    return cfg


def _train(cfg) -> torch.nn.Module:
    return train_detector(cfg, RealFigureTrainer)


def mine_training_crops(cfg, model: torch.nn.Module, output_file: str) -> Dict[str, Any]:
    """Imposters of ``model`` on the training crops of ``cfg`` (each whole crop, inside its
    tissue box): detections ``>= INPUT.CANVAS.MINE_THRESHOLD`` farther than :data:`RADIUS`
    px from every labelled cell of the crop and from each other
    (:func:`midog_d2.data.imposters.mine_imposters`), written with the rest of
    ``DATASETS.REAL_FIGURES.TRAIN_JSON`` to ``output_file`` as labelled non-mitotic cells
    (:func:`~midog_d2.data.imposters.add_mined_annotations`). Returns counts."""
    dicts = real_figure_train_set(cfg)
    det = predict_points(model, [read_crop(d["file_name"]) for d in dicts], cfg.INPUT.FORMAT)
    threshold = cfg.INPUT.CANVAS.MINE_THRESHOLD
    mined = {}
    for d, (pts, scores) in zip(dicts, det):
        keep = points_in_region(pts, d.get("content_box"))
        mined[d["image_id"]] = mine_imposters(
            box_centres(d), pts[keep], scores[keep], threshold, RADIUS
        )
    src = cfg.DATASETS.REAL_FIGURES.TRAIN_JSON
    with open(src, encoding="utf-8") as f:
        data = json.load(f)
    with open(output_file, "w", encoding="utf-8") as f:
        json.dump(add_mined_annotations(data, mined, src), f)
    n = [len(s) for _, s in mined.values()]
    return {
        "crops": len(n),
        "imposters": int(sum(n)),
        "crops_with_imposters": sum(k > 0 for k in n),
    }


def _train_with_mining(cfg, output_dir: str) -> Tuple[torch.nn.Module, Any, List[Dict]]:
    """``INPUT.CANVAS.MINE_ROUNDS`` rounds of train-then-mine (each in ``round<k>/``), then
    the run's model trained from scratch, reseeded, on the last round's crops. Returns the
    model, the config it was trained with and the rounds' counts."""
    from detectron2.utils.env import seed_all_rng

    rounds = []
    for k in range(cfg.INPUT.CANVAS.MINE_ROUNDS):
        sub = cfg.clone()
        sub.defrost()
        sub.OUTPUT_DIR = os.path.join(output_dir, f"round{k}")
        os.makedirs(sub.OUTPUT_DIR, exist_ok=True)
        seed_all_rng(cfg.SEED)
        mined_file = os.path.join(sub.OUTPUT_DIR, "mined_train.json")
        rounds.append(mine_training_crops(sub, _train(sub), mined_file))
        cfg = cfg.clone()
        cfg.defrost()
        cfg.DATASETS.REAL_FIGURES.TRAIN_JSON = mined_file
        cfg.freeze()
    seed_all_rng(cfg.SEED)
    return _train(cfg), cfg, rounds


def _threshold_record(cfg, scores: Dict[str, Any]) -> Dict[str, Any]:
    """What the threshold file beside the run's weights records (midog_d2.checkpoint): the
    threshold is the one for real density, the in-window one beside it."""
    return threshold_record(
        dataset="placed validation crops of " + ", ".join(cfg.DATASETS.REAL_FIGURES.TRAIN_DOMAINS),
        rule=f"best F1 expected at {scores['density']:.3g} figures/mm²",
        expected_f1=scores["val_expected_f1"],
        best_f1_threshold=scores["threshold"],
        best_f1=scores["val_f1"],
        radius_px=RADIUS,
    )


def finetune_and_score(
    config_file: str,
    run,
    output_dir: str,
    threads: int = 1,
    eval_size: int = 256,
    extra_opts: Sequence[str] = (),
) -> Dict[str, Any]:
    """One fine-tuning run: ``config_file`` + ``run.opts`` + ``extra_opts`` trained into
    ``output_dir`` from ``MODEL.WEIGHTS`` (loaded by :class:`MidogCheckpointer`, which maps
    the domain head by name; ``""``: from scratch) on the crops of
    ``DATASETS.REAL_FIGURES.TRAIN_SLIDES`` slides of the new domain (``TRAIN_DOMAINS``), or,
    with ``SOLVER.MAX_ITER`` 0, ``MODEL.WEIGHTS`` as they are (zero-shot). Scored by
    :func:`evaluate_placed_domains` with the new domain's validation slides choosing the
    threshold: ``new`` are its test slides, ``old`` the other domains' test slides."""
    cfg = _start_run(config_file, run, output_dir, threads, extra_opts)
    trains = cfg.SOLVER.MAX_ITER > 0

    def train(cfg):
        if trains:
            return _train(cfg), cfg, {}
        model = RealFigureTrainer.build_model(cfg)
        MidogCheckpointer.from_config(cfg, model).load(cfg.MODEL.WEIGHTS)
        return model, cfg, {}

    def score(cfg, model):
        scores = evaluate_placed_domains(cfg, model, seed=0, size=eval_size)
        # zero-shot leaves the source's own record alone
        threshold = scores["density_threshold"] if trains else None
        return scores, threshold, _threshold_record(cfg, scores)

    cfg, scores = train_calibrate_score(cfg, RealFigureTrainer, output_dir, score, train=train)
    n_crops = len(real_figure_train_set(cfg)) if trains else 0
    return {
        "threshold": scores["threshold"],
        "val_f1": scores["val_f1"],
        "new": scores["in_domain"],
        "old": scores["held_out"],
        "crops": scores["crops"],
        "train_crops": n_crops,
        "train_slides": cfg.DATASETS.REAL_FIGURES.TRAIN_SLIDES,
        "iterations": cfg.SOLVER.MAX_ITER,
        "weights": cfg.MODEL.WEIGHTS,
        "domains": list(cfg.MODEL.MULTITASK.DOMAINS),
    }


def train_and_score(
    config_file: str,
    run,
    output_dir: str,
    threads: int = 1,
    eval_size: int = 256,
    extra_opts: Sequence[str] = (),
) -> Dict[str, Any]:
    """One study run (:class:`midog_d2.jobs.study.StudyRun`): ``config_file`` +
    ``run.opts`` + ``extra_opts``, trained from scratch into ``output_dir`` on ``threads``
    threads (a run with a base loads the base run's trained detector instead:
    :func:`~midog_d2.jobs.study.reused_weights`), then :func:`evaluate_placed_domains`. Returns
    the metrics, iterations and the config's held-out domains."""
    cfg = _start_run(config_file, run, output_dir, threads, extra_opts)
    reused = reused_weights(run, output_dir)
    if reused and cfg.INPUT.CANVAS.MINE_ROUNDS:
        raise ValueError(f"{run.name}: a run that mines imposters trains its own detector")

    def train(cfg):
        model, cfg, rounds = _train_with_mining(cfg, output_dir)
        return model, cfg, ({"mining": rounds} if rounds else {})

    def score(cfg, model):
        scores = evaluate_placed_domains(cfg, model, seed=0, size=eval_size)
        return scores, scores["density_threshold"], _threshold_record(cfg, scores)

    cfg, result = train_calibrate_score(cfg, RealFigureTrainer, output_dir, score, reused, train)
    mt = cfg.MODEL.MULTITASK
    result.update(
        iterations=cfg.SOLVER.MAX_ITER,
        train_domains=list(cfg.DATASETS.REAL_FIGURES.TRAIN_DOMAINS),
        held_out_domains=[
            d for d in mt.DOMAINS if d not in set(cfg.DATASETS.REAL_FIGURES.TRAIN_DOMAINS)
        ],
        weights=os.path.join(output_dir, "model_final.pth"),
    )
    return result

"""One study or demo run: train (or reuse a base run's detector), calibrate the operating
threshold where a user can, score, and store the threshold beside the weights. The product's
MIDOG study (:mod:`midog_d2.jobs.study.midog`) and the development study on real-figure
canvases both go through :func:`train_calibrate_score`; they differ only in how a model is
trained and what it is scored on."""

import json
import math
import os
from typing import Any, Callable, Dict, Optional, Tuple

from torch import nn

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ..checkpoint import (
    MidogCheckpointer,
    file_sha256,
    load_model_weights,
    load_threshold,
    save_threshold,
)
from ..fileio.atomic import atomic_write_text
from .protocol import score_dataset, store_calibration
from .second_stage import train_second_stage

__all__ = ["begin_run", "train_detector", "fit_run", "train_calibrate_score", "train_model"]

# score(cfg, model) -> (scores, operating threshold or None, what the threshold file records)
ScoreFn = Callable[[CfgNode, nn.Module], Tuple[Dict[str, Any], Optional[float], Dict[str, Any]]]
# train(cfg) -> (model, the config it was trained with, what the run's row records)
TrainFn = Callable[[CfgNode], Tuple[nn.Module, CfgNode, Dict[str, Any]]]


def begin_run(cfg: CfgNode, output_dir: str) -> None:
    """What every run does before training: its config saved as ``output_dir/config.yaml``,
    every RNG seeded with ``cfg.SEED``."""
    atomic_write_text(os.path.join(output_dir, "config.yaml"), cfg.dump())
    seed_all_rng(cfg.SEED)


def train_detector(cfg: CfgNode, trainer_cls) -> nn.Module:
    """``trainer_cls(cfg)`` trained from ``MODEL.WEIGHTS`` (not resumed); its model."""
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer.model


def fit_run(
    cfg: CfgNode,
    trainer_cls,
    output_dir: str,
    reused: Optional[str] = None,
    train: Optional[TrainFn] = None,
) -> Tuple[nn.Module, CfgNode, Dict[str, Any]]:
    """The run's model: the detector of ``reused`` (a base run's weights: the cell differs
    only after the detector) or one trained by ``train`` (default :func:`train_detector`
    with ``trainer_cls``), then, with ``MODEL.SECOND_STAGE.ON``, its second stage trained on
    ``trainer_cls``'s training loader. ``output_dir/model_final.pth`` holds the result.
    Returns the model, the config it was trained with and what the run's row records
    (``reused``, ``second_stage`` and whatever ``train`` reports)."""
    info: Dict[str, Any] = {}
    if reused:
        model = trainer_cls.build_model(cfg)
        load_model_weights(cfg, model, reused, untrained=("second_stage.",))
        # the run's own copy, which its threshold file is bound to
        MidogCheckpointer.from_config(cfg, model, output_dir).save("model_final")
        info["reused"] = reused
    elif train is not None:
        model, cfg, trained = train(cfg)
        info.update(trained)
    else:
        model = train_detector(cfg, trainer_cls)
    if cfg.MODEL.SECOND_STAGE.ON:
        loader = iter(trainer_cls.build_train_loader(cfg))
        info["second_stage"] = train_second_stage(cfg, model, loader)
        MidogCheckpointer.from_config(cfg, model, output_dir).save("model_final")
    return model, cfg, info


def train_calibrate_score(
    cfg: CfgNode,
    trainer_cls,
    output_dir: str,
    score: ScoreFn,
    reused: Optional[str] = None,
    train: Optional[TrainFn] = None,
) -> Tuple[CfgNode, Dict[str, Any]]:
    """:func:`begin_run`, :func:`fit_run`, then ``score``, which chooses the operating
    threshold on data of the training domains (never on held-out data, midog.md §2); that
    threshold is stored beside ``output_dir/model_final.pth`` with ``score``'s record.
    Returns the config the model was trained with and the scores with the run's record."""
    begin_run(cfg, output_dir)
    model, cfg, info = fit_run(cfg, trainer_cls, output_dir, reused, train)
    scores, threshold, record = score(cfg, model)
    weights = os.path.join(output_dir, "model_final.pth")
    if os.path.isfile(weights) and threshold is not None and math.isfinite(threshold):
        save_threshold(weights, threshold, **record)
    return cfg, {**scores, **info}


def train_model(cfg: CfgNode, trainer, resume: bool = False) -> Dict[str, Any]:
    """The whole model in one command (``tools/train_net.py``).

    1. The detector, trained by ``trainer`` (a :class:`~.trainer.MidogTrainer` of ``cfg``;
       with ``resume``, from ``OUTPUT_DIR``'s last checkpoint on the same schedule, and not
       at all when that checkpoint ends the schedule).
    2. With ``MODEL.SECOND_STAGE.ON``, the second stage, trained on the detector's candidates
       in the trainer's training inputs and saved with it in ``OUTPUT_DIR/model_final.pth``;
       ``second_stage.json`` records it, bound to that file's SHA-256, so that a resumed run
       skips it only when it was trained on the detector now in the file.
    3. With ``TEST.MIDOG.CALIBRATION_DATASET`` (checked before training), the operating
       threshold chosen there and stored beside ``model_final.pth`` (unless one is stored
       for these very weights).
    4. When 2 or 3 changed the scores and ``DATASETS.TEST`` is set, the finished model
       scored there at its threshold.

    Every process takes part in evaluation (Detectron2's distributed inference); the main
    one trains the second stage and writes the files. Returns ``second_stage`` (its
    training figures), ``calibration`` (the threshold record) and ``final`` (4's scores)
    where they ran."""
    dataset = cfg.TEST.MIDOG.CALIBRATION_DATASET
    if dataset and dataset not in DatasetCatalog.list():
        raise ValueError(
            f"TEST.MIDOG.CALIBRATION_DATASET {dataset!r} is not a registered dataset "
            "(midog_val needs DATASETS.MIDOG.VAL_FRACTION > 0; a file of its own: "
            "DATASETS.MIDOG.EXTRA)"
        )
    trainer_cls = type(trainer)
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    marker = os.path.join(cfg.OUTPUT_DIR, "second_stage.json")
    if not resume and comm.is_main_process() and os.path.isfile(marker):
        os.remove(marker)  # a new run: an old run's second stage says nothing about it
    trainer.resume_or_load(resume=resume)
    if trainer.start_iter < trainer.max_iter:
        trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    out: Dict[str, Any] = {}
    changed = False
    if cfg.MODEL.SECOND_STAGE.ON:
        done = _second_stage_record(marker, final) if resume else None
        if done is not None:
            out["second_stage"] = done
        else:
            if comm.is_main_process():
                # SEED >= 0 makes the candidates (the loader's draws) repeat, as training's
                seed_all_rng(cfg.SEED if cfg.SEED >= 0 else None)
                out["second_stage"] = train_second_stage(
                    cfg, model, iter(trainer_cls.build_train_loader(cfg))
                )
                # the trainer's checkpointer: iteration and optimizer travel with the weights
                trainer.checkpointer.save("model_final")
                record = dict(out["second_stage"], model_final_sha256=file_sha256(final))
                atomic_write_text(marker, json.dumps(record, indent=1))
            comm.synchronize()
            if not comm.is_main_process():  # the other processes take the trained stage
                MidogCheckpointer.from_config(cfg, model, cfg.OUTPUT_DIR).load(final)
            changed = True
    if dataset and os.path.isfile(final):
        stored = None if changed else load_threshold(final)
        if stored is not None:
            out["calibration"] = stored
        else:
            model.eval()
            midog = score_dataset(cfg, model, dataset).get("midog", {})
            if comm.is_main_process():
                out["calibration"] = store_calibration(cfg, midog, dataset, final)
            comm.synchronize()
            changed = True
    if changed and cfg.DATASETS.TEST:
        tested = cfg.clone()
        tested.defrost()
        tested.MODEL.WEIGHTS = final
        model.eval()
        out["final"] = trainer_cls.test(tested, model)
    return out


def _second_stage_record(marker: str, final: str) -> Optional[Dict[str, Any]]:
    """The second stage's record when ``final`` holds the second stage it describes."""
    if not (os.path.isfile(marker) and os.path.isfile(final)):
        return None
    with open(marker, encoding="utf-8") as f:
        record = json.load(f)
    return record if record.get("model_final_sha256") == file_sha256(final) else None

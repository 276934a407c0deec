"""Detectron2 evaluators for MIDOG datasets: the challenge's point metrics and COCO AP50.

Both take whole-image outputs (``midog_d2.inference.TiledPredictor``): ``instances``
in level-0 pixels of the image, class 0 = mitotic figure.
"""

import itertools
import json
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from tabulate import tabulate

import detectron2.utils.comm as comm
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.utils.file_io import PathManager

from ..checkpoint import resolve_score_threshold
from ..constants import (
    AP_BOX_HALF_UM,
    DEFAULT_DONT_CARE_RADIUS_UM,
    DEFAULT_MPP,
    DEFAULT_RADIUS_UM,
    DEFAULT_SCORE_THRESHOLD,
    DONT_CARE,
    HARD_NEGATIVE,
    MIDOGPP_DENSITY,
    MITOTIC_FIGURE,
    is_labelled,
)
from ..fileio.points import json_safe, points_to_json
from ..fileio.slide import first_mpp
from ..modeling.outputs import DOMAIN_PROBS, FOREGROUND_PROB
from .metrics import ImagePoints, points_in_region, roc_auc
from .prevalence import evaluate_at_density
from .scoring import box_centres, image_points

__all__ = [
    "MidogEvaluator",
    "MitoticCOCOEvaluator",
    "register_mitotic_only",
    "build_midog_evaluators",
    "format_results_table",
]

logger = logging.getLogger(__name__)

# What the tiled predictor adds to each image's result besides the model's extra outputs.
_PREDICTION_KEYS = ("instances", "tiles", "scale")


class MidogEvaluator(DatasetEvaluator):
    """
    The MIDOG protocol (docs/evaluation.md) on a registered MIDOG dataset.

    Ground truth comes from ``DatasetCatalog.get(dataset_name)``: mitotic figures
    (``category_id`` 0) only; images that were never annotated (``labelled`` False, or
    no annotation when the flag is absent) are left out of every metric. Only images
    that went through :meth:`process` are scored; an input's ``region`` (x0, y0, x1, y1)
    restricts ground truth and detections to it. µm/px: the input's ``mpp``, else the
    dataset dict's, else the metadata's ``mpp``, else an error naming the image.

    ``evaluate()`` returns ``{"midog": {...}}`` with fractions in [0, 1] (not
    Detectron2's percent): ``F1, precision, recall, TP, FP, FN`` at ``threshold``
    (``score >= threshold``), ``best_F1, best_threshold`` (sweep over 0.00..0.99),
    ``AP50_points`` (MIDOG 2022 mAP), ``num_images``; at real density (each image's
    area is its region or width x height) ``area_mm2``, ``figures_per_mm2`` (the set's
    own), ``FP_per_mm2`` at ``threshold``, ``expected_F1`` at ``density`` figures per mm²
    and ``density_threshold``/``density_F1`` (the sweep's best expected F1 there:
    :mod:`.prevalence`); ``F1/<tumor>`` and
    ``AP50_points/<tumor>``; with the paper's extra outputs present, ``domain_accuracy``
    (argmax of ``domain_probs`` vs the dict's ``domain_label``, images with a known
    label) and ``foreground_AUC`` (per tile: ``foreground_prob`` vs "a box of either
    class has its centre in the tile", labelled images). NaN marks an undefined number.
    With ``output_dir``, writes ``midog_metrics.json`` (everything, per tumor in full),
    ``midog_points.json`` (file name -> MIDOG "Multiple points" object) and, when the model
    declares extra outputs (:mod:`midog_d2.modeling.outputs`), ``midog_extra_outputs.json``
    (file name -> {output name: its value}).
    """

    def __init__(
        self,
        dataset_name: str,
        cfg=None,
        output_dir: Optional[str] = None,
        *,
        radius_um: Optional[float] = None,
        score_threshold: Optional[float] = None,
        density: Optional[float] = None,
        dont_care_radius_um: Optional[float] = None,
        mitotic_class: int = MITOTIC_FIGURE,
        distributed: bool = True,
    ):
        """
        Args:
            dataset_name: a registered dataset of MIDOG dicts.
            cfg: optional config supplying TEST.MIDOG.RADIUS_UM and SCORE_THRESHOLD.
            output_dir: where to write the JSON files (None: nothing written).
            radius_um, score_threshold: override the config (defaults 7.5 and 0.5).
            density: mitotic figures per mm² for the expected F1 and ``density_threshold``
                (default ``TEST.MIDOG.OPERATING_DENSITY``, else 4.4; 0: the set's own).
            dont_care_radius_um: how far a don't-care zone reaches (default
                ``TEST.MIDOG.DONT_CARE_RADIUS_UM``, else 15).
            mitotic_class: the predicted class scored as mitotic figure.
            distributed: gather from all ranks and evaluate on the main one.
        """
        if radius_um is None:
            radius_um = cfg.TEST.MIDOG.RADIUS_UM if cfg is not None else DEFAULT_RADIUS_UM
        if density is None:
            density = cfg.TEST.MIDOG.OPERATING_DENSITY if cfg is not None else None
        if dont_care_radius_um is None:
            dont_care_radius_um = (
                cfg.TEST.MIDOG.DONT_CARE_RADIUS_UM
                if cfg is not None
                else DEFAULT_DONT_CARE_RADIUS_UM
            )
        if score_threshold is None:
            score_threshold, source = (
                resolve_score_threshold(cfg)
                if cfg is not None
                else (DEFAULT_SCORE_THRESHOLD, "default")
            )
            logger.info("%s: operating threshold %.3f (%s)", dataset_name, score_threshold, source)
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        self._radius_um = float(radius_um)
        self._dont_care_radius_um = float(dont_care_radius_um)
        self._threshold = float(score_threshold)
        self._density = None if density is None else float(density)
        self._mitotic_class = mitotic_class
        self._distributed = distributed
        self._output_dir = output_dir
        self._records: List[Dict[str, Any]] = []

    def reset(self):
        self._records = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            rec: Dict[str, Any] = {"image_id": inp["image_id"], "file_name": inp.get("file_name")}
            inst = out["instances"].to("cpu")
            boxes = inst.pred_boxes.tensor.double().numpy().reshape(-1, 4)
            scores = inst.scores.double().numpy().reshape(-1)
            if inst.has("pred_classes"):
                keep = inst.pred_classes.numpy() == self._mitotic_class
                boxes, scores = boxes[keep], scores[keep]
            rec["centres"] = (boxes[:, :2] + boxes[:, 2:]) / 2.0
            rec["scores"] = scores
            rec["region"] = None if inp.get("region") is None else [float(v) for v in inp["region"]]
            rec["mpp"] = inp.get("mpp")
            rec["domain_label"] = inp.get("domain_label")
            # The model's declared extra outputs (midog_d2.modeling.outputs), whatever they are.
            rec["extras"] = {
                k: torch.as_tensor(v).detach().cpu().double().numpy()
                for k, v in out.items()
                if k not in _PREDICTION_KEYS
            }
            if FOREGROUND_PROB.name in rec["extras"]:
                tiles = out.get("tiles")
                if tiles is None:
                    # A model run on the whole input: one "tile", the input itself.
                    r = rec["region"] or [0.0, 0.0, float(inp["width"]), float(inp["height"])]
                    tiles = torch.tensor([r], dtype=torch.float64)
                rec["tiles"] = torch.as_tensor(tiles).detach().cpu().double().numpy().reshape(-1, 4)
            self._records.append(rec)

    def _mpp(self, rec: Dict[str, Any], gt: Dict[str, Any]) -> float:
        where = f"{gt.get('file_name')} ({self._dataset_name})"
        return first_mpp(where, rec.get("mpp"), gt.get("mpp"), self._metadata.get("mpp", None))

    def _collect(self, records: List[Dict[str, Any]]):
        """Per record: the scored points (:func:`~.scoring.image_points`), the domain head's
        hits, the foreground head's (score, label) per tile, the challenge JSON and each
        image's extra outputs."""
        dicts = {d["image_id"]: d for d in DatasetCatalog.get(self._dataset_name)}
        images: List[ImagePoints] = []
        domain_hits, fg_scores, fg_labels, points_json, extras_json = [], [], [], {}, {}
        skipped = 0
        for rec in records:
            gt = dicts.get(rec["image_id"])
            if gt is None:
                raise KeyError(
                    f"[MidogEvaluator] image_id {rec['image_id']!r} is not in dataset "
                    f"{self._dataset_name!r}"
                )
            mpp = self._mpp(rec, gt)
            label = gt.get("domain_label", rec.get("domain_label"))
            extras = rec.get("extras", {})
            if DOMAIN_PROBS.name in extras and label is not None and int(label) >= 0:
                domain_hits.append(int(np.argmax(extras[DOMAIN_PROBS.name])) == int(label))
            name = os.path.basename(str(gt.get("file_name", rec["image_id"])))
            if name in points_json:  # two files of one name in different folders
                name = str(rec["image_id"])
            points_json[name] = points_to_json(rec["centres"], rec["scores"], mpp, self._threshold)
            if extras:
                extras_json[name] = {k: v.tolist() for k, v in sorted(extras.items())}
            points = image_points(
                gt,
                rec["centres"],
                rec["scores"],
                mpp,
                region=rec["region"],
                ignore_radius_um=self._dont_care_radius_um,
            )
            if points is None:
                skipped += 1
                continue
            if FOREGROUND_PROB.name in extras:
                # either class (not don't-care zones): the foreground target counts both
                centres = np.concatenate(
                    [box_centres(gt, MITOTIC_FIGURE), box_centres(gt, HARD_NEGATIVE)]
                )
                fg = extras[FOREGROUND_PROB.name].reshape(-1)
                for (x0, y0, x1, y1), p in zip(rec["tiles"], fg):
                    fg_scores.append(p)
                    fg_labels.append(bool(points_in_region(centres, (x0, y0, x1, y1)).any()))
            images.append(points)
        if skipped:
            logger.info("[MidogEvaluator] %d unlabelled image(s) left out of scoring", skipped)
        return images, domain_hits, fg_scores, fg_labels, (points_json, extras_json), skipped

    def _write(self, full: Dict[str, Any], points_json: Dict[str, Any], extras_json) -> None:
        PathManager.mkdirs(self._output_dir)
        with PathManager.open(os.path.join(self._output_dir, "midog_metrics.json"), "w") as f:
            json.dump(json_safe(full), f, indent=1)
        with PathManager.open(os.path.join(self._output_dir, "midog_points.json"), "w") as f:
            json.dump(points_json, f)
        if extras_json:
            path = os.path.join(self._output_dir, "midog_extra_outputs.json")
            with PathManager.open(path, "w") as f:
                json.dump(json_safe(extras_json), f)

    def evaluate(self):
        if self._distributed:
            comm.synchronize()
            records = list(itertools.chain(*comm.gather(self._records, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            records = self._records
        if not records:
            logger.warning("[MidogEvaluator] no predictions received")
            return {}

        images, domain_hits, fg_scores, fg_labels, files, skipped = self._collect(records)
        full = evaluate_at_density(
            images,
            self._radius_um,
            self._threshold,
            box_half_um=AP_BOX_HALF_UM,
            density=self._density,
        )
        res: Dict[str, float] = {
            "F1": full["f1"],
            "precision": full["precision"],
            "recall": full["recall"],
            "TP": full["tp"],
            "FP": full["fp"],
            "FN": full["fn"],
            "threshold": self._threshold,
            "best_F1": full["best_f1"],
            "best_threshold": full["best_threshold"],
            "AP50_points": full["ap50"],
            "num_images": full["num_images"],
        }
        # Whole ROIs are scored at their own density: F1 is already the count's quality
        # there; the rates below carry it to other densities (midog_d2.evaluation.prevalence).
        for key, name in (
            ("area_mm2", "area_mm2"),
            ("figures_per_mm2", "figures_per_mm2"),
            ("fp_per_mm2", "FP_per_mm2"),
            ("density", "density"),
            ("expected_f1", "expected_F1"),
            ("density_threshold", "density_threshold"),
            ("density_f1", "density_F1"),
        ):
            if key in full:
                res[name] = full[key]
        for tumor, t in full["per_tumor"].items():
            res[f"F1/{tumor}"] = t["f1"]
            res[f"AP50_points/{tumor}"] = t["ap50"]
        if domain_hits:
            res["domain_accuracy"] = float(np.mean(domain_hits))
        if fg_scores:
            res["foreground_AUC"] = roc_auc(fg_scores, fg_labels)
            full["foreground_tiles"] = len(fg_scores)
        full.update({k: res[k] for k in ("domain_accuracy", "foreground_AUC") if k in res})
        full.update(
            radius_um=self._radius_um,
            dont_care_radius_um=self._dont_care_radius_um,
            unlabelled_images_skipped=skipped,
            dataset=self._dataset_name,
        )

        if self._output_dir:
            self._write(full, *files)
        logger.info(
            "MIDOG results on %s:\n%s", self._dataset_name, format_results_table({"midog": res})
        )
        return OrderedDict({"midog": res})


def register_mitotic_only(dataset_name: str) -> str:
    """Register ``<dataset_name>_mitotic_only``: the labelled images of ``dataset_name``
    with their mitotic-figure boxes only, one class ("mitotic figure"). COCO AP on it is
    AP of the mitotic-figure class, not a mean with the hard-negative class. Don't-care zones
    become crowd boxes (``iscrowd``), which COCOeval ignores detections on, as the MIDOG
    metrics do. Returns its name."""
    name = f"{dataset_name}_mitotic_only"
    if name in DatasetCatalog.list():
        return name

    def load():
        return [
            dict(
                d,
                annotations=[
                    a for a in d.get("annotations", []) if a["category_id"] == MITOTIC_FIGURE
                ]
                + [
                    dict(a, category_id=MITOTIC_FIGURE, iscrowd=1)
                    for a in d.get("annotations", [])
                    if a["category_id"] == DONT_CARE
                ],
            )
            for d in DatasetCatalog.get(dataset_name)
            if is_labelled(d)
        ]

    DatasetCatalog.register(name, load)
    src = MetadataCatalog.get(dataset_name)
    MetadataCatalog.get(name).set(thing_classes=["mitotic figure"], mpp=src.get("mpp", DEFAULT_MPP))
    return name


class MitoticCOCOEvaluator(COCOEvaluator):
    """
    Detectron2's COCOEvaluator (official pycocotools path) for the mitotic-figure class
    of a MIDOG dataset: ground truth from :func:`register_mitotic_only`, detections of
    other classes and of unlabelled images dropped, and only the images processed
    scored. AP50 lands in ``results["bbox"]["AP50"]``, in percent as in Detectron2.
    An input's ``region`` is not applied here.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        *,
        distributed: bool = True,
        max_dets_per_image: int = 100000,
        mitotic_class: int = MITOTIC_FIGURE,
    ):
        """
        Args:
            dataset_name: a registered dataset of MIDOG dicts.
            output_dir: where COCOEvaluator writes its files and the converted ground
                truth (None: a temporary folder).
            max_dets_per_image: COCO's per-image detection limit; whole MIDOG images
                hold far more than COCO's default 100.
        """
        self._mitotic_class = mitotic_class
        mitotic_name = register_mitotic_only(dataset_name)
        self._image_ids = {d["image_id"] for d in DatasetCatalog.get(mitotic_name)}
        super().__init__(
            mitotic_name,
            tasks=("bbox",),
            distributed=distributed,
            output_dir=output_dir or tempfile.mkdtemp(prefix="midog_coco_"),
            max_dets_per_image=max_dets_per_image,
            use_fast_impl=False,
            # The cache is keyed by dataset name only; a re-split dataset must not reuse it.
            allow_cached_coco=False,
        )

    def process(self, inputs, outputs):
        kept_in, kept_out = [], []
        for inp, out in zip(inputs, outputs):
            if inp["image_id"] not in self._image_ids:
                continue
            inst = out["instances"]
            if inst.has("pred_classes"):
                inst = inst[inst.pred_classes == self._mitotic_class]
            kept_in.append(inp)
            kept_out.append({"instances": inst})
        super().process(kept_in, kept_out)

    def evaluate(self, img_ids=None):
        if img_ids is None:
            img_ids = [p["image_id"] for p in self._predictions]
            if self._distributed:
                img_ids = list(itertools.chain(*comm.gather(img_ids, dst=0)))
        return super().evaluate(img_ids=img_ids or None)


def build_midog_evaluators(
    cfg, dataset_name: str, output_dir: Optional[str] = None
) -> DatasetEvaluators:
    """:class:`MidogEvaluator` and :class:`MitoticCOCOEvaluator` on ``dataset_name``."""
    return DatasetEvaluators(
        [
            MidogEvaluator(dataset_name, cfg, output_dir),
            MitoticCOCOEvaluator(dataset_name, output_dir),
        ]
    )


def format_results_table(results: Dict[str, Dict[str, float]]) -> str:
    """One table of every task's numbers (rows: task/metric, value)."""

    def fmt(value):
        if value is None:
            return "-"
        if isinstance(value, (bool, int, np.integer)):
            return str(int(value))
        if isinstance(value, (float, np.floating)):
            return f"{float(value):.4f}"
        return str(value)

    rows = []
    for task, res in results.items():
        if not isinstance(res, dict):
            rows.append((task, fmt(res)))
            continue
        for key, value in res.items():
            rows.append((f"{task}/{key}", fmt(value)))
    return tabulate(rows, headers=["metric", "value"], tablefmt="pipe", disable_numparse=True)

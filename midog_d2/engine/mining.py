"""Imposter mining over a registered MIDOG dataset: the model's confident detections on
whole training images, away from every annotated cell (:func:`midog_d2.data.imposters.
mine_imposters`), per image (``tools/mine_imposters.py``)."""

from typing import Any, Dict, Optional, Tuple

import numpy as np
from torch import nn

from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset

from ..constants import MITOTIC_FIGURE
from ..data.imposters import mine_imposters
from ..data.midog import box_centres
from ..data.sampler import build_midog_test_loader
from ..fileio.slide import fallback_mpp, first_mpp
from ..inference.predictor import TiledPredictor

__all__ = ["ImposterCollector", "mine_dataset"]


class ImposterCollector(DatasetEvaluator):
    """Collects each image's imposters as the tiled predictor yields its detections:
    ``evaluate()`` returns {image id: (centres (M, 2) level-0 px, scores (M,))}."""

    def __init__(
        self,
        dataset_name: str,
        threshold: float,
        radius_um: float,
        fallback_mpp: Optional[float],
    ):
        self._records = {d["image_id"]: d for d in DatasetCatalog.get(dataset_name)}
        self._threshold, self._radius_um, self._mpp = threshold, radius_um, fallback_mpp
        self._mined: Dict[Any, Tuple[np.ndarray, np.ndarray]] = {}

    def reset(self):
        self._mined = {}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            if inst.has("pred_classes"):
                inst = inst[inst.pred_classes == MITOTIC_FIGURE]
            record = self._records[inp["image_id"]]
            mpp = first_mpp(record.get("file_name"), inp.get("mpp"), record.get("mpp"), self._mpp)
            self._mined[inp["image_id"]] = mine_imposters(
                box_centres(record),
                inst.pred_boxes.get_centers().double().numpy(),
                inst.scores.double().numpy(),
                self._threshold,
                self._radius_um / mpp,
            )

    def evaluate(self):
        return dict(self._mined)


def mine_dataset(
    cfg, model: nn.Module, dataset_name: str, threshold: float
) -> Dict[Any, Tuple[np.ndarray, np.ndarray]]:
    """Imposters of every image of ``dataset_name``: detections of ``model`` on the whole
    image (tiled, as evaluation runs it) scoring ``>= threshold`` and farther than
    ``TEST.MIDOG.RADIUS_UM`` from every annotated cell and from each other."""
    loader = build_midog_test_loader(cfg, dataset_name)
    collector = ImposterCollector(
        dataset_name,
        threshold,
        cfg.TEST.MIDOG.RADIUS_UM,
        fallback_mpp(cfg.DATASETS.MIDOG.FALLBACK_MPP),
    )
    return inference_on_dataset(TiledPredictor(cfg, model, evaluation=True), loader, collector)

"""Which image each training patch comes from, and the training data loader.

Detectron2's training loaders are infinite streams. Here an *epoch* is a
documented bookkeeping unit: ``DATALOADER.PATCHES_PER_EPOCH`` patches (over all
processes; 0 means one per training image). The sampler draws the images of one
epoch at a time, with replacement and with per-image weights, so epoch ``k`` of a
given seed is always the same multiset of images; the trainer converts
iterations to epochs as ``iteration * SOLVER.IMS_PER_BATCH / patches_per_epoch``.
"""

import itertools
import logging
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.data.sampler import Sampler

from detectron2.data import (
    DatasetCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.utils import comm

from ..constants import is_labelled
from ..fileio import check_images
from .mapper import MidogPatchMapper, MidogTestMapper
from .midog import without_dont_care

__all__ = [
    "MidogTrainingSampler",
    "build_midog_test_loader",
    "build_midog_train_loader",
    "image_weights",
    "labelled_images",
    "patches_per_epoch",
]

logger = logging.getLogger(__name__)


def labelled_images(dataset_dicts: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The images that can be trained on: ``labelled`` is not False (without the
    key, an image counts as labelled when it has annotations)."""
    kept = [d for d in dataset_dicts if is_labelled(d)]
    if len(kept) < len(dataset_dicts):
        logger.info(
            "Training on %d images; left out %d unlabelled ones",
            len(kept),
            len(dataset_dicts) - len(kept),
        )
    return kept


def image_weights(
    dataset_dicts: List[Dict[str, Any]], balance_tumor_types: bool = False
) -> torch.Tensor:
    """
    Sampling weight of each image (sums to 1): uniform, or with
    ``balance_tumor_types`` uniform over tumor types first (images whose
    ``tumor_type`` is None form one group) and then over the images of a type;
    then multiplied by each dict's ``sample_weight`` (default 1), which lets a
    loader oversample a rare kind of image (e.g. atypical figures).
    """
    if not dataset_dicts:
        raise ValueError("image_weights: no training images")
    if not balance_tumor_types:
        w = torch.ones(len(dataset_dicts), dtype=torch.float64)
    else:
        types = [d.get("tumor_type") for d in dataset_dicts]
        counts = Counter(types)
        logger.info("Balancing %d tumor types: %s", len(counts), dict(counts))
        w = torch.tensor([1.0 / counts[t] for t in types], dtype=torch.float64)
    extra = torch.tensor(
        [float(d.get("sample_weight", 1.0)) for d in dataset_dicts], dtype=torch.float64
    )
    bad = [
        d.get("file_name", i)
        for i, (d, e) in enumerate(zip(dataset_dicts, extra.tolist()))
        if not (e >= 0 and e < float("inf"))
    ]
    if bad:
        raise ValueError(f"image_weights: sample_weight must be finite and >= 0; bad for {bad[:5]}")
    w = w * extra
    if w.sum() <= 0:
        raise ValueError("image_weights: every image has sample_weight 0")
    return w / w.sum()


def patches_per_epoch(cfg, num_images: int) -> int:
    """``DATALOADER.PATCHES_PER_EPOCH``, or ``num_images`` when it is 0."""
    n = int(cfg.DATALOADER.PATCHES_PER_EPOCH)
    if n < 0:
        raise ValueError(f"DATALOADER.PATCHES_PER_EPOCH must be >= 0, got {n}")
    return n or int(num_images)


class MidogTrainingSampler(Sampler):
    """
    Infinite stream of image indices drawn with replacement in proportion to
    ``weights``, ``patches_per_epoch`` at a time. Like Detectron2's
    ``TrainingSampler`` every process computes the same stream from ``seed`` and
    takes every ``world_size``-th index starting at its rank.
    """

    def __init__(
        self, weights: Sequence[float], patches_per_epoch: int, seed: Optional[int] = None
    ):
        """
        Args:
            weights: one non-negative weight per image, not all zero.
            patches_per_epoch: indices drawn per epoch, over all processes.
            seed: the same on every process; None draws one shared by all of them.
        """
        w = torch.as_tensor(weights, dtype=torch.float64)
        if (
            w.ndim != 1
            or len(w) == 0
            or not torch.isfinite(w).all()
            or (w < 0).any()
            or w.sum() <= 0
        ):
            raise ValueError(
                "MidogTrainingSampler: weights must be a non-empty 1-D vector of finite values >= "
                "0, "
                f"not all 0; got {w.tolist()[:10]}..."
            )
        if patches_per_epoch <= 0:
            raise ValueError(
                f"MidogTrainingSampler: patches_per_epoch must be positive, got {patches_per_epoch}"
            )
        self.weights = w
        self.patches_per_epoch = int(patches_per_epoch)
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()

    def __iter__(self):
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self):
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            yield from torch.multinomial(
                self.weights, self.patches_per_epoch, replacement=True, generator=g
            ).tolist()


def build_midog_train_loader(
    cfg,
    mapper: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None,
    dataset: Optional[List[Dict[str, Any]]] = None,
):
    """
    The training loader: labelled images of ``cfg.DATASETS.TRAIN`` (or
    ``dataset``), drawn by :class:`MidogTrainingSampler` (``DATALOADER.*``),
    each mapped to one patch by ``mapper`` (default :class:`MidogPatchMapper`),
    in batches of ``SOLVER.IMS_PER_BATCH`` over all processes.

    With ``cfg.SEED >= 0`` the image stream and the workers' NumPy/torch seeds
    (hence patches and augmentations) are fixed by it; with
    ``DATALOADER.NUM_WORKERS: 0`` the mapper draws from the main process's NumPy
    RNG instead, which ``default_setup`` seeds from ``cfg.SEED``.
    """
    if dataset is None:
        names = tuple(cfg.DATASETS.TRAIN)
        if not names:
            raise ValueError("DATASETS.TRAIN is empty: name the training dataset(s)")
        empty = tuple(n for n in names if not DatasetCatalog.get(n))
        if empty:
            raise ValueError(
                f"the training set {empty} holds no images; check DATASETS.MIDOG."
                "JSON_FILE, its split (DATASETS.MIDOG.SPLIT, CSV_FILE) and the tumor-type "
                "filter"
            )
        dataset = without_dont_care([d for n in names for d in DatasetCatalog.get(n)])
        if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
            dataset = filter_images_with_only_crowd_annotations(dataset)
    dataset = labelled_images(dataset)
    if not dataset:
        raise ValueError(
            f"build_midog_train_loader: no labelled training images in {tuple(cfg.DATASETS.TRAIN)}"
        )
    # Before the first step, not at whichever iteration first samples a bad file.
    problems = check_images(dataset, read_pixels=False)
    if problems:
        listed = "; ".join(f"{p}: {why}" for p, why in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(
            f"{len(problems)} training image(s) cannot be used: {listed}{more}; "
            "tools/check_dataset.py lists them all"
        )
    if mapper is None:
        mapper = MidogPatchMapper(cfg, is_train=True)
    seed = cfg.SEED if cfg.SEED >= 0 else None
    sampler = MidogTrainingSampler(
        image_weights(dataset, cfg.DATALOADER.BALANCE_TUMOR_TYPES),
        patches_per_epoch(cfg, len(dataset)),
        seed=seed,
    )
    return build_detection_train_loader(
        dataset=dataset,
        mapper=mapper,
        sampler=sampler,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        # Patches are square: grouping by aspect ratio would only add a buffer.
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        # Seeds the workers' RNGs (worker_init_reset_seed); one seed per rank so
        # that ranks augment differently.
        seed=None if seed is None else seed + comm.get_rank(),
    )


def build_midog_test_loader(cfg, dataset_name: str):
    """Detectron2's test loader over ``dataset_name``, each dict mapped by
    :class:`MidogTestMapper` to a record without pixels (the tiler reads them). Its records
    leave out don't-care zones, a class no model has (Detectron2 checks every class against
    the model's); the evaluators read them, with the rest of the ground truth, from the
    catalog."""
    dicts = without_dont_care(DatasetCatalog.get(dataset_name))
    return build_detection_test_loader(
        dataset=dicts, mapper=MidogTestMapper(cfg), num_workers=cfg.DATALOADER.NUM_WORKERS
    )

"""Dataset mappers: training patches cut from large images, and test-time image records.

MIDOG images are ~7000 x 5000 px ROIs; a training sample is one ``INPUT.PATCH.SIZE``
patch of one of them, read with :func:`midog_d2.fileio.slide.read_region_scaled` (only the
pixels it needs). Test-time records carry no pixels at all: the tiler reads its
tiles itself.
"""

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances

from ..constants import DONT_CARE, HARD_NEGATIVE, MITOTIC_FIGURE
from ..fileio.images import rgb_to_format, to_chw_tensor
from ..fileio.slide import (
    fallback_mpp,
    read_region_scaled,
    resample_scale,
    slide_dimensions,
    slide_mpp,
)
from .transforms import build_color_augmentation

__all__ = ["MidogPatchMapper", "MidogTestMapper", "build_patch_augmentation"]

_IMAGE_FORMATS = ("BGR", "RGB")


def build_patch_augmentation(cfg) -> List[T.Augmentation]:
    """The training augmentations of a patch, from ``INPUT.*``: optional HED stain
    augmentation, the paper's ColorJitter (both in ``INPUT.FORMAT`` channel
    order), then independent horizontal and vertical flips."""
    # Colour before flips: colour ops are per pixel (contrast uses the global mean),
    # so the order changes nothing, but OpenCV reads flipped views only after a
    # slow copy, while the final CHW copy takes them at no extra cost.
    augs: List[T.Augmentation] = build_color_augmentation(cfg)
    if cfg.INPUT.RANDOM_FLIP_HV:
        # RandomFlip does one direction per instance: two instances, drawn independently.
        augs.append(T.RandomFlip(prob=0.5, horizontal=True, vertical=False))
        augs.append(T.RandomFlip(prob=0.5, horizontal=False, vertical=True))
    return augs


def _boxes_and_classes(dataset_dict: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    """(N, 4) float32 XYXY_ABS boxes and (N,) int64 classes of a dataset dict; don't-care
    zones (an evaluation label) take no part in training."""
    annos = [
        a
        for a in dataset_dict.get("annotations", ())
        if a.get("iscrowd", 0) == 0 and a.get("category_id") != DONT_CARE
    ]
    if not annos:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    boxes = np.array(
        [
            (
                a["bbox"]
                if a["bbox_mode"] == BoxMode.XYXY_ABS
                else BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
            )
            for a in annos
        ],
        dtype=np.float32,
    ).reshape(-1, 4)
    classes = np.array([a["category_id"] for a in annos], dtype=np.int64)
    bad = ~np.isin(classes, (MITOTIC_FIGURE, HARD_NEGATIVE))
    if bad.any():
        raise ValueError(
            f"{dataset_dict.get('file_name')}: category_id must be 0 (mitotic figure) or 1 "
            f"(hard negative), got {sorted(set(classes[bad].tolist()))}"
        )
    return boxes, classes


def _centres(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, :2] + boxes[:, 2:]) / 2.0


def _inside(points: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return (points[:, 0] >= x0) & (points[:, 0] < x1) & (points[:, 1] >= y0) & (points[:, 1] < y1)


class MidogPatchMapper(DatasetMapper):
    """
    Maps one large-image dataset dict (from :func:`midog_d2.data.load_midog_json`)
    to one training patch. With probability ``p_mitotic`` (``p_hard_negative``)
    the patch is centred near a random mitotic figure (hard negative), the cell at
    a uniform offset of up to ``max_center_offset * patch_size`` from the centre on
    each axis; otherwise it lies anywhere in the image. An image without a cell
    of the drawn kind gives a random patch. Windows are shifted inside the image,
    so patches of images at least ``patch_size`` wide and high never hold padding
    (smaller images are padded white at the right/bottom).

    Boxes whose centre lies in the patch are kept (both classes, 0 mitotic
    figure / 1 hard negative: the model decides which ones it detects), clipped,
    and follow the augmentations. Patches without cells are returned too.

    An image whose µm/px differs from ``model_mpp`` by more than ``mpp_tolerance``
    is read resampled to it (:func:`midog_d2.fileio.read_region_scaled`): the patch
    then covers ``patch_size / scale`` level-0 pixels (scale = image µm/px /
    ``model_mpp``) and its boxes are scaled with it; ``patch_origin`` stays in
    level-0 pixels.

    Randomness comes from NumPy's global RNG, like Detectron2's augmentations:
    Detectron2 seeds it per data-loader worker, and ``np.random.seed(s)``
    reproduces a worker's patches.

    Returns a dict with ``image`` (uint8 CHW tensor in ``image_format``),
    ``instances`` (``gt_boxes``, ``gt_classes``), ``foreground`` (1 if any box is in
    the patch), ``domain_label``, ``height``/``width`` (the patch size),
    ``file_name``, ``image_id`` and ``patch_origin`` (x, y of the patch in the image).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str,
        patch_size: int = 512,
        p_mitotic: float = 0.5,
        p_hard_negative: float = 0.0,
        max_center_offset: float = 0.25,
        model_mpp: Optional[float] = None,
        mpp_tolerance: float = 0.0,
        fallback_mpp: Optional[float] = None,
    ):
        """
        Args:
            is_train: kept for DatasetMapper's interface; patches are a training-time notion.
            augmentations: applied to the patch (and its boxes) after it is read.
            image_format: "BGR" or "RGB", the channel order of the output ``image``.
            patch_size: side of the square patch in pixels.
            p_mitotic, p_hard_negative: probabilities of centring on a mitotic
                figure / hard negative; their sum must be <= 1.
            max_center_offset: largest offset of the cell from the patch centre, as a
                fraction of ``patch_size``, in [0, 0.5).
            model_mpp: µm/px patches are read at (``INPUT.MODEL_MPP``); None/0 reads
                every image at its own resolution.
            mpp_tolerance: relative µm/px difference read without resampling
                (``INPUT.MPP_TOLERANCE``).
            fallback_mpp: µm/px of files without resolution metadata
                (``DATASETS.MIDOG.FALLBACK_MPP``).
        """
        if image_format not in _IMAGE_FORMATS:
            raise ValueError(
                f"MidogPatchMapper: INPUT.FORMAT must be one of {_IMAGE_FORMATS}, got "
                f"{image_format!r}"
            )
        if patch_size <= 0:
            raise ValueError(f"MidogPatchMapper: patch size must be positive, got {patch_size}")
        if p_mitotic < 0 or p_hard_negative < 0 or p_mitotic + p_hard_negative > 1:
            raise ValueError(
                "MidogPatchMapper: INPUT.PATCH.P_MITOTIC and P_HARD_NEGATIVE must be >= 0 and sum "
                f"to <= 1, got {p_mitotic} and {p_hard_negative}"
            )
        if not 0 <= max_center_offset < 0.5:
            raise ValueError(
                "MidogPatchMapper: INPUT.PATCH.MAX_CENTER_OFFSET must be in [0, 0.5), got "
                f"{max_center_offset}"
            )
        super().__init__(is_train, augmentations=augmentations, image_format=image_format)
        self.patch_size = int(patch_size)
        self.p_mitotic = float(p_mitotic)
        self.p_hard_negative = float(p_hard_negative)
        self.max_center_offset = float(max_center_offset)
        self.model_mpp = model_mpp
        self.mpp_tolerance = float(mpp_tolerance)
        self.fallback_mpp = fallback_mpp

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        p = cfg.INPUT.PATCH
        return {
            "is_train": is_train,
            "augmentations": build_patch_augmentation(cfg),
            "image_format": cfg.INPUT.FORMAT,
            "patch_size": p.SIZE,
            "p_mitotic": p.P_MITOTIC,
            "p_hard_negative": p.P_HARD_NEGATIVE,
            "max_center_offset": p.MAX_CENTER_OFFSET,
            "model_mpp": cfg.INPUT.MODEL_MPP,
            "mpp_tolerance": cfg.INPUT.MPP_TOLERANCE,
            "fallback_mpp": fallback_mpp(cfg.DATASETS.MIDOG.FALLBACK_MPP),
        }

    def scale(self, file_name: str) -> float:
        """Patch pixels per level-0 pixel of ``file_name`` (1: read as it is)."""
        if not self.model_mpp:
            return 1.0
        return resample_scale(
            slide_mpp(file_name, self.fallback_mpp), self.model_mpp, self.mpp_tolerance
        )

    @staticmethod
    def _shift_inside(start: float, extent: int, size: float) -> int:
        return int(min(max(round(start), 0), max(math.floor(extent - size), 0)))

    def sample_window(
        self,
        dataset_dict: Dict[str, Any],
        boxes: Optional[np.ndarray] = None,
        classes: Optional[np.ndarray] = None,
        scale: float = 1.0,
    ) -> Tuple[int, int, str]:
        """
        Draw a patch position in the image of ``dataset_dict``, for a patch read at
        ``scale`` (it covers ``patch_size / scale`` level-0 pixels).

        Returns:
            (x0, y0, kind): the patch's top-left corner in level-0 pixels and how it
            was drawn, "mitotic", "hard_negative" or "random".
        """
        if boxes is None or classes is None:
            boxes, classes = _boxes_and_classes(dataset_dict)
        width, height = int(dataset_dict["width"]), int(dataset_dict["height"])
        s = self.patch_size / scale  # level-0 extent
        u = np.random.uniform()
        if u < self.p_mitotic:
            kind, cls = "mitotic", MITOTIC_FIGURE
        elif u < self.p_mitotic + self.p_hard_negative:
            kind, cls = "hard_negative", HARD_NEGATIVE
        else:
            kind, cls = "random", None
        if cls is not None:
            # a cell cut by the image border with its centre outside cannot be centred on
            centres = _centres(boxes)
            candidates = np.flatnonzero((classes == cls) & _inside(centres, 0, 0, width, height))
            if len(candidates):
                cx, cy = centres[candidates[np.random.randint(len(candidates))]]
                dx, dy = (
                    np.random.uniform(-self.max_center_offset, self.max_center_offset, size=2) * s
                )
                x0 = self._shift_inside(cx + dx - s / 2.0, width, s)
                y0 = self._shift_inside(cy + dy - s / 2.0, height, s)
                return x0, y0, kind
            kind = "random"
        x0 = np.random.randint(0, max(math.floor(width - s), 0) + 1)
        y0 = np.random.randint(0, max(math.floor(height - s), 0) + 1)
        return int(x0), int(y0), kind

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """One augmented training patch of ``dataset_dict``'s image (see the class docstring)."""
        file_name = dataset_dict["file_name"]
        boxes, classes = _boxes_and_classes(dataset_dict)
        scale = self.scale(file_name)
        x0, y0, _ = self.sample_window(dataset_dict, boxes, classes, scale=scale)
        s = self.patch_size

        rgb = read_region_scaled(file_name, x0, y0, s, s, scale)
        if rgb.shape != (s, s, 3):
            raise ValueError(
                f"{file_name}: reading the patch gave shape {rgb.shape}, expected {(s, s, 3)}"
            )
        image = rgb_to_format(rgb, self.image_format)

        keep = _inside(_centres(boxes), x0, y0, x0 + s / scale, y0 + s / scale)
        patch_boxes = boxes[keep] - np.array([x0, y0, x0, y0], dtype=np.float32)
        if scale != 1.0:
            patch_boxes *= np.float32(scale)
        aug_input = T.AugInput(image, boxes=patch_boxes)
        self.augmentations(aug_input)
        image = aug_input.image
        patch_boxes = np.clip(aug_input.boxes, 0, s)

        instances = Instances((s, s))
        instances.gt_boxes = Boxes(torch.as_tensor(patch_boxes, dtype=torch.float32).reshape(-1, 4))
        instances.gt_classes = torch.as_tensor(classes[keep], dtype=torch.int64)
        instances = instances[instances.gt_boxes.nonempty()]

        return {
            "file_name": file_name,
            "image_id": dataset_dict["image_id"],
            "height": s,
            "width": s,
            "patch_origin": (x0, y0),
            "image": to_chw_tensor(image),
            "instances": instances,
            "foreground": int(len(instances) > 0),
            "domain_label": int(dataset_dict.get("domain_label", -1)),
        }


class MidogTestMapper:
    """
    Maps a dataset dict to the record the tiler and evaluators need, without
    reading pixels (a 7000 x 5000 image is read tile by tile by the tiler).

    Returns ``file_name``, ``image_id``, ``height``/``width`` (level 0, checked
    against the file), ``mpp`` (µm/px from the file, else ``fallback_mpp``),
    ``tumor_type``, ``domain_label``, ``region`` (x0, y0, x1, y1: the dict's own
    ``region`` or the whole image) and ``instances`` (``gt_boxes`` in image
    coordinates, ``gt_classes`` 0/1, the boxes whose centre lies in ``region``).
    """

    @configurable
    def __init__(self, *, fallback_mpp: Optional[float]):
        """
        Args:
            fallback_mpp: µm/px for files without resolution metadata
                (``DATASETS.MIDOG.FALLBACK_MPP``); None makes such files an error.
        """
        self.fallback_mpp = fallback_mpp

    @classmethod
    def from_config(cls, cfg):
        return {"fallback_mpp": fallback_mpp(cfg.DATASETS.MIDOG.FALLBACK_MPP)}

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        file_name = dataset_dict["file_name"]
        width, height = slide_dimensions(file_name)
        for key, actual in (("width", width), ("height", height)):
            expected = dataset_dict.get(key)
            if expected is not None and int(expected) != actual:
                raise ValueError(
                    f"{file_name}: the dataset says {key} {expected} but the image file is {width} "
                    f"x {height} px"
                )
        region = _check_region(
            file_name, dataset_dict.get("region", (0, 0, width, height)), width, height
        )

        boxes, classes = _boxes_and_classes(dataset_dict)
        keep = _inside(_centres(boxes), *region)
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.as_tensor(boxes[keep]).reshape(-1, 4))
        instances.gt_classes = torch.as_tensor(classes[keep])
        return {
            "file_name": file_name,
            "image_id": dataset_dict["image_id"],
            "height": height,
            "width": width,
            "mpp": slide_mpp(file_name, self.fallback_mpp),
            "tumor_type": dataset_dict.get("tumor_type"),
            "domain_label": int(dataset_dict.get("domain_label", -1)),
            "region": region,
            "instances": instances,
        }


def _check_region(
    file_name: str, region: Sequence[int], width: int, height: int
) -> Tuple[int, int, int, int]:
    try:
        x0, y0, x1, y1 = (int(v) for v in region)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{file_name}: region must be (x0, y0, x1, y1), got {region!r}") from e
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(
            f"{file_name}: region {(x0, y0, x1, y1)} is empty or outside the {width} x {height} px "
            "image"
        )
    return x0, y0, x1, y1

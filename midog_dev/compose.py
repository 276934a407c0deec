"""Cutting windows out of real-figure crops and blending them into real context: the pieces
the training canvases (:mod:`.canvas`) and the realistic images (:mod:`.realistic`) share,
and their one composition loop (:func:`paste_windows`).

A crop is turned by a random dihedral transform (:func:`dihedral`), cut to an asymmetric
window around its figure (:func:`positive_window`) or to a window clear of it
(:func:`negative_window`), colour-matched (:func:`reinhard_match`) and feather-blended
(:func:`blend`) at a free place of the canvas: windows may share their feathered borders,
never their opaque cores (:func:`window_core`, :func:`core_is_free`).
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from midog_d2.constants import MITOTIC_FIGURE

__all__ = [
    "Box",
    "CanvasOptions",
    "Cut",
    "Placement",
    "blend",
    "core_is_free",
    "dihedral",
    "dihedral_point",
    "feather_mask",
    "figure_centre",
    "find_place",
    "lab_stats",
    "negative_window",
    "paste_windows",
    "positive_window",
    "reinhard_match",
    "window_core",
]

Box = Tuple[int, int, int, int]  # [x0, y0, x1, y1) in pixels


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
    # negative windows cut around an unlabelled nucleus, by the positive rule
    decoy_fraction: float = 0.0
    # canvases that hold no figure window (only figure-free ones): the foreground head's
    # negatives
    empty_fraction: float = 0.0
    # negative windows cut around a hard negative of their crop, by the positive rule,
    # and labelled as one (a box of class HARD_NEGATIVE)
    hard_negative_fraction: float = 0.0
    min_control_distance: float = 40.0
    seed: int = 0  # seeds the control points (fixed per crop)


def figure_centre(d: Dict[str, Any]) -> Tuple[float, float]:
    """Centre (x, y) of the crop's own mitotic-figure box: the one whose ``annotation_id`` is
    the dict's ``figure_annotation_id`` when it names one, else the only mitotic-figure box
    (ValueError naming the file when there is none or several)."""
    anns = [a for a in d.get("annotations", []) if a.get("category_id", 0) == MITOTIC_FIGURE]
    if d.get("figure_annotation_id") is not None:
        anns = [a for a in anns if a.get("annotation_id") == d["figure_annotation_id"]]
    if len(anns) != 1:
        raise ValueError(
            f"{d.get('file_name')}: expected one mitotic figure annotation, found {len(anns)}"
        )
    x0, y0, x1, y1 = anns[0]["bbox"]
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0


def reinhard_match(
    src: np.ndarray, mean: np.ndarray, std: np.ndarray, strength: float = 1.0
) -> np.ndarray:
    """``src`` (RGB uint8) with its Lab mean/std moved ``strength`` of the way to
    ``mean``/``std``."""
    lab = cv2.cvtColor(src, cv2.COLOR_RGB2LAB).astype(np.float32)
    m, s = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0) + 1e-3
    tm = m + strength * (mean - m)
    ts = s + strength * (std - s)
    # Bounded gain: near-white or flat regions (tiny std) would otherwise turn noise into speckle.
    lab = (lab - m) * np.clip(ts / s, 0.33, 3.0) + tm
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def lab_stats(rgbs: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Lab mean and std (each (3,)) over all pixels of the RGB uint8 images ``rgbs``: the
    colour target of :func:`reinhard_match`."""
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


def dihedral_point(
    point: Sequence[float], shape: Tuple[int, ...], k: int, flip: bool
) -> Tuple[float, float]:
    """Where ``point`` of an image of ``shape`` (h, w, ...) goes under :func:`dihedral`."""
    h, w = shape[:2]
    x, y = point
    if flip:
        x = w - x
    for _ in range(k % 4):
        x, y = y, w - x
        h, w = w, h
    return x, y


def dihedral(
    rgb: np.ndarray, point: Tuple[float, float], content: Sequence[int], k: int, flip: bool
) -> Tuple[np.ndarray, Tuple[float, float], Box]:
    """Rotate by k*90° (counter-clockwise) and optionally flip left-right: image, point,
    content box."""
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


def positive_window(
    rng: np.random.Generator, point: Sequence[float], content: Sequence[int], opts: CanvasOptions
) -> Optional[Box]:
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


def negative_window(
    rng: np.random.Generator, point: Sequence[float], content: Sequence[int], opts: CanvasOptions
) -> Optional[Box]:
    """A window of ``content`` that keeps ``negative_clearance`` px away from ``point`` (a
    random stretch of a free side strip at least 24 px deep; None if there is none)."""
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


def window_core(x: int, y: int, w: int, h: int, inset: int) -> Box:
    """The opaque core of a ``w`` x ``h`` window placed at (x, y): the window less ``inset``
    px (its feather) on each side."""
    return x + inset, y + inset, x + w - inset, y + h - inset


def core_is_free(core: Sequence[int], taken: Sequence[Sequence[int]]) -> bool:
    """Whether ``core`` [x0, y0, x1, y1) overlaps none of the ``taken`` cores."""
    a, c, b, d = core
    return all(b <= p or q <= a or d <= r or t <= c for p, r, q, t in taken)


def find_place(
    rng: np.random.Generator,
    canvas_hw: Tuple[int, int],
    size_hw: Tuple[int, int],
    taken: Sequence[Sequence[int]],
    inset: int,
    tries: int = 20,
) -> Optional[Tuple[int, int]]:
    """Top-left of a ``size_hw`` window inside the canvas whose core (the window less
    ``inset`` px on each side) overlaps no ``taken`` core; None if none is found."""
    H, W = canvas_hw
    h, w = size_hw
    if h > H or w > W:
        return None
    for _ in range(tries):
        x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        if core_is_free(window_core(x, y, w, h, inset), taken):
            return x, y
    return None


def blend(canvas: np.ndarray, patch: np.ndarray, x: int, y: int, feather: int) -> None:
    """Blend RGB uint8 ``patch`` into ``canvas`` (in place) with its top-left at (x, y),
    under :func:`feather_mask`'s alpha."""
    h, w = patch.shape[:2]
    a = feather_mask(h, w, feather)[:, :, None]
    dst = canvas[y : y + h, x : x + w].astype(np.float32)
    canvas[y : y + h, x : x + w] = np.clip(
        dst * (1 - a) + patch.astype(np.float32) * a + 0.5, 0, 255
    ).astype(np.uint8)


@dataclass
class Cut:
    """A crop after its random transform and the window cut from it."""

    rgb: np.ndarray  # the transformed crop, RGB uint8
    point: Tuple[float, float]  # its labelled point (transformed)
    window: Box  # the window [x0, y0, x1, y1) of ``rgb`` to paste
    anchor: Optional[Tuple[float, float]] = None  # the point a placement aims at, if any
    # other labelled cells of the crop (transformed): (x, y, class)
    others: Sequence[Tuple[float, float, int]] = ()

    def labelled_inside(self) -> List[Tuple[float, float, int]]:
        """The :attr:`others` whose centre lies inside :attr:`window`."""
        x0, y0, x1, y1 = self.window
        return [o for o in self.others if x0 <= o[0] < x1 and y0 <= o[1] < y1]


@dataclass
class Placement:
    """A window pasted by :func:`paste_windows`: the job it came from, its cut, and the
    top-left (x, y) it was pasted at."""

    job: Any
    cut: Cut
    x: int
    y: int

    def at(self, p: Sequence[float]) -> Tuple[float, float]:
        """Where point ``p`` of the cut crop landed in the canvas."""
        x0, y0 = self.cut.window[:2]
        return self.x + p[0] - x0, self.y + p[1] - y0


CutFn = Callable[[np.random.Generator, Any], Optional[Cut]]
PlaceFn = Callable[
    [np.random.Generator, Any, Cut, List[Box], List[Placement]], Optional[Tuple[int, int]]
]


def paste_windows(
    rng: np.random.Generator,
    canvas: np.ndarray,
    jobs: Sequence[Any],
    cut: CutFn,
    place: PlaceFn,
    target: Tuple[np.ndarray, np.ndarray],
    strength: float,
    feather: int,
    min_side: int,
) -> List[Placement]:
    """The one composition loop: for each job in turn, ``cut(rng, job)`` gives a :class:`Cut`
    (None: skipped), a window with a side under ``min_side`` px is skipped,
    ``place(rng, job, cut, taken, placed)`` gives the top-left to paste it at (None:
    skipped; ``taken`` are the opaque cores pasted so far, ``placed`` the placements), and
    the window, Reinhard-matched ``strength`` of the way to ``target``, is feather-blended
    into ``canvas`` (in place). Returns the placements in job order.

    The callers' random draws happen in ``cut`` and ``place`` only, in that order per job,
    so each caller keeps its own draws (canvases: decoy windows and top-left integers;
    realistic images: anchor positions tested against tissue and distances).
    """
    taken: List[Box] = []
    placed: List[Placement] = []
    for job in jobs:
        c = cut(rng, job)
        if c is None:
            continue
        x0, y0, x1, y1 = c.window
        if x1 - x0 < min_side or y1 - y0 < min_side:
            continue
        at = place(rng, job, c, taken, placed)
        if at is None:
            continue
        x, y = at
        taken.append(window_core(x, y, x1 - x0, y1 - y0, feather))
        # Every window is pulled towards one colour target so that seams between windows
        # (and around the figure's own window) show as little as possible.
        piece = reinhard_match(np.ascontiguousarray(c.rgb[y0:y1, x0:x1]), *target, strength)
        blend(canvas, piece, x, y, feather)
        placed.append(Placement(job, c, x, y))
    return placed

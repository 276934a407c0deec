"""Rendering one generated H&E-like image: tissue layout, ordinary and special cells,
stains, and the scanner that turns stain concentrations into RGB (:func:`acquire`, shared
with :mod:`.realistic`).

:func:`render_image` runs its steps in a fixed order, each drawing from the one ``rng``:
the order is the images' bytes, so a step moves only with its draws.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from midog_d2.constants import BOX_SIZE

from .synthetic_domains import IMPOSTER_KINDS, MITOSIS_KINDS, Scanner, TumorType
from .synthetic_draw import (
    CONC_SCALE,
    ONE,
    SHIFT,
    blob_outlines,
    draw_imposter,
    draw_mitosis,
    fibres,
    pts,
    smooth_noise,
    soft_threshold,
    u8,
)

__all__ = ["Cell", "acquire", "render_image"]

Size = Tuple[int, int]  # (width, height) px


@dataclass
class Cell:
    """One annotated cell of a rendered image (pixel centre)."""

    x: float
    y: float
    category_id: int  # 1 mitotic figure, 2 not mitotic figure
    kind: str  # one of MITOSIS_KINDS or IMPOSTER_KINDS; for real pixels, the source crop file


def _place_special(
    rng, n, weight: np.ndarray, size, min_dist_px, margin
) -> List[Tuple[float, float]]:
    """Up to ``n`` positions drawn from ``weight`` (a coarse map), at least min_dist apart."""
    w, h = size
    out: List[Tuple[float, float]] = []
    if n <= 0:
        return out
    cand = 40 * n + 50
    xs = rng.uniform(margin, w - margin, cand)
    ys = rng.uniform(margin, h - margin, cand)
    gh, gw = weight.shape
    p = weight[
        np.clip((ys / h * gh).astype(int), 0, gh - 1), np.clip((xs / w * gw).astype(int), 0, gw - 1)
    ]
    keep = rng.random(cand) < p
    pts: List[Tuple[float, float]] = []
    for x, y in zip(xs[keep], ys[keep]):
        if all((x - px_) ** 2 + (y - py_) ** 2 >= min_dist_px**2 for px_, py_ in pts):
            out.append((float(x), float(y)))
            pts.append((float(x), float(y)))
            if len(out) == n:
                break
    return out


def _layout(rng: np.random.Generator, tumor: TumorType, shape: Tuple[int, int], mpp: float):
    """Cell-rich nests vs stroma, lumina, fat and fibres: (cellular, lumen, fat, fibre, theta)."""
    px = 1.0 / mpp
    # ---- layout: cell-rich nests vs stroma, lumina, fat
    cell_field = smooth_noise(rng, shape, tumor.nest_scale * px)
    cellular = soft_threshold(cell_field, tumor.cellularity)
    lumen_field = smooth_noise(rng, shape, 0.4 * tumor.nest_scale * px)
    lumen = soft_threshold(lumen_field, tumor.lumen, 0.04)
    fat = soft_threshold(-cell_field + 0.5 * lumen_field, tumor.fat, 0.1) * (1 - cellular)
    fibre, theta = fibres(rng, shape, mpp)
    return cellular, lumen, fat, fibre, theta


def _cell_grid(rng, tumor: TumorType, cellular, lumen, fat, size: Size, px: float):
    """Ordinary cells on a jittered grid: (spacing px, gx, gy, is_tumor, is_stromal)."""
    w, h = size
    # ---- cells on a jittered grid, kept where the tissue is cellular
    sp = tumor.cell_spacing * px
    gx, gy = np.meshgrid(np.arange(sp / 2, w, sp), np.arange(sp / 2, h, sp))
    gx = gx.ravel() + rng.uniform(-0.38, 0.38, gx.size) * sp
    gy = gy.ravel() + rng.uniform(-0.38, 0.38, gy.size) * sp
    ix = np.clip(gx.astype(int), 0, w - 1)
    iy = np.clip(gy.astype(int), 0, h - 1)
    c_at, l_at, f_at = cellular[iy, ix], lumen[iy, ix], fat[iy, ix]
    u = rng.random(gx.size)
    is_tumor = u < c_at * (1 - l_at) * 0.97
    is_stromal = (~is_tumor) & (u < 0.97 * c_at + 0.25 * (1 - c_at) * (1 - l_at) * (1 - f_at))
    return sp, gx, gy, is_tumor, is_stromal


def _special_cells(
    rng,
    tumor: TumorType,
    positions: Optional[Sequence[Tuple[float, float, int]]],
    cellular,
    lumen,
    size: Size,
    px: float,
    num_mitoses: int,
    num_imposters: int,
) -> List[Cell]:
    """The annotated cells: at ``positions``, or drawn where the tissue has cells."""
    w, h = size
    # ---- special cells
    mit_kinds = list(MITOSIS_KINDS)
    specials: List[Cell] = []
    if positions is not None:
        for x, y, cat in positions:
            m = BOX_SIZE / 2
            if not (m <= x <= w - m and m <= y <= h - m) or cat not in (1, 2):
                raise ValueError(
                    f"cell ({x}, {y}, category {cat}) is not a category 1/2 cell whose "
                    f"{BOX_SIZE}-px box lies inside a {w} x {h} image"
                )
            kind = (
                mit_kinds[int(rng.choice(4, p=[0.45, 0.3, 0.15, 0.1]))]
                if cat == 1
                else IMPOSTER_KINDS[int(rng.choice(3, p=tumor.imposter_mix))]
            )
            specials.append(Cell(float(x), float(y), int(cat), kind))
    else:
        # mostly in cell-rich tissue, rarely in stroma, never in a lumen
        weight = np.clip(cellular * 1.2, 0.05, 1.0) * (1 - lumen) ** 4
        weight = cv2.resize(
            weight.astype(np.float32),
            (max(w // 16, 1), max(h // 16, 1)),
            interpolation=cv2.INTER_AREA,
        )
        xy = _place_special(
            rng, num_mitoses + num_imposters, weight, (w, h), 11.0 * px, BOX_SIZE / 2
        )
        order = rng.permutation(len(xy))
        for j, k in enumerate(order):
            x, y = xy[k]
            if j < min(num_mitoses, len(xy)):
                kind = mit_kinds[int(rng.choice(4, p=[0.45, 0.3, 0.15, 0.1]))]
                specials.append(Cell(x, y, 1, kind))
            else:
                kind = IMPOSTER_KINDS[int(rng.choice(3, p=tumor.imposter_mix))]
                specials.append(Cell(x, y, 2, kind))
    return specials


def _clear_under(specials: Sequence[Cell], gx, gy, is_tumor, is_stromal, px: float) -> None:
    """Drop (in place) the ordinary cells closer than 6 µm to a special one."""
    # no ordinary nucleus under a special cell
    if specials:
        sx = np.array([c.x for c in specials])
        sy = np.array([c.y for c in specials])
        d2 = (gx[:, None] - sx[None]) ** 2 + (gy[:, None] - sy[None]) ** 2
        free = d2.min(axis=1) > (6.0 * px) ** 2
        is_tumor &= free
        is_stromal &= free


def _draw_nuclei(
    rng, tumor: TumorType, canvas_h, gx, gy, is_tumor, is_stromal, theta, size: Size, px: float
):
    """Draw the ordinary nuclei into ``canvas_h``; returns the tumor cells' centres (tx, ty)."""
    w, h = size
    # ---- ordinary nuclei: tumor cells, then stromal (fibroblast-like) cells
    nt = int(is_tumor.sum())
    tx, ty = gx[is_tumor], gy[is_tumor]
    a = (
        np.clip(
            rng.normal(tumor.nucleus_radius, tumor.nucleus_radius_sd, nt),
            0.55 * tumor.nucleus_radius,
            None,
        )
        * px
    )
    asp = rng.uniform(*tumor.aspect, nt)
    if tumor.spindle:
        ang = theta[ty.astype(int).clip(0, h - 1), tx.astype(int).clip(0, w - 1)] + rng.normal(
            0, 0.15, nt
        )
        a = a * np.sqrt(asp) / 1.3
    else:
        ang = rng.uniform(0, np.pi, nt)
        a = a * asp**0.25
    b = a / asp
    polys = blob_outlines(rng, tx, ty, a, b, ang, tumor.irregularity)
    stain = np.clip(rng.normal(tumor.nucleus_stain, 0.12, nt), 0.45, 1.4)
    vesicular = tumor.chromatin == "vesicular"
    nucleoli = rng.random(nt) < tumor.nucleoli
    for i in range(nt):
        p = pts(polys[i])
        cv2.fillPoly(canvas_h, [p], u8(stain[i] * (0.55 if vesicular else 1.0)), cv2.LINE_AA, SHIFT)
        # condensed chromatin along the nuclear membrane
        cv2.polylines(
            canvas_h,
            [p],
            True,
            u8(stain[i] * 1.25),
            max(int(round(0.35 * px)), 1),
            cv2.LINE_AA,
            SHIFT,
        )
        if nucleoli[i]:
            off = rng.normal(0, 0.25, 2) * b[i]
            cv2.circle(
                canvas_h,
                pts(np.array([tx[i] + off[0], ty[i] + off[1]]))[0, 0],
                int(rng.uniform(0.45, 0.8) * px * ONE),
                u8(stain[i] * 1.5),
                -1,
                cv2.LINE_AA,
                SHIFT,
            )
    ns = int(is_stromal.sum())
    if ns:
        sx_, sy_ = gx[is_stromal], gy[is_stromal]
        sang = theta[sy_.astype(int).clip(0, h - 1), sx_.astype(int).clip(0, w - 1)] + rng.normal(
            0, 0.2, ns
        )
        sa_ = rng.uniform(3.5, 6.0, ns) * px
        sb_ = sa_ / rng.uniform(3.0, 5.5, ns)
        spolys = blob_outlines(rng, sx_, sy_, sa_, sb_, sang, 0.04, 14)
        sst = np.clip(rng.normal(1.0, 0.15, ns), 0.6, 1.3)
        for i in range(ns):
            cv2.fillPoly(canvas_h, [pts(spolys[i])], u8(sst[i]), cv2.LINE_AA, SHIFT)
    return tx, ty


def _draw_specials(
    rng, tumor: TumorType, specials, canvas_h, canvas_clear, canvas_eo, mpp: float
) -> None:
    """Draw the annotated cells over everything."""
    # ---- special cells, drawn over everything
    mit_stain = 2.1 * (0.55 + 0.45 * tumor.nucleus_stain)
    for c in specials:
        st = float(rng.uniform(0.9, 1.1)) * mit_stain
        if c.category_id == 1:
            draw_mitosis(
                canvas_h,
                canvas_clear,
                rng,
                c.x,
                c.y,
                c.kind,
                float(np.clip(tumor.nucleus_radius / 3.8, 0.8, 1.15)),
                mpp,
                st,
            )
        else:
            draw_imposter(
                canvas_h, canvas_clear, canvas_eo, rng, c.x, c.y, c.kind, 1.0, mpp, st * 0.92, tumor
            )


def _nuclear_texture(
    rng, tumor: TumorType, canvas_h, shape: Tuple[int, int], px: float
) -> np.ndarray:
    """Nuclear haematoxylin (float32 concentration) with the tumor type's chromatin texture."""
    # ---- nuclear texture
    nuc = canvas_h.astype(np.float32) * (1.0 / CONC_SCALE)
    fine = smooth_noise(rng, shape, 1.2)
    if tumor.chromatin == "salt_pepper":
        tex = 0.8 + 0.45 * np.maximum(fine - 0.6, 0) - 0.1 * np.minimum(fine, 0)
    elif tumor.chromatin == "dense":
        tex = 1.0 + 0.18 * fine
    elif tumor.chromatin == "vesicular":
        tex = 1.0 + 0.32 * fine
    else:  # coarse
        tex = 1.0 + 0.28 * np.tanh(smooth_noise(rng, shape, 2.5 * px / 4) * 1.5)
    nuc *= tex
    nuc = cv2.GaussianBlur(nuc, (0, 0), 0.25 * px)
    return nuc


def _cytoplasm(tx, ty, specials, cellular, shape: Tuple[int, int], sp: float, px: float):
    """Cytoplasm and cell borders (Voronoi of the cell centres): (cyto, border)."""
    h, w = shape
    # ---- cytoplasm and cell borders (Voronoi of the cell centres)
    seeds = np.full(shape, 255, np.uint8)
    cx_all = np.concatenate([tx, np.array([c.x for c in specials])]).astype(int).clip(0, w - 1)
    cy_all = np.concatenate([ty, np.array([c.y for c in specials])]).astype(int).clip(0, h - 1)
    if cx_all.size:
        seeds[cy_all, cx_all] = 0
        dist, labels = cv2.distanceTransformWithLabels(
            seeds, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
        )
    else:
        dist = np.full(shape, 1e6, np.float32)
        labels = np.zeros(shape, np.int32)
    # in nests cytoplasm fills the space between nuclei; elsewhere it hugs them
    cyto = np.maximum(np.clip((0.62 * sp - dist) / (0.15 * sp), 0, 1), 0.9 * cellular).astype(
        np.float32
    )
    border = np.zeros(shape, np.float32)
    border[:, 1:] += labels[:, 1:] != labels[:, :-1]
    border[1:, :] += labels[1:, :] != labels[:-1, :]
    border = cv2.GaussianBlur(np.minimum(border, 1), (0, 0), 0.35 * px) * cyto
    border = np.minimum(border * 2.5, 1.0)
    return cyto, border


def _stains(rng, tumor: TumorType, fibre, cyto, border, canvas_clear, canvas_eo, shape, px: float):
    """Eosin, cytoplasmic haematoxylin, halo and pigment: (eo, ha, clear, pig)."""
    # ---- eosin: stroma fibres, cytoplasm, apoptotic eosinophilia
    stroma_e = 0.5 * (1 + 0.6 * tumor.fibre * fibre)
    eo = (1 - cyto) * stroma_e + cyto * tumor.cytoplasm_eosin * (
        1 + 0.15 * smooth_noise(rng, shape, 3 * px)
    )
    eo = eo * (1 - tumor.cell_borders * border)
    ha = cyto * tumor.cytoplasm_haem
    if tumor.granules:
        gran = 0.6 * np.maximum(smooth_noise(rng, shape, 0.35 * px) - 0.3, 0)
        ha = ha + cyto * tumor.granules * gran * (1 - border)
    clear = cv2.GaussianBlur(canvas_clear.astype(np.float32) * (1 / 255.0), (0, 0), 0.6 * px)
    eo_boost = cv2.GaussianBlur(canvas_eo.astype(np.float32) * (1 / 255.0), (0, 0), 0.5 * px)
    eo = eo * (1 - 0.5 * clear) + 0.4 * eo_boost
    ha = (ha + 0.1) * (1 - 0.5 * clear)  # a little haematoxylin everywhere: H&E is never pure pink
    pig = None
    if tumor.pigment:
        blobs = soft_threshold(smooth_noise(rng, shape, 12 * px), 0.12, 0.2)
        pig = tumor.pigment * blobs * np.maximum(smooth_noise(rng, shape, 0.8 * px) - 0.3, 0) * cyto
    return eo, ha, clear, pig


def _holes(rng, tumor: TumorType, lumen, fat, clear, size: Size, px: float) -> np.ndarray:
    """Lumina and fat vacuoles (1 = empty), never over an annotated cell."""
    w, h = size
    shape = (h, w)
    # ---- holes: lumina and fat (adipocytes = empty polygons with thin pink membranes)
    hole = lumen.copy()
    if tumor.fat > 0 and float(fat.max()) > 0.05:
        fat_seeds = np.full(shape, 255, np.uint8)
        fs = 22.0 * px
        fx, fy = np.meshgrid(np.arange(fs / 2, w, fs), np.arange(fs / 2, h, fs))
        fx = (fx.ravel() + rng.uniform(-0.3, 0.3, fx.size) * fs).astype(int).clip(0, w - 1)
        fy = (fy.ravel() + rng.uniform(-0.3, 0.3, fy.size) * fs).astype(int).clip(0, h - 1)
        fat_seeds[fy, fx] = 0
        _, flab = cv2.distanceTransformWithLabels(
            fat_seeds, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
        )
        membrane = np.zeros(shape, np.float32)
        membrane[:, 1:] += flab[:, 1:] != flab[:, :-1]
        membrane[1:, :] += flab[1:, :] != flab[:-1, :]
        membrane = np.minimum(cv2.GaussianBlur(np.minimum(membrane, 1), (0, 0), 0.7), 1) * 1.6
        fat_hole = np.clip(fat * 1.6 - 0.3, 0, 1)
        hole = np.maximum(hole, fat_hole * (1 - np.minimum(membrane, 1)))
    # an annotated cell is never erased by a lumen or fat vacuole it happens to touch
    hole *= 1.0 - np.minimum(clear * 4.0, 1.0)
    return hole


def render_image(
    tumor: TumorType,
    scanner: Scanner,
    size: Tuple[int, int],
    mpp: float,
    rng: np.random.Generator,
    num_mitoses: int = 0,
    num_imposters: int = 0,
    positions: Optional[Sequence[Tuple[float, float, int]]] = None,
) -> Tuple[np.ndarray, List[Cell]]:
    """
    Render one H&E-like region of interest.

    Args:
        tumor, scanner: the domain.
        size: (width, height) in pixels.
        mpp: µm per pixel the image is drawn at (sizes are physical).
        rng: the only source of randomness (same state -> same pixels).
        num_mitoses, num_imposters: how many cells of each category to place,
            where the tissue has cells, ``BOX_SIZE / 2`` px from the edges and
            11 µm apart (fewer when they do not fit).
        positions: (x, y, category_id) to place cells at instead; each must lie
            ``BOX_SIZE / 2`` px inside the image.

    Returns:
        An (H, W, 3) uint8 RGB image and its annotated cells.
    """
    w, h = int(size[0]), int(size[1])
    if w < BOX_SIZE or h < BOX_SIZE:
        raise ValueError(f"image size {size} is smaller than one {BOX_SIZE}-px box")
    px = 1.0 / mpp
    shape = (h, w)
    cellular, lumen, fat, fibre, theta = _layout(rng, tumor, shape, mpp)
    sp, gx, gy, is_tumor, is_stromal = _cell_grid(rng, tumor, cellular, lumen, fat, (w, h), px)
    specials = _special_cells(
        rng, tumor, positions, cellular, lumen, (w, h), px, num_mitoses, num_imposters
    )
    _clear_under(specials, gx, gy, is_tumor, is_stromal, px)
    canvas_h = np.zeros(shape, np.uint8)  # nuclear haematoxylin x 100
    canvas_clear = np.zeros(shape, np.uint8)  # 255: pale halo / retraction around special cells
    canvas_eo = np.zeros(shape, np.uint8)  # 255: eosinophilic apoptotic cytoplasm
    tx, ty = _draw_nuclei(rng, tumor, canvas_h, gx, gy, is_tumor, is_stromal, theta, (w, h), px)
    _draw_specials(rng, tumor, specials, canvas_h, canvas_clear, canvas_eo, mpp)
    nuc = _nuclear_texture(rng, tumor, canvas_h, shape, px)
    cyto, border = _cytoplasm(tx, ty, specials, cellular, shape, sp, px)
    eo, ha, clear, pig = _stains(
        rng, tumor, fibre, cyto, border, canvas_clear, canvas_eo, shape, px
    )
    hole = _holes(rng, tumor, lumen, fat, clear, (w, h), px)
    keep = 1.0 - 0.96 * hole
    h_conc = (nuc + ha) * keep
    e_conc = eo * keep + 0.06 * hole  # faint proteinaceous secretion in lumina

    return acquire(scanner, h_conc, e_conc, pig, mpp, rng), specials


def acquire(
    scanner: Scanner,
    h_conc: np.ndarray,
    e_conc: np.ndarray,
    pigment: Optional[np.ndarray],
    mpp: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Beer-Lambert with the scanner's stain matrix, then focus blur, sharpening, noise, JPEG."""
    jit = rng.normal(1.0, 0.06, 2)  # slide-to-slide staining variation inside one lab
    hv = np.asarray(scanner.haematoxylin, np.float32) * scanner.stain_scale[0] * jit[0]
    ev = np.asarray(scanner.eosin, np.float32) * scanner.stain_scale[1] * jit[1]
    bg = np.asarray(scanner.background, np.float32) * rng.uniform(0.985, 1.0)
    melanin = np.asarray((0.35, 0.55, 0.85), np.float32) * 1.6  # brown
    sigma = scanner.blur / mpp
    channels = []
    for c in range(3):  # one 2-D plane at a time: no (H, W, 3) temporaries
        od = cv2.addWeighted(h_conc, -float(hv[c]), e_conc, -float(ev[c]), 0.0)
        if pigment is not None:
            od -= pigment * float(melanin[c])
        np.exp(od, out=od)
        od *= float(bg[c])
        if sigma > 0.3:
            od = cv2.GaussianBlur(od, (0, 0), sigma)
        if scanner.sharpen > 0:
            soft = cv2.GaussianBlur(od, (0, 0), 1.5)
            od = cv2.addWeighted(od, 1 + scanner.sharpen, soft, -scanner.sharpen, 0.5)
        else:
            od += 0.5  # rounds on the cast below
        channels.append(od)
    img = cv2.merge(channels)
    if scanner.noise > 0:
        noise = rng.standard_normal(img.shape, dtype=np.float32)
        noise *= scanner.noise
        img += noise
    np.clip(img, 0, 255, out=img)
    img = img.astype(np.uint8)
    if scanner.jpeg_quality:
        ok, buf = cv2.imencode(
            ".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(scanner.jpeg_quality)]
        )
        img = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return img

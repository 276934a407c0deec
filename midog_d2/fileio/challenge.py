"""The MIDOG challenge's algorithm-container interface (Grand Challenge, MIDOG 2025 track 1).

Each job gives one ROI in ``/input/images/histopathology-roi-cropout/`` as ``.tif``,
``.tiff`` or ``.mha``; the algorithm writes ``/output/mitotic-figures.json``::

    {"name": "Points of interest", "type": "Multiple points",
     "points": [{"name": "mitotic figure", "point": [x_mm, y_mm, 0], "probability": 0.81},
                {"name": "non-mitotic figure", "point": [...], "probability": 0.32}],
     "version": {"major": 1, "minor": 0}}

in millimetres from the image's own spacing: for a TIFF its µm/px (the project's reader), for
an MHA SimpleITK's physical point of each pixel position (origin and spacing, as the
reference container computes it). Points below the threshold stay in, named "non-mitotic
figure", so that AP can be computed; the evaluator counts only "mitotic figure" points.
"""

import os
from typing import Callable, List, Tuple

import numpy as np
import tifffile

from ..constants import MITOTIC_NAME, NON_MITOTIC_NAME

__all__ = [
    "CHALLENGE_EXTENSIONS",
    "CHALLENGE_INPUT",
    "CHALLENGE_OUTPUT",
    "challenge_inputs",
    "challenge_points",
    "mha_as_tiff",
    "output_paths",
    "tiff_to_mm",
]

CHALLENGE_INPUT = "/input/images/histopathology-roi-cropout"
CHALLENGE_OUTPUT = "/output/mitotic-figures.json"
CHALLENGE_EXTENSIONS = (".tif", ".tiff", ".mha")

ToMM = Callable[[np.ndarray], np.ndarray]


def challenge_inputs(folder: str) -> List[str]:
    """The ROIs in ``folder`` (:data:`CHALLENGE_EXTENSIONS`, sorted); an error naming the
    folder when it is missing or holds none."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such input folder")
    found = sorted(
        os.path.join(folder, n)
        for n in os.listdir(folder)
        if n.lower().endswith(CHALLENGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n))
    )
    if not found:
        raise FileNotFoundError(
            f"{folder}: no ROI in it (looked for {', '.join(CHALLENGE_EXTENSIONS)})"
        )
    return found


def mha_as_tiff(path: str, folder: str) -> Tuple[str, float, ToMM]:
    """An MHA ROI as a tiled TIFF in ``folder`` that the slide reader takes (uncompressed,
    its µm/px in the resolution tags), that µm/px, and the function from its level-0 pixel
    positions (N, 2) to millimetres (SimpleITK's ``TransformContinuousIndexToPhysicalPoint``).
    Raises ValueError naming the file for an image that is not 2-D RGB(A) 8-bit or whose
    spacing is not a microscope's in mm."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(path)
    except RuntimeError as e:
        raise ValueError(f"{path}: SimpleITK cannot read it: {str(e).strip().splitlines()[-1]}")
    if image.GetDimension() != 2 and not (image.GetDimension() == 3 and image.GetSize()[2] == 1):
        raise ValueError(f"{path}: a 2-D image was expected, got size {image.GetSize()}")
    pixels = sitk.GetArrayFromImage(image)
    pixels = pixels.reshape(pixels.shape[-3:] if pixels.ndim >= 3 else pixels.shape)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4) or pixels.dtype != np.uint8:
        raise ValueError(
            f"{path}: an 8-bit RGB image was expected, got shape {pixels.shape}, {pixels.dtype}"
        )
    sx, sy = image.GetSpacing()[:2]
    mpp = 1000.0 * (sx + sy) / 2
    if not (0.01 <= mpp <= 50 and abs(sx - sy) <= 0.01 * max(sx, sy)):
        raise ValueError(
            f"{path}: spacing {image.GetSpacing()} is not a microscope's in mm per pixel "
            "(0.00001 to 0.05, equal in x and y)"
        )
    out = os.path.join(folder, os.path.splitext(os.path.basename(path))[0] + ".tiff")
    per_cm = 1e4 / mpp
    tifffile.imwrite(
        out,
        np.ascontiguousarray(pixels[:, :, :3]),
        photometric="rgb",
        tile=(512, 512),
        resolution=(per_cm, per_cm),
        resolutionunit="CENTIMETER",
        metadata=None,
    )

    def to_mm(xy: np.ndarray) -> np.ndarray:
        pts = [
            image.TransformContinuousIndexToPhysicalPoint(
                (float(x), float(y)) + (0.0,) * (image.GetDimension() - 2)
            )
            for x, y in np.asarray(xy, np.float64).reshape(-1, 2)
        ]
        return np.asarray([p[:2] for p in pts], np.float64).reshape(-1, 2)

    return out, mpp, to_mm


def tiff_to_mm(mpp: float) -> ToMM:
    """Level-0 pixel positions to millimetres at ``mpp`` µm/px (origin at 0)."""
    return lambda xy: np.asarray(xy, np.float64).reshape(-1, 2) * (mpp / 1000.0)


def challenge_points(xy: np.ndarray, scores: np.ndarray, threshold: float, to_mm: ToMM) -> dict:
    """The challenge's "Points of interest" of detections at level-0 ``xy`` (N, 2) with
    ``scores``: "mitotic figure" at or above ``threshold``, "non-mitotic figure" below."""
    mm = to_mm(xy) if len(xy) else np.zeros((0, 2))
    scores = np.asarray(scores, np.float64).reshape(-1)
    points = [
        {
            "name": MITOTIC_NAME if s >= threshold else NON_MITOTIC_NAME,
            "point": [float(x), float(y), 0],
            "probability": float(s),
        }
        for (x, y), s in zip(mm, scores)
    ]
    return {
        "name": "Points of interest",
        "type": "Multiple points",
        "points": points,
        "version": {"major": 1, "minor": 0},
    }


def output_paths(inputs: List[str], output: str) -> List[Tuple[str, str]]:
    """(input, output file) pairs: a job's one ROI writes ``output`` itself; several (a
    local batch) write ``<stem>.mitotic-figures.json`` beside it, one each."""
    if len(inputs) == 1:
        return [(inputs[0], output)]
    folder = os.path.dirname(os.path.abspath(output))
    return [
        (
            p,
            os.path.join(
                folder, os.path.splitext(os.path.basename(p))[0] + ".mitotic-figures.json"
            ),
        )
        for p in inputs
    ]

"""Stain maths of H&E, in one place: the Ruifrok-Johnston stain vectors and colour
deconvolution (Beer-Lambert). The HED stain augmentation (:mod:`.transforms`) and the
generated data's re-rendering through a simulated scanner both build on it."""

from typing import Sequence, Tuple

import numpy as np

__all__ = ["RGB_FROM_HED", "HED_FROM_RGB", "RUIFROK_HE", "stain_concentrations"]

# Ruifrok & Johnston (2001) optical-density vectors of haematoxylin, eosin and DAB
# (rows, RGB order, unit length): OD_rgb = concentrations @ RGB_FROM_HED.
RGB_FROM_HED = np.array(
    [[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]],
    dtype=np.float64,
)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
# Haematoxylin and eosin only (float32), for unmixing H&E without a DAB channel.
RUIFROK_HE = RGB_FROM_HED[:2].astype(np.float32)


def stain_concentrations(
    rgb: np.ndarray,
    stains: np.ndarray = RUIFROK_HE,
    background: Sequence[float] = (255.0, 255.0, 255.0),
) -> Tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin concentration maps of an RGB image (Beer-Lambert,
    least squares on the optical density of each pixel, clipped at 0)."""
    od = -np.log(np.maximum(rgb.astype(np.float32), 1.0) / np.asarray(background, np.float32))
    od = np.maximum(od, 0.0).reshape(-1, 3)
    conc = od @ np.linalg.pinv(np.asarray(stains, np.float32))  # (N, 3) @ (3, 2)
    conc = np.maximum(conc, 0.0)
    h, w = rgb.shape[:2]
    return conc[:, 0].reshape(h, w).copy(), conc[:, 1].reshape(h, w).copy()

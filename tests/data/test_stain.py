"""Stain maths: the Ruifrok-Johnston vectors and colour deconvolution, in one place."""

import cv2
import numpy as np

from midog_d2.data.stain import HED_FROM_RGB, RGB_FROM_HED, RUIFROK_HE, stain_concentrations


def test_one_stain_matrix():
    np.testing.assert_allclose(RGB_FROM_HED @ HED_FROM_RGB, np.eye(3), atol=1e-12)
    np.testing.assert_array_equal(RUIFROK_HE, RGB_FROM_HED[:2].astype(np.float32))


def test_stain_unmixing_inverts_beer_lambert():
    rng = np.random.default_rng(0)
    h = cv2.GaussianBlur(rng.uniform(0, 1.5, (64, 64)).astype(np.float32), (0, 0), 2)
    e = cv2.GaussianBlur(rng.uniform(0, 1.0, (64, 64)).astype(np.float32), (0, 0), 2)
    od = h[..., None] * RUIFROK_HE[0] + e[..., None] * RUIFROK_HE[1]
    rgb = np.clip(255 * np.exp(-od) + 0.5, 0, 255).astype(np.uint8)
    h2, e2 = stain_concentrations(rgb)
    # uint8 rounding is the only loss: < 2 % of the darkest pixel's OD
    np.testing.assert_allclose(h2, h, atol=0.03)
    np.testing.assert_allclose(e2, e, atol=0.03)
    white_h, white_e = stain_concentrations(np.full((4, 4, 3), 255, np.uint8))
    assert white_h.max() == 0 and white_e.max() == 0

"""Colour augmentations: ranges, torchvision semantics, channel order, HED deconvolution."""

import cv2
import numpy as np
import pytest

from detectron2.data import transforms as T

from midog_d2.data.transforms import (
    RGB_FROM_HED,
    ColorJitter,
    ColorJitterTransform,
    HEDStainTransform,
    RandomHEDStain,
    RandomHue,
)

FORMATS = ("RGB", "BGR")


def in_format(rgb: np.ndarray, fmt: str) -> np.ndarray:
    return np.ascontiguousarray(rgb[..., ::-1]) if fmt == "BGR" else rgb


def hue_degrees(img: np.ndarray, fmt: str) -> np.ndarray:
    code = cv2.COLOR_RGB2HSV if fmt == "RGB" else cv2.COLOR_BGR2HSV
    return cv2.cvtColor(img.astype(np.float32), code)[..., 0]


def circular_diff(a, b):
    return (np.asarray(a) - np.asarray(b) + 180.0) % 360.0 - 180.0


def he_like_image(seed: int = 0, size: int = 64) -> np.ndarray:
    """Random haematoxylin/eosin mixtures composed with the Ruifrok-Johnston vectors."""
    rng = np.random.default_rng(seed)
    conc = rng.uniform(0, 1.2, size=(size, size, 3)) * np.array([1.0, 1.0, 0.05])
    od = conc @ RGB_FROM_HED
    return np.clip(256 * np.exp(-od) - 1, 0, 255).round().astype(np.uint8)


def test_colorjitter_draws_factors_in_range_and_in_random_order():
    np.random.seed(0)
    aug = ColorJitter(0.35, 0.2, 0.1, 0.1, image_format="BGR")
    img = np.zeros((8, 8, 3), np.uint8)
    values = {k: [] for k in ("brightness", "contrast", "saturation", "hue")}
    orders = set()
    for _ in range(2000):
        t = aug.get_transform(img)
        assert isinstance(t, ColorJitterTransform) and t.image_format == "BGR"
        names = tuple(name for name, _ in t.ops)
        assert sorted(names) == sorted(values)  # each op exactly once
        orders.add(names)
        for name, v in t.ops:
            values[name].append(v)
    bounds = {
        "brightness": (0.65, 1.35),
        "contrast": (0.8, 1.2),
        "saturation": (0.9, 1.1),
        "hue": (-0.1, 0.1),
    }
    for name, (lo, hi) in bounds.items():
        v = np.array(values[name])
        assert v.min() >= lo and v.max() <= hi, name
        # uniform over the whole range: the extremes are approached
        assert v.min() < lo + 0.02 * (hi - lo) and v.max() > hi - 0.02 * (hi - lo), name
    assert len(orders) == 24  # all permutations of the four ops occur


def test_colorjitter_skips_zero_ops_and_validates():
    aug = ColorJitter(brightness=0.3, hue=0.0)
    t = aug.get_transform(np.zeros((4, 4, 3), np.uint8))
    assert [name for name, _ in t.ops] == ["brightness"]
    assert isinstance(ColorJitter().get_transform(np.zeros((4, 4, 3), np.uint8)), T.NoOpTransform)
    with pytest.raises(ValueError, match="hue"):
        ColorJitter(hue=0.6)
    with pytest.raises(ValueError, match="image_format"):
        ColorJitter(0.1, image_format="YUV")
    with pytest.raises(ValueError, match="unknown colour op"):
        ColorJitterTransform([("gamma", 1.2)])


@pytest.mark.parametrize("fmt", FORMATS)
def test_identity_parameters_leave_the_image_unchanged(fmt):
    img = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    t = ColorJitterTransform(
        [("hue", 0.0), ("brightness", 1.0), ("saturation", 1.0), ("contrast", 1.0)], fmt
    )
    out = t.apply_image(img)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.abs(out.astype(int) - img).max() <= 1
    f = t.apply_image(img.astype(np.float32))  # float images stay float, unrounded
    assert f.dtype == np.float32 and np.abs(f - img).max() < 1e-2


def test_brightness_and_contrast_follow_torchvision():
    grey = np.full((16, 16, 3), 100, np.uint8)
    assert (ColorJitterTransform([("brightness", 1.35)]).apply_image(grey) == 135).all()
    assert (ColorJitterTransform([("brightness", 0.65)]).apply_image(grey) == 65).all()
    assert (ColorJitterTransform([("brightness", 3.0)]).apply_image(grey) == 255).all()  # clipped
    # contrast blends with the mean grey level: half the pixels 50, half 150, mean 100
    img = np.full((16, 16, 3), 50, np.uint8)
    img[8:] = 150
    out = ColorJitterTransform([("contrast", 0.8)]).apply_image(img)
    assert (out[:8] == 60).all() and (out[8:] == 140).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_pure_red_stays_red_in_its_channel(fmt):
    red = in_format(np.tile(np.array([255, 0, 0], np.uint8), (16, 16, 1)), fmt)
    r, g, b = (0, 1, 2) if fmt == "RGB" else (2, 1, 0)
    np.random.seed(3)
    aug = ColorJitter(0.35, 0.2, 0.1, 0.0, image_format=fmt)  # hue 0: red must stay red
    for _ in range(50):
        out = aug.get_transform(red).apply_image(red).astype(int)
        assert (out[..., r] > out[..., g] + 100).all() and (out[..., g] == out[..., b]).all()
        assert np.abs(circular_diff(hue_degrees(out, fmt), 0.0)).max() < 1.0
    # Saturation 0 gives the luma grey level, 0.299 * 255 for red (0.114 if channels were swapped).
    grey = ColorJitterTransform([("saturation", 0.0)], fmt).apply_image(red)
    assert np.abs(grey.astype(int) - 76).max() <= 1
    # A hue shift of +0.1 turns red into orange (36 degrees): R stays 255, G rises to 153.
    orange = ColorJitterTransform([("hue", 0.1)], fmt).apply_image(red).astype(int)
    assert np.abs(orange[..., r] - 255).max() <= 1
    assert np.abs(orange[..., g] - 153).max() <= 1
    assert np.abs(orange[..., b]).max() <= 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_random_hue_shifts_within_its_range(fmt):
    rng = np.random.default_rng(5)
    hsv = np.stack(
        [
            rng.uniform(0, 360, (32, 32)),
            rng.uniform(0.5, 1, (32, 32)),
            rng.uniform(0.5, 1, (32, 32)),
        ],
        -1,
    ).astype(np.float32)
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB if fmt == "RGB" else cv2.COLOR_HSV2BGR)
    img = (img * 255).round().astype(np.uint8)
    h0 = hue_degrees(img, fmt)
    np.random.seed(0)
    aug = RandomHue(0.1, image_format=fmt)
    shifts = []
    for _ in range(200):
        t = aug.get_transform(img)
        ((name, delta),) = t.ops
        assert name == "hue" and -0.1 <= delta <= 0.1
        measured = circular_diff(hue_degrees(t.apply_image(img), fmt), h0)
        # the shift of every pixel is the drawn one (uint8 rounding aside) ...
        assert np.median(np.abs(measured - delta * 360)) < 1.0
        shifts.append(np.median(measured))
    # ... and stays within +-0.1 of the circle, both directions drawn
    shifts = np.array(shifts)
    assert np.abs(shifts).max() <= 36.0 + 1.0
    assert shifts.min() < -25 and shifts.max() > 25


def test_colour_transforms_leave_geometry_alone():
    boxes = np.array([[10.0, 20.0, 60.0, 70.0]])
    for t in (
        ColorJitterTransform([("hue", 0.1), ("brightness", 1.2)]),
        HEDStainTransform([1.2] * 3, [0.1] * 3),
    ):
        assert np.array_equal(t.apply_box(boxes.copy()), boxes)
        seg = np.arange(12, dtype=np.uint8).reshape(3, 4)
        assert np.array_equal(t.apply_segmentation(seg), seg)
        assert isinstance(t.inverse(), T.NoOpTransform)


@pytest.mark.parametrize("fmt", FORMATS)
def test_hed_with_sigma_zero_is_identity(fmt):
    img = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.random.seed(0)
    t = RandomHEDStain(sigma=0.0, bias=0.0, image_format=fmt).get_transform(img)
    out = t.apply_image(img)
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - img).max() <= 1
    f = t.apply_image(img.astype(np.float32))
    assert f.dtype == np.float32 and np.abs(f - img).max() < 1e-2


@pytest.mark.parametrize("fmt", FORMATS)
def test_hed_changes_colour_when_on(fmt):
    img = in_format(he_like_image(), fmt)
    np.random.seed(1)
    aug = RandomHEDStain(sigma=0.2, bias=0.1, image_format=fmt)
    diffs = [
        np.abs(aug.get_transform(img).apply_image(img).astype(int) - img).mean() for _ in range(10)
    ]
    assert min(diffs) > 1.0


@pytest.mark.parametrize("fmt", FORMATS)
def test_hed_scales_the_right_stain(fmt):
    """Doubling haematoxylin doubles the optical density of an H-only pixel and
    leaves an E-only pixel alone: the deconvolution separates the stains."""
    conc = np.array([[0.8, 0.0, 0.0], [0.0, 0.8, 0.0]])  # H only, E only
    od = conc @ RGB_FROM_HED
    rgb = (256 * np.exp(-od) - 1).round().astype(np.uint8)[None]  # 1 x 2 x 3
    out = HEDStainTransform([2.0, 1.0, 1.0], [0.0, 0.0, 0.0], fmt).apply_image(in_format(rgb, fmt))
    out = in_format(out, fmt).astype(np.float64)  # back to RGB
    out_od = -np.log((out + 1) / 256)
    rgb_od = -np.log((rgb.astype(np.float64) + 1) / 256)
    np.testing.assert_allclose(out_od[0, 0], 2 * rgb_od[0, 0], atol=0.03)
    assert np.abs(out[0, 1] - rgb[0, 1]).max() <= 1

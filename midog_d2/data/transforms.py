"""Colour augmentations for H&E patches, as Detectron2 ``Augmentation``/``Transform``s.

Detectron2 has no hue augmentation, and its ``RandomSaturation``/``RandomLighting``
assume RGB while ``INPUT.FORMAT`` defaults to BGR. The augmentations here take the
channel order (``image_format``, "BGR" or "RGB") explicitly, leave geometry (boxes,
coordinates, masks) untouched, and run on whole arrays with OpenCV (uint8 colour maps,
float32 where precision needs it: hue, stain deconvolution).

All randomness comes from NumPy's global RNG, like Detectron2's own augmentations:
Detectron2 seeds it per data-loader worker, so a fixed seed gives fixed draws.
"""

import threading
from typing import List, Sequence, Tuple

import cv2
import numpy as np

from detectron2.data import transforms as T

from ..fileio.images import check_image_format
from .stain import HED_FROM_RGB, RGB_FROM_HED

__all__ = [
    "ColorJitterTransform",
    "RandomHue",
    "ColorJitter",
    "HEDStainTransform",
    "RandomHEDStain",
    "build_color_augmentation",
]

# Luma weights of torchvision's rgb_to_grayscale (R, G, B).
_GRAY_RGB = np.array([0.299, 0.587, 0.114])
_COLOR_OPS = ("brightness", "contrast", "saturation", "hue")


def _from_float(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A new array of ``dtype`` from float32 ``x`` (clipped to [0, 255] in place)."""
    np.clip(x, 0, 255, out=x)
    if dtype == np.uint8:
        return cv2.convertScaleAbs(x)  # saturating round to uint8, much faster than np.rint
    return x.astype(dtype, copy=True)


class _Workspace(threading.local):
    """Per-thread scratch arrays reused from patch to patch: a fresh multi-MB
    array per step costs more in page faults than the colour maths
    (docs/benchmarks.md)."""

    def get(self, name: str, shape: Tuple[int, ...], dtype=np.float32) -> np.ndarray:
        key = (name, np.dtype(dtype).str)
        buf = self.__dict__.get(key)
        if buf is None or buf.shape != shape:
            buf = self.__dict__[key] = np.empty(shape, dtype)
        return buf


_workspace = _Workspace()


class _ColorOnlyTransform(T.Transform):
    """A transform that changes pixel values only: geometry passes through."""

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> T.Transform:
        # Colour is not inverted, like Detectron2's ColorTransform: only geometry is.
        return T.NoOpTransform()


class ColorJitterTransform(_ColorOnlyTransform):
    """Brightness / contrast / saturation / hue adjustments applied in a given order,
    with torchvision's ``ColorJitter`` semantics (factors of 1 and a hue shift of 0
    change nothing; values are clipped to [0, 255] after each step).

    Args:
        ops: ``(name, value)`` pairs applied in order; ``name`` is one of
            "brightness", "contrast", "saturation" (multiplicative factors >= 0) or
            "hue" (shift as a fraction of the colour circle, in [-0.5, 0.5]).
        image_format: channel order of the images it receives, "BGR" or "RGB".
    """

    def __init__(self, ops: Sequence[Tuple[str, float]], image_format: str = "BGR"):
        super().__init__()
        ops = tuple((str(name), float(value)) for name, value in ops)
        for name, value in ops:
            if name not in _COLOR_OPS:
                raise ValueError(f"unknown colour op {name!r}; expected one of {_COLOR_OPS}")
            if name == "hue" and not -0.5 <= value <= 0.5:
                raise ValueError(f"hue shift must be in [-0.5, 0.5], got {value}")
            if name != "hue" and value < 0:
                raise ValueError(f"{name} factor must be >= 0, got {value}")
        self._set_attributes({"ops": ops, "image_format": check_image_format(image_format)})

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """``img``: HxWx3 uint8 (or float in [0, 255]); returns the same dtype."""
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 colour image, got shape {img.shape}")
        # uint8 stays uint8 between ops (rounded and clipped after each, like
        # torchvision on uint8 tensors); brightness, contrast and saturation are
        # each one affine colour map (cv2.transform saturates uint8 output). Steps
        # alternate between two scratch arrays; the result is copied out once.
        x = img if img.dtype == np.uint8 else img.astype(np.float32)
        w = _GRAY_RGB if self.image_format == "RGB" else _GRAY_RGB[::-1]
        for i, (name, value) in enumerate(self.ops):
            dst = _workspace.get(f"cj{i % 2}", x.shape, x.dtype)
            if name == "hue":
                self._shift_hue(x, value, dst)
            else:
                if name == "brightness":
                    m = np.hstack([value * np.eye(3), np.zeros((3, 1))])
                elif name == "contrast":
                    mean = float(np.dot(w, cv2.mean(x)[:3]))  # mean grey level
                    m = np.hstack([value * np.eye(3), np.full((3, 1), (1.0 - value) * mean)])
                else:  # saturation: blend with the pixel's own grey level
                    m = np.hstack(
                        [value * np.eye(3) + (1.0 - value) * np.tile(w, (3, 1)), np.zeros((3, 1))]
                    )
                cv2.transform(x, m.astype(np.float32), dst=dst)
                if dst.dtype != np.uint8:
                    np.clip(dst, 0, 255, out=dst)
            x = dst
        return x.astype(img.dtype, copy=True)

    def _shift_hue(self, x: np.ndarray, delta: float, dst: np.ndarray) -> None:
        # OpenCV's float HSV has H in degrees (float keeps the shift exact), and its
        # HSV->RGB wraps H outside [0, 360) itself (tests/data/test_transforms.py checks it).
        rgb = self.image_format == "RGB"
        a, hsv = _workspace.get("a", x.shape), _workspace.get("b", x.shape)
        np.copyto(a, x)
        cv2.cvtColor(a, cv2.COLOR_RGB2HSV if rgb else cv2.COLOR_BGR2HSV, dst=hsv)
        hsv[:, :, 0] += delta * 360.0
        cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB if rgb else cv2.COLOR_HSV2BGR, dst=a)
        np.clip(a, 0, 255, out=a)
        if dst.dtype == np.uint8:
            cv2.convertScaleAbs(a, dst=dst)  # saturating round, much faster than np.rint
        else:
            np.copyto(dst, a)


class RandomHue(T.Augmentation):
    """Shift hue by a uniform draw in ``[-max_delta, max_delta]`` (fraction of the
    colour circle, as torchvision's ``hue``)."""

    def __init__(self, max_delta: float, image_format: str = "BGR"):
        super().__init__()
        if not 0 <= max_delta <= 0.5:
            raise ValueError(f"RandomHue max_delta must be in [0, 0.5], got {max_delta}")
        check_image_format(image_format)
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        delta = self._rand_range(-self.max_delta, self.max_delta)
        return ColorJitterTransform([("hue", delta)], self.image_format)


class ColorJitter(T.Augmentation):
    """torchvision's ``ColorJitter`` as a Detectron2 augmentation: brightness,
    contrast and saturation factors drawn from ``[max(0, 1 - v), 1 + v]``, a hue
    shift from ``[-hue, hue]``, applied in a random order; an op whose value is 0
    is skipped.
    """

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        image_format: str = "BGR",
    ):
        super().__init__()
        for name, value in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            if value < 0:
                raise ValueError(f"ColorJitter {name} must be >= 0, got {value}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"ColorJitter hue must be in [0, 0.5], got {hue}")
        check_image_format(image_format)
        self._init(locals())

    def _range(self, name: str) -> Tuple[float, float]:
        value = getattr(self, name)
        return (-value, value) if name == "hue" else (max(0.0, 1.0 - value), 1.0 + value)

    def get_transform(self, image: np.ndarray) -> T.Transform:
        ops = []
        for i in np.random.permutation(len(_COLOR_OPS)):
            low, high = self._range(_COLOR_OPS[i])
            if low != high:
                ops.append((_COLOR_OPS[i], self._rand_range(low, high)))
        if not ops:
            return T.NoOpTransform()
        return ColorJitterTransform(ops, self.image_format)


# Optical density of each uint8 value; +1 keeps black finite and makes 255 -> 0.
_OD_LUT = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)


class HEDStainTransform(_ColorOnlyTransform):
    """Stain augmentation by colour deconvolution (Tellez et al. 2018): split each
    pixel into H, E and DAB concentrations (Ruifrok–Johnston matrix), set
    ``c' = alpha * c + beta`` per stain, and recompose. Concentrations stay signed
    (no clipping), so ``alpha = 1, beta = 0`` is the identity up to rounding.

    Args:
        alpha, beta: 3 values each, for H, E, DAB; ``beta`` in optical-density
            units (natural log).
        image_format: channel order of the images it receives, "BGR" or "RGB".
    """

    def __init__(self, alpha: Sequence[float], beta: Sequence[float], image_format: str = "BGR"):
        super().__init__()
        alpha = np.asarray(alpha, dtype=np.float64).reshape(3)
        beta = np.asarray(beta, dtype=np.float64).reshape(3)
        self._set_attributes(
            {"alpha": alpha, "beta": beta, "image_format": check_image_format(image_format)}
        )

    def _od_affine(self) -> np.ndarray:
        # od' = od @ A + b with A = HED_FROM_RGB diag(alpha) RGB_FROM_HED, b = beta @
        # RGB_FROM_HED: one 3x3 affine map in OD space instead of two matrix products.
        a = HED_FROM_RGB @ np.diag(self.alpha) @ RGB_FROM_HED
        b = self.beta @ RGB_FROM_HED
        if self.image_format == "BGR":  # same map with channels (and so rows/cols) reversed
            a, b = a[::-1, ::-1], b[::-1]
        return np.hstack([a.T, b[:, None]]).astype(np.float32)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """``img``: HxWx3 uint8 (or float in [0, 255]); returns the same dtype."""
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 colour image, got shape {img.shape}")
        od, x = _workspace.get("a", img.shape), _workspace.get("b", img.shape)
        if img.dtype == np.uint8:
            cv2.LUT(img, _OD_LUT, dst=od)
        else:
            np.copyto(od, img)
            od += 1.0
            od *= 1.0 / 256.0
            cv2.log(od, dst=od)
            od *= -1.0
        cv2.transform(od, -self._od_affine(), dst=x)  # -od'
        cv2.exp(x, dst=x)
        x *= 256.0
        x -= 1.0
        return _from_float(x, img.dtype)


class RandomHEDStain(T.Augmentation):
    """Draw per-stain ``alpha ~ U(1 - sigma, 1 + sigma)`` and ``beta ~ U(-bias, bias)``
    and apply :class:`HEDStainTransform`."""

    def __init__(self, sigma: float = 0.05, bias: float = 0.05, image_format: str = "BGR"):
        super().__init__()
        if sigma < 0 or bias < 0:
            raise ValueError(f"RandomHEDStain sigma and bias must be >= 0, got {sigma}, {bias}")
        check_image_format(image_format)
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        alpha = np.random.uniform(1.0 - self.sigma, 1.0 + self.sigma, size=3)
        beta = np.random.uniform(-self.bias, self.bias, size=3)
        return HEDStainTransform(alpha, beta, self.image_format)


def build_color_augmentation(cfg) -> List[T.Augmentation]:
    """Colour augmentations from ``INPUT.*``, in ``INPUT.FORMAT`` channel order: the
    optional HED stain augmentation, then the paper's ColorJitter."""
    fmt = cfg.INPUT.FORMAT
    augs: List[T.Augmentation] = []
    if cfg.INPUT.HED.ENABLED:
        augs.append(RandomHEDStain(cfg.INPUT.HED.SIGMA, cfg.INPUT.HED.BIAS, image_format=fmt))
    cj = cfg.INPUT.COLOR_JITTER
    if cj.ENABLED:
        augs.append(
            ColorJitter(cj.BRIGHTNESS, cj.CONTRAST, cj.SATURATION, cj.HUE, image_format=fmt)
        )
    return augs

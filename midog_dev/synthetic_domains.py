"""The domains of the generated MIDOG-like data: tumor types (tissue parameters), scanners
(stain matrix and acquisition artefacts), domains, dataset specs and presets
(docs/synthetic_data.md). :mod:`.synthetic` writes datasets of them."""

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from midog_d2.constants import DEFAULT_MPP

__all__ = [
    "IMPOSTER_KINDS",
    "MITOSIS_KINDS",
    "PRESETS",
    "SCANNERS",
    "TUMOR_TYPES",
    "Domain",
    "Scanner",
    "SyntheticSpec",
    "TumorType",
]

MITOSIS_KINDS = ("metaphase", "prometaphase", "anaphase", "telophase")
IMPOSTER_KINDS = ("pyknotic", "hyperchromatic", "lymphocyte")


@dataclass(frozen=True)
class TumorType:
    """Tissue parameters of one tumor type; lengths in µm."""

    name: str
    species: str
    origin: str  # lab written to the CSV's Origin column
    nucleus_radius: float  # mean semi-major axis of a tumor-cell nucleus
    nucleus_radius_sd: float
    aspect: Tuple[float, float]  # range of major/minor axis ratio
    irregularity: float  # amplitude of the outline harmonics
    cell_spacing: float  # centre-to-centre distance in cell-rich areas
    cellularity: float  # fraction of the area covered by tumor-cell sheets/nests
    nest_scale: float  # size of nests/sheets (scale of the layout noise)
    lumen: float  # fraction of the area that is lumen / empty space
    fat: float  # fraction of the area that is adipose tissue
    fibre: float  # strength of the collagen fibre texture in stroma
    chromatin: str  # "vesicular", "coarse", "dense" or "salt_pepper"
    nucleus_stain: float  # mean haematoxylin concentration of a nucleus
    cytoplasm_eosin: float
    cytoplasm_haem: float  # amphophilic / granular cytoplasm
    cell_borders: float  # strength of the pale gaps between cells
    spindle: bool = False  # nuclei follow the fibre direction (sarcoma)
    granules: float = 0.0  # purple cytoplasmic granules (mast cells)
    pigment: float = 0.0  # brown melanin (melanoma)
    nucleoli: float = 0.0  # probability of a visible nucleolus
    mitosis_factor: float = 1.0  # multiplies SyntheticSpec.mitoses_per_mm2
    imposter_factor: float = 1.0  # multiplies SyntheticSpec.imposters_per_mm2
    imposter_mix: Tuple[float, float, float] = (
        0.4,
        0.35,
        0.25,
    )  # pyknotic, hyperchromatic, lymphocyte


@dataclass(frozen=True)
class Scanner:
    """Scanner/lab look: stain matrix and acquisition artefacts."""

    name: str  # as spelled in the CSV's Scanner column
    mpp: float  # native µm/px (used when SyntheticSpec.mpp is None)
    haematoxylin: Tuple[float, float, float]  # optical density (R, G, B) per unit concentration
    eosin: Tuple[float, float, float]
    stain_scale: Tuple[float, float]  # haematoxylin, eosin staining intensity of the lab
    background: Tuple[float, float, float]  # white level (R, G, B)
    blur: float  # Gaussian focus blur, sigma in µm
    sharpen: float  # unsharp-mask amount applied by the scanner software
    noise: float  # sensor noise, sd in 8-bit units
    jpeg_quality: int  # 0: none; else the JPEG quality the scanner stores with


# One table each; order fixes the rng streams, so append, never reorder.
TUMOR_TYPES: Dict[str, TumorType] = {
    t.name: t
    for t in (
        TumorType(
            "human breast cancer",
            "Human",
            "UMC Utrecht",
            nucleus_radius=4.2,
            nucleus_radius_sd=0.9,
            aspect=(1.0, 1.6),
            irregularity=0.07,
            cell_spacing=11.0,
            cellularity=0.55,
            nest_scale=45.0,
            lumen=0.06,
            fat=0.08,
            fibre=1.0,
            chromatin="vesicular",
            nucleus_stain=0.85,
            cytoplasm_eosin=0.45,
            cytoplasm_haem=0.10,
            cell_borders=0.15,
            nucleoli=0.6,
        ),
        TumorType(
            "canine lung cancer",
            "Canine",
            "FU Berlin",
            nucleus_radius=3.6,
            nucleus_radius_sd=0.6,
            aspect=(1.1, 1.8),
            irregularity=0.05,
            cell_spacing=9.5,
            cellularity=0.6,
            nest_scale=30.0,
            lumen=0.13,
            fat=0.0,
            fibre=0.7,
            chromatin="coarse",
            nucleus_stain=1.0,
            cytoplasm_eosin=0.55,
            cytoplasm_haem=0.05,
            cell_borders=0.25,
            nucleoli=0.3,
            imposter_mix=(0.5, 0.3, 0.2),
        ),
        TumorType(
            "canine lymphoma",
            "Canine",
            "FU Berlin",
            nucleus_radius=3.1,
            nucleus_radius_sd=0.45,
            aspect=(1.0, 1.25),
            irregularity=0.06,
            cell_spacing=7.2,
            cellularity=1.0,
            nest_scale=80.0,
            lumen=0.0,
            fat=0.0,
            fibre=0.3,
            chromatin="dense",
            nucleus_stain=1.15,
            cytoplasm_eosin=0.35,
            cytoplasm_haem=0.12,
            cell_borders=0.55,
            nucleoli=0.2,
            mitosis_factor=1.6,
            imposter_factor=1.3,
            imposter_mix=(0.5, 0.2, 0.3),
        ),
        TumorType(
            "canine cutaneous mast cell tumor",
            "Canine",
            "VMU Vienna",
            nucleus_radius=3.3,
            nucleus_radius_sd=0.4,
            aspect=(1.0, 1.3),
            irregularity=0.04,
            cell_spacing=10.0,
            cellularity=0.8,
            nest_scale=60.0,
            lumen=0.02,
            fat=0.03,
            fibre=0.8,
            chromatin="coarse",
            nucleus_stain=0.95,
            cytoplasm_eosin=0.35,
            cytoplasm_haem=0.25,
            cell_borders=0.45,
            granules=0.6,
            nucleoli=0.1,
            mitosis_factor=0.7,
            imposter_mix=(0.3, 0.4, 0.3),
        ),
        TumorType(
            "human neuroendocrine tumor",
            "Human",
            "UMC Utrecht",
            nucleus_radius=3.3,
            nucleus_radius_sd=0.35,
            aspect=(1.0, 1.3),
            irregularity=0.03,
            cell_spacing=8.5,
            cellularity=0.65,
            nest_scale=22.0,
            lumen=0.03,
            fat=0.0,
            fibre=0.9,
            chromatin="salt_pepper",
            nucleus_stain=0.9,
            cytoplasm_eosin=0.5,
            cytoplasm_haem=0.08,
            cell_borders=0.1,
            nucleoli=0.05,
            mitosis_factor=0.6,
            imposter_mix=(0.35, 0.45, 0.2),
        ),
        TumorType(
            "canine soft tissue sarcoma",
            "Canine",
            "FU Berlin",
            nucleus_radius=4.4,
            nucleus_radius_sd=0.8,
            aspect=(2.2, 3.8),
            irregularity=0.05,
            cell_spacing=9.0,
            cellularity=0.85,
            nest_scale=70.0,
            lumen=0.02,
            fat=0.0,
            fibre=1.2,
            chromatin="coarse",
            nucleus_stain=0.95,
            cytoplasm_eosin=0.55,
            cytoplasm_haem=0.05,
            cell_borders=0.0,
            spindle=True,
            nucleoli=0.2,
            imposter_mix=(0.35, 0.45, 0.2),
        ),
        TumorType(
            "human melanoma",
            "Human",
            "UMC Utrecht",
            nucleus_radius=4.6,
            nucleus_radius_sd=1.0,
            aspect=(1.0, 1.5),
            irregularity=0.08,
            cell_spacing=12.0,
            cellularity=0.75,
            nest_scale=40.0,
            lumen=0.02,
            fat=0.0,
            fibre=0.8,
            chromatin="vesicular",
            nucleus_stain=0.8,
            cytoplasm_eosin=0.5,
            cytoplasm_haem=0.08,
            cell_borders=0.1,
            pigment=0.7,
            nucleoli=0.85,
        ),
    )
}

SCANNERS: Dict[str, Scanner] = {
    s.name: s
    for s in (
        # Bluish-purple haematoxylin, magenta eosin, sharp, lossless.
        Scanner(
            "Hamamatsu XR",
            0.23,
            (0.60, 0.76, 0.26),
            (0.08, 0.95, 0.32),
            (1.0, 0.95),
            (240, 236, 244),
            blur=0.18,
            sharpen=0.35,
            noise=1.5,
            jpeg_quality=0,
        ),
        # Lighter and pinker; mild JPEG.
        Scanner(
            "Hamamatsu S360",
            0.23,
            (0.52, 0.78, 0.28),
            (0.04, 0.88, 0.46),
            (0.8, 0.85),
            (246, 240, 246),
            blur=0.25,
            sharpen=0.2,
            noise=2.0,
            jpeg_quality=88,
        ),
        # Saturated, red-orange eosin, warm background, softer focus, Aperio's JPEG q70.
        Scanner(
            "Aperio CS2",
            0.25,
            (0.50, 0.80, 0.30),
            (0.02, 0.86, 0.62),
            (1.15, 1.25),
            (242, 230, 232),
            blur=0.35,
            sharpen=0.0,
            noise=2.5,
            jpeg_quality=70,
        ),
        # Pale, blue haematoxylin, grey-pink eosin, out-of-focus with strong sharpening,
        # noise and heavy JPEG: the blur softens the ragged outline that tells a mitosis
        # from a dark imposter on the training scanners (all sharper than 0.4 µm).
        Scanner(
            "Leica GT450",
            0.26,
            (0.72, 0.66, 0.20),
            (0.20, 0.95, 0.24),
            (0.75, 0.65),
            (248, 248, 250),
            blur=0.7,
            sharpen=0.8,
            noise=3.5,
            jpeg_quality=60,
        ),
        # Dark, dull, greyish; soft focus.
        Scanner(
            "3D Histech",
            0.25,
            (0.64, 0.70, 0.32),
            (0.14, 0.92, 0.36),
            (1.3, 1.05),
            (232, 232, 234),
            blur=0.4,
            sharpen=0.0,
            noise=2.0,
            jpeg_quality=85,
        ),
    )
}


@dataclass(frozen=True)
class Domain:
    """Images of one tumor type from one scanner, all in one split."""

    tumor: str
    scanner: str
    num_images: int
    split: str = "train"  # the CSV's Dataset column: "train" or "test"

    def __post_init__(self):
        if self.tumor not in TUMOR_TYPES:
            raise ValueError(f"unknown tumor type {self.tumor!r}; known: {sorted(TUMOR_TYPES)}")
        if self.scanner not in SCANNERS:
            raise ValueError(f"unknown scanner {self.scanner!r}; known: {sorted(SCANNERS)}")
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {self.split!r}")
        if self.num_images < 0:
            raise ValueError(f"num_images must be >= 0, not {self.num_images}")


@dataclass(frozen=True)
class SyntheticSpec:
    """What :func:`generate_dataset` writes."""

    domains: Tuple[Domain, ...]
    image_size: Tuple[int, int] = (2048, 2048)  # width, height in pixels
    mpp: Optional[float] = DEFAULT_MPP  # µm/px of every image; None: each scanner's native µm/px
    mitoses_per_mm2: float = 60.0  # before the tumor type's mitosis_factor
    imposters_per_mm2: float = 90.0  # before the tumor type's imposter_factor
    compression: str = "deflate"  # TIFF compression: "deflate", "none" (or "jpeg" with imagecodecs)


def _split_domains(
    train: Sequence[Tuple[str, str]], test: Sequence[Tuple[str, str]], n_train: int, n_test: int
) -> Tuple[Domain, ...]:
    return tuple(Domain(t, s, n_train, "train") for t, s in train) + tuple(
        Domain(t, s, n_test, "test") for t, s in test
    )


# Four training domains (three tumor types, three scanners); the test split holds
# out one tumor type (on a training scanner) and one scanner (on a training tumor).
_TRAIN_DOMAINS = (
    ("human breast cancer", "Hamamatsu XR"),
    ("human breast cancer", "Aperio CS2"),
    ("canine lung cancer", "Hamamatsu S360"),
    ("canine cutaneous mast cell tumor", "Aperio CS2"),
)
_TEST_DOMAINS = (
    ("human neuroendocrine tumor", "Hamamatsu XR"),  # unseen tumor type
    ("human breast cancer", "Leica GT450"),  # unseen scanner
)

PRESETS: Dict[str, SyntheticSpec] = {
    # For unit tests: seconds.
    "tiny": SyntheticSpec(
        _split_domains(_TRAIN_DOMAINS[:2], _TEST_DOMAINS[:1], 1, 1),
        (384, 320),
        mitoses_per_mm2=400.0,
        imposters_per_mm2=400.0,
    ),
    # For the CPU demo: 20 training + 8 held-out images of 1280 px (~15 s to generate).
    "demo": SyntheticSpec(
        _split_domains(_TRAIN_DOMAINS, _TEST_DOMAINS, 5, 4),
        (1280, 1280),
        mitoses_per_mm2=70.0,
        imposters_per_mm2=90.0,
    ),
    # Every tumor type on its MIDOG++ scanner, plus the scanner hold-outs.
    "full": SyntheticSpec(
        _split_domains(
            (
                ("human breast cancer", "Hamamatsu XR"),
                ("human breast cancer", "Hamamatsu S360"),
                ("human breast cancer", "Aperio CS2"),
                ("canine lung cancer", "3D Histech"),
                ("canine lymphoma", "3D Histech"),
                ("canine cutaneous mast cell tumor", "Aperio CS2"),
                ("canine soft tissue sarcoma", "3D Histech"),
                ("human melanoma", "Hamamatsu XR"),
            ),
            (
                ("human neuroendocrine tumor", "Hamamatsu XR"),
                ("human breast cancer", "Leica GT450"),
                ("canine lymphoma", "Leica GT450"),
            ),
            10,
            6,
        ),
        (2048, 2048),
    ),
}

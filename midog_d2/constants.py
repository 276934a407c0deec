"""The fixed facts of MIDOG data and scoring, defined once (``../shared/reference/midog.md``).

Everything else imports these instead of repeating a number: class ids, category and point
names, the 50-px box, the default µm/px, the scoring radius and the tumor-type and scanner
spellings met in real MIDOG files, and how names are matched (:func:`name_key`,
:func:`domain_index`).
"""

from typing import Any, Sequence

# Contiguous class ids of the data pipeline and the model (gt_classes / pred_classes).
MITOTIC_FIGURE = 0
HARD_NEGATIVE = 1
CATEGORY_NAMES = ("mitotic figure", "hard negative")
# A don't-care zone (an evaluation set's label, never a model class): a detection within the
# scoring radius of one, and of no mitotic figure, is neither true nor false. The loaders
# leave them out (training sees their cells as unlabelled tissue); the evaluators read them.
# Written to MIDOG-style files as category 3, "don't care".
DONT_CARE = 2
DONT_CARE_NAME = "don't care"

# Category names met in MIDOG releases (matched case-insensitively) -> class id.
CATEGORY_ALIASES = {
    "mitotic figure": MITOTIC_FIGURE,
    "mitose": MITOTIC_FIGURE,
    "mitosis": MITOTIC_FIGURE,
    "not mitotic figure": HARD_NEGATIVE,
    "non-mitotic figure": HARD_NEGATIVE,
    "hard negative": HARD_NEGATIVE,
    "impostor": HARD_NEGATIVE,
    "imposter": HARD_NEGATIVE,
    "don't care": DONT_CARE,
    "dont care": DONT_CARE,
    "ignore": DONT_CARE,
}

# The categories as MIDOG++'s annotation file writes them (ids 1 and 2).
MIDOG_CATEGORIES = (
    {"id": 1, "name": "mitotic figure"},
    {"id": 2, "name": "not mitotic figure"},
)
# What files with don't-care zones add to MIDOG_CATEGORIES.
DONT_CARE_CATEGORY = {"id": 3, "name": DONT_CARE_NAME}

# Every MIDOG box is BOX_SIZE x BOX_SIZE px around its cell.
BOX_SIZE = 50

# µm per pixel of MIDOG's scanners (~0.23-0.26): the default wherever a file says nothing.
DEFAULT_MPP = 0.25

# Scoring (midog.md §2): a detection within 7.5 µm of a mitotic figure is a hit; MIDOG 2022's
# mAP turns each point into a square of ±11.25 µm (IoU 0.5 exactly at 7.5 µm apart).
DEFAULT_RADIUS_UM = 7.5
# A don't-care zone (an evaluation set's figure that is not counted) takes every detection
# within this distance of its centre, off-centre ones of the same figure too (a telophase's
# two halves lie ~10 µm apart). Twice the hit radius: measured on composite ROIs, whose tumor
# tissue holds ~490 such figures per mm², half of the false detections there lay 7.5-15 µm
# from one (docs/results.md, "Don't-care zones cover the whole figure").
DEFAULT_DONT_CARE_RADIUS_UM = 15.0
AP_BOX_HALF_UM = 11.25

# Names of the points of a challenge "Multiple points" file (midog.md §3).
MITOTIC_NAME = "mitotic figure"
NON_MITOTIC_NAME = "non-mitotic figure"

# MIDOG++'s seven tumor types, in a fixed order: the domain head's output i is
# MODEL.MULTITASK.DOMAINS[i], which defaults to these.
MIDOGPP_TUMOR_TYPES = (
    "human breast cancer",
    "canine lung cancer",
    "canine lymphoma",
    "canine cutaneous mast cell tumor",
    "human neuroendocrine tumor",
    "canine soft tissue sarcoma",
    "human melanoma",
)

# Mitotic figures per mm²: the median over the 503 labelled MIDOG++ regions, and per tumor
# type (each region's figures over its width x height at 0.25 µm/px), printed by
# `python tools/midog_density.py --json ../shared/data/MIDOGpp.json` (docs/evaluation.md).
# Real tissue holds about a hundredth of the figures of a window cut around one.
MIDOGPP_DENSITY = 4.4
MIDOGPP_TUMOR_DENSITY = {
    "human breast cancer": 2.7,
    "human neuroendocrine tumor": 1.6,
    "canine soft tissue sarcoma": 4.2,
    "human melanoma": 4.5,
    "canine cutaneous mast cell tumor": 7.4,
    "canine lung cancer": 7.6,
    "canine lymphoma": 32.5,
}

# Spellings met in real MIDOG files -> canonical name (case-insensitive match).
TUMOR_TYPE_ALIASES = (
    ("canine lymphosarcoma", "canine lymphoma"),
    ("breast cancer", "human breast cancer"),
)

# Scanner spellings in the MIDOG++ CSV -> canonical name (case-insensitive):
# the CSV names one scanner both "Hamamatsu XR" and "Hamammatsu XR".
SCANNER_ALIASES = (("Hamammatsu XR", "Hamamatsu XR"),)


def name_key(name: Any) -> str:
    """How the project matches names (domains, aliases, categories, CSV headers): whitespace
    runs collapsed, case ignored."""
    return " ".join(str(name).split()).lower()


def domain_index(name: Any, domains: Sequence[str]) -> int:
    """The index of ``name`` in ``domains`` (``MODEL.MULTITASK.DOMAINS``, the domain
    head's classes) by :func:`name_key`, or -1 when ``name`` is None or not listed. The one
    rule the loader's domain labels, the canvases' domain selection and the checkpointer's
    mapping of the head's rows share."""
    if name is None:
        return -1
    key = name_key(name)
    for i, d in enumerate(domains):
        if name_key(d) == key:
            return i
    return -1


def is_labelled(record: dict) -> bool:
    """Whether an image was annotated: its ``labelled`` flag, else "has any annotation"
    (MIDOG files have no flag; their never-annotated ROIs have no annotation at all)."""
    flag = record.get("labelled")
    return bool(record.get("annotations")) if flag is None else bool(flag)


# The operating score threshold when neither the config (TEST.MIDOG.SCORE_THRESHOLD) nor the
# weights (midog_d2.checkpoint.save_threshold) carry one.
DEFAULT_SCORE_THRESHOLD = 0.5

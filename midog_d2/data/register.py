"""Register MIDOG datasets with Detectron2's DatasetCatalog / MetadataCatalog, and split them."""

import logging
import math
import os
import random
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..config import check_renamed_keys
from ..constants import (
    CATEGORY_NAMES,
    DEFAULT_MPP,
    MIDOGPP_TUMOR_TYPES,
    TUMOR_TYPE_ALIASES,
    is_labelled,
)
from ..fileio.slide import fallback_mpp
from .midog import canonical_tumor_type, load_midog_json

__all__ = [
    "register_midog",
    "register_from_config",
    "split_by_csv",
    "leave_one_tumor_out",
    "seeded_val_split",
    "split_for_domain_study",
    "DOMAIN_SPLITS",
]

logger = logging.getLogger(__name__)

# name -> the arguments it was registered with, to make re-registration idempotent.
_REGISTERED: Dict[str, Dict[str, Any]] = {}


def _frozen(value):
    """Lists/tuples/sets -> tuples so that argument sets compare reliably."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return tuple(sorted((_frozen(v) for v in value), key=repr))
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return value


def register_midog(
    name: str,
    json_file: str,
    image_root: str,
    *,
    domains: Optional[Sequence[str]] = None,
    mpp: float = DEFAULT_MPP,
    metadata: Optional[Dict[str, Any]] = None,
    **load_options,
) -> None:
    """
    Register a MIDOG annotation file (or a part of it, through ``image_ids`` /
    ``tumor_filter``) as dataset ``name``. Loading is lazy: the JSON is read
    when ``DatasetCatalog.get(name)`` is called.

    Args:
        name: dataset name.
        json_file, image_root, domains, load_options: as in :func:`load_midog_json`.
        mpp: µm per pixel assumed for the dataset's images (the evaluator's
            hit radius in pixels comes from it).
        metadata: extra metadata fields.

    Metadata set: ``thing_classes`` (["mitotic figure", "hard negative"]),
    ``domains``, ``evaluator_type`` ("midog"), ``mpp``, ``midog_json_file``,
    ``image_root``. The annotation file is deliberately *not* stored as
    ``json_file``: Detectron2's COCOEvaluator would read that key as a COCO
    ground-truth file ([x, y, w, h] boxes, every image of the file), giving
    wrong AP; without it COCOEvaluator converts this dataset's own dicts.

    Registering a name again with the same arguments does nothing; with other
    arguments it replaces the earlier registration (and logs a warning). A name
    registered by something else raises ValueError.
    """
    domains = list(MIDOGPP_TUMOR_TYPES if domains is None else domains)
    meta = {
        "thing_classes": list(CATEGORY_NAMES),
        "domains": domains,
        "evaluator_type": "midog",
        "mpp": float(mpp),
        "midog_json_file": json_file,
        "image_root": image_root,
        **(metadata or {}),
    }
    args = _frozen(
        {
            "json_file": json_file,
            "image_root": image_root,
            "domains": domains,
            "meta": meta,
            "load": load_options,
        }
    )
    if name in DatasetCatalog.list():
        if name not in _REGISTERED:
            raise ValueError(f"dataset {name!r} is already registered, not by register_midog")
        if _REGISTERED[name] == args:
            return
        logger.warning("Re-registering dataset %r with different arguments", name)
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)

    def load():
        return load_midog_json(json_file, image_root, domains=domains, **load_options)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(**meta)
    _REGISTERED[name] = args


def split_by_csv(dataset_dicts: List[Dict[str, Any]]) -> Tuple[List[Dict], List[Dict]]:
    """
    (train, test) from the MIDOG++ CSV's split column (``split`` of each dict,
    from ``load_midog_json(csv_file=...)``). Unlabelled images, which the CSV
    does not list, are left out; a labelled image without a split is an error.
    """
    parts: Dict[str, List[Dict]] = {"train": [], "test": []}
    for d in dataset_dicts:
        if not is_labelled(d):
            continue
        split = d.get("split")
        if split not in parts:
            raise ValueError(
                f"image {d['image_id']} ({d['file_name']}) has split {split!r}, expected 'train' "
                "or "
                "'test': is the MIDOG++ CSV given (DATASETS.MIDOG.CSV_FILE) and does it list this "
                "image?"
            )
        parts[split].append(d)
    return parts["train"], parts["test"]


def leave_one_tumor_out(
    dataset_dicts: List[Dict[str, Any]],
    holdout_tumor: str,
    tumor_aliases: Iterable[Sequence[str]] = TUMOR_TYPE_ALIASES,
) -> Tuple[List[Dict], List[Dict]]:
    """
    (train, test): test holds every image of ``holdout_tumor`` (aliases apply),
    train every other image, including those of unknown tumor type. Unlabelled
    images are left out of both.
    """
    dataset_dicts = [d for d in dataset_dicts if is_labelled(d)]
    present = sorted({d["tumor_type"] for d in dataset_dicts if d["tumor_type"] is not None})
    holdout = canonical_tumor_type(holdout_tumor, tumor_aliases, present)
    if holdout not in present:
        raise ValueError(
            f"held-out tumor type {holdout_tumor!r} is not in the data; tumor types: {present}"
        )
    train = [d for d in dataset_dicts if d["tumor_type"] != holdout]
    test = [d for d in dataset_dicts if d["tumor_type"] == holdout]
    return train, test


def seeded_val_split(
    dataset_dicts: List[Dict[str, Any]], val_fraction: float, seed: int, *, stratify: bool = True
) -> Tuple[List[Dict], List[Dict]]:
    """
    (train, val), split by image: a fraction ``val_fraction`` of the images of
    each tumor type (rounded half up; all images together if ``stratify`` is
    False) goes to val. Same images + same seed = same split, whatever the input
    order; both parts keep the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    groups: Dict[Any, List[Any]] = defaultdict(list)
    for d in dataset_dicts:
        groups[str(d.get("tumor_type")) if stratify else None].append(d["image_id"])
    if sum(len(ids) for ids in groups.values()) != len({d["image_id"] for d in dataset_dicts}):
        raise ValueError("seeded_val_split: image ids are not unique")
    rng = random.Random(seed)
    val_ids = set()
    for key in sorted(groups, key=str):
        ids = sorted(groups[key], key=lambda i: (str(type(i)), i))
        rng.shuffle(ids)
        val_ids.update(ids[: int(math.floor(val_fraction * len(ids) + 0.5))])
    train = [d for d in dataset_dicts if d["image_id"] not in val_ids]
    val = [d for d in dataset_dicts if d["image_id"] in val_ids]
    return train, val


# The parts of a domain study: training domains (train/val) and the held-out domains.
DOMAIN_SPLITS = ("train", "val", "unseen_tumor", "unseen_scanner")


def split_for_domain_study(
    dataset_dicts: List[dict],
    holdout_tumor: str,
    holdout_scanner: str,
    val_fraction: float,
    seed: int,
) -> Dict[str, List[dict]]:
    """Images of ``holdout_tumor`` -> unseen_tumor; of ``holdout_scanner`` (other
    tumors) -> unseen_scanner; the rest -> train / val (seeded, by image)."""
    unseen_tumor = [d for d in dataset_dicts if d.get("tumor_type") == holdout_tumor]
    unseen_scanner = [
        d
        for d in dataset_dicts
        if d.get("scanner") == holdout_scanner and d.get("tumor_type") != holdout_tumor
    ]
    held = {d["image_id"] for d in unseen_tumor + unseen_scanner}
    train, val = seeded_val_split(
        [d for d in dataset_dicts if d["image_id"] not in held], val_fraction, seed
    )
    splits = {
        "train": train,
        "val": val,
        "unseen_tumor": unseen_tumor,
        "unseen_scanner": unseen_scanner,
    }
    for name, dicts in splits.items():
        if not dicts:
            raise ValueError(
                f"The domain study's {name!r} split is empty (holdout tumor {holdout_tumor!r}, "
                f"holdout scanner {holdout_scanner!r}): check the dataset's tumor types and "
                "scanners"
            )
    return splits


def load_options_from_config(cfg) -> Dict[str, Any]:
    """``load_midog_json`` keyword options (aliases, CSV, filters, box check) from
    ``cfg.DATASETS.MIDOG`` and the domain field from ``MODEL.MULTITASK.DOMAIN_FIELD``;
    ``domains`` come from ``MODEL.MULTITASK.DOMAINS``."""
    c = cfg.DATASETS.MIDOG
    return dict(
        tumor_aliases=[tuple(p) for p in c.TUMOR_ALIASES],
        default_tumor_type=c.DEFAULT_TUMOR_TYPE or None,
        csv_file=c.CSV_FILE or None,
        scanner_aliases=[tuple(p) for p in c.SCANNER_ALIASES],
        tumor_filter=list(c.TUMOR_FILTER) or None,
        check_boxes=c.CHECK_BOXES,
        domain_field=cfg.MODEL.MULTITASK.DOMAIN_FIELD,
    )


def register_from_config(cfg) -> List[str]:
    """
    Register ``midog_train``, ``midog_val`` (when ``VAL_FRACTION > 0``) and
    ``midog_test`` from ``cfg.DATASETS.MIDOG`` (see config.py for the keys; none when
    ``JSON_FILE`` is empty), and each whole file of ``EXTRA`` under its own name (with the
    aliases and box check, not the CSV or the tumor filter, which belong to ``JSON_FILE``).
    The split is computed now (the JSON is read once); each part is registered lazily by
    image ids. Returns the names.
    """
    check_renamed_keys(cfg)
    c = cfg.DATASETS.MIDOG
    domains = list(cfg.MODEL.MULTITASK.DOMAINS)
    load_options = load_options_from_config(cfg)
    extra = []
    for entry in c.EXTRA:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
            raise ValueError(
                f"DATASETS.MIDOG.EXTRA: each entry is [name, json_file, image_root], got {entry!r}"
            )
        name, json_file, image_root = (str(v) for v in entry)
        if not os.path.isfile(json_file):
            raise FileNotFoundError(f"DATASETS.MIDOG.EXTRA {name!r}: {json_file} not found")
        own = {k: v for k, v in load_options.items() if k not in ("csv_file", "tumor_filter")}
        register_midog(
            name,
            json_file,
            image_root,
            domains=domains,
            mpp=fallback_mpp(c.FALLBACK_MPP) or 0.0,
            **own,
        )
        extra.append(name)
    if not c.JSON_FILE:
        return extra
    dicts = load_midog_json(c.JSON_FILE, c.IMAGE_ROOT, domains=domains, **load_options)
    if c.SPLIT == "csv":
        if not c.CSV_FILE:
            raise ValueError(
                "DATASETS.MIDOG.SPLIT='csv' needs DATASETS.MIDOG.CSV_FILE (the MIDOG++ CSV)"
            )
        train, test = split_by_csv(dicts)
    elif c.SPLIT == "leave_one_tumor_out":
        train, test = leave_one_tumor_out(dicts, c.HOLDOUT_TUMOR, load_options["tumor_aliases"])
    else:
        raise ValueError(
            f"DATASETS.MIDOG.SPLIT={c.SPLIT!r}: expected 'csv' or 'leave_one_tumor_out'"
        )
    train, val = seeded_val_split(train, c.VAL_FRACTION, c.SEED)
    parts = {"midog_train": train, "midog_test": test}
    if val:
        parts["midog_val"] = val
    elif "midog_val" in _REGISTERED:  # an earlier config's val split must not linger
        DatasetCatalog.remove("midog_val")
        MetadataCatalog.remove("midog_val")
        del _REGISTERED["midog_val"]
    for name, part in parts.items():
        register_midog(
            name,
            c.JSON_FILE,
            c.IMAGE_ROOT,
            domains=domains,
            mpp=fallback_mpp(c.FALLBACK_MPP) or 0.0,
            metadata={"split": c.SPLIT},
            image_ids=sorted(d["image_id"] for d in part),
            **load_options,
        )
    logger.info(
        "Registered MIDOG split %r from %s: %s",
        c.SPLIT,
        c.JSON_FILE,
        ", ".join(f"{n} {len(p)} images" for n, p in parts.items()),
    )
    return list(parts) + extra

"""Weights: torchvision ResNet state dicts -> Detectron2 checkpoints (:mod:`.conversion`), the
operating threshold stored beside a checkpoint (:mod:`.threshold`), loading without executing
code (:mod:`.safe_load`), the model that ships with the project (:mod:`.shipped`,
``midog-d2://`` paths) and the checkpointer that maps the domain head by name and saves
crash-safely (:mod:`.checkpointer`). Every file is written through
:mod:`midog_d2.fileio.atomic`."""

from .checkpointer import (
    DOMAIN_HEAD,
    DOMAIN_ROWS,
    MidogCheckpointer,
    last_good_checkpoint,
    load_model_weights,
    require_complete_load,
)
from .conversion import convert_torchvision_resnet, torchvision_to_d2_checkpoint
from .safe_load import WeightsError, load_pickle_weights, load_torch_weights
from .shipped import REFERENCE_CONFIG, REFERENCE_WEIGHTS, local_path, reference_model
from .threshold import (
    RECORD_FIELDS,
    THRESHOLD_SUFFIX,
    file_sha256,
    load_threshold,
    resolve_score_threshold,
    save_threshold,
    threshold_file,
    threshold_record,
)

__all__ = [
    "RECORD_FIELDS",
    "threshold_record",
    "DOMAIN_HEAD",
    "DOMAIN_ROWS",
    "MidogCheckpointer",
    "last_good_checkpoint",
    "load_model_weights",
    "require_complete_load",
    "convert_torchvision_resnet",
    "torchvision_to_d2_checkpoint",
    "REFERENCE_CONFIG",
    "REFERENCE_WEIGHTS",
    "local_path",
    "reference_model",
    "WeightsError",
    "load_pickle_weights",
    "load_torch_weights",
    "THRESHOLD_SUFFIX",
    "file_sha256",
    "load_threshold",
    "resolve_score_threshold",
    "save_threshold",
    "threshold_file",
]

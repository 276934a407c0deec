"""The model that ships with the project (``midog_d2/model_zoo/``, docs/model_card.md), named
by ``midog-d2://`` paths that Detectron2's PathManager resolves to the installed files, so that
``MODEL.WEIGHTS midog-d2://reference/model_fp16.pth`` works from any folder, in configs and on
the command line, as ``detectron2://`` does for Detectron2's model zoo."""

import os
from typing import Tuple

from detectron2.utils.file_io import PathHandler, PathManager

__all__ = [
    "SHIPPED_PREFIX",
    "SHIPPED_ROOT",
    "REFERENCE_WEIGHTS",
    "REFERENCE_CONFIG",
    "local_path",
    "reference_model",
]

SHIPPED_PREFIX = "midog-d2://"
SHIPPED_ROOT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model_zoo"
)
# The reference model (configs/dev/Reference-CPU-R18.yaml trained on this project's real
# figures): fp16 weights, their threshold record beside them, and the product config that
# builds the model they fit.
REFERENCE_WEIGHTS = SHIPPED_PREFIX + "reference/model_fp16.pth"
REFERENCE_CONFIG = SHIPPED_PREFIX + "reference/config.yaml"


def local_path(path: str) -> str:
    """A ``midog-d2://`` path as the installed file's path; any other path unchanged."""
    if not path.startswith(SHIPPED_PREFIX):
        return path
    rel = path[len(SHIPPED_PREFIX) :]
    full = os.path.normpath(os.path.join(SHIPPED_ROOT, rel))
    if os.path.commonpath([full, SHIPPED_ROOT]) != SHIPPED_ROOT:
        raise ValueError(f"{path}: outside the shipped models")
    return full


def reference_model() -> Tuple[str, str]:
    """(config file, weights file) of the shipped reference model, as local paths;
    FileNotFoundError naming what is missing (a checkout without the model_zoo files)."""
    config, weights = local_path(REFERENCE_CONFIG), local_path(REFERENCE_WEIGHTS)
    for p in (config, weights):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"the shipped model's file is missing: {p}")
    return config, weights


class _ShippedModelHandler(PathHandler):
    def _get_supported_prefixes(self):
        return [SHIPPED_PREFIX]

    def _get_local_path(self, path, **kwargs):
        return local_path(path)

    def _open(self, path, mode="r", buffering=-1, **kwargs):
        return open(local_path(path), mode, buffering=buffering)

    def _isfile(self, path, **kwargs):
        return os.path.isfile(local_path(path))

    def _exists(self, path, **kwargs):
        return os.path.exists(local_path(path))


if SHIPPED_PREFIX not in PathManager._path_handlers:  # imported twice (reload): registered once
    PathManager.register_handler(_ShippedModelHandler())

"""Print the versions that matter for midog-d2: ``python -m midog_d2.collect_env``."""

import importlib
import os
import sys
from typing import List, Tuple

from tabulate import tabulate


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # any import failure is worth reporting, not raising
        return f"not importable ({type(e).__name__}: {e})"
    return str(getattr(mod, "__version__", "unknown version"))


def collect_env_info() -> str:
    """A table of the interpreter, midog_d2 and its dependencies' versions."""
    rows: List[Tuple[str, str]] = [("Python", sys.version.replace("\n", " "))]
    import torch

    import detectron2

    import midog_d2

    rows.append(("midog_d2", f"{midog_d2.__version__} @ {os.path.dirname(midog_d2.__file__)}"))
    rows.append(
        ("detectron2", f"{detectron2.__version__} @ {os.path.dirname(detectron2.__file__)}")
    )
    try:
        from detectron2 import _C  # noqa: F401

        compiled = "yes"
    except ImportError:
        compiled = "no (pure-Python install; midog_d2 does not need them)"
    rows.append(("detectron2 compiled ops (_C)", compiled))
    rows.append(("torch", f"{torch.__version__} (CUDA build {torch.version.cuda})"))
    rows.append(("CUDA available", str(torch.cuda.is_available())))
    if torch.cuda.is_available():
        rows.append(("GPU 0", torch.cuda.get_device_name(0)))
    for name in ("torchvision", "fvcore", "numpy", "cv2", "pycocotools", "tifffile"):
        rows.append((name, _version(name)))
    try:
        import openslide

        rows.append(("openslide-python", openslide.__version__))
        rows.append(("OpenSlide library", openslide.__library_version__))
    except Exception as e:
        rows.append(("openslide", f"not importable ({type(e).__name__}: {e})"))
    return tabulate(rows)


if __name__ == "__main__":
    print(collect_env_info())

"""midog-d2: domain-robust mitotic-figure detection on Detectron2.

Importing the package registers what it adds: the ``MultiTaskRetinaNet``
meta-architecture (``MODEL.META_ARCHITECTURE: "MultiTaskRetinaNet"``).
"""

import warnings

# Detectron2 scripts a few helpers with torch.jit.script, which torch >= 2.10
# deprecates with a FutureWarning at every import; it says nothing to our users.
warnings.filterwarnings(
    "ignore", message="`torch.jit.script` is deprecated", category=FutureWarning
)

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by tests in a subprocess
    raise ImportError(
        "midog_d2 needs Detectron2, which is not installed: run `make venv` "
        "(installs it from PyPI's sal-detectron2 wheel) or build it from source "
        "(README.md, 'GPU servers')."
    ) from e

from . import modeling  # noqa: F401  (registers the meta-architecture)
from .config import add_midog_config

__version__ = "0.1.0"
__all__ = ["add_midog_config"]

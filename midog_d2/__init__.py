"""midog-d2: domain-robust mitotic-figure detection on Detectron2.

Importing the package registers what it adds: the ``MultiTaskRetinaNet``
meta-architecture (``MODEL.META_ARCHITECTURE: "MultiTaskRetinaNet"``).
"""

import warnings

# Two upstream warnings that say nothing to our users, in every process: Detectron2 scripts
# a few helpers with torch.jit.script, which torch >= 2.10 deprecates at every import, and
# its anchor generator calls torch.meshgrid without `indexing` (its "ij" default is what it
# means). The tools import midog_d2 first so that these are set before Detectron2 loads.
warnings.filterwarnings(
    "ignore", message="`torch.jit.script` is deprecated", category=FutureWarning
)
warnings.filterwarnings(
    "ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning
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

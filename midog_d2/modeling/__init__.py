"""Models added by midog-d2 (registered in Detectron2's META_ARCH_REGISTRY on import)."""

from .aux_heads import AuxiliaryClassifier
from .multitask_retinanet import MultiTaskRetinaNet

__all__ = ["AuxiliaryClassifier", "MultiTaskRetinaNet"]

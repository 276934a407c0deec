"""Models added by midog-d2 (registered in Detectron2's META_ARCH_REGISTRY on import)."""

from .aux_heads import AuxiliaryClassifier
from .multitask_retinanet import MultiTaskRetinaNet
from .outputs import ExtraOutput, check_declared, combine_tiles, declared_outputs
from .second_stage import CandidateClassifier

__all__ = [
    "AuxiliaryClassifier",
    "CandidateClassifier",
    "ExtraOutput",
    "MultiTaskRetinaNet",
    "check_declared",
    "combine_tiles",
    "declared_outputs",
]

"""Training: the Detectron2 trainer wired to MIDOG data, optimizers and evaluators."""

from .trainer import MidogTrainer, setup_cfg

__all__ = ["MidogTrainer", "setup_cfg"]

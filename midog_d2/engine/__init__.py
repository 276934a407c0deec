"""Training and what is built on it: the Detectron2 trainer wired to MIDOG data and
``setup_cfg`` (:mod:`.trainer`), the domain protocol (:mod:`.protocol`: threshold chosen
in-domain, carried to held-out domains), one run's train -> calibrate -> score path
(:mod:`.runs`), imposter mining (:mod:`.mining`) and the second stage's training
(:mod:`.second_stage`)."""

from .trainer import MidogTrainer, setup_cfg

__all__ = ["MidogTrainer", "setup_cfg"]

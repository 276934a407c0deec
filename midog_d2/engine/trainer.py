"""``DefaultTrainer`` wired to the patch loader, SOLVER.OPTIMIZER, tiled evaluation and a
best checkpoint."""

import functools
import logging
import os
import re
import weakref
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import yaml

from detectron2.config import CfgNode, get_cfg
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.engine import defaults as d2_defaults
from detectron2.engine import hooks
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import MidogCheckpointer, load_model_weights
from ..config import add_midog_config, apply_renamed_keys
from ..data import build_midog_test_loader, build_midog_train_loader, register_from_config
from ..evaluation import build_midog_evaluators
from ..inference import TiledPredictor
from ..solver import build_optimizer

logger = logging.getLogger(__name__)


class MidogTrainer(DefaultTrainer):
    """
    Detectron2's trainer with the pieces MIDOG needs: patches drawn from large
    images for training, Adam/AdamW by ``SOLVER.OPTIMIZER``, whole images scored
    by tiled inference with the MIDOG and COCO evaluators, and a
    ``model_best.pth`` kept on ``TEST.BEST_CHECKPOINT_METRIC``.
    """

    def __init__(self, cfg: CfgNode):
        if comm.get_world_size() > 1 and not str(cfg.MODEL.DEVICE).startswith("cuda"):
            # Several CPU processes (gloo): Detectron2 gives DDP device_ids=[local rank],
            # which only CUDA models take; a CPU model takes none.
            original = d2_defaults.create_ddp_model
            d2_defaults.create_ddp_model = functools.partial(original, device_ids=None)
            try:
                super().__init__(cfg)
            finally:
                d2_defaults.create_ddp_model = original
        else:
            super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return build_midog_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_midog_test_loader(cfg, dataset_name)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluator:
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_midog_evaluators(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators=None):
        # Evaluators score whole images: tile them, run the model, merge the seams.
        return super().test(cfg, TiledPredictor(cfg, model, evaluation=True), evaluators)

    def build_hooks(self) -> List[hooks.HookBase]:
        # DefaultTrainer made a plain DetectionCheckpointer just before; the hooks must
        # save through the one that records the domain names.
        self.checkpointer = MidogCheckpointer.from_config(
            self.cfg, self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        ret = super().build_hooks()
        metric = self.cfg.TEST.BEST_CHECKPOINT_METRIC
        if metric and self.cfg.TEST.EVAL_PERIOD > 0 and self.cfg.DATASETS.TEST:
            # After EvalHook, which puts the metrics into the event storage.
            best = hooks.BestCheckpointer(
                self.cfg.TEST.EVAL_PERIOD, self.checkpointer, metric, mode="max"
            )
            eval_idx = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook))
            ret.insert(eval_idx + 1, best)
        return ret


def _yacs_message(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return str(text) or type(e).__name__


# Keys that the development tools (midog_dev's add_datagen_config) add to the
# configs they save beside a model's weights. Nothing in inference reads them, so a tool
# that runs a trained model (tools/infer_slides.py) accepts such a saved config as it is.
DEVELOPMENT_KEYS = ("DATASETS.REAL_FIGURES", "INPUT.CANVAS", "DATALOADER.ATYPICAL_WEIGHT")


def _merge_without(cfg: CfgNode, config_file: str, prefixes: Sequence[str]) -> None:
    """``cfg.merge_from_file`` of ``config_file`` less its keys under ``prefixes`` that
    ``cfg`` does not have (logged); any other unknown key is still an error."""
    loaded = CfgNode.load_yaml_with_base(config_file, allow_unsafe=False)
    dropped = []

    def prune(node: dict, into: CfgNode, prefix: str) -> None:
        for key in list(node):
            name = prefix + str(key)
            known = isinstance(into, CfgNode) and key in into
            if not known and any(name == p or name.startswith(p + ".") for p in prefixes):
                dropped.append(name)
                del node[key]
            elif known and isinstance(node[key], dict):
                prune(node[key], into[key], name + ".")

    prune(loaded, cfg, "")
    if dropped:
        logging.getLogger(__name__).info(
            "%s: ignoring the development tools' keys %s (inference does not read them)",
            config_file,
            ", ".join(sorted(dropped)),
        )
    cfg.merge_from_other_cfg(CfgNode(loaded))


def setup_cfg(
    config_file: str,
    opts: Optional[list] = None,
    args=None,
    add_config: Sequence[Callable[[CfgNode], None]] = (),
    ignore_development_keys: bool = False,
) -> CfgNode:
    """Config from ``config_file`` + ``opts`` with midog keys (and those of each
    ``add_config`` hook, e.g. ``midog_dev.add_datagen_config``), frozen; registers
    the config's MIDOG datasets. With ``args`` (from ``default_argument_parser``) it
    also runs Detectron2's ``default_setup`` (logging, output dir, seeds).
    ``ignore_development_keys``: the file may hold :data:`DEVELOPMENT_KEYS` (the config a
    development tool saved beside its model), which are left out."""
    cfg = get_cfg()
    add_midog_config(cfg)
    for add in add_config:
        add(cfg)
    # yacs names the key but not where it came from: say which file or override it is.
    try:
        # Detectron2 falls back to yaml.unsafe_load (which runs code) by default.
        if ignore_development_keys:
            _merge_without(cfg, config_file, DEVELOPMENT_KEYS)
        else:
            cfg.merge_from_file(config_file, allow_unsafe=False)
    except FileNotFoundError:
        raise
    except yaml.YAMLError as e:
        if isinstance(e, yaml.constructor.ConstructorError):
            raise ValueError(
                f"{config_file}: refused: it uses a YAML tag that constructs Python objects "
                f"({e.problem}); configs may hold only plain YAML"
            ) from None
        raise ValueError(f"{config_file}: not valid YAML: {e}") from None
    except (KeyError, ValueError, TypeError, AssertionError, AttributeError) as e:
        raise ValueError(f"{config_file}: {_yacs_message(e)}") from e
    try:
        cfg.merge_from_list(list(opts or []))
    except (KeyError, ValueError, TypeError, AssertionError, AttributeError) as e:
        raise ValueError(f"command-line config override: {_yacs_message(e)}") from e
    apply_renamed_keys(cfg)
    cfg.freeze()
    if args is not None:
        default_setup(cfg, args)
        # default_setup logs detectron2 and fvcore only; the project's own messages
        # (images left out, sampling weights, fallback µm/px) belong in the same log.
        setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="midog_d2")
    register_from_config(cfg)
    return cfg


# A Detectron2 config key on the command line (MODEL.WEIGHTS, TEST.TILE.SIZE, ...).
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def split_overrides(items: Sequence[str], opts: Sequence[str]) -> Tuple[List[str], List[str]]:
    """A list option's values and the config overrides, for a command line such as
    ``--input a.svs MODEL.WEIGHTS w.pth``, where argparse gives the overrides to the list
    option: its values up to the first config key, and the rest before ``opts``."""
    for i, item in enumerate(items):
        if _CONFIG_KEY.match(item):
            return list(items[:i]), list(items[i:]) + list(opts)
    return list(items), list(opts)


def add_trained_model_arguments(parser, dataset_help: str) -> None:
    """The arguments of a tool that runs trained weights over a registered dataset
    (``tools/calibrate_threshold.py``, ``tools/mine_imposters.py``): ``--config-file``,
    ``--dataset`` and ``--allow-partial-weights``; the tool adds its own, then the trailing
    config overrides."""
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset", default="", help=dataset_help)
    parser.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="weights that leave parameters at their initialisation",
    )


def trained_model_and_dataset(
    cfg: CfgNode, args, default: str, purpose: str
) -> Tuple[torch.nn.Module, str]:
    """For :func:`add_trained_model_arguments`' ``args``: the model with ``MODEL.WEIGHTS``
    loaded (:func:`midog_d2.checkpoint.load_model_weights`) and the dataset, ``--dataset``
    else the first of ``DATASETS.<default>``. ValueError when the weights ("name the weights
    to <purpose>") or the dataset are not named or a CUDA device is asked of a machine
    without one; WeightsError / FileNotFoundError for weights that cannot be loaded."""
    if not cfg.MODEL.WEIGHTS:
        raise ValueError(f"MODEL.WEIGHTS is empty: name the weights to {purpose}")
    names = cfg.DATASETS[default]
    dataset = args.dataset or (names[0] if names else "")
    if not dataset:
        raise ValueError(f"no --dataset and DATASETS.{default} is empty")
    if str(cfg.MODEL.DEVICE).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE} but this machine has no CUDA GPU: add "
            "MODEL.DEVICE cpu"
        )
    model = MidogTrainer.build_model(cfg)
    load_model_weights(cfg, model, cfg.MODEL.WEIGHTS, allow_partial=args.allow_partial_weights)
    return model, dataset

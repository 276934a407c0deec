"""The checkpointer: carries the domain head's class names (so that fine-tuning on a longer
domain list keeps what was learnt), saves crash-safely (temporary file, fsync, rename;
resume falls back to the newest checkpoint that loads) and loads through :mod:`.safe_load`."""

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from detectron2.checkpoint import DetectionCheckpointer

from ..constants import domain_index, name_key
from ..fileio.atomic import atomic_write
from .safe_load import WeightsError, load_pickle_weights, load_torch_weights

logger = logging.getLogger(__name__)


# The domain head's output layer, whose rows follow MODEL.MULTITASK.DOMAINS.
DOMAIN_HEAD = "domain_head."
DOMAIN_ROWS = ("domain_head.predictor.weight", "domain_head.predictor.bias")
# What the domain head's parameters were called before it was renamed (midog-d2 0.1's
# "tumor_head"): checkpoints saved then load under the new name.
OLD_DOMAIN_HEAD = "tumor_head."


def rename_old_parameters(state: Dict[str, Any]) -> List[str]:
    """Rename, in place, the parameters of ``state`` saved under an earlier name
    (:data:`OLD_DOMAIN_HEAD` -> :data:`DOMAIN_HEAD`); returns the old names."""
    old = [k for k in state if k.startswith(OLD_DOMAIN_HEAD)]
    for k in old:
        state[DOMAIN_HEAD + k[len(OLD_DOMAIN_HEAD) :]] = state.pop(k)
    return old


def require_complete_load(
    checkpointer: "MidogCheckpointer", path: str, untrained: Tuple[str, ...] = ()
) -> None:
    """Raise :class:`WeightsError` when the last ``checkpointer.load`` left parameters of
    the model at their initialisation (missing from ``path`` or of another shape): scoring
    such a model reports the metrics of a random one. Parameters whose names start with
    one of ``untrained`` may be missing (a part about to be trained)."""
    inc = getattr(checkpointer, "last_incompatible", None)
    if inc is None:
        raise WeightsError(f"{path}: no weights were loaded")
    shapes = [k for k, *_ in inc.incorrect_shapes]
    missing = [k for k in inc.missing_keys if k not in shapes and not k.startswith(untrained)]
    if not (missing or shapes):
        return
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} of another shape ({', '.join(shapes[:4])})")
    if missing:
        parts.append(f"{len(missing)} missing ({', '.join(missing[:4])})")
    raise WeightsError(
        f"{path}: does not fit the model: {'; '.join(parts)}; these would stay randomly "
        "initialised (pass --allow-partial-weights to use it anyway)"
    )


def load_model_weights(
    cfg,
    model: torch.nn.Module,
    path: str,
    *,
    allow_partial: bool = False,
    untrained: Tuple[str, ...] = (),
) -> "MidogCheckpointer":
    """Load ``path`` into ``model`` for evaluation or inference: an empty path, a missing
    file or weights that leave parameters unloaded (:func:`require_complete_load`, unless
    ``allow_partial``; ``untrained``: name prefixes that may be missing) raise
    :class:`WeightsError` (FileNotFoundError for a missing file)."""
    if not path:
        raise WeightsError(
            "MODEL.WEIGHTS is empty: evaluating or running a model needs its trained weights"
        )
    if "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.WEIGHTS {path}: no such file")
    checkpointer = MidogCheckpointer.from_config(cfg, model)
    checkpointer.load(path)
    if not allow_partial:
        require_complete_load(checkpointer, path, untrained)
    return checkpointer


def last_good_checkpoint(save_dir: str) -> str:
    """What ``last_checkpoint`` in ``save_dir`` names, as a path (or a sentence saying there
    is none): where a stopped run resumes from."""
    tag = os.path.join(save_dir, "last_checkpoint")
    try:
        with open(tag) as f:
            name = f.read().strip()
    except OSError:
        name = ""
    return os.path.join(save_dir, name) if name else f"no checkpoint in {save_dir}"


class MidogCheckpointer(DetectionCheckpointer):
    """
    Detectron2's checkpointer that records the domain head's class names (``domains``,
    ``MODEL.MULTITASK.DOMAINS``) in every checkpoint it saves and, loading a checkpoint
    that records other names, maps the head's output rows by name: a domain in both keeps
    its trained row, a new domain keeps the fresh initialisation of the model being loaded
    into, a domain the model no longer lists is dropped. ``reinit_domain_head`` leaves the
    whole domain head at its fresh initialisation instead. A checkpoint without names
    loads as Detectron2 loads it (rows in order when the shapes agree, the layer skipped
    when they do not).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        domains: Optional[Sequence[str]] = None,
        reinit_domain_head: bool = False,
        **checkpointables: Any,
    ):
        super().__init__(model, save_dir, **checkpointables)
        self.domains = list(domains) if domains is not None else None
        self.reinit_domain_head = reinit_domain_head

    @classmethod
    def from_config(cls, cfg, model: torch.nn.Module, save_dir: str = "", **checkpointables):
        """The checkpointer of ``cfg``'s model: its domain names and
        ``MODEL.MULTITASK.REINIT_DOMAIN_HEAD``."""
        mt = cfg.MODEL.MULTITASK
        return cls(
            model,
            save_dir,
            domains=list(mt.DOMAINS) if mt.DOMAIN_HEAD_ON else None,
            reinit_domain_head=mt.REINIT_DOMAIN_HEAD,
            **checkpointables,
        )

    def save(self, name: str, **kwargs: Any) -> None:
        """Detectron2's save, crash-safe: the checkpoint goes to a temporary file in
        ``save_dir`` (flushed, fsynced) and is renamed over ``<name>.pth``, then
        ``last_checkpoint`` is rewritten the same way, so a kill or a full disk at any
        moment leaves the previous checkpoint and its tag whole."""
        if not self.save_dir or not self.save_to_disk:
            return
        if self.domains is not None:
            kwargs.setdefault("domains", self.domains)
        data = {"model": self.model.state_dict()}
        bad = [
            k
            for k, v in data["model"].items()
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()
        ]
        if bad:
            # a diverged step: keep the previous checkpoint, the last good one
            raise FloatingPointError(
                f"not saving {name}: the model's parameters became NaN or infinite "
                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                f"{last_good_checkpoint(self.save_dir)} is kept"
            )
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        # what a run killed while saving this name left behind (only one process saves)
        for n in os.listdir(self.save_dir):
            if n.startswith(f".{basename}.") and n.endswith(".tmp"):
                os.remove(os.path.join(self.save_dir, n))
        atomic_write(save_file, lambda f: torch.save(data, f), "wb")
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename),
            "w",
        )

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Detectron2's ``resume_or_load``; on resume, a tagged checkpoint that does not
        load (cut short, corrupt) is reported and the newest ``model_*.pth`` in
        ``save_dir`` that loads is used instead."""
        if not (resume and self.has_checkpoint()):
            return super().resume_or_load(path, resume=resume)
        tagged = self.get_checkpoint_file()
        others = sorted(
            (
                os.path.join(self.save_dir, n)
                for n in os.listdir(self.save_dir)
                # the trainer's own checkpoints, not weights a user left in the folder
                if n.startswith("model_")
                and n.endswith(".pth")
                and os.path.join(self.save_dir, n) != tagged
            ),
            key=os.path.getmtime,
            reverse=True,
        )
        failures = []
        for candidate in [tagged, *others]:
            try:
                return self.load(candidate)
            except Exception as e:  # torch raises several types for a damaged file
                # Detectron2's load keeps the URL it was parsing when it raises; the next
                # load asserts it is cleared.
                if hasattr(self, "_parsed_url_during_load"):
                    self._parsed_url_during_load = None
                failures.append(f"{candidate}: {type(e).__name__}: {e}")
                logger.warning(
                    "cannot resume from %s (%s: %s); trying the next newest checkpoint",
                    candidate,
                    type(e).__name__,
                    e,
                )
        raise RuntimeError(
            f"no checkpoint in {self.save_dir} can be loaded to resume: " + "; ".join(failures)
        )

    def _load_file(self, filename: str) -> Dict[str, Any]:
        """Detectron2's file formats, read without executing code (:func:`load_pickle_weights`
        for ``.pkl``, :func:`load_torch_weights` for the rest; pycls ``.pyth`` refused)."""
        if filename.endswith(".pyth"):
            raise WeightsError(f"{filename}: pycls .pyth weights are not supported")
        if not filename.endswith(".pkl"):
            return super()._load_file(filename)  # -> _torch_load
        data = load_pickle_weights(filename)
        if not isinstance(data, dict):
            raise WeightsError(f"{filename}: a .pkl weights file must hold a dict")
        if "model" in data and "__author__" in data:
            loaded = data
        else:  # Caffe2 / Detectron1 model zoo (e.g. the MSRA R-50.pkl)
            data = data.get("blobs", data)
            if not isinstance(data, dict):
                raise WeightsError(f"{filename}: its 'blobs' entry must be a dict")
            model = {k: v for k, v in data.items() if not str(k).endswith("_momentum")}
            loaded = {"model": model, "__author__": "Caffe2", "matching_heuristics": True}
        if not isinstance(loaded.get("model"), dict):
            raise WeightsError(f"{filename}: its 'model' entry must be a dict of arrays")
        parsed = getattr(self, "_parsed_url_during_load", None)
        if parsed is not None and "matching_heuristics=True" in parsed.query:
            loaded["matching_heuristics"] = True
        return loaded

    def _torch_load(self, f: str) -> Dict[str, Any]:
        data = load_torch_weights(f)
        if not isinstance(data, dict):
            raise WeightsError(f"{f}: a checkpoint must hold a dict")
        return data  # Detectron2's _load_file wraps a bare state dict

    def _load_model(self, checkpoint: Dict[str, Any]):
        incompatible = self._load_model_mapped(checkpoint)
        self.last_incompatible = incompatible
        return incompatible

    def _load_model_mapped(self, checkpoint: Dict[str, Any]):
        state = checkpoint["model"]
        if rename_old_parameters(state):
            logger.info("Checkpoint's %s* parameters loaded as %s*", OLD_DOMAIN_HEAD, DOMAIN_HEAD)
        model_state = self.model.state_dict()
        has_head = any(k.startswith(DOMAIN_HEAD) for k in model_state)
        if has_head and self.reinit_domain_head:
            dropped = [k for k in list(state) if k.startswith(DOMAIN_HEAD)]
            for k in dropped:
                del state[k]
            logger.info("Domain head re-initialised (not loaded): %s", ", ".join(dropped))
        elif has_head and self.domains is not None and checkpoint.get("domains") is not None:
            self._map_domain_rows(state, model_state, list(checkpoint["domains"]))
        incompatible = super()._load_model(checkpoint)
        if has_head and self.reinit_domain_head:
            incompatible.missing_keys[:] = [
                k for k in incompatible.missing_keys if not k.startswith(DOMAIN_HEAD)
            ]
        return incompatible

    def _map_domain_rows(
        self, state: Dict[str, Any], model_state: Dict[str, torch.Tensor], source: List[str]
    ) -> None:
        if [name_key(d) for d in source] == [name_key(d) for d in self.domains]:
            return
        rows = [domain_index(d, source) for d in self.domains]  # -1: a new domain
        kept = [d for d, i in zip(self.domains, rows) if i >= 0]
        for key in DOMAIN_ROWS:
            if key not in state or key not in model_state:
                continue
            old = torch.as_tensor(state[key])
            new = model_state[key].detach().clone()
            if old.shape[1:] != new.shape[1:] or old.shape[0] != len(source):
                logger.warning(
                    "%s: checkpoint shape %s does not fit its %d domains / the model's %s; "
                    "left to the default loader",
                    key,
                    tuple(old.shape),
                    len(source),
                    tuple(new.shape),
                )
                return
            for j, i in enumerate(rows):
                if i >= 0:
                    new[j] = old[i]
            state[key] = new
        logger.info(
            "Domain head mapped by name: kept %s, new (freshly initialised) %s, dropped %s",
            kept,
            [d for d, i in zip(self.domains, rows) if i < 0],
            [d for d in source if domain_index(d, self.domains) < 0],
        )

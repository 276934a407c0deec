"""The model's outputs besides its detections, declared once.

Each extra head of :class:`~midog_d2.modeling.MultiTaskRetinaNet` comes with an
:class:`ExtraOutput`: the key of its value in each image's result, how a whole image's tiles
combine into one value, and how the head's logits become that value. The tiled predictor, the
TorchScript export and the evaluator loop over ``model.extra_outputs``; a key a model returns
that it did not declare is an error (:func:`check_declared`), never dropped.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "COMBINE",
    "DOMAIN_PROBS",
    "ExtraOutput",
    "FOREGROUND_PROB",
    "check_declared",
    "combine_tiles",
    "declared_outputs",
    "identity",
    "outputs_of",
    "sigmoid_first",
    "softmax_rows",
]

# How a whole image's tiles combine: "mean" averages the tiles' values (one value an
# image); "per_tile" keeps one value a tile, stacked in the tiles' order (T, ...).
COMBINE = ("mean", "per_tile")


def softmax_rows(logits: Tensor) -> Tensor:
    """(N, K) logits -> (N, K) class probabilities."""
    return logits.softmax(dim=1)


def sigmoid_first(logits: Tensor) -> Tensor:
    """(N, 1) logits -> (N,) probabilities."""
    return logits[:, 0].sigmoid()


def identity(logits: Tensor) -> Tensor:
    return logits


@dataclass(frozen=True)
class ExtraOutput:
    """One extra output of the model, per input image.

    Attributes:
        name: the key of its value in each image's result dict.
        head: the model's attribute (a module) that maps the auxiliary feature map
            (``MODEL.MULTITASK.IN_FEATURE``) to the head's logits (N, K).
        activation: the head's logits (N, K) -> the output of each image (N, ...).
        combine: how a whole image's tiles combine (:data:`COMBINE`).
    """

    name: str
    head: str
    activation: Callable[[Tensor], Tensor] = identity
    combine: str = "mean"

    def __post_init__(self):
        if not self.name or self.name == "instances":
            raise ValueError(
                f"an extra output needs a name other than 'instances', got {self.name!r}"
            )
        if self.combine not in COMBINE:
            raise ValueError(
                f"extra output {self.name!r}: combine must be one of {COMBINE}, got {self.combine!r}"
            )


# The paper's two heads.
DOMAIN_PROBS = ExtraOutput("domain_probs", "domain_head", softmax_rows, "mean")
FOREGROUND_PROB = ExtraOutput("foreground_prob", "foreground_head", sigmoid_first, "per_tile")


def declared_outputs(model: Any) -> Dict[str, ExtraOutput]:
    """{name: declaration} of ``model``'s extra outputs (``model.extra_outputs``, also through
    a wrapper's ``module``, as DistributedDataParallel holds the model; none for a model
    without, e.g. Detectron2's own RetinaNet)."""
    outputs = getattr(model, "extra_outputs", None)
    if outputs is None and isinstance(getattr(model, "module", None), torch.nn.Module):
        outputs = getattr(model.module, "extra_outputs", None)
    return {o.name: o for o in outputs or ()}


def check_declared(out: Mapping[str, Any], declared: Mapping[str, ExtraOutput], where: str):
    """ValueError when ``out`` (one image's result) holds a key besides ``instances`` that
    ``declared`` does not name: an output nobody declared would be silently lost."""
    unknown = sorted(k for k in out if k != "instances" and k not in declared)
    if unknown:
        raise ValueError(
            f"{where}: the model returned {unknown}, which it does not declare in its "
            f"extra_outputs ({sorted(declared) or 'none'}); declare each output "
            "(midog_d2.modeling.ExtraOutput) so that it is combined over tiles and exported"
        )


def combine_tiles(output: ExtraOutput, values: Sequence[Tensor]) -> Optional[Tensor]:
    """One image's value of ``output`` from its tiles' ``values`` (in tile order), as
    float32 on the CPU; None without tiles."""
    if not values:
        return None
    stacked = torch.stack([torch.as_tensor(v).detach().cpu().double() for v in values])
    if output.combine == "mean":
        return stacked.mean(dim=0).float()
    return stacked.float()


def outputs_of(
    declared: Iterable[ExtraOutput], aux_logits: Mapping[str, Tensor]
) -> Dict[str, Tensor]:
    """{name: (N, ...) value} of each declared output from its head's logits."""
    return {o.name: o.activation(aux_logits[o.name]) for o in declared}

"""RetinaNet with the paper's two auxiliary heads: the domain (the paper's tumor type) and patch
foreground."""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from fvcore.nn import sigmoid_focal_loss_jit
from torch import Tensor, nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import ImageList, Instances
from detectron2.utils.events import get_event_storage

from ..config import check_renamed_keys
from .aux_heads import AuxiliaryClassifier
from .outputs import DOMAIN_PROBS, FOREGROUND_PROB, ExtraOutput, outputs_of
from .second_stage import CandidateClassifier, combine_scores, crop_patches

__all__ = ["MultiTaskRetinaNet"]


def _aux_input_shape(backbone, name: str):
    shapes = backbone.output_shape()
    if name not in shapes:
        raise ValueError(
            f"MODEL.MULTITASK.IN_FEATURE={name!r} is not a backbone output; available: "
            f"{sorted(shapes)}"
        )
    return shapes[name]


@META_ARCH_REGISTRY.register()
class MultiTaskRetinaNet(RetinaNet):
    """
    RetinaNet plus two fully-connected auxiliary heads on one FPN level (p7 by
    default): a domain classifier (the paper's tumor type; cross-entropy, unknown labels
    ignored) and a patch-foreground classifier (sigmoid focal loss). With both heads off it is
    Detectron2's RetinaNet: same parameters, losses and detections.

    Extra inputs read in training, per image dict:

    * ``domain_label`` (int): index into ``MODEL.MULTITASK.DOMAINS``, -1 if unknown.
    * ``foreground`` (int/bool, optional): patch target; when absent it is
      "``instances`` is not empty", counted before hard negatives are removed.

    Ground-truth classes ``>= num_classes`` (hard negatives when the detector
    has the mitotic-figure class only) feed the foreground target and are then
    removed, so the detector learns them as background.

    Extra outputs in inference, per image, for the heads that are on, each declared in
    :attr:`extra_outputs` (:mod:`.outputs`): ``domain_probs`` (Tensor[T]) and
    ``foreground_prob`` (0-dim Tensor); :meth:`add_extra_output` adds another head. With the
    foreground gate on, detection scores are P(figure here | figure-like patch) x
    P(figure-like patch): the score times the input's ``foreground_prob``.
    """

    @configurable
    def __init__(
        self,
        *,
        aux_in_feature: str = "p7",
        domain_head: Optional[AuxiliaryClassifier] = None,
        domain_loss_weight: float = 1.0,
        foreground_head: Optional[AuxiliaryClassifier] = None,
        foreground_loss_weight: float = 1.0,
        foreground_focal_alpha: float = 0.25,
        foreground_focal_gamma: float = 2.0,
        freeze_fpn: bool = False,
        foreground_gate: bool = False,
        second_stage: Optional[CandidateClassifier] = None,
        candidate_threshold: float = 0.1,
        **kwargs,
    ):
        """
        Args:
            aux_in_feature: backbone output read by the auxiliary heads.
            domain_head, foreground_head: the heads, or None to switch one off.
            domain_loss_weight, foreground_loss_weight: multipliers of their losses.
            foreground_focal_alpha, foreground_focal_gamma: focal-loss parameters
                of the foreground head.
            freeze_fpn: no gradient for the backbone's parameters outside its bottom-up
                network (FPN convs, P6/P7): fine-tuning the heads only, with the ResNet
                frozen by ``MODEL.BACKBONE.FREEZE_AT``.
            foreground_gate: at inference, multiply each detection's score by its input's
                foreground probability (needs ``foreground_head``).
            second_stage: the candidate classifier that re-scores, at inference, every
                detection scoring ``>= candidate_threshold`` (:mod:`.second_stage`); None
                leaves the detections as the detector gives them.
            kwargs: arguments of :class:`RetinaNet`.
        """
        super().__init__(**kwargs)
        if foreground_gate and foreground_head is None:
            raise ValueError(
                "MODEL.MULTITASK.FOREGROUND_GATE needs the foreground head "
                "(MODEL.MULTITASK.FOREGROUND_HEAD_ON True)"
            )
        self.foreground_gate = foreground_gate
        if second_stage is not None:
            # Trained on its own, the detector frozen (engine.second_stage): the detector's
            # training leaves it alone, and DDP sees no parameter without a gradient.
            second_stage.requires_grad_(False)
        self.second_stage = second_stage
        self.candidate_threshold = candidate_threshold
        if domain_head is not None or foreground_head is not None:
            _aux_input_shape(self.backbone, aux_in_feature)
        self.aux_in_feature = aux_in_feature
        self.domain_head = domain_head
        self.domain_loss_weight = domain_loss_weight
        self.foreground_head = foreground_head
        self.foreground_loss_weight = foreground_loss_weight
        self.foreground_focal_alpha = foreground_focal_alpha
        self.foreground_focal_gamma = foreground_focal_gamma
        self.extra_outputs: List[ExtraOutput] = [
            o for o in (DOMAIN_PROBS, FOREGROUND_PROB) if getattr(self, o.head) is not None
        ]
        if freeze_fpn:
            bottom_up = getattr(self.backbone, "bottom_up", None)
            if bottom_up is None:
                raise ValueError("MODEL.FPN.FREEZE: the backbone has no FPN (no bottom_up)")
            own = {id(p) for p in bottom_up.parameters()}
            for p in self.backbone.parameters():
                if id(p) not in own:
                    p.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg):
        check_renamed_keys(cfg)
        ret = super().from_config(cfg)
        mt = cfg.MODEL.MULTITASK
        ret["aux_in_feature"] = mt.IN_FEATURE
        if mt.DOMAIN_HEAD_ON:
            shape = _aux_input_shape(ret["backbone"], mt.IN_FEATURE)
            ret["domain_head"] = AuxiliaryClassifier(
                shape, mt.HIDDEN_DIM, mt.NUM_HIDDEN_FC, len(mt.DOMAINS)
            )
        if mt.FOREGROUND_HEAD_ON:
            shape = _aux_input_shape(ret["backbone"], mt.IN_FEATURE)
            ret["foreground_head"] = AuxiliaryClassifier(shape, mt.HIDDEN_DIM, mt.NUM_HIDDEN_FC, 1)
        ret.update(
            domain_loss_weight=mt.DOMAIN_LOSS_WEIGHT,
            foreground_loss_weight=mt.FOREGROUND_LOSS_WEIGHT,
            foreground_focal_alpha=mt.FOREGROUND_FOCAL_ALPHA,
            foreground_focal_gamma=mt.FOREGROUND_FOCAL_GAMMA,
            freeze_fpn=cfg.MODEL.FPN.FREEZE,
            foreground_gate=mt.FOREGROUND_GATE,
        )
        ss = cfg.MODEL.SECOND_STAGE
        if ss.ON:
            ret["second_stage"] = CandidateClassifier(
                len(cfg.MODEL.PIXEL_MEAN), ss.WIDTH, ss.PATCH_SIZE
            )
            ret["candidate_threshold"] = ss.CANDIDATE_THRESHOLD
        return ret

    def add_extra_output(self, output: ExtraOutput, head: nn.Module) -> None:
        """Add a head on the auxiliary feature map (``MODEL.MULTITASK.IN_FEATURE``) and declare
        its output: each image's result then holds ``output.name``, and the tiled predictor,
        the export and the evaluator carry it (a head without a loss here: it is trained by
        whoever adds one, or loaded with the weights)."""
        if output.name in {o.name for o in self.extra_outputs}:
            raise ValueError(f"the model already declares an output {output.name!r}")
        if getattr(self, output.head, None) is not None:
            raise ValueError(f"the model already has a module {output.head!r}")
        _aux_input_shape(self.backbone, self.aux_in_feature)
        self.add_module(output.head, head.to(self.device))
        self.extra_outputs.append(output)

    def heads(self, x: Tensor) -> Tuple[List[Tensor], Tuple[List[Tensor], List[Tensor]], dict]:
        """The network on a normalised batch ``x`` (N, C, H, W): the detection head's input
        features, its (logits, box deltas) per level, and {output name: logits} of every
        declared extra head (the one place where the heads run: :meth:`forward`,
        :meth:`detect` and the TorchScript export call it)."""
        feature_dict = self.backbone(x)
        features = [feature_dict[f] for f in self.head_in_features]
        # The detection head first: the order decides how the backward pass sums the shared
        # features' gradients, so it keeps training bit for bit what it was.
        predictions = self.head(features)
        aux = feature_dict.get(self.aux_in_feature)
        aux_logits = {o.name: getattr(self, o.head)(aux) for o in self.extra_outputs}
        return features, predictions, aux_logits

    def detect(
        self, images: ImageList, rescore: bool = True
    ) -> Tuple[List[Instances], Dict[str, Tensor]]:
        """Inference on a preprocessed batch: each image's detections in input pixels (before
        :func:`detector_postprocess`; re-scored by the second stage when it is on and
        ``rescore``) and {output name: (N, ...) value} of the declared extra outputs."""
        features, predictions, aux_logits = self.heads(images.tensor)
        results = self.forward_inference(images, features, predictions)
        if rescore and self.second_stage is not None:
            results = self.rescore_candidates(images.tensor, results)
        return results, outputs_of(self.extra_outputs, aux_logits)

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        images = self.preprocess_image(batched_inputs)
        if self.training:
            assert not torch.jit.is_scripting(), "Not supported"
            assert "instances" in batched_inputs[0], "Instance annotations are missing in training!"
            features, predictions, aux_logits = self.heads(images.tensor)
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            # Foreground targets count hard negatives, so take them before filtering.
            fg_targets = self._foreground_targets(batched_inputs, gt_instances)
            det_instances = [self._detection_instances(x) for x in gt_instances]
            losses = self.forward_training(images, features, predictions, det_instances)
            losses.update(self.aux_losses(aux_logits, batched_inputs, fg_targets))
            return losses

        results, extras = self.detect(images)
        processed_results = []
        for i, (results_per_image, input_per_image, image_size) in enumerate(
            zip(results, batched_inputs, images.image_sizes)
        ):
            height = input_per_image.get("height", image_size[0])
            width = input_per_image.get("width", image_size[1])
            out = {"instances": detector_postprocess(results_per_image, height, width)}
            out.update({name: value[i] for name, value in extras.items()})
            if self.foreground_gate:
                inst = out["instances"]
                inst.scores = inst.scores * out[FOREGROUND_PROB.name].to(inst.scores.dtype)
            processed_results.append(out)
        return processed_results

    def rescore_candidates(self, images: Tensor, results: List[Instances]) -> List[Instances]:
        """Each detection scoring ``>= candidate_threshold`` re-scored by the second stage
        from a patch of the (normalised) ``images`` around its centre
        (:func:`~.second_stage.combine_scores`); the others keep their scores."""
        picks = [r.scores >= self.candidate_threshold for r in results]
        centres = [r.pred_boxes.get_centers()[k] for r, k in zip(results, picks)]
        if not sum(len(c) for c in centres):
            return results
        patches = crop_patches(images, centres, self.second_stage.patch_size)
        probs = self.second_stage(patches).sigmoid().split([len(c) for c in centres])
        for r, k, p in zip(results, picks, probs):
            scores = r.scores.clone()
            scores[k] = combine_scores(scores[k], p.to(scores.dtype))
            r.scores = scores
        return results

    def _detection_instances(self, instances: Instances) -> Instances:
        keep = instances.gt_classes < self.num_classes
        return instances if bool(keep.all()) else instances[keep]

    def _foreground_targets(
        self, batched_inputs: Sequence[dict], gt_instances: Sequence[Instances]
    ) -> Tensor:
        targets = [
            float(x["foreground"]) if "foreground" in x else float(len(inst) > 0)
            for x, inst in zip(batched_inputs, gt_instances)
        ]
        return torch.tensor(targets, device=self.device)

    def aux_losses(
        self, aux_logits: Dict[str, Tensor], batched_inputs: Sequence[dict], fg_targets: Tensor
    ) -> Dict[str, Tensor]:
        """Losses of the heads that are on; accuracies go to the event storage."""
        losses = {}
        storage = get_event_storage()
        if DOMAIN_PROBS.name in aux_logits:
            logits = aux_logits[DOMAIN_PROBS.name]
            labels = torch.tensor(
                [int(x.get("domain_label", -1)) for x in batched_inputs], device=self.device
            )
            if bool(((labels < -1) | (labels >= logits.shape[1])).any()):
                raise ValueError(
                    f"domain_label must be -1 or in [0, {logits.shape[1]}), got {labels.tolist()}"
                )
            valid = labels >= 0
            # Sum / count keeps every image's weight equal and, with no labelled image
            # in the batch, still gives a (zero) loss connected to the head, as DDP
            # without find_unused_parameters requires.
            loss = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
            loss = loss / max(int(valid.sum()), 1) + 0.0 * logits.sum()
            losses["loss_domain"] = self.domain_loss_weight * loss
            if bool(valid.any()):
                acc = (logits[valid].argmax(dim=1) == labels[valid]).float().mean()
                storage.put_scalar("multitask/domain_accuracy", acc.item())
        if FOREGROUND_PROB.name in aux_logits:
            logits = aux_logits[FOREGROUND_PROB.name][:, 0]
            loss = sigmoid_focal_loss_jit(
                logits,
                fg_targets,
                alpha=self.foreground_focal_alpha,
                gamma=self.foreground_focal_gamma,
                reduction="mean",
            )
            losses["loss_foreground"] = self.foreground_loss_weight * loss
            acc = ((logits > 0).float() == fg_targets).float().mean()
            storage.put_scalar("multitask/foreground_accuracy", acc.item())
            storage.put_scalar("multitask/foreground_fraction", fg_targets.mean().item())
        return losses

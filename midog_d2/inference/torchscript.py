"""The trained detector as one TorchScript file that runs with torch and torchvision alone
(``tools/export_model.py``; viewer files of detections are :mod:`midog_d2.fileio.exports`).

:class:`ScriptableDetector` wraps a :class:`~midog_d2.modeling.MultiTaskRetinaNet` in a
module whose input is a batch tensor and whose outputs are tensors, with RetinaNet's
inference (score threshold, top-k candidates a level, class-wise NMS, detections an image,
boxes clipped to the image and empty ones dropped) written batch-wise, without Python loops
over the images, so that a trace of it takes any batch size: Detectron2's own inference
loops over the images and its ``TracingAdapter`` would fix the batch at the example's.

Traced, it is fixed to the tile size it was traced at (the anchors become constants);
:func:`save_torchscript` records that size, the input format, the classes and the model's
extra outputs beside the graph (``_extra_files``), and :class:`TorchScriptDetector` checks
them when it loads one.

Outputs of ``forward(images)`` (``images``: (N, 3, H, W) float, 0-255, in the model's
``INPUT.FORMAT``): ``boxes`` (M, 4) in pixels, ``scores`` (M,), ``classes`` (M,),
``image_index`` (M,) (which image each detection belongs to, by decreasing score within
an image), then each extra output the model declares (``model.extra_outputs``), (N, ...),
in the order the metadata's ``outputs`` lists them. Files of format 1 (before the
declaration) end in ``domain_probs`` (N, T) and ``foreground_prob`` (N,), empty when the
head is off; they still load. The foreground gate and the second stage are not part of an
export.
"""

import json
import warnings
from typing import Any, Dict, List, Tuple

import torch
import torchvision
from torch import Tensor, nn

from detectron2.modeling.meta_arch.retinanet import permute_to_N_HWA_K

from ..fileio.atomic import atomic_write
from ..modeling.outputs import (
    DOMAIN_PROBS,
    FOREGROUND_PROB,
    ExtraOutput,
    declared_outputs,
    outputs_of,
)

__all__ = [
    "TORCHSCRIPT_META",
    "ScriptableDetector",
    "TorchScriptDetector",
    "load_torchscript_meta",
    "save_torchscript",
]

# The name of the metadata file stored inside a TorchScript file.
TORCHSCRIPT_META = "midog_d2.json"
# 2: the extra outputs follow the detections as the metadata's "outputs" list them.
FORMAT = 2
# torch >= 2.10 deprecates TorchScript in favour of torch.export, which does not yet take
# this graph's data-dependent sizes (score threshold, NMS) for any batch size; the export
# uses TorchScript on purpose, so its deprecation notices say nothing to the user.
_DEPRECATED = r"`torch\.jit\.(trace|save|load|script)` is deprecated"


class ScriptableDetector(nn.Module):
    """A trained MultiTaskRetinaNet as a module of tensors in, tensors out (see the module
    docstring); its results equal the model's own inference within float rounding."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if getattr(model, "foreground_gate", False) or getattr(model, "second_stage", None):
            raise ValueError(
                "a TorchScript file holds the detector and its extra heads; switch off "
                "MODEL.MULTITASK.FOREGROUND_GATE and MODEL.SECOND_STAGE.ON to export it"
            )
        self.model = model.eval()
        self.num_classes = int(model.num_classes)
        self.score_thresh = float(model.test_score_thresh)
        self.topk = int(model.test_topk_candidates)
        self.nms_thresh = float(model.test_nms_thresh)
        self.max_det = int(model.max_detections_per_image)
        self.outputs: List[ExtraOutput] = list(declared_outputs(model).values())

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        m = self.model
        n, h, w = images.shape[0], images.shape[2], images.shape[3]
        x = (images.to(m.pixel_mean.dtype) - m.pixel_mean) / m.pixel_std
        features, (logits, deltas), aux_logits = m.heads(x)
        anchors = m.anchor_generator(features)
        c = self.num_classes
        boxes_l, scores_l, classes_l = [], [], []
        for anchors_i, logits_i, deltas_i in zip(anchors, logits, deltas):
            scores_i = permute_to_N_HWA_K(logits_i, c).flatten(1).sigmoid()  # (N, HWA*C)
            k = min(self.topk, scores_i.shape[1])
            top_s, top_i = scores_i.topk(k, dim=1)
            anchor_idx = torch.div(top_i, c, rounding_mode="floor")
            d = permute_to_N_HWA_K(deltas_i, 4)  # (N, HWA, 4)
            d = torch.gather(d, 1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))
            a = anchors_i.tensor[anchor_idx]  # (N, k, 4)
            b = m.box2box_transform.apply_deltas(d.reshape(-1, 4), a.reshape(-1, 4))
            boxes_l.append(b.reshape(n, k, 4))
            scores_l.append(top_s)
            classes_l.append(top_i % c)
        boxes, scores, classes = (
            torch.cat(boxes_l, 1),
            torch.cat(scores_l, 1),
            torch.cat(classes_l, 1),
        )
        image = torch.arange(n, device=images.device).unsqueeze(1).expand_as(scores)
        keep = scores > self.score_thresh
        boxes, scores, classes, image = boxes[keep], scores[keep], classes[keep], image[keep]
        # in float64: batched_nms offsets each (image, class) group's boxes by a multiple of
        # the largest coordinate, which in float32 rounds their overlaps differently from
        # the model's per-image NMS and flips near-ties
        kept = torchvision.ops.batched_nms(
            boxes.double(), scores.double(), image * c + classes, self.nms_thresh
        )
        # the max_det best of each image: batched_nms sorts by score, a stable sort by image
        # keeps that order within each image
        kept = kept[torch.sort(image[kept], stable=True).indices]
        img_k = image[kept]
        rank = torch.arange(img_k.shape[0], device=images.device) - torch.searchsorted(img_k, img_k)
        kept = kept[rank < self.max_det]
        boxes, scores, classes, image = boxes[kept], scores[kept], classes[kept], image[kept]
        # Detectron2's detector_postprocess: clip to the image, drop empty boxes
        boxes = torch.stack(
            (
                boxes[:, 0].clamp(0, w),
                boxes[:, 1].clamp(0, h),
                boxes[:, 2].clamp(0, w),
                boxes[:, 3].clamp(0, h),
            ),
            dim=1,
        )
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        extras = outputs_of(self.outputs, aux_logits)
        detections = (boxes[nonempty], scores[nonempty], classes[nonempty], image[nonempty])
        return detections + tuple(extras[o.name] for o in self.outputs)


def save_torchscript(
    model: nn.Module, path: str, tile_size: int, meta: Dict[str, Any], batch: int = 2
) -> Dict[str, Any]:
    """Trace ``model`` (:class:`ScriptableDetector`) on a batch of ``batch`` random
    ``tile_size`` tiles and save it to ``path`` with ``meta`` (plus the tile size and the
    extra outputs) stored inside as :data:`TORCHSCRIPT_META`; returns the metadata."""
    device = next(model.parameters()).device
    wrapper = ScriptableDetector(model)
    example = torch.randint(0, 256, (batch, 3, tile_size, tile_size), device=device).float()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATED, category=FutureWarning)
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    meta = {
        **meta,
        "tile_size": int(tile_size),
        "pixel_mean": [float(v) for v in model.pixel_mean.flatten().tolist()],
        "outputs": [{"name": o.name, "combine": o.combine} for o in wrapper.outputs],
        "format": FORMAT,
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATED, category=FutureWarning)
        extra = {TORCHSCRIPT_META: json.dumps(meta)}
        atomic_write(path, lambda f: torch.jit.save(traced, f, _extra_files=extra), "wb")
    return meta


def load_torchscript_meta(path: str) -> Dict[str, Any]:
    """The metadata stored inside a TorchScript file of :func:`save_torchscript` (without
    loading its graph)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith("extra/" + TORCHSCRIPT_META)]
        if not names:
            raise ValueError(
                f"{path}: not a midog_d2 TorchScript file (no {TORCHSCRIPT_META} inside)"
            )
        return json.loads(z.read(names[0]))


def _declared_in(meta: Dict[str, Any], path: str) -> List[ExtraOutput]:
    fmt = int(meta.get("format", 1))
    if fmt == 1:  # a fixed tuple: the paper's two heads, empty when off
        return [DOMAIN_PROBS, FOREGROUND_PROB]
    if fmt != FORMAT:
        raise ValueError(f"{path}: TorchScript format {fmt}; this midog_d2 reads 1 and {FORMAT}")
    return [ExtraOutput(o["name"], "", combine=o["combine"]) for o in meta.get("outputs", [])]


class TorchScriptDetector(nn.Module):
    """A TorchScript file (:func:`save_torchscript`) where the pipeline expects a Detectron2
    model: a list of ``{"image": (3, h, w)}`` in, a list of ``{"instances", <each declared
    extra output>}`` out (:attr:`extra_outputs`, from the file's metadata). Images smaller
    than its tile are padded with the pixel mean (zero once normalised, as Detectron2 pads)
    and their boxes clipped back to them; larger ones are an error. Loading it runs
    TorchScript: load only files you trust (README.md, "What is trusted")."""

    def __init__(self, path: str, device: str = "cpu"):
        super().__init__()
        self.meta = load_torchscript_meta(path)
        self.extra_outputs = _declared_in(self.meta, path)
        self.tile = int(self.meta["tile_size"])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_DEPRECATED, category=FutureWarning)
            self.graph = torch.jit.load(path, map_location=device)
        self.register_buffer("pixel_mean", torch.tensor(self.meta["pixel_mean"]).view(3, 1, 1))
        # a parameter, so that code asking a model for its device finds one
        self._device = nn.Parameter(torch.zeros(0, device=device), requires_grad=False)

    def forward(self, batched_inputs):
        from detectron2.structures import Boxes, Instances

        sizes = [tuple(x["image"].shape[1:]) for x in batched_inputs]
        if any(h > self.tile or w > self.tile for h, w in sizes):
            raise ValueError(f"the model takes tiles of at most {self.tile} px, got {sizes}")
        batch = self.pixel_mean.expand(len(sizes), 3, self.tile, self.tile).clone()
        for i, x in enumerate(batched_inputs):
            h, w = sizes[i]
            batch[i, :, :h, :w] = x["image"].to(batch.device, batch.dtype)
        boxes, scores, classes, image, *extras = self.graph(batch)
        if len(extras) != len(self.extra_outputs):
            raise ValueError(
                f"the TorchScript graph returned {len(extras)} extra outputs, its metadata "
                f"declares {[o.name for o in self.extra_outputs]}"
            )
        out = []
        for i, (h, w) in enumerate(sizes):
            sel = image == i
            b = boxes[sel].clone()
            b[:, 0::2] = b[:, 0::2].clamp(0, w)
            b[:, 1::2] = b[:, 1::2].clamp(0, h)
            keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            inst = Instances((h, w))
            inst.pred_boxes = Boxes(b[keep])
            inst.scores = scores[sel][keep]
            inst.pred_classes = classes[sel][keep]
            o: Dict[str, Any] = {"instances": inst}
            for decl, value in zip(self.extra_outputs, extras):
                if value.numel():  # format 1 returns an empty tensor for a head that is off
                    o[decl.name] = value[i]
            out.append(o)
        return out

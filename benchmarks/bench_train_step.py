#!/usr/bin/env python
"""Training-step time of MultiTaskRetinaNet against stock RetinaNet, same inputs, one run.

    python benchmarks/bench_train_step.py [--config-file configs/Base-MultiTask-RetinaNet.yaml]
        [--batch 4] [--size 512] [--steps 12] [--device cpu]

A step is forward + backward + Adam step. The two models are timed alternately
(stock, multi-task, stock, ...) so that machine noise hits both alike; the
report gives medians and their ratio.
"""

import argparse
import copy
import statistics
import time

import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from midog_d2 import add_midog_config
from midog_d2.solver import build_optimizer


def make_batch(batch: int, size: int, num_domains: int, device: str):
    g = torch.Generator().manual_seed(0)
    inputs = []
    for i in range(batch):
        inst = Instances((size, size))
        xy = torch.randint(0, size - 50, (6, 2), generator=g).float()
        inst.gt_boxes = Boxes(torch.cat([xy, xy + 50], dim=1))
        inst.gt_classes = torch.tensor([0, 0, 0, 1, 1, 1])
        image = torch.randint(0, 256, (3, size, size), generator=g).float()
        inputs.append(
            {"image": image.to(device), "instances": inst, "domain_label": i % num_domains}
        )
    return inputs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default="configs/Base-MultiTask-RetinaNet.yaml")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    cfg = get_cfg()
    add_midog_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", args.device])
    stock_cfg = cfg.clone()
    stock_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"

    torch.manual_seed(0)
    models = {"RetinaNet": build_model(stock_cfg), "MultiTaskRetinaNet": build_model(cfg)}
    # Same detector weights in both: only the auxiliary heads differ.
    models["RetinaNet"].load_state_dict(models["MultiTaskRetinaNet"].state_dict(), strict=False)
    optimizers = {k: build_optimizer(cfg, m) for k, m in models.items()}
    batch = make_batch(args.batch, args.size, len(cfg.MODEL.MULTITASK.DOMAINS), args.device)
    times = {k: [] for k in models}

    def step(name: str) -> float:
        model, opt = models[name], optimizers[name]
        inputs = copy.deepcopy(batch)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        losses = model(inputs)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with EventStorage():
        for m in models.values():
            m.train()
        for i in range(args.warmup + args.steps):
            for name in models:
                t = step(name)
                if i >= args.warmup:
                    times[name].append(t)

    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["MultiTaskRetinaNet"] / med["RetinaNet"]
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    print(
        f"device={args.device} threads={torch.get_num_threads()} batch={args.batch} "
        f"size={args.size} "
        f"steps={args.steps} (after {args.warmup} warm-up)"
    )
    print("| model | parameters | median step (s) | patches/s |")
    print("|---|---|---|---|")
    for k in models:
        print(f"| {k} | {params[k]:,} | {med[k]:.3f} | {args.batch / med[k]:.2f} |")
    print(f"ratio multi-task / stock: {ratio:.3f} (heads cost {100 * (ratio - 1):+.1f}%)")


if __name__ == "__main__":
    main()

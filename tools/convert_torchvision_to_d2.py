#!/usr/bin/env python
"""Convert a torchvision ResNet checkpoint to a Detectron2 ``.pkl`` for MODEL.WEIGHTS.

    python tools/convert_torchvision_to_d2.py resnet50.pth R-50-torchvision.pkl

Then use configs/R50-torchvision-weights.yaml (RGB input, torchvision mean/std,
STRIDE_IN_1X1 False).
"""

import midog_d2  # noqa: F401  # isort: skip  (first: quiets upstream warnings)
import argparse
import pickle

import torch

from midog_d2.checkpoint import torchvision_to_d2_checkpoint
from midog_d2.fileio.atomic import atomic_write


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", help="torchvision state dict (.pth), e.g. resnet50-*.pth")
    parser.add_argument("output", help="Detectron2 checkpoint to write (.pkl)")
    args = parser.parse_args()
    obj = torch.load(args.input, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise SystemExit(f"{args.input}: expected a state dict, got {type(obj).__name__}")
    try:
        ckpt = torchvision_to_d2_checkpoint(obj)
    except ValueError as e:
        raise SystemExit(f"{args.input}: {e}")
    atomic_write(args.output, lambda f: pickle.dump(ckpt, f), "wb")
    print(f"Wrote {len(ckpt['model'])} tensors to {args.output}")


if __name__ == "__main__":
    main()

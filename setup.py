#!/usr/bin/env python
"""midog-d2: multi-task RetinaNet for mitotic-figure detection, on Detectron2.

Detectron2 is not listed in ``install_requires``: it is not on PyPI under its own
name. Install it first (see README.md), then ``pip install -e .``.
"""

from setuptools import find_packages, setup

setup(
    name="midog-d2",
    version="0.1.0",
    description=(
        "Domain-robust mitotic-figure detection (MIDOG) with a multi-task RetinaNet on Detectron2"
    ),
    packages=find_packages(include=["midog_d2", "midog_d2.*"]),
    # The shipped reference model (docs/model_card.md): fp16 weights, threshold, config.
    package_data={"midog_d2": ["model_zoo/*/*"]},
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "torchvision",
        "fvcore",
        "numpy",
        "opencv-python-headless",
        "openslide-python",
        "openslide-bin",
        "pycocotools",
        "tifffile",
        "imagecodecs",
        "SimpleITK",
    ],
    extras_require={"test": ["pytest"]},
)

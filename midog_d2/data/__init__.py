"""MIDOG data: annotation loading, dataset registration and splits, mappers, augmentations,
stain maths and training-image sampling. Pixels are read through :mod:`midog_d2.fileio`."""

from .midog import box_centres, canonical_tumor_type, load_midog_json, set_domain_labels
from .register import (
    leave_one_tumor_out,
    load_options_from_config,
    register_from_config,
    register_midog,
    seeded_val_split,
    split_by_csv,
    split_for_domain_study,
)
from .mapper import MidogPatchMapper, MidogTestMapper, build_patch_augmentation
from .sampler import (
    MidogTrainingSampler,
    build_midog_test_loader,
    build_midog_train_loader,
    image_weights,
    labelled_images,
    patches_per_epoch,
)
from .transforms import (
    ColorJitter,
    ColorJitterTransform,
    HEDStainTransform,
    RandomHEDStain,
    RandomHue,
    build_color_augmentation,
)

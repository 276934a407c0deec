"""MIDOG data: annotation loading, dataset registration and splits, the image reader."""

# Loading, registration, splits and image reading (midog.py, register.py, slide.py).
from .midog import CATEGORY_NAMES, canonical_tumor_type, load_midog_json
from .register import (
    leave_one_tumor_out,
    load_options_from_config,
    register_from_config,
    register_midog,
    seeded_val_split,
    split_by_csv,
)
from .slide import (
    UnreadableSlideError,
    check_images,
    open_slide,
    read_region,
    read_region_scaled,
    resample_region,
    resample_scale,
    slide_dimensions,
    slide_mpp,
    slide_thumbnail,
)

# Training patches, augmentations, sampling and test-time records (mapper.py,
# transforms.py, sampler.py).
from .mapper import MidogPatchMapper, MidogTestMapper, build_patch_augmentation
from .sampler import (
    MidogTrainingSampler,
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
)

# Generated MIDOG-like datasets for tests and the demo (synthetic.py).
from . import synthetic

# Real mitotic-figure crops (AMi-Br AtNorM-MD) as MIDOG-style files (real_figures.py).
from .real_figures import (
    convert_real_figures,
    load_real_figures,
    scan_real_figures,
    split_real_figures,
)

# Real-figure training canvases and the placed-crop evaluation set (canvas.py).
from .canvas import (
    CanvasOptions,
    PlacedCrop,
    RealFigureCanvasMapper,
    build_placed_crops,
    build_real_figure_train_loader,
    load_context_tiles,
)

# Generated datasets built from real tissue and real figures (realistic.py).
from . import realistic

"""Config keys added by midog-d2.

Call :func:`add_midog_config` on a Detectron2 config before ``merge_from_file``.
Every key the product adds is defined (and documented) here, grouped by the
part of the pipeline that reads it; the development data's keys (real-figure crops,
canvases) are :func:`midog_dev.add_datagen_config`'s.
"""

import logging
import warnings
from typing import List

from detectron2.config import CfgNode as CN

from .constants import (
    DEFAULT_MPP,
    MIDOGPP_DENSITY,
    MIDOGPP_TUMOR_TYPES,
    SCANNER_ALIASES,
    TUMOR_TYPE_ALIASES,
)

logger = logging.getLogger(__name__)


# Old key -> new key. Configs and command lines written for earlier versions keep working.
RENAMED_KEYS = {
    "MODEL.MULTITASK.TUMOR_HEAD_ON": "MODEL.MULTITASK.DOMAIN_HEAD_ON",
    "MODEL.MULTITASK.TUMOR_LOSS_WEIGHT": "MODEL.MULTITASK.DOMAIN_LOSS_WEIGHT",
    "MODEL.MULTITASK.TUMOR_TYPES": "MODEL.MULTITASK.DOMAINS",
}


def _node_and_leaf(cfg: CN, key: str):
    *path, leaf = key.split(".")
    node = cfg
    for p in path:
        node = node[p]
    return node, leaf


def apply_renamed_keys(cfg: CN) -> List[str]:
    """Move the value of every deprecated key of :data:`RENAMED_KEYS` that a file or a
    command line set to its new key (a ``FutureWarning`` names both) and clear the old
    one; ``cfg`` must not be frozen. Returns the old keys that were set."""
    found = []
    for old, new in RENAMED_KEYS.items():
        node, leaf = _node_and_leaf(cfg, old)
        value = node[leaf]
        if value is None:
            continue
        warnings.warn(f"config key {old} is deprecated: it is now {new}", FutureWarning, 2)
        logger.warning(
            "Config key %s is deprecated: it is now %s (value %r moved)", old, new, value
        )
        new_node, new_leaf = _node_and_leaf(cfg, new)
        new_node[new_leaf] = list(value) if isinstance(value, (list, tuple)) else value
        node[leaf] = None
        found.append(old)
    return found


def check_renamed_keys(cfg: CN) -> None:
    """A ValueError when a deprecated key is still set: ``cfg`` was merged without
    :func:`apply_renamed_keys` (``midog_d2.engine.setup_cfg`` applies it), and the model
    would silently ignore the value."""
    for old, new in RENAMED_KEYS.items():
        node, leaf = _node_and_leaf(cfg, old)
        if node[leaf] is not None:
            raise ValueError(
                f"config key {old} is deprecated (now {new}) and was not moved: call "
                "midog_d2.config.apply_renamed_keys(cfg) after merging, or set the new key"
            )


def add_midog_config(cfg: CN) -> None:
    """Add every midog-d2 config key to ``cfg`` (in place)."""
    _add_model_config(cfg)
    _add_solver_config(cfg)
    _add_dataset_config(cfg)
    _add_input_config(cfg)
    _add_dataloader_config(cfg)
    _add_test_config(cfg)


def _add_model_config(cfg: CN) -> None:
    _C = cfg
    _C.MODEL.MULTITASK = CN()
    # Backbone feature the auxiliary heads read ("p7": the deepest FPN level,
    # as in the paper). Must be one of the backbone's outputs.
    _C.MODEL.MULTITASK.IN_FEATURE = "p7"
    # Width of the hidden FC layers of both auxiliary heads.
    _C.MODEL.MULTITASK.HIDDEN_DIM = 256
    # Number of hidden FC layers (each FC + ReLU) before the output FC layer.
    _C.MODEL.MULTITASK.NUM_HIDDEN_FC = 1
    # Domain head (the paper's tumor-type head: a tumor type is one kind of domain, a
    # scanner or a lab another): cross-entropy over DOMAINS; images whose `domain_label`
    # is -1 (unknown / not listed) take no part in it.
    _C.MODEL.MULTITASK.DOMAIN_HEAD_ON = True
    _C.MODEL.MULTITASK.DOMAIN_LOSS_WEIGHT = 1.0
    # Ordered domain names; the head has len(DOMAINS) outputs and the data loader maps
    # each image's DOMAIN_FIELD value to its index here (`domain_label`). Tumor types for
    # MIDOG 2022 / MIDOG++; scanner names for a scanner study.
    _C.MODEL.MULTITASK.DOMAINS = list(MIDOGPP_TUMOR_TYPES)
    # Which field of an image is its domain: "tumor_type" (the paper), "scanner"
    # (MIDOG 2021, from the MIDOG++ CSV or the image entry), or any other key of the
    # dataset dicts ("lab", "species"). Matched to DOMAINS case-insensitively.
    _C.MODEL.MULTITASK.DOMAIN_FIELD = "tumor_type"
    # Fine-tuning from a checkpoint (midog_d2.checkpoint.MidogCheckpointer): checkpoints
    # record DOMAINS; loading one with another list keeps the rows of the domains in
    # both, leaves new domains' rows freshly initialised and drops the rest. True
    # re-initialises the whole domain head instead.
    _C.MODEL.MULTITASK.REINIT_DOMAIN_HEAD = False
    # Deprecated names of DOMAIN_HEAD_ON, DOMAIN_LOSS_WEIGHT and DOMAINS (RENAMED_KEYS),
    # still read: None means "not set"; a value set in a file or on the command line moves
    # to the new key with a warning (apply_renamed_keys).
    _C.MODEL.MULTITASK.TUMOR_HEAD_ON = None
    _C.MODEL.MULTITASK.TUMOR_LOSS_WEIGHT = None
    _C.MODEL.MULTITASK.TUMOR_TYPES = None
    # Freeze the FPN (lateral and output convs, and the P6/P7 block) for fine-tuning; with
    # MODEL.BACKBONE.FREEZE_AT 5 (Detectron2's: the stem and all four ResNet stages) only
    # the detection and auxiliary heads train. FREEZE_AT alone freezes the ResNet only.
    _C.MODEL.FPN.FREEZE = False
    # Foreground head: one logit, "this patch holds at least one mitotic figure
    # or hard negative", trained with sigmoid focal loss.
    _C.MODEL.MULTITASK.FOREGROUND_HEAD_ON = True
    _C.MODEL.MULTITASK.FOREGROUND_LOSS_WEIGHT = 1.0
    _C.MODEL.MULTITASK.FOREGROUND_FOCAL_ALPHA = 0.25
    _C.MODEL.MULTITASK.FOREGROUND_FOCAL_GAMMA = 2.0
    # The foreground head as a gate at inference: every detection's score is multiplied
    # by its input's (tile's) foreground probability, so that tissue the head calls empty
    # of figure-like cells keeps few detections above the threshold. Needs the head;
    # False leaves the detections exactly as the detector gives them.
    _C.MODEL.MULTITASK.FOREGROUND_GATE = False
    # The second stage (midog_d2.modeling.second_stage): a small CNN that re-scores every
    # detection scoring >= CANDIDATE_THRESHOLD from a PATCH_SIZE-px patch (model pixels)
    # around its centre; the new score is the geometric mean of the two. Trained with the
    # detector frozen by tools/train_second_stage.py, saved in the same checkpoint.
    _C.MODEL.SECOND_STAGE = CN()
    _C.MODEL.SECOND_STAGE.ON = False
    _C.MODEL.SECOND_STAGE.PATCH_SIZE = 64
    _C.MODEL.SECOND_STAGE.WIDTH = 32  # channels of the first of its three stages
    _C.MODEL.SECOND_STAGE.CANDIDATE_THRESHOLD = 0.1
    # Its training: candidates of the detector on this many training batches (the
    # training loader's patches), labelled by TEST.MIDOG.RADIUS_UM around the mitotic
    # figures (the figures themselves added as positives), then MAX_ITER steps of Adam at
    # BASE_LR on balanced batches of IMS_PER_BATCH patches (random flips and rotations).
    _C.MODEL.SECOND_STAGE.CANDIDATE_BATCHES = 100
    _C.MODEL.SECOND_STAGE.MAX_ITER = 600
    _C.MODEL.SECOND_STAGE.BASE_LR = 1e-3
    _C.MODEL.SECOND_STAGE.IMS_PER_BATCH = 64
    # How hard negatives reach the model: the data pipeline gives every box a
    # class (0 mitotic figure, 1 hard negative). Ground-truth classes >=
    # MODEL.RETINANET.NUM_CLASSES are *auxiliary-only*: they count for the
    # foreground target but are removed before the detection loss, so anchors on
    # them learn "background". With NUM_CLASSES = 2 hard negatives become a
    # detection class instead; evaluators score class 0 only.


def _add_solver_config(cfg: CN) -> None:
    _C = cfg
    # "SGD" (Detectron2's default), "ADAM" (the paper) or "ADAMW".
    _C.SOLVER.OPTIMIZER = "SGD"
    # Adam/AdamW betas and eps (SOLVER.MOMENTUM/NESTEROV are SGD-only).
    _C.SOLVER.BETAS = (0.9, 0.999)
    _C.SOLVER.EPS = 1e-8


def _add_dataset_config(cfg: CN) -> None:
    _C = cfg
    # Datasets registered from the config alone (midog_d2.data.register_from_config).
    _C.DATASETS.MIDOG = CN()
    # MIDOG/MIDOG++ annotation JSON; "" registers nothing.
    _C.DATASETS.MIDOG.JSON_FILE = ""
    # Folder holding the images named in the JSON's `file_name`.
    _C.DATASETS.MIDOG.IMAGE_ROOT = ""
    # Optional MIDOG++ `;`-separated CSV (split, tumor, scanner, lab, species).
    _C.DATASETS.MIDOG.CSV_FILE = ""
    # Tumor-type spellings -> canonical names (see TUMOR_TYPE_ALIASES).
    _C.DATASETS.MIDOG.TUMOR_ALIASES = [list(p) for p in TUMOR_TYPE_ALIASES]
    # µm per pixel used when an image file has no resolution metadata; 0: no fallback, such a
    # file is an error (read in one place: midog_d2.fileio.fallback_mpp).
    _C.DATASETS.MIDOG.FALLBACK_MPP = DEFAULT_MPP
    # Scanner spellings in the CSV -> canonical names (see SCANNER_ALIASES).
    _C.DATASETS.MIDOG.SCANNER_ALIASES = [list(p) for p in SCANNER_ALIASES]
    # Tumor type of images with none in the JSON or CSV (MIDOG 2021's file has no
    # `tumor_type`: set "human breast cancer"); "" leaves them unknown (label -1).
    _C.DATASETS.MIDOG.DEFAULT_TUMOR_TYPE = ""
    # Keep only images of these tumor types (aliases apply); [] keeps all. The
    # paper's MIDOG 2022 setting: the five labelled 2022 tumor types.
    _C.DATASETS.MIDOG.TUMOR_FILTER = []
    # Annotations whose box misses its image or has x2 <= x1 / y2 <= y1: "error"
    # (raise, naming file and ids) or "skip" (drop them, logging the count).
    _C.DATASETS.MIDOG.CHECK_BOXES = "error"
    # How midog_train / midog_val / midog_test are made (unlabelled images are
    # never in any of them):
    #   "csv": MIDOG++ CSV's train/test column (needs CSV_FILE);
    #   "leave_one_tumor_out": test = every image of HOLDOUT_TUMOR, train = the rest.
    _C.DATASETS.MIDOG.SPLIT = "csv"
    # Held-out tumor type of "leave_one_tumor_out" (the paper's: human neuroendocrine).
    _C.DATASETS.MIDOG.HOLDOUT_TUMOR = "human neuroendocrine tumor"
    # Fraction of the training part's images (per tumor type) moved to
    # midog_val; 0 registers no midog_val.
    _C.DATASETS.MIDOG.VAL_FRACTION = 0.1
    # Seed of that validation split (same seed + same data = same split).
    _C.DATASETS.MIDOG.SEED = 0
    # Whole MIDOG-style files registered as datasets of their own, without a split:
    # [[name, json_file, image_root], ...] (e.g. composite ROIs, a lab's own regions), to
    # name in DATASETS.TEST or tools/calibrate_threshold.py. Independent of JSON_FILE.
    _C.DATASETS.MIDOG.EXTRA = []


def _add_input_config(cfg: CN) -> None:
    _C = cfg
    # Training patches (midog_d2.data.MidogPatchMapper).
    _C.INPUT.PATCH = CN()
    _C.INPUT.PATCH.SIZE = 512
    # Probability that a patch is centred near a mitotic figure / near a hard
    # negative; the rest are drawn anywhere in the image.
    _C.INPUT.PATCH.P_MITOTIC = 0.5
    _C.INPUT.PATCH.P_HARD_NEGATIVE = 0.0
    # Paper's ColorJitter (brightness, contrast, saturation, hue).
    _C.INPUT.COLOR_JITTER = CN()
    _C.INPUT.COLOR_JITTER.ENABLED = True
    _C.INPUT.COLOR_JITTER.BRIGHTNESS = 0.35
    _C.INPUT.COLOR_JITTER.CONTRAST = 0.2
    _C.INPUT.COLOR_JITTER.SATURATION = 0.1
    _C.INPUT.COLOR_JITTER.HUE = 0.1
    # Random horizontal and vertical flips (each with probability 0.5).
    _C.INPUT.RANDOM_FLIP_HV = True
    # A centred patch puts the cell at a uniform offset of up to this fraction of
    # SIZE from the patch centre on each axis (in [0, 0.5): the cell stays inside).
    _C.INPUT.PATCH.MAX_CENTER_OFFSET = 0.25
    # HED stain augmentation (beyond the paper): colour deconvolution with the
    # Ruifrok-Johnston matrix, each stain's concentration c -> alpha * c + beta
    # with alpha ~ U(1 - SIGMA, 1 + SIGMA) and beta ~ U(-BIAS, BIAS) (BIAS in
    # optical-density units), then recomposition. Applied before ColorJitter.
    _C.INPUT.HED = CN()
    _C.INPUT.HED.ENABLED = False
    _C.INPUT.HED.SIGMA = 0.05
    _C.INPUT.HED.BIAS = 0.05
    # µm per pixel the model is trained at (MIDOG: ~0.25). Training patches and
    # test tiles of an image at another µm/px are resampled to it when read
    # (midog_d2.fileio.read_region_scaled); coordinates stay in level-0 pixels.
    # 0 reads every image at its own resolution.
    _C.INPUT.MODEL_MPP = DEFAULT_MPP
    # Images whose µm/px is within this fraction of MODEL_MPP are read as they are
    # (|mpp / MODEL_MPP - 1| <= MPP_TOLERANCE): 0.1 keeps MIDOG's scanners
    # (0.23-0.26 µm/px) at native resolution, as the reference approach trains;
    # a 0.5 µm/px (20x) slide is enlarged 2x. 0 resamples every other µm/px.
    _C.INPUT.MPP_TOLERANCE = 0.1


def _add_dataloader_config(cfg: CN) -> None:
    _C = cfg
    # Training image sampling (midog_d2.data.MidogTrainingSampler): draw images
    # so that every tumor type (images without one form their own group) is
    # equally likely, instead of every image.
    _C.DATALOADER.BALANCE_TUMOR_TYPES = False
    # Patches in one "epoch", over all processes: the sampler draws the images of
    # an epoch at once; the trainer logs epoch = iteration * IMS_PER_BATCH /
    # PATCHES_PER_EPOCH. 0 means one patch per training image.
    _C.DATALOADER.PATCHES_PER_EPOCH = 0


def _add_test_config(cfg: CN) -> None:
    _C = cfg
    # Scoring (midog.md §2): hit radius in µm and the operating score threshold.
    _C.TEST.MIDOG = CN()
    _C.TEST.MIDOG.RADIUS_UM = 7.5
    # How far a don't-care zone (an annotation of category "don't care": a figure the set does
    # not count, e.g. in the composite ROIs' tumor tissue) reaches: a detection this close to
    # one, and within RADIUS_UM of no counted figure, is neither true nor false. Wider than
    # RADIUS_UM so that off-centre detections of the same figure are not false ones
    # (constants.DEFAULT_DONT_CARE_RADIUS_UM).
    _C.TEST.MIDOG.DONT_CARE_RADIUS_UM = 15.0
    # -1: the threshold stored beside MODEL.WEIGHTS (tools/calibrate_threshold.py), else
    # 0.5 (logged); a value in [0, 1] overrides what the weights carry.
    _C.TEST.MIDOG.SCORE_THRESHOLD = -1.0
    # Mitotic figures per mm² of the tissue the model will count in (docs/evaluation.md,
    # "At real density"): the operating threshold that tools/calibrate_threshold.py stores
    # (and the domain protocol carries to held-out domains) is the one with the best F1
    # expected at this density from the validation set's recall and false detections per
    # mm², 2Rρ / ((1 + R)ρ + f). Default: the median of the labelled MIDOG++ regions;
    # per tumor type midog_d2.evaluation.prevalence.MIDOGPP_TUMOR_DENSITY. 0 takes the
    # validation set's own density, i.e. its plain best-F1 threshold (right when the
    # validation images are whole ROIs of the tissue you will count in).
    _C.TEST.MIDOG.OPERATING_DENSITY = MIDOGPP_DENSITY
    # Whole-ROI validation set on which tools/train_net.py, once training (and the second
    # stage) is done, chooses and stores the operating threshold of model_final.pth, as
    # tools/calibrate_threshold.py would; "" leaves it to that tool. Never a test set.
    _C.TEST.MIDOG.CALIBRATION_DATASET = ""
    # Metric (as the event storage names it) whose best value keeps
    # OUTPUT_DIR/model_best.pth during training, e.g. "midog/F1" or "bbox/AP50"
    # (with several DATASETS.TEST: "<dataset>/midog/F1"); "" disables it.
    _C.TEST.BEST_CHECKPOINT_METRIC = "midog/F1"
    # Whole-image inference in tiles (midog_d2.inference.TiledPredictor).
    _C.TEST.TILE = CN()
    # Tile side in pixels; tiles are read one batch at a time, never the whole image.
    # MODEL.RETINANET.TOPK_CANDIDATES_TEST and TEST.DETECTIONS_PER_IMAGE count per 512 x 512
    # px of tile: the tiled predictor scales them with the tile's area, so that larger tiles
    # (faster; a BatchNorm model scores a cell alike in any) keep as many detections per mm².
    _C.TEST.TILE.SIZE = 512
    # Overlap of neighbouring tiles in pixels (stride = SIZE - OVERLAP; 52 gives the
    # reference approach's stride 460). Should be >= a cell's size (50 px) so that
    # every cell lies whole in some tile.
    _C.TEST.TILE.OVERLAP = 52
    # Tiles per forward pass.
    _C.TEST.TILE.BATCH_SIZE = 8
    # Seam merging: a detection whose centre lies within this distance (µm) of a
    # higher-scoring detection of the same class is dropped (reference approach:
    # 25 px at 0.25 µm/px). 0 disables it.
    _C.TEST.TILE.MERGE_RADIUS_UM = 6.25
    # Arithmetic of the forward pass: "fp32", "bf16" (autocast; CPU or CUDA), "fp16"
    # (autocast; CUDA only) or "auto": the fastest one measured to agree with fp32 on the
    # device (docs/benchmarks.md, "Whole-slide inference"): bf16 on CPUs with native bf16
    # (AVX512-BF16/AMX), fp32 on other CPUs and on CUDA until measured there. Evaluation
    # reads "auto" as fp32, so that reported metrics are fp32's.
    _C.TEST.TILE.PRECISION = "auto"
    # Flip test-time augmentation: each tile is also read flipped ("h" left-right, "v"
    # up-down, "hv" both), and a cell scores the mean of its scores over the readings (0 in
    # a reading that missed it), fused within MERGE_RADIUS_UM. [] (off) reads each tile once;
    # ["h", "v", "hv"] costs four model passes a tile (docs/results.md, "Flip test-time
    # augmentation").
    _C.TEST.TILE.TTA_FLIPS = []
    # Whole-slide inference and train_net.py --eval-only put the weights in channels-last format
    # (oneDNN's fast layout on the CPU: measured 1.4x faster; the same arithmetic).
    # Evaluation during training leaves the training model as it is.
    _C.TEST.TILE.CHANNELS_LAST = True
    # The same runs fold BatchNorm into the convolution before it (the same scores to float
    # rounding, one pass over each feature map less; GroupNorm models are left as they are).
    _C.TEST.TILE.FOLD_BATCHNORM = True
    # Threads reading and decoding tiles ahead of the model, and how many batches they
    # may read ahead (memory: (1 + PREFETCH_BATCHES) * BATCH_SIZE tiles).
    _C.TEST.TILE.READ_WORKERS = 2
    _C.TEST.TILE.PREFETCH_BATCHES = 2
    # Whole-slide inference (tools/infer_slides.py --mpp): the µm per pixel every slide is
    # analysed at, whatever its file says; 0 takes each file's own (its metadata, else
    # DATASETS.MIDOG.FALLBACK_MPP, an assumption that summary.csv reports as such).
    _C.TEST.SLIDE_MPP = 0.0
    # Whole-slide inference (tools/infer_slides.py): tiles on glass are never read.
    _C.TEST.TISSUE = CN()
    # Compute a tissue mask on a thumbnail and read only the tiles that hold tissue.
    # False analyses the whole image (ROIs that are all tissue).
    _C.TEST.TISSUE.ENABLED = True
    # "saturation" (HSV S, 0-255) or "od" (optical density summed over RGB, for pale
    # stains): Otsu's threshold on it, kept within 20-60 (saturation) / 0.15-0.5 (OD).
    _C.TEST.TISSUE.METHOD = "saturation"
    # A fixed threshold on that feature instead of Otsu's; -1 = Otsu's per slide.
    _C.TEST.TISSUE.THRESHOLD = -1.0
    # A tile is read when tissue covers at least this fraction of it (and any of it).
    _C.TEST.TISSUE.MIN_FRACTION = 0.05
    # Drop detections centred outside the mask (grown by one thumbnail pixel): a tile on
    # the tissue's edge also shows glass, dust and pen marks.
    _C.TEST.TISSUE.DROP_OUTSIDE = True
    # Longest side of the thumbnail the mask (and the overlay) is computed on, px.
    _C.TEST.TISSUE.THUMBNAIL_SIZE = 2048
    # The hotspot: the window of this area (mm²; 10 HPF = 2.37, many human guidelines
    # count per 2 mm²) and width / height (4:3) with the most detections above threshold.
    _C.TEST.HOTSPOT = CN()
    _C.TEST.HOTSPOT.AREA_MM2 = 2.37
    _C.TEST.HOTSPOT.ASPECT = 4.0 / 3.0

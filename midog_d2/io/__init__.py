"""Reading images and slides, and reading/writing detection files.

``io`` depends on nothing else of midog_d2 but ``constants``: data loading, inference and
evaluation read pixels and files only through it.
"""

from .images import read_rgb
from .points import (
    detect_prediction_format,
    image_keys,
    instances_to_points_json,
    json_safe,
    load_coco_results,
    load_point_predictions,
    parse_points_json,
    points_to_json,
    write_points_json,
)
from .slide import (
    UnreadableSlideError,
    check_images,
    clear_cache,
    open_slide,
    read_region,
    read_region_scaled,
    resample_region,
    resample_scale,
    set_cache_size,
    slide_dimensions,
    slide_mpp,
    slide_thumbnail,
)

"""Reading images and slides, reading/writing detection files, and viewer exports (QuPath
GeoJSON, ASAP XML, CSV).

``fileio`` depends on nothing else of midog_d2 but ``constants``: data loading, inference and
evaluation read pixels and files only through it.
"""

from .atomic import atomic_write, atomic_write_bytes, atomic_write_text
from .exports import (
    detections_to_asap_xml,
    detections_to_csv,
    detections_to_geojson,
    write_asap_xml,
    write_detections_csv,
    write_geojson,
)
from .images import check_image_format, read_rgb, rgb_to_format, to_chw_tensor
from .points import (
    detect_prediction_format,
    instances_to_points_json,
    json_safe,
    load_coco_results,
    load_point_predictions,
    parse_points_json,
    points_to_json,
)
from .structure import ImageStructureError, check_image_structure
from .slide import (
    UnreadableSlideError,
    check_images,
    clear_cache,
    fallback_mpp,
    first_mpp,
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

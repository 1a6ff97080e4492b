"""X-ray geometry: the detector (:mod:`.detector`) and C-arm views built from angles (:mod:`.c_arm`)."""

from .c_arm import (
    DEFAULT_PIXEL_SPACING_MM,
    DEFAULT_SDD_MM,
    DEFAULT_SID_MM,
    DEFAULT_SIZE,
    PRESET_PRIMARY_DEG,
    c_arm_frame,
    c_arm_geometry,
    geometry_from_center,
    preset_geometry,
)
from .detector import (
    GEOMETRY_FORMAT,
    GEOMETRY_FRAME,
    GEOMETRY_VERSION,
    XrayGeometry,
    as_size,
    as_spacing,
    as_vector,
    is_number,
)

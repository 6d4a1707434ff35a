"""Image readers: DICOM, NIfTI, PNG/JPEG and DeepLesion 16-bit PNG, windowed to uint8 for the model.

Entry point: `load_image(item, cfg) -> LoadedImage`. The rest is public for mask sources and tests
(`display_slice` puts any NIfTI slice on the same display grid as the images).
"""

from data_gen.imaging.load import detect_format, load_image
from data_gen.imaging.nifti import display_slice
from data_gen.imaging.raster import DEEPLESION_OFFSET
from data_gen.imaging.window import (
    CT_WINDOWS,
    ImageOptions,
    ct_to_uint8,
    deeplesion_window,
    stretch_to_uint8,
    window_to_uint8,
)

__all__ = [
    "CT_WINDOWS",
    "DEEPLESION_OFFSET",
    "ImageOptions",
    "ct_to_uint8",
    "deeplesion_window",
    "detect_format",
    "display_slice",
    "load_image",
    "stretch_to_uint8",
    "window_to_uint8",
]

"""DeepLesion: key CT slices (16-bit PNG, HU + 32768) with DL_info.csv boxes, spacing and windows.

    medclm-data build --config configs/data/deeplesion.py:root=/data/DeepLesion,masks=/data/totalseg --out DIR
"""

import ml_collections
from ml_collections import config_dict

from data_gen.config import apply_arg, base_config
from data_gen.annotations import classes


def get_config(arg=None):
    config = base_config("deeplesion", "deeplesion")
    config.adapter.csv = "DL_info.csv"
    config.adapter.image_dir = "Images_png"  # <image_dir>/<pat>_<study>_<series>/<slice:03d>.png
    config.adapter.modality = "ct"
    config.adapter.class_column = config_dict.placeholder(str)  # a column naming the class, if any
    # Coarse_lesion_type -> class (defaults in data_gen/annotations/classes.py; -1 is kept as "lesion")
    config.adapter.options.type_map = ml_collections.ConfigDict(dict(classes.DEEPLESION_TYPES))
    config.image.ct_window = "auto"  # the slice's own DICOM_windows
    return apply_arg(config, arg)

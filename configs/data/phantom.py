"""The built-in phantom (synthetic CXR DICOMs + DeepLesion-style CT slices, with their organ masks).

    medclm-data phantom --out /tmp/phantom -n 40
    medclm-data build --config configs/data/phantom.py:root=/tmp/phantom --out /tmp/phantom_vqa
"""

import ml_collections
from ml_collections import config_dict

from data_gen.config import apply_arg, base_config


def get_config(arg=None):
    config = base_config("phantom", "phantom")
    # DL_info.csv column naming the CT class; None: phantom.json's "ct_class_column" (the writer's Phantom_class)
    config.adapter.class_column = config_dict.placeholder(str)
    config.adapter.options.merge = "iou"
    config.adapter.options.merge_iou = 0.5
    config.adapter.options.patient_key = "dicom"  # CXR patients from the DICOMs' PatientID (image_id: one per image)
    config.adapter.options.type_map = ml_collections.ConfigDict()  # CT type -> class, over classes.PHANTOM_CT_TYPES
    config.masks.source = "auto"  # every phantom image has its mask folder (item.mask_ref)
    config.masks.builtin = True  # ... and the built-in segmenter covers any that do not
    config.image.ct_window = "auto"
    config.write.records_per_shard = 256
    return apply_arg(config, arg)

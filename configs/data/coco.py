"""A COCO-format lesion detection dataset (instances JSON: images, annotations with xywh boxes, categories).

    medclm-data build --config configs/data/coco.py:root=/data/mydataset,json=annotations/train.json,modality=ct
"""

from ml_collections import config_dict

from data_gen.config import apply_arg, base_config


def get_config(arg=None):
    config = base_config("coco", "coco")
    config.adapter.json = "annotations.json"
    config.adapter.image_dir = "images"  # <image_dir>/<file_name>
    config.adapter.mask_dir = config_dict.placeholder(str)  # per-image mask folders <mask_dir>/<stem>
    config.adapter.modality = config_dict.placeholder(str)  # xray | ct | mri ...; None: from DICOM tags
    config.adapter.options.empty_images = "negative"  # negative | skip (images without annotations)
    return apply_arg(config, arg)

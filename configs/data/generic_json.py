"""The MedCLM authors' input format: a JSON list of {image_path, anatomy_path, annotations: [{bbox, class}]}.

    medclm-data build --config configs/data/generic_json.py:root=/data/mine,json=train.json,modality=xray
"""

from ml_collections import config_dict

from data_gen.config import apply_arg, base_config


def get_config(arg=None):
    config = base_config("generic_json", "generic_json")
    config.adapter.json = "annotations.json"  # image/anatomy paths inside are relative to adapter.root
    config.adapter.modality = config_dict.placeholder(str)  # when entries do not say; None: DICOM tags
    return apply_arg(config, arg)

"""VinDr-CXR (PhysioNet): DICOM radiographs, boxes from three radiologists per image.

    medclm-data build --config configs/data/vindr_cxr.py:root=/data/vindr-cxr,masks=/data/cxas --out DIR
"""

from data_gen.config import apply_arg, base_config


def get_config(arg=None):
    config = base_config("vindr_cxr", "vindr_cxr")
    config.adapter.csv = "annotations/annotations_train.csv"  # image_id,rad_id,class_name,x_min,y_min,x_max,y_max
    config.adapter.image_dir = "train"  # <image_dir>/<image_id><image_ext>
    config.adapter.image_ext = ".dicom"
    config.adapter.modality = "xray"
    config.adapter.options.merge = "iou"  # iou: merge readers' same-class boxes | none: keep every reader's box
    config.adapter.options.merge_iou = 0.5
    config.adapter.options.patient_key = "image_id"  # image_id: one patient per image | dicom: PatientID of each file
    return apply_arg(config, arg)

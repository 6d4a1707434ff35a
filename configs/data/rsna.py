"""RSNA Pneumonia Detection (Kaggle stage 2): DICOM radiographs with lung-opacity boxes.

    medclm-data build --config configs/data/rsna.py:root=/data/rsna-pneumonia --out DIR
"""

from data_gen.config import apply_arg, base_config


def get_config(arg=None):
    config = base_config("rsna", "rsna")
    config.adapter.csv = "stage_2_train_labels.csv"  # patientId,x,y,width,height,Target
    config.adapter.class_info_csv = "stage_2_detailed_class_info.csv"  # patientId,class (optional file)
    config.adapter.image_dir = "stage_2_train_images"
    config.adapter.image_ext = ".dcm"
    config.adapter.modality = "xray"
    config.adapter.options.negatives = "auto"  # auto | normal_only | all | none (Target 0 images)
    # The challenge's DICOMs are de-identified Secondary Capture objects without a BurnedInAnnotation tag: the
    # default (reject unflagged Secondary Captures) would drop every image. Set "reject" for your own exports.
    config.image.secondary_capture = "allow"
    return apply_arg(config, arg)

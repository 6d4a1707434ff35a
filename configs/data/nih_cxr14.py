"""NIH ChestX-ray14: PNG radiographs; boxes for 984 images in BBox_List_2017.csv.

    medclm-data build --config configs/data/nih_cxr14.py:root=/data/nih-cxr14 --out DIR
"""

from data_gen.config import apply_arg, base_config


def get_config(arg=None):
    config = base_config("nih_cxr14", "nih_cxr14")
    config.adapter.csv = "BBox_List_2017.csv"  # Image Index,Finding Label,Bbox [x,y,w,h]
    config.adapter.entries_csv = "Data_Entry_2017.csv"  # Patient ID, view, original size/spacing (optional file)
    config.adapter.image_dir = "images"  # or the release's images_*/images split folders (found automatically)
    config.adapter.modality = "xray"
    config.adapter.options.png_size = 1024  # the PNGs' size, for the pixel spacing of the resized images
    config.adapter.options.include_no_finding = False  # also add Data_Entry's "No Finding" images as negatives
    return apply_arg(config, arg)

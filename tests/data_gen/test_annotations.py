"""Dataset adapters and their configs, on fixture files the tests write in each dataset's real layout.

Expected boxes, merges, classes and rejects are worked out by hand in the comments next to each fixture.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

from data_gen.annotations import ADAPTERS, get_adapter
from data_gen.annotations.merge import cluster_boxes, iou_matrix, merge_reader_boxes
from data_gen.errors import ConfigError, InputError
from data_gen.types import LesionAnnotation
from medclm_jax.config_file import ConfigFileError, load_config, parse_arg

# configs/ is not a package: dataset configs are loaded by path, as `--config` does.
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "data")


def _config(name, arg=None, sets=()):
    return load_config(f"{os.path.join(CONFIGS, name)}.py:{arg or ''}", sets)


def _write(path, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write(text)
    return str(path)


def _rejects(aset, reason=None):
    return [r for r in aset.rejects if reason is None or r.reason == reason]


def _accounted(stats) -> bool:
    return stats["rows"] == (stats["lesions"] + stats["merged_boxes"] + stats["no_finding_rows"]
                             + stats["rows_rejected"])


# ---------------------------------------------------------------------------------------------------------------
# IoU merging by hand.


def test_iou_matrix_by_hand():
    boxes = np.array([[100, 100, 200, 200], [110, 100, 210, 200], [300, 300, 310, 310]], float)
    iou = iou_matrix(boxes)
    # overlap 90 x 100 = 9000; union 10000 + 10000 - 9000 = 11000
    assert iou[0, 1] == pytest.approx(9000 / 11000) and iou[1, 0] == iou[0, 1]
    assert iou[0, 2] == 0.0 and np.allclose(np.diag(iou), 1.0)


def test_single_linkage_chains_and_is_order_free():
    # A~B and B~C have IoU 80/120 = 0.667; A~C only 60/140 = 0.43: one cluster by single linkage.
    a, b, c, far = [0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10], [50, 50, 60, 60]
    assert cluster_boxes(np.array([a, b, c, far], float), 0.5) == [[0, 1, 2], [3]]
    assert cluster_boxes(np.array([a, far, c], float), 0.5) == [[0], [1], [2]]  # without B: no link
    lesions = [LesionAnnotation(tuple(map(float, bx)), "nodule/mass", "Nodule/Mass", r, f"f.csv:{i}")
               for i, (bx, r) in enumerate(zip([c, far, a, b], ["R3", "R1", "R1", "R2"]))]
    merged, absorbed = merge_reader_boxes(lesions, 0.5)
    assert absorbed == 2
    assert merged[0].box == (2.0, 0.0, 12.0, 10.0)  # mean of a, b, c
    assert merged[0].reader == "R1+R2+R3" and merged[0].row == "f.csv:0;f.csv:2;f.csv:3"
    assert merged[1].box == (50.0, 50.0, 60.0, 60.0)


# ---------------------------------------------------------------------------------------------------------------
# VinDr-CXR.

VINDR_ROWS = [  # (image_id, rad_id, class_name, x_min, y_min, x_max, y_max); line = index + 2
    ("imgA", "R1", "Nodule/Mass", "100", "100", "200", "200"),  # 2  \ IoU 0.818 -> merged: (105, 100, 205, 200)
    ("imgA", "R2", "Nodule/Mass", "110", "100", "210", "200"),  # 3  /
    ("imgA", "R3", "Nodule/Mass", "400", "400", "450", "450"),  # 4  a second nodule, alone
    ("imgA", "R1", "Aortic enlargement", "105", "100", "205", "200"),  # 5  same box, other class: never merged
    ("imgB", "R1", "No finding", "", "", "", ""),  # 6  \
    ("imgB", "R2", "No finding", "", "", "", ""),  # 7   > negative image
    ("imgB", "R3", "No finding", "", "", "", ""),  # 8  /
    ("imgC", "R1", "No finding", "", "", "", ""),  # 9  overruled by R2's box
    ("imgC", "R2", "Cardiomegaly", "300.5", "400", "700", "650.25"),  # 10
    ("imgD", "R1", "Weird Thing", "10", "10", "20", "20"),  # 11 unknown class, kept as "weird thing"
    ("imgD", "R2", "ILD", "30", "30", "90", "90"),  # 12 -> "interstitial lung disease"
    ("imgD", "R3", "Nodule/Mass", "50", "10", "40", "20"),  # 13 inverted (x_max < x_min)
    ("imgD", "R3", "Nodule/Mass", "50", "10", "50", "20"),  # 14 zero area
    ("imgD", "R3", "Nodule/Mass", "abc", "10", "60", "20"),  # 15 bad number
    ("imgD", "R3", "Pneumothorax", "", "", "", ""),  # 16 a finding without a box
    ("imgE", "R1", "Nodule/Mass", "5", "5", "5", "9"),  # 17 its only row is bad: image rejected
    ("imgF", "R1", "No finding", "", "", "", ""),  # 18 \ R2 saw a finding (with a bad box): the image is
    ("imgF", "R2", "Nodule/Mass", "9", "9", "3", "12"),  # 19 / rejected, not taken as negative
]


def _vindr(root, rows=VINDR_ROWS, header="image_id,rad_id,class_name,x_min,y_min,x_max,y_max"):
    body = "\n".join(",".join(r) for r in rows)
    return _write(os.path.join(root, "annotations", "annotations_train.csv"), header + "\n" + body + "\n")


def _load(name, arg):
    cfg = _config(name, arg)
    return get_adapter(cfg.adapter.name)(cfg.adapter)


def test_vindr_merge_negatives_and_bad_rows(tmp_path):
    _vindr(tmp_path)
    aset = _load("vindr_cxr", f"root={tmp_path}")
    items = {it.image_key: it for it in aset.items}
    assert set(items) == {"imgA", "imgB", "imgC", "imgD"}

    a = items["imgA"]
    assert [(les.label, les.box) for les in a.lesions] == [
        ("nodule/mass", (105.0, 100.0, 205.0, 200.0)),
        ("nodule/mass", (400.0, 400.0, 450.0, 450.0)),
        ("aortic enlargement", (105.0, 100.0, 205.0, 200.0)),
    ]
    assert a.lesions[0].reader == "R1+R2" and a.lesions[0].row == "annotations/annotations_train.csv:2;" \
                                                                  "annotations/annotations_train.csv:3"
    assert a.lesions[1].row == "annotations/annotations_train.csv:4" and a.lesions[0].raw_label == "Nodule/Mass"
    assert a.path == os.path.join(str(tmp_path), "train", "imgA.dicom")
    assert (a.source, a.modality, a.patient_key, a.negative) == ("vindr_cxr", "xray", "imgA", False)

    assert items["imgB"].negative and items["imgB"].lesions == []
    c = items["imgC"]
    assert not c.negative and [les.box for les in c.lesions] == [(300.5, 400.0, 700.0, 650.25)]

    d = items["imgD"]
    assert [les.label for les in d.lesions] == ["weird thing", "interstitial lung disease"]
    assert d.unknown_labels == ("Weird Thing",) and aset.stats["unknown_class:weird thing"] == 1

    got = {(r.kind, r.item, r.reason) for r in aset.rejects}
    ref = "annotations/annotations_train.csv"
    assert got == {("lesion", f"{ref}:13", "inverted_box"), ("lesion", f"{ref}:14", "zero_area"),
                   ("row", f"{ref}:15", "bad_number"), ("row", f"{ref}:16", "missing_box"),
                   ("lesion", f"{ref}:17", "zero_area"), ("image", f"{ref}:17", "no_valid_annotations"),
                   ("lesion", f"{ref}:19", "inverted_box"), ("image", f"{ref}:18", "no_valid_annotations")}
    assert "column x_min: 'abc' is not a number" in _rejects(aset, "bad_number")[0].detail

    s = aset.stats
    assert (s["rows"], s["lesions"], s["merged_boxes"], s["no_finding_rows"], s["rows_rejected"]) == (18, 6, 1, 4, 7)
    assert (s["images"], s["negative_images"], s["no_finding_overruled"]) == (4, 1, 1)
    assert _accounted(s)


def test_vindr_merge_none_keeps_every_reader(tmp_path):
    _vindr(tmp_path)
    aset = _load("vindr_cxr", f"root={tmp_path},merge=none")
    a = next(it for it in aset.items if it.image_key == "imgA")
    assert [les.reader for les in a.lesions] == ["R1", "R2", "R3", "R1"]
    assert aset.stats["merged_boxes"] == 0 and _accounted(aset.stats)


def test_vindr_merge_threshold_and_row_order(tmp_path):
    _vindr(tmp_path)
    # IoU of the two nodules is 0.818: a threshold of 0.9 keeps them apart
    a = next(it for it in _load("vindr_cxr", f"root={tmp_path},merge_iou=0.9").items if it.image_key == "imgA")
    assert len(a.lesions) == 4
    rows = list(VINDR_ROWS)
    random.Random(3).shuffle(rows)
    _vindr(tmp_path / "shuffled", rows)
    shuffled = _load("vindr_cxr", f"root={tmp_path / 'shuffled'}")
    baseline = _load("vindr_cxr", f"root={tmp_path}")
    boxes = lambda aset: {it.image_key: sorted((les.label, les.box) for les in it.lesions) for it in aset.items}
    assert boxes(shuffled) == boxes(baseline)


def test_vindr_missing_column_and_file(tmp_path):
    _vindr(tmp_path, [r[:6] for r in VINDR_ROWS], header="image_id,rad_id,class_name,x_min,y_min,x_max")
    with pytest.raises(InputError) as e:
        _load("vindr_cxr", f"root={tmp_path}")
    msg = str(e.value)
    assert e.value.reason == "missing_column" and e.value.field == "y_max"
    assert "annotations_train.csv" in msg and "'y_max'" in msg
    assert "image_id,rad_id,class_name,x_min,y_min,x_max,y_max" in msg  # the expected header
    with pytest.raises(InputError) as e:
        _load("vindr_cxr", f"root={tmp_path / 'nowhere'}")
    assert e.value.reason == "missing_file" and "adapter.csv" in str(e.value)
    with pytest.raises(ConfigError, match="adapter.root"):
        _load("vindr_cxr", None)


def test_vindr_without_rad_id_column(tmp_path):
    # the test-split CSV holds consensus boxes and no rad_id column
    _vindr(tmp_path, [("x1", "Nodule/Mass", "1", "2", "30", "40")], header="image_id,class_name,x_min,y_min,x_max,"
                                                                          "y_max")
    (item,) = _load("vindr_cxr", f"root={tmp_path}").items
    assert item.lesions[0].reader is None and item.lesions[0].box == (1.0, 2.0, 30.0, 40.0)


# ---------------------------------------------------------------------------------------------------------------
# NIH ChestX-ray14.

NIH_BBOX = """Image Index,Finding Label,Bbox [x,y,w,h],,,
00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661,,,
00014716_007.png,Effusion,686.101694915254,131.543389830508,185.491525423729,313.491525423729,,,
00014716_007.png,Infiltrate,100,200,50,60,,,
00029817_009.png,Nodule,10,20,0,5,,,
00029817_009.png,Strange,10,20,30,x,,,
"""
NIH_ENTRIES = """Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,\
OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],
00013118_008.png,Atelectasis,8,13118,60,M,PA,2992,2991,0.143,0.143,
00014716_007.png,Effusion|Infiltration,7,14716,45,F,AP,2500,2048,0.168,0.168,
00000001_000.png,No Finding,0,1,58,M,PA,2682,2749,0.143,0.143,
"""


def test_nih_xywh_patients_and_spacing(tmp_path):
    _write(tmp_path / "BBox_List_2017.csv", NIH_BBOX)
    _write(tmp_path / "Data_Entry_2017.csv", NIH_ENTRIES)
    aset = _load("nih_cxr14", f"root={tmp_path}")
    items = {it.image_key: it for it in aset.items}
    assert set(items) == {"00013118_008.png", "00014716_007.png"}
    a = items["00013118_008.png"]
    (les,) = a.lesions
    assert les.label == "atelectasis" and les.box == pytest.approx(
        (225.084745762712, 547.019216763771, 225.084745762712 + 86.7796610169491, 547.019216763771 + 79.1864406779661))
    assert a.patient_key == "13118" and a.extra["view"] == "PA" and a.modality == "xray"
    assert a.spacing_mm == pytest.approx((0.143 * 2991 / 1024, 0.143 * 2992 / 1024))  # (row, col) of the PNG
    assert a.path == os.path.join(str(tmp_path), "images", "00013118_008.png")
    b = items["00014716_007.png"]
    assert [(x.label, x.box) for x in b.lesions][1] == ("infiltration", (100.0, 200.0, 150.0, 260.0))
    assert b.lesions[0].label == "pleural effusion" and b.lesions[0].row == "BBox_List_2017.csv:3"
    assert {(r.item, r.reason) for r in aset.rejects} == {
        ("BBox_List_2017.csv:5", "zero_area"), ("BBox_List_2017.csv:6", "bad_number"),
        ("BBox_List_2017.csv:5", "no_valid_annotations")}
    assert "bbox h: 'x' is not a number" in _rejects(aset, "bad_number")[0].detail
    assert _accounted(aset.stats)


def test_nih_without_entries_and_split_folders(tmp_path):
    _write(tmp_path / "BBox_List_2017.csv", NIH_BBOX)
    _write(tmp_path / "images_003" / "images" / "00014716_007.png", "")  # the release's split folders
    aset = _load("nih_cxr14", f"root={tmp_path}")
    items = {it.image_key: it for it in aset.items}
    assert items["00013118_008.png"].patient_key == "00013118"  # file-name prefix
    assert items["00014716_007.png"].path == os.path.join(str(tmp_path), "images_003", "images", "00014716_007.png")
    assert aset.stats["patient_key_from_filename"] == 3


def test_nih_no_finding_option_and_missing_column(tmp_path):
    _write(tmp_path / "BBox_List_2017.csv", NIH_BBOX)
    _write(tmp_path / "Data_Entry_2017.csv", NIH_ENTRIES)
    aset = _load("nih_cxr14", f"root={tmp_path},adapter.options.include_no_finding=true")
    neg = [it for it in aset.items if it.negative]
    assert [it.image_key for it in neg] == ["00000001_000.png"] and neg[0].patient_key == "1"
    _write(tmp_path / "BBox_List_2017.csv", "Image Index,Bbox [x,y,w,h],,,\n00013118_008.png,1,2,3,4\n")
    with pytest.raises(InputError, match="missing column 'Finding Label'.*Image Index,Finding Label,Bbox") as e:
        _load("nih_cxr14", f"root={tmp_path}")
    assert e.value.field == "Finding Label"


# ---------------------------------------------------------------------------------------------------------------
# RSNA Pneumonia.

RSNA_LABELS = """patientId,x,y,width,height,Target
p-pos,264.0,152.0,213.0,379.0,1
p-pos,562.0,152.0,256.0,453.0,1
p-normal,,,,,0
p-other,,,,,0
p-mixed,,,,,0
p-mixed,10,10,20,20,1
p-bad,1,2,3,4,2
p-mixed2,,,,,0
p-mixed2,1,1,,5,1
"""
RSNA_INFO = """patientId,class
p-pos,Lung Opacity
p-normal,Normal
p-other,No Lung Opacity / Not Normal
p-mixed,Lung Opacity
"""


def test_rsna_targets_and_negatives(tmp_path):
    _write(tmp_path / "stage_2_train_labels.csv", RSNA_LABELS)
    _write(tmp_path / "stage_2_detailed_class_info.csv", RSNA_INFO)
    aset = _load("rsna", f"root={tmp_path}")
    items = {it.image_key: it for it in aset.items}
    assert set(items) == {"p-pos", "p-normal", "p-mixed"}
    assert [les.box for les in items["p-pos"].lesions] == [(264.0, 152.0, 477.0, 531.0), (562.0, 152.0, 818.0, 605.0)]
    assert items["p-pos"].lesions[0].label == "lung opacity"
    assert items["p-normal"].negative and not items["p-mixed"].negative
    assert items["p-pos"].path == os.path.join(str(tmp_path), "stage_2_train_images", "p-pos.dcm")
    assert {(r.kind, r.item, r.reason) for r in aset.rejects} == {
        ("image", "stage_2_train_labels.csv:5", "abnormal_without_box"),
        ("row", "stage_2_train_labels.csv:6", "conflicting_target"),
        ("row", "stage_2_train_labels.csv:8", "bad_number"), ("row", "stage_2_train_labels.csv:10", "missing_box"),
        ("row", "stage_2_train_labels.csv:9", "conflicting_target"),
        ("image", "stage_2_train_labels.csv:9", "no_valid_annotations")}
    assert _accounted(aset.stats)
    everything = _load("rsna", f"root={tmp_path},adapter.options.negatives=all")
    assert {it.image_key for it in everything.items if it.negative} == {"p-normal", "p-other"}
    with pytest.raises(ConfigError, match="negatives"):
        _load("rsna", f"root={tmp_path},adapter.options.negatives=maybe")


# ---------------------------------------------------------------------------------------------------------------
# DeepLesion.

DL_HEADER = ("File_name,Patient_index,Study_index,Series_ID,Key_slice_index,Measurement_coordinates,Bounding_boxes,"
             "Lesion_diameters_Pixel_,Normalized_lesion_location,Coarse_lesion_type,Possibly_noisy,Slice_range,"
             "Spacing_mm_px_,Image_size,DICOM_windows,Patient_gender,Patient_age,Train_Val_Test")


def _dl_row(fname, pat, study, series, key, box, ctype, noisy="0", spacing="0.78, 0.78, 5", window="-175, 275",
            split="1"):
    return (f'{fname},{pat},{study},{series},{key},"1, 2, 3, 4","{box}","10, 5","0.5, 0.5, 0.5",{ctype},{noisy},'
            f'"100, 120","{spacing}","512, 512","{window}",M,51,{split}')


def test_deeplesion_rows_to_items(tmp_path):
    rows = [
        _dl_row("000001_01_01_109.png", 1, 1, 1, 109, "277.9, 250.3, 301.2, 271.6", 3),  # 2
        _dl_row("000001_01_01_109.png", 1, 1, 1, 109, "100, 100, 140, 130", -1, noisy="1"),  # 3: untyped
        _dl_row("000002_03_01_023.png", 2, 3, 1, 23, "10, 10, 50, 60", 9, spacing="0.7, 0.6, 2.5",
                window="-1350, 150", split="3"),  # 4: unknown type 9
        _dl_row("000002_03_01_024.png", 2, 3, 1, 24, "10, 10, 50", 5),  # 5: three numbers
        _dl_row("000003_01_01_005.png", 3, 1, 1, 5, "60, 10, 50, 60", 5),  # 6: inverted
    ]
    _write(tmp_path / "DL_info.csv", DL_HEADER + "\n" + "\n".join(rows) + "\n")
    aset = _load("deeplesion", f"root={tmp_path}")
    items = {it.image_key: it for it in aset.items}
    assert set(items) == {"000001_01_01_109.png", "000002_03_01_023.png"}
    a = items["000001_01_01_109.png"]
    assert a.path == os.path.join(str(tmp_path), "Images_png", "000001_01_01", "109.png")
    assert [(les.label, les.box, les.raw_label) for les in a.lesions] == [
        ("mediastinal lesion", (277.9, 250.3, 301.2, 271.6), "3"), ("lesion", (100.0, 100.0, 140.0, 130.0), "-1")]
    assert (a.patient_key, a.study_key, a.slice_index, a.modality) == ("1", "1_1", 109, "ct")
    assert a.spacing_mm == (0.78, 0.78) and a.window == (50.0, 450.0)  # center (lo+hi)/2, width hi-lo
    assert a.extra["train_val_test"] == "1" and a.extra["possibly_noisy"] == [False, True]
    assert a.extra["coarse_types"] == [3, -1]
    b = items["000002_03_01_023.png"]
    assert b.window == (-600.0, 1500.0) and b.spacing_mm == (0.7, 0.6) and b.extra["train_val_test"] == "3"
    assert b.lesions[0].label == "coarse type 9" and b.unknown_labels == ("9",)
    assert aset.stats["coarse_type_unknown"] == 1 and aset.stats["unknown_class:coarse type 9"] == 1
    assert {(r.kind, r.item, r.reason) for r in aset.rejects} == {
        ("row", "DL_info.csv:5", "bad_number"), ("lesion", "DL_info.csv:6", "inverted_box"),
        ("image", "DL_info.csv:6", "no_valid_annotations")}
    assert _accounted(aset.stats)
    # a renamed type through the config
    aset = _load("deeplesion", f"root={tmp_path},adapter.options.type_map.3=mediastinal lymph node")
    assert aset.items[0].lesions[0].label == "mediastinal lymph node"


def test_deeplesion_missing_column(tmp_path):
    header = DL_HEADER.replace("DICOM_windows,", "")
    _write(tmp_path / "DL_info.csv", header + "\n")
    with pytest.raises(InputError) as e:
        _load("deeplesion", f"root={tmp_path}")
    assert e.value.reason == "missing_column" and e.value.field == "DICOM_windows"
    assert "DL_info.csv" in str(e.value) and "Bounding_boxes" in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# COCO and the authors' JSON.


def test_coco(tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 512, "height": 400, "patient_id": "P7"},
                   {"id": 2, "file_name": "b.png"},
                   {"id": 1, "file_name": "other.png"},  # same id, other file: duplicate
                   {"id": 3, "file_name": "c.png"}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 5, "bbox": [10, 20, 30, 40]},
                        {"id": 11, "image_id": 1, "category_id": 6, "bbox": [0, 0, 5, 5]},
                        {"id": 12, "image_id": 99, "category_id": 5, "bbox": [0, 0, 5, 5]},
                        {"id": 13, "image_id": 3, "category_id": 7, "bbox": [1, 1, 2, 2]},
                        {"id": 14, "image_id": 3, "category_id": 5, "bbox": [1, 1, 2, 2], "iscrowd": 1},
                        {"id": 15, "image_id": 1, "category_id": 5, "bbox": [1, 1, 0, 2]}],
        "categories": [{"id": 5, "name": "Lung Nodule"}, {"id": 6, "name": "mass"}],
    }
    _write(tmp_path / "annotations.json", json.dumps(coco))
    aset = _load("coco", f"root={tmp_path},modality=ct")
    items = {it.image_key: it for it in aset.items}
    assert set(items) == {"1", "2"}  # 3 lost all its annotations
    one = items["1"]
    assert [(les.label, les.box) for les in one.lesions] == [("lung nodule", (10.0, 20.0, 40.0, 60.0)),
                                                             ("mass", (0.0, 0.0, 5.0, 5.0))]
    assert one.patient_key == "P7" and one.modality == "ct" and one.extra["size"] == [512, 400]
    assert one.path == os.path.join(str(tmp_path), "images", "a.png")
    assert items["2"].negative and items["2"].patient_key == "2"
    assert {(r.item, r.reason) for r in aset.rejects} == {
        ("annotations.json:images[2]", "duplicate_image_id"), ("annotations.json:annotations[2]", "unknown_image"),
        ("annotations.json:annotations[3]", "unknown_category"),
        ("annotations.json:annotations[4]", "crowd_annotation"), ("annotations.json:annotations[5]", "zero_area"),
        ("annotations.json:images[3]", "no_valid_annotations")}
    assert _accounted(aset.stats)
    skip = _load("coco", f"root={tmp_path},adapter.options.empty_images=skip")
    assert {it.image_key for it in skip.items} == {"1"}
    _write(tmp_path / "annotations.json", json.dumps({"images": []}))
    with pytest.raises(InputError, match="missing list 'annotations'"):
        _load("coco", f"root={tmp_path}")


def test_generic_json_authors_format(tmp_path):
    entries = [
        {"image_path": "imgs/p1.png", "anatomy_path": "masks/p1",
         "annotations": [{"bbox": [10, 20, 110, 220], "class": "Nodule"}, {"bbox": [5, 5, 1, 9], "class": "mass"},
                         {"bbox": [1, 2, 3], "class": "mass"}, {"bbox": [1, 2, 3, 4]}]},
        {"image_path": "imgs/p2.png", "annotations": [], "patient_id": "P2", "modality": "ct"},
        {"image_path": "imgs/p3.png", "image_id": "same", "annotations": [{"bbox": [0, 0, 4, 4], "class": "x"}]},
        {"image_path": "imgs/p4.png", "image_id": "same", "annotations": [{"bbox": [0, 0, 4, 4], "class": "y"}]},
        {"anatomy_path": "masks/p5", "annotations": []},
    ]
    _write(tmp_path / "annotations.json", json.dumps(entries))
    aset = _load("generic_json", f"root={tmp_path},modality=xray")
    items = {it.image_key: it for it in aset.items}
    assert set(items) == {"imgs/p1.png", "imgs/p2.png", "same"}
    p1 = items["imgs/p1.png"]
    assert p1.mask_ref == os.path.join(str(tmp_path), "masks", "p1") and p1.modality == "xray"
    assert [(les.label, les.box) for les in p1.lesions] == [("nodule", (10.0, 20.0, 110.0, 220.0))]
    assert items["imgs/p2.png"].negative and items["imgs/p2.png"].modality == "ct"
    assert items["imgs/p2.png"].patient_key == "P2" and items["imgs/p2.png"].mask_ref is None
    assert items["same"].path == os.path.join(str(tmp_path), "imgs", "p3.png")
    assert {(r.item, r.reason) for r in aset.rejects} == {
        ("annotations.json:[0].annotations[1]", "inverted_box"), ("annotations.json:[0].annotations[2]", "bad_number"),
        ("annotations.json:[0].annotations[3]", "missing_field"), ("annotations.json:[3]", "duplicate_image_id"),
        ("annotations.json:[4]", "missing_field")}
    assert "already used by annotations.json:[2]" in _rejects(aset, "duplicate_image_id")[0].detail
    assert _accounted(aset.stats)
    _write(tmp_path / "annotations.json", "{not json")
    with pytest.raises(InputError) as e:
        _load("generic_json", f"root={tmp_path}")
    assert e.value.reason == "bad_json" and "line 1" in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# The phantom layout.


def _phantom(root, class_column=True):
    _write(os.path.join(root, "phantom.json"), json.dumps(
        {"seed": 0, "n_cxr": 2, "n_ct": 2, "classes": ["Nodule", "Mass", "liver cyst"], "version": 1,
         "ct_class_column": "Phantom_class"}))
    _write(os.path.join(root, "cxr", "annotations.csv"),
           "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"
           "cxr_0000,R1,Nodule,100,100,130,130\ncxr_0000,R2,Nodule,101,100,131,130\n"
           "cxr_0001,R1,No finding,,,,\ncxr_0001,R2,No finding,,,,\n")
    extra = ",Phantom_class" if class_column else ""
    rows = [_dl_row("000001_01_01_010.png", 1, 1, 1, 10, "200, 200, 240, 230", 4) + (",liver cyst" if extra else ""),
            _dl_row("000001_01_01_010.png", 1, 1, 1, 10, "300, 100, 330, 140", 5) + (",lung nodule" if extra else ""),
            _dl_row("000002_01_01_012.png", 2, 1, 1, 12, "250, 260, 300, 320", 4) + (",liver mass" if extra else "")]
    _write(os.path.join(root, "ct", "DL_info.csv"), DL_HEADER + extra + "\n" + "\n".join(rows) + "\n")


def test_phantom_adapter(tmp_path):
    _phantom(tmp_path)
    aset = _load("phantom", f"root={tmp_path}")
    items = {it.image_key: it for it in aset.items}
    cxr, neg = items["cxr_0000"], items["cxr_0001"]
    assert (cxr.source, cxr.modality, neg.negative) == ("phantom_cxr", "xray", True)
    assert cxr.path == os.path.join(str(tmp_path), "cxr", "images", "cxr_0000.dicom")
    assert cxr.mask_ref == os.path.join(str(tmp_path), "cxr", "masks", "cxr_0000")
    assert [(les.label, les.box) for les in cxr.lesions] == [("nodule", (100.5, 100.0, 130.5, 130.0))]  # merged
    ct = items["000001_01_01_010.png"]
    assert (ct.source, ct.modality, ct.window, ct.spacing_mm) == ("phantom_ct", "ct", (50.0, 450.0), (0.78, 0.78))
    assert ct.mask_ref == os.path.join(str(tmp_path), "ct", "masks", "000001_01_01_010")
    assert ct.path == os.path.join(str(tmp_path), "ct", "Images_png", "000001_01_01", "010.png")
    assert [les.label for les in ct.lesions] == ["liver cyst", "lung nodule"]
    assert items["000002_01_01_012.png"].lesions[0].label == "liver mass"
    assert aset.stats["images"] == 4 and aset.rejects == [] and _accounted(aset.stats)
    assert not any(k.startswith("unknown_class") for k in aset.stats)

    _phantom(tmp_path / "nocol", class_column=False)  # without the class column: the type map
    labels = [les.label for it in _load("phantom", f"root={tmp_path / 'nocol'}").items for les in it.lesions]
    assert labels == ["nodule", "liver lesion", "lung nodule", "liver lesion"]


def test_phantom_needs_its_json(tmp_path):
    with pytest.raises(InputError, match="medclm-data phantom") as e:
        _load("phantom", f"root={tmp_path}")
    assert e.value.reason == "missing_file"
    _write(tmp_path / "phantom.json", json.dumps({"version": 99}))
    with pytest.raises(InputError) as e:
        _load("phantom", f"root={tmp_path}")
    assert e.value.reason == "unsupported_version"


# ---------------------------------------------------------------------------------------------------------------
# Registry and configs.


def test_registry():
    assert set(ADAPTERS) == {"vindr_cxr", "nih_cxr14", "rsna", "deeplesion", "coco", "generic_json", "phantom"}
    with pytest.raises(ConfigError, match="vindr_cxr"):
        get_adapter("vindr")


SECTIONS = {"name", "adapter", "image", "masks", "link", "synth", "split", "curriculum", "write", "salt"}


@pytest.mark.parametrize("name", ["vindr_cxr", "nih_cxr14", "rsna", "deeplesion", "coco", "generic_json", "phantom"])
def test_configs_load_with_args(name):
    default = _config(name)
    assert set(default.keys()) == SECTIONS
    assert default.adapter.name == name and default.adapter.root is None and default.masks.root is None
    assert default.image.max_side == 896 and default.masks.builtin is True and default.link.min_score == 0.1
    assert default.split.val == 0.1 and default.curriculum.hard_fraction == 0.3 and default.synth.backend == "template"
    assert json.loads(default.to_json())["name"] == name  # serializable (the build fingerprints it)
    cfg = _config(name, "root=/data/x, masks=/data/m,max_side=512,image.rgb_windows=yes,salt=s3cret,test=0.2")
    assert (cfg.adapter.root, cfg.masks.root, cfg.image.max_side, cfg.image.rgb_windows) == ("/data/x", "/data/m",
                                                                                            512, True)
    assert cfg.salt == "s3cret" and cfg.split.test == 0.2 and isinstance(cfg.split.test, float)


def test_phantom_config_masks():
    cfg = _config("phantom", "root=/tmp/p")
    assert cfg.masks.source == "auto" and cfg.masks.builtin is True and cfg.adapter.root == "/tmp/p"


@pytest.mark.parametrize("arg, match", [
    ("nonsense=1", "config has no key 'nonsense'"),
    ("merge_io=0.3", "no key 'merge_io'; did you mean 'merge_iou'"),
    ("adapter.options.merge_io=0.3", "did you mean 'adapter.options.merge_iou'"),
    ("link.overlay_tolerence=0.1", "did you mean 'link.overlay_tolerance'"),
    ("root", "not key=value"), ("max_side=big", "not a valid int"), ("image=3", "is a section"),
    ("root=/a,root=/b", "twice"), ("builtin=maybe", "not a valid bool")])
def test_config_arg_errors(arg, match):
    with pytest.raises(ConfigFileError, match=match):
        _config("vindr_cxr", arg)


def test_config_arg_values_take_the_field_type():
    assert parse_arg("root=/a=b,k=") == {"root": "/a=b", "k": ""}
    cfg = _config("coco", "adapter.options.empty_images=skip,modality=none,link.max_distance_px=40,"
                  "adapter.options.class_map.Nodule=mass,masks.fast=on")
    assert (cfg.adapter.options.empty_images, cfg.adapter.modality) == ("skip", None)
    assert cfg.link.max_distance_px == 40.0 and isinstance(cfg.link.max_distance_px, float)
    assert cfg.adapter.options.class_map.to_dict() == {"Nodule": "mass"} and cfg.masks.fast is True
    # an option no adapter declares cannot be made up on the command line any more
    with pytest.raises(ConfigFileError, match="no key 'adapter.options.flag'"):
        _config("coco", "adapter.options.flag=true")


@pytest.mark.parametrize("name, option, match", [
    ("vindr_cxr", "merge_io", "did you mean 'adapter.options.merge_iou'"),
    ("coco", "empty_image", "did you mean 'adapter.options.empty_images'"),
    ("deeplesion", "typemap", "did you mean 'adapter.options.type_map'"),
    ("generic_json", "merge", "no key 'adapter.options.merge'")])
def test_adapters_refuse_unknown_options(tmp_path, name, option, match):
    """A config file (or a caller) that writes an option the adapter does not read fails before any file is read."""
    cfg = _config(name, f"root={tmp_path}")
    cfg.adapter.options[option] = 0.3
    with pytest.raises(ConfigFileError, match=match):
        get_adapter(name)(cfg.adapter)


def test_phantom_adapter_on_the_real_phantom(tmp_path):
    """The adapter reads what `medclm-data phantom` writes (D1's writer): every file it points at exists."""
    from data_gen.phantom import writer
    summary = writer.write_phantom(str(tmp_path), 6, seed=1, cxr_size=128, ct_size=128)
    aset = _load("phantom", f"root={tmp_path}")
    assert aset.rejects == [] and _accounted(aset.stats)
    assert aset.stats["rows"] == summary["cxr_rows"] + summary["ct_rows"]
    assert {it.source for it in aset.items} == {"phantom_cxr", "phantom_ct"}
    for it in aset.items:
        assert os.path.isfile(it.path) and os.path.isdir(it.mask_ref)
        assert it.negative == (not it.lesions)
        for les in it.lesions:
            assert all(0 <= v <= 128 for v in les.box) and not les.label.startswith("coarse type")
    ct_labels = {les.label for it in aset.items if it.modality == "ct" for les in it.lesions}
    assert ct_labels <= {"lung nodule", "liver cyst", "kidney cyst", "liver mass"}

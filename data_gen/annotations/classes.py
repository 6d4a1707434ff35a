"""Each dataset's class vocabulary and its canonical lowercase names.

Canonical names are what the questions and CoTs say, so they are spelled out for a reader ("interstitial lung
disease", not "ILD") and harmonized across datasets where the finding is the same (NIH "Effusion" and VinDr
"Pleural effusion" are both "pleural effusion"). Every table can be extended or overridden per build with
`adapter.options.class_map` (raw name -> canonical name).
"""

from __future__ import annotations

from typing import Any, Mapping

from data_gen.annotations.base import ClassMap, as_dict, cfg_get, normalize_label

# VinDr-CXR: the 14 classes of the public challenge (incl. "Other lesion"), plus the other local labels of the
# PhysioNet release (v1.0.0 annotates 22 local labels), so those are not counted as unknown.
VINDR_CXR = {
    "Aortic enlargement": "aortic enlargement",
    "Atelectasis": "atelectasis",
    "Calcification": "calcification",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "ILD": "interstitial lung disease",
    "Infiltration": "infiltration",
    "Lung Opacity": "lung opacity",
    "Nodule/Mass": "nodule/mass",
    "Other lesion": "other lesion",
    "Pleural effusion": "pleural effusion",
    "Pleural thickening": "pleural thickening",
    "Pneumothorax": "pneumothorax",
    "Pulmonary fibrosis": "pulmonary fibrosis",
    # PhysioNet-only local labels
    "Clavicle fracture": "clavicle fracture",
    "Edema": "edema",
    "Emphysema": "emphysema",
    "Enlarged PA": "enlarged pulmonary artery",
    "Lung cavity": "lung cavity",
    "Lung cyst": "lung cyst",
    "Mediastinal shift": "mediastinal shift",
    "Rib fracture": "rib fracture",
}

# NIH ChestX-ray14 boxes (BBox_List_2017.csv spells "Infiltrate"; Data_Entry_2017.csv "Infiltration").
NIH_CXR14 = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Effusion": "pleural effusion",
    "Infiltrate": "infiltration",
    "Infiltration": "infiltration",
    "Mass": "mass",
    "Nodule": "nodule",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
}

# DeepLesion Coarse_lesion_type (1..8); -1 means the type was not annotated (kept as "lesion", counted).
DEEPLESION_TYPES = {
    "1": "bone lesion",
    "2": "abdominal lesion",
    "3": "mediastinal lesion",
    "4": "liver lesion",
    "5": "lung lesion",
    "6": "kidney lesion",
    "7": "soft tissue lesion",
    "8": "pelvic lesion",
}
DEEPLESION_UNTYPED = "lesion"

# The built-in phantom (data_gen/phantom.py): its CXR classes and its CT lesions by coarse type. Type 4 holds two
# phantom classes (liver cyst, liver mass); the phantom's own class column, when present, tells them apart.
PHANTOM_CXR = {
    "Nodule": "nodule",
    "Mass": "mass",
    "Pleural effusion": "pleural effusion",
    "Consolidation": "consolidation",
}
PHANTOM_CT_TYPES = {
    "4": "liver lesion",
    "5": "lung nodule",
    "6": "kidney cyst",
}


def _options(cfg: Any) -> Any:
    return cfg_get(cfg, "options", {}) or {}  # the adapter checked its keys (`base.options`)


def class_map(default: Mapping[str, str], cfg: Any, open_vocab: bool = False) -> ClassMap:
    """The dataset's table updated with `cfg.options.class_map`."""
    table = dict(default)
    table.update({str(k): str(v) for k, v in as_dict(_options(cfg).get("class_map")).items()})
    return ClassMap(table, open_vocab=open_vocab)


def type_map(default: Mapping[str, str], cfg: Any) -> dict[str, str]:
    """DeepLesion-style coarse type (as a string key) -> class, updated with `cfg.options.type_map`."""
    table = dict(default)
    table.update({str(k): str(v) for k, v in as_dict(_options(cfg).get("type_map")).items()})
    return {k: normalize_label(v) for k, v in table.items()}

"""The built-in segmenter on real radiographs: the two computed radiographs that pydicom-data ships.

`RG1_UNCR.dcm` is a PA chest (1955 x 1841, MONOCHROME1) with several round opacities in both lungs, the largest in
the right lower lung field. `RG3_UNCR.dcm` is an AP radiograph of a distal tibia and ankle. The boxes below were
placed by looking at RG1 rendered as the pipeline stores it (pixel xyxy on the full grid):

  * the dense round opacity in the right lower lung field, about 180 x 150 px around (480, 1145);
  * the right costophrenic angle (140-260, 1390-1490) and the left one (1560-1650, 1440-1540);
  * the heart, left of the left heart border and above the diaphragm (1000-1250, 1150-1400);
  * a round opacity in the left lower lung field (1380-1520, 1090-1230).

A box over the right lower nodule used to link to the heart (the lung field left the bright nodule out and the
heart estimate spilled under the right lung), and RG3 used to get a "left lung".
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from shipped_files import pydicom_file

from data_gen.config import load_dataset_config
from data_gen.imaging import load_image
from data_gen.link import link_lesions
from data_gen.pipeline import convert_image
from data_gen.segment import MaskSettings, builtin, load_masks, to_organ_masks
from data_gen.segment.grid import cell_for
from data_gen.types import ImageItem, LesionAnnotation, LoadedImage
from medclm_jax.records import schema as S

RIGHT_LOWER_NODULE = (390, 1070, 570, 1220)
RIGHT_CP_ANGLE = (140, 1390, 260, 1490)
LEFT_CP_ANGLE = (1560, 1440, 1650, 1540)
HEART = (1000, 1150, 1250, 1400)
LEFT_LOWER_NODULE = (1380, 1090, 1520, 1230)


_radiograph_file = pydicom_file


def _item(path, boxes=()):
    return ImageItem(path=path, source="test", image_key=os.path.basename(path), patient_key="p", modality="xray",
                     lesions=[LesionAnnotation(box=tuple(map(float, b)), label="nodule", row=f"rows.csv:{i}")
                              for i, b in enumerate(boxes)])


@pytest.fixture(scope="module")
def chest():
    """(image, item, organ masks by name on the pixel grid, organ masks on the default linking grid) for RG1."""
    item = _item(_radiograph_file("RG1_UNCR.dcm"))
    image = load_image(item)
    full = load_masks(item, image, {"source": "builtin", "grid_max_side": 0})
    cell = cell_for(image.height, image.width, MaskSettings().grid_max_side)
    om, _ = to_organ_masks(full.names, full.masks, (image.height, image.width), full.source, cell)
    assert om.cell == 2  # what load_masks holds by default at this size
    return image, item, dict(zip(full.names, full.masks)), om


def _share(mask, box):
    x1, y1, x2, y2 = box
    return float(mask[y1:y2, x1:x2].mean())


def test_chest_radiograph_is_read_as_a_frontal_chest(chest):
    image, _, masks, om = chest
    assert (image.modality, image.view, image.col_direction) == ("xray", "PA", "L")
    assert om.source == "builtin"
    assert {"right lung", "left lung", "heart", "right lower zone of lung", "left lower zone of lung"} <= set(masks)
    # Patient right is image left ('L'): the right lung's centre lies left of the left lung's.
    cols = {n: np.nonzero(masks[n].any(axis=0))[0].mean() for n in ("right lung", "left lung")}
    assert cols["right lung"] < cols["left lung"]


def test_dense_nodule_in_the_right_lower_field_is_in_the_right_lung(chest):
    image, _, masks, om = chest
    assert _share(masks["right lung"], RIGHT_LOWER_NODULE) > 0.95  # the bright nodule is inside the field
    assert _share(masks["heart"], RIGHT_LOWER_NODULE) == 0.0
    (res,) = link_lesions(np.array([RIGHT_LOWER_NODULE], float), om, image)
    assert (res.organ, res.location) == ("right lower zone of lung", "right lower zone")
    assert res.score > 0.95


def test_lung_fields_reach_the_costophrenic_angles(chest):
    image, _, masks, om = chest
    assert _share(masks["right lung"], RIGHT_CP_ANGLE) > 0.3
    assert _share(masks["left lung"], LEFT_CP_ANGLE) > 0.3
    # The lowest lateral points: the right field reaches row 1450 lateral of column 300, the left row 1480 lateral
    # of column 1550 (the domes of the diaphragm lie higher, medially).
    assert masks["right lung"][1450:, :300].any() and masks["left lung"][1480:, 1550:].any()
    res = link_lesions(np.array([RIGHT_CP_ANGLE, LEFT_CP_ANGLE], float), om, image)
    assert [r.organ for r in res] == ["right lower zone of lung", "left lower zone of lung"]


def test_heart_stays_between_the_lungs(chest):
    image, _, masks, om = chest
    heart, right, left = masks["heart"], masks["right lung"], masks["left lung"]
    assert not (heart & (right | left)).any()
    rows = np.nonzero(heart.any(axis=1))[0]
    for r in rows[:: max(1, len(rows) // 50)]:
        cols = np.nonzero(heart[r])[0]
        assert right[r].any() and left[r].any(), r  # never under a lung, never beside only one
        assert cols[0] > np.nonzero(right[r])[0].max() and cols[-1] < np.nonzero(left[r])[0].min(), r
    res = link_lesions(np.array([HEART, LEFT_LOWER_NODULE], float), om, image)
    assert [r.organ for r in res] == ["heart", "left lower zone of lung"]


def test_limb_radiograph_gets_no_thoracic_organs():
    item = _item(_radiograph_file("RG3_UNCR.dcm"))
    image = load_image(item)
    om = load_masks(item, image, {"source": "builtin"})
    assert om.names == [] and om.source == "builtin+not_chest"
    (res,) = link_lesions(np.array([[700, 1300, 900, 1500]], float), om, image)
    assert (res.organ, res.method) == ("unknown", "none")


def test_pipeline_counts_the_limb_radiograph_and_links_its_lesion_to_unknown(tmp_path):
    path = _radiograph_file("RG3_UNCR.dcm")
    cfg = load_dataset_config("phantom", f"root={os.path.dirname(path)}", ["masks.source=builtin"])
    result = convert_image(_item(path, [(700, 1300, 900, 1500)]), cfg, {"xray": ["nodule"]})
    assert result.stats["masks_source:builtin+not_chest"] == 1
    (record,) = result.examples
    assert record[S.LESION_ORGAN] == "unknown"


@pytest.mark.parametrize("case", ["blank", "noise", "chest turned on its side", "one half of a chest"])
def test_what_is_not_a_frontal_chest_gets_nothing(chest, case):
    rng = np.random.default_rng(0)
    pixels = chest[0].pixels
    px = {"blank": np.zeros((300, 300), np.uint8), "noise": rng.integers(0, 256, (300, 300)).astype(np.uint8),
          "chest turned on its side": np.ascontiguousarray(np.rot90(pixels)),
          "one half of a chest": np.ascontiguousarray(pixels[:, :900])}[case]
    found = builtin.organs(LoadedImage(pixels=px, modality="xray"))
    assert (found.names, found.note) == ([], builtin.NOT_CHEST)

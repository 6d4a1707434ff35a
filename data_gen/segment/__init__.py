"""Organ masks: readers for segmenter outputs, the name map and hierarchy, and a built-in classical segmenter.

Entry point for the pipeline: `load_masks(item, image, cfg) -> OrganMasks` (see `data_gen.segment.load`); the
`masks` config section is read into `MaskSettings`.
"""

from data_gen.segment.grid import resample_nearest
from data_gen.segment.load import MaskSettings, load_masks, load_masks_with_stats, to_organ_masks
from data_gen.segment.names import display_name, is_part_of, parent, specificity

__all__ = [
    "MaskSettings",
    "display_name",
    "is_part_of",
    "load_masks",
    "load_masks_with_stats",
    "parent",
    "resample_nearest",
    "specificity",
    "to_organ_masks",
]

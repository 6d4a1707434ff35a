"""The canonical types that flow through data_gen.

Every dataset adapter maps its rows to `ImageItem`s (one per image, holding all of that image's lesion boxes in
*pixel xyxy* on the original pixel grid). The per-image conversion (`data_gen.pipeline.convert_image`) then
loads the pixels (`LoadedImage`), the organ masks (`OrganMasks`), links each box to a host organ (`LinkResult`),
writes the seed rationale (`SeedRationale`), synthesizes the three curriculum views (`CurriculumQA`) and emits one
record per (image, lesion). Everything here is plain data: picklable, so Beam workers and process pools can ship it.

Conventions used throughout:
  * boxes: `(x1, y1, x2, y2)`; pixels unless the name says `_norm` (then in [0, 1] of width/height).
  * images: row-major `[H, W]` (or `[H, W, 3]`), row 0 at the top of the displayed image.
  * laterality: `LoadedImage.col_direction` is the *patient* direction in which the column index increases.
    The display convention for frontal radiographs and axial CT is 'L' (image-left is patient-right).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional

import numpy as np

from medclm_jax.records.schema import NO_FINDING  # noqa: F401  the lesion class of a negative record (re-exported)

Box = tuple[float, float, float, float]
Stage = Literal["easy", "medium", "hard"]


@dataclasses.dataclass(frozen=True)
class LesionAnnotation:
    """One lesion box as the dataset gives it.

    Attributes:
      box: pixel xyxy on the original image grid (floats; may lie partly outside: validated later).
      label: canonical class name (lowercase, e.g. "nodule/mass", "pleural effusion").
      raw_label: the class string exactly as the dataset wrote it.
      reader: radiologist/annotator id where the dataset has several (VinDr-CXR `rad_id`), else None.
      row: where it came from, for error messages and rejects (e.g. "train.csv:17").
    """

    box: Box
    label: str
    raw_label: str = ""
    reader: Optional[str] = None
    row: str = ""


@dataclasses.dataclass
class ImageItem:
    """One image of a detection dataset with all its lesion annotations.

    `patient_key`, `study_key` and `image_key` may be identifying: they are used for splitting and for the salted
    hash `image/id`, and never written to any output.

    Attributes:
      path: the image file (DICOM, NIfTI, PNG/JPEG, DeepLesion 16-bit PNG or a folder of slices).
      source: dataset name (`vindr_cxr`, `deeplesion`, `phantom_cxr`, ...).
      image_key: the dataset's image id (unique within the dataset).
      patient_key: patient (or study when no patient is known) key for patient-level splits.
      lesions: the lesion boxes; empty for a negative ("No finding") image.
      negative: True when the dataset says the image has no finding (kept for negative questions).
      modality: `xray`, `ct`, `mri`, ... when the adapter knows it; None means take it from the DICOM tags.
      slice_index: key slice of a volume (DeepLesion, NIfTI) for 2-D annotations; None for 2-D images.
      mask_ref: where this image's organ masks are (folder, npz, NIfTI); None means use the configured default
        (e.g. the built-in segmenter).
      spacing_mm: (row, col) pixel spacing in mm when the annotation file gives it (DeepLesion).
      window: (center, width) in HU when the annotation file gives one (DeepLesion `DICOM_windows`).
      unknown_labels: raw labels the adapter did not recognise (kept under their raw name, counted).
      extra: adapter-specific, JSON-serializable.
    """

    path: str
    source: str
    image_key: str
    patient_key: str
    lesions: list[LesionAnnotation] = dataclasses.field(default_factory=list)
    negative: bool = False
    study_key: str = ""
    modality: Optional[str] = None
    slice_index: Optional[int] = None
    mask_ref: Optional[str] = None
    spacing_mm: Optional[tuple[float, float]] = None
    window: Optional[tuple[float, float]] = None
    unknown_labels: tuple[str, ...] = ()
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class LoadedImage:
    """Pixels ready for the model, plus what the linker and rationale need.

    Attributes:
      pixels: uint8 `[H, W]` or `[H, W, 3]`, already windowed (VOI LUT / CT window), MONOCHROME1 inverted.
      modality: `xray`, `ct`, `mri`, `us`, ...
      spacing_mm: (row, col) mm per pixel, or None when unknown.
      col_direction: patient direction of increasing column: 'L' (display convention) or 'R' (flipped).
      hu: float32 `[H, W]` Hounsfield units for CT (for the built-in segmenter), else None.
      view: radiograph view position (`PA`, `AP`, `LL`, ...) when known.
      path: the file it came from (for messages).
    """

    pixels: np.ndarray
    modality: str
    spacing_mm: Optional[tuple[float, float]] = None
    col_direction: str = "L"
    hu: Optional[np.ndarray] = None
    view: Optional[str] = None
    path: str = ""

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


@dataclasses.dataclass
class OrganMasks:
    """Organ masks on the image's linking grid (`data_gen.segment.grid`).

    Attributes:
      names: display names ("right upper zone of lung", "liver"), one per mask, from `data_gen.segment.names`.
      masks: bool `[K, ceil(H / cell), ceil(W / cell)]` for a `LoadedImage` of `H x W` pixels (resampled by the
        mask source); with `cell` 1, the image's own grid.
      source: where they came from (`png_dir`, `totalseg`, `builtin`, ...), for dataset_info.
      cell: image pixels per mask cell along each axis (a power of two; `masks.grid_max_side` bounds the grid).
      bounds: int `[K, 4]` each mask's bounding box on its grid, `(r0, r1, c0, c1)` end-exclusive (`load_masks`
        computes it while checking for empty masks; linking then reads only where a mask can meet a box), or
        None when not known.
    """

    names: list[str]
    masks: np.ndarray
    source: str = ""
    cell: int = 1
    bounds: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.names)


@dataclasses.dataclass(frozen=True)
class LinkResult:
    """The host organ of one lesion box and where in it the lesion lies.

    Attributes:
      organ: display name of the host organ, or "unknown".
      score: linking score in [0, 1] (fraction of the box covered by the mask; 0 for fallbacks).
      method: "containment" (score >= threshold), "nearest" (fallback within max distance) or "none".
      distance_px: for "nearest": distance from the box to the organ mask in pixels; else 0.
      distance_mm: the same in mm when spacing is known, else None.
      laterality: patient side "right" / "left" / "midline", or None when not meaningful.
      zone: "upper" / "middle" / "lower" third of the host organ (by box centre), or None.
      location: human-readable location, e.g. "right upper zone", "left lobe of liver".
      size_mm: (width, height) of the box in mm when spacing is known, else None.
    """

    organ: str
    score: float
    method: str
    distance_px: float = 0.0
    distance_mm: Optional[float] = None
    laterality: Optional[str] = None
    zone: Optional[str] = None
    location: str = ""
    size_mm: Optional[tuple[float, float]] = None


@dataclasses.dataclass(frozen=True)
class SeedRationale:
    """The structured seed sentence and the fields behind it."""

    text: str
    lesion_class: str
    organ: str
    location: str
    modality: str
    box_norm: Optional[Box]  # None for a negative image
    laterality: Optional[str] = None
    zone: Optional[str] = None
    size_mm: Optional[tuple[float, float]] = None
    organs_examined: tuple[str, ...] = ()  # for a negative image: the structures the "no finding" covers


@dataclasses.dataclass(frozen=True)
class QAView:
    """One curriculum view of a record. `cot` is empty for Hard."""

    question: str
    answer: str
    cot: str = ""
    answer_type: str = "open"  # "open" or "closed" (yes/no)


@dataclasses.dataclass(frozen=True)
class CurriculumQA:
    easy: QAView
    medium: QAView
    hard: QAView
    backend: str = "template"  # which backend wrote it ("template", "llm", "template_fallback:<reason>")


@dataclasses.dataclass
class SynthInput:
    """What a CoT-QA backend sees for one (image, lesion).

    Attributes:
      seed: the seed rationale of the target lesion (its `box_norm` is the box the CoT must cite).
      image_lesions: seed rationales of *all* lesions of this image (the target included), so a Medium/Hard
        question can name what it asks about or its answer can cover every lesion.
      class_vocab: the lesion classes of this image's modality in the dataset (for absent-class closed
        questions: a chest radiograph is not asked about kidney cysts).
      key: a stable string (the salted image id + lesion index) that seeds every random choice.
      pixels: the image (uint8) for backends that send it to a VLM; templates ignore it.
    """

    seed: SeedRationale
    image_lesions: list[SeedRationale]
    class_vocab: list[str]
    key: str
    pixels: Optional[np.ndarray] = None


@dataclasses.dataclass(frozen=True)
class Reject:
    """An input that did not become a record, with the reason. Written to `rejects.jsonl`.

    `item` names the file/row (never a patient identifier: use the salted image id or the file path relative to
    the dataset root); `kind` is `image` (a whole image dropped) or `lesion` (one box dropped) or `row` (an
    annotation row that could not be parsed), or `masks` (a diagnostic, not a loss: the image's mask file was
    unusable, named with the reason, and the image went on with the fallback segmenter).
    """

    kind: str
    item: str
    reason: str
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)

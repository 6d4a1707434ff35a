"""The prompts sent to the VLM, per stage, following the paper's generation step.

The paper (and the authors' code) asks a medical VLM, shown the image, for one `Question | Reasoning | Answer`
per stage: Easy about the *highlighted region* (the box is drawn on the image we send), Medium about
abnormalities in the *whole image* naming the organ, both with reasoning that cites the box; Hard a general
question (no location; reasoning optional). We add what their prompts left implicit and their outputs got
wrong: the seed rationale and the exact box text to cite, the short-answer rule, and for images with several
lesions the rule that keeps every question answerable.

`stage_messages` is pure: the same inputs give the same messages (hence the same cache key).
"""

from __future__ import annotations

import numpy as np

from data_gen.synth.scene import Scene, modality_key
from data_gen.types import SynthInput

SYSTEM = ("You are an expert radiologist who writes visual question-answer pairs with step-by-step reasoning for "
          "training a medical vision-language model. Be factual and concise; use only what the image and the "
          "given findings support.")

_FORMAT = ("Reply on one line exactly as:\nQuestion: <question> | Reasoning: <step-by-step reasoning> | "
           "Answer: <short answer>")
_IMAGE_KIND = {"xray": "radiograph", "ct": "CT image", "mri": "MR image", "generic": "medical image"}
BOX_COLOR = (255, 0, 0)


def _findings(inp: SynthInput) -> str:
    others = [s.text for s in inp.image_lesions if s is not inp.seed and s != inp.seed]
    if not others:
        return ""
    return ("Other findings in this image: " + " ".join(others) + " Because the image has several findings, "
            "the question must name the finding or the region it asks about, or the answer must list every "
            "finding.\n")


def stage_prompt(stage: str, inp: SynthInput, scene: Scene) -> str:
    """The user text of one stage (the image goes in a separate content part)."""
    seed = inp.seed
    kind = _IMAGE_KIND[modality_key(seed.modality)]
    if scene.negative:
        organs = ", ".join(scene.organs_examined) or "the visible anatomy"
        common = (f"The image is a {kind} with no abnormal finding. Known: {seed.text}\n")
        task = {
            "easy": "Write one question asking whether there is any abnormality in this image, reasoning that goes "
                    f"modality -> anatomy ({organs}) -> no focal lesion, and the answer 'no'.",
            "medium": f"Write one question asking whether a specific structure ({organs}) shows an abnormality or "
                      "a given finding, reasoning that goes modality -> anatomy -> no focal lesion, and the answer "
                      "'no'. Do not mention any box.",
            "hard": "Write one general yes/no question about whether this image shows an abnormality or a given "
                    "finding, and the answer 'no'. Do not mention any location or box.",
        }[stage]
        return common + task + " Do not cite any box coordinates.\n" + _FORMAT
    organ = scene.target.organ or "the affected structure"
    box = scene.box
    common = (f"The image is a {kind}. Known finding: {seed.text} Its bounding box is {box} as normalized "
              f"[x1, y1, x2, y2] (0 = left/top edge, 1 = right/bottom edge of the image).\n" + _findings(inp))
    reasoning_rule = (f"The reasoning must go modality -> anatomy ({organ}) -> location, citing the box exactly as "
                      f"{box} -> finding -> answer.")
    task = {
        "easy": "The lesion is highlighted by a red box drawn on the image. Write one question about the "
                f"highlighted region. {reasoning_rule}",
        "medium": "Write one question about the abnormalities in the whole image that names the organ "
                  f"({organ}); do not mention any box or highlighted region in the question. {reasoning_rule}",
        "hard": "Write one general question about this image without mentioning any location, box or region. "
                "Reasoning is optional.",
    }[stage]
    return (common + task + f" The answer must be short: the finding ({scene.target.cls}), the organ, or yes/no.\n"
            + _FORMAT)


def draw_box(pixels: np.ndarray, box_norm, width_px: int = 0) -> np.ndarray:
    """A copy of the image as RGB uint8 `[H, W, 3]` with the normalized xyxy box outlined in red (Easy's view).

    The outline is ~0.4% of the long side thick (at least 2 px) and drawn inside the box.
    """
    rgb = np.repeat(pixels[..., None], 3, axis=-1) if pixels.ndim == 2 else pixels[..., :3].copy()
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    t = width_px or max(2, round(0.004 * max(h, w)))
    x1, y1, x2, y2 = box_norm
    c1, c2 = int(np.clip(np.floor(x1 * w), 0, w - 1)), int(np.clip(np.ceil(x2 * w), 1, w))
    r1, r2 = int(np.clip(np.floor(y1 * h), 0, h - 1)), int(np.clip(np.ceil(y2 * h), 1, h))
    color = np.asarray(BOX_COLOR, np.uint8)
    rgb[r1:min(r1 + t, r2), c1:c2] = color
    rgb[max(r2 - t, r1):r2, c1:c2] = color
    rgb[r1:r2, c1:min(c1 + t, c2)] = color
    rgb[r1:r2, max(c2 - t, c1):c2] = color
    return rgb


def stage_image(stage: str, inp: SynthInput, scene: Scene):
    """The pixels sent with a stage's prompt: Easy gets the box drawn on; None when the input has no pixels."""
    if inp.pixels is None:
        return None
    if stage == "easy" and not scene.negative:
        return draw_box(inp.pixels, inp.seed.box_norm)
    return inp.pixels

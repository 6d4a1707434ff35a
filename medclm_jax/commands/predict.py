"""`medclm predict`: one image and a question -> the model's reasoning, answer and box, and the box drawn on the image.

    medclm predict --checkpoint RUN/final --image chest.dcm
    medclm predict --checkpoint ckpt/medgemma --image liver.nii.gz --slice 42 --question "Where is the lesion?"
    medclm predict --checkpoint RUN/final --image xray.png --json > answer.json

The image is read and windowed by data_gen's readers, as when the records were built: DICOM (Modality LUT, then
the VOI LUT / window for radiographs and MR, `--ct-window` for CT, MONOCHROME1 inverted), a NIfTI slice
(`--slice`), PNG / JPEG. It is squashed to the model's input size as the records' images are (the build's
intermediate `max_side` resize is skipped). The answer is generated in the checkpoint's own prompt layout (a
converted pretrained checkpoint or a training run's final/, as `medclm eval`). When the text holds a box (the first
one of the answer, else of the text: `eval/grounding.parse_box`), the box is drawn in red on the windowed image at
its own resolution and saved to `--out` (default: ./<image name>.medclm.png). This command composes both halves
(data_gen's readers, medclm_jax's model), which only command modules may do (tests/integration/test_layout.py).
Exit status 0 when answered, 2 on an unreadable image or unusable settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Optional, Sequence

from medclm_jax.commands.eval import BOX_FORMS, add_generation_args, generate_options, mesh_shape

DEFAULT_QUESTION = "What abnormality is seen in this image?"  # a Medium-style question: the answer cites the box


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medclm predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a model checkpoint (converted, or a training run's final/)")
    p.add_argument("--image", required=True, help="DICOM, NIfTI (with --slice), PNG or JPEG file")
    p.add_argument("--question", default=DEFAULT_QUESTION, help=f"default: {DEFAULT_QUESTION!r}")
    p.add_argument("--slice", type=int, default=None, help="slice index of a NIfTI volume (axial)")
    p.add_argument("--modality", default=None, help="xray, ct, mri, ... (default: from the DICOM tags)")
    p.add_argument("--ct-window", default="lung",
                   help="CT window: lung, mediastinum, abdomen, bone, auto, or CENTER,WIDTH in HU (default lung)")
    p.add_argument("--xray-voi", default="auto", choices=("auto", "percentile", "minmax"),
                   help="grey mapping of non-CT images: the DICOM's VOI LUT / window when it has one (auto), else a "
                        "percentile stretch")
    p.add_argument("--out", default=None, help="PNG with the box drawn (default: ./<image name>.medclm.png)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--box-form", choices=BOX_FORMS, default="auto", help="how the box in the answer is read")
    add_generation_args(p, batch_size=0)
    return p


def read_image(args: argparse.Namespace) -> Any:
    """data_gen's `LoadedImage` of `--image` (windowed uint8 pixels on the file's own grid)."""
    # pylint: disable=import-outside-toplevel
    from data_gen.imaging import ImageOptions, load_image
    from data_gen.types import ImageItem

    window: Any = args.ct_window
    if "," in window:
        try:
            window = tuple(float(x) for x in window.split(","))
        except ValueError:
            raise ValueError(f"--ct-window {args.ct_window!r}: expected a preset or CENTER,WIDTH in HU") from None
    # Nothing is shared here, so the build's de-identification refusals (burned-in text) do not apply.
    options = ImageOptions.from_config({"ct_window": window, "xray_voi": args.xray_voi,
                                        "burned_in_annotation": "allow", "secondary_capture": "allow"})
    name = os.path.basename(args.image)
    item = ImageItem(path=os.path.abspath(args.image), source="predict", image_key=name, patient_key=name,
                     modality=args.modality, slice_index=args.slice)
    return load_image(item, options)


def default_out(image: str) -> str:
    name = os.path.basename(os.path.normpath(image))
    for ext in (".nii.gz", ".dcm", ".nii", ".png", ".jpg", ".jpeg"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return f"{name}.medclm.png"


def save_overlay(pixels: Any, box: Sequence[float], path: str, image: str) -> str:
    """The box drawn on `pixels` (uint8, the file's grid), saved as PNG at `path` (never over the input)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    from medclm_jax.records.overlay import draw_box  # pylint: disable=import-outside-toplevel

    if os.path.realpath(path) == os.path.realpath(image):
        raise ValueError(f"--out {path}: is the input image; choose another file")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    Image.fromarray(draw_box(pixels, box)).save(path, format="PNG")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    # pylint: disable=import-outside-toplevel
    from data_gen.errors import ConfigError, InputError
    from medclm_jax.eval.generate import Generator, batch_unit
    from medclm_jax.eval.run import parse_output
    from medclm_jax.model import sharding

    try:
        loaded = read_image(args)
        mesh = sharding.make_mesh(mesh_shape(args.mesh))
        generator = Generator.load(args.checkpoint, generate_options(args, args.batch_size or batch_unit(mesh)), mesh)
        text = generator.answer(args.question, generator.model_input(loaded.pixels))
        parsed = parse_output(text, args.box_form, (loaded.width, loaded.height))
        overlay = None
        if parsed["box"] is not None:
            overlay = save_overlay(loaded.pixels, parsed["box"], args.out or default_out(args.image), args.image)
    except (InputError, ConfigError, FileNotFoundError, ValueError) as e:
        print(f"medclm predict: {e}", file=sys.stderr)
        return 2
    result = {"image": args.image, "question": args.question, "prediction": text, **parsed, "overlay": overlay,
              "modality": loaded.modality, "image_size": [loaded.width, loaded.height],
              "checkpoint": generator.checkpoint, "prompt_format": generator.prompt.format}
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(f"question:  {args.question}")
    print(f"reasoning: {parsed['reasoning'] or '-'}")
    print(f"answer:    {parsed['answer'] or '-'}")
    if overlay:
        print(f"box:       {parsed['box']} (normalized x1, y1, x2, y2; read as {parsed['box_form']})")
        print(f"wrote {overlay}")
    else:
        print(f"box:       none ({parsed['box_error'] or 'no box in the answer'}); no picture written")
    return 0


if __name__ == "__main__":
    sys.exit(main())

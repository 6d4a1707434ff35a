"""`medclm demo`: the main job on the built-in sample data, end to end on a CPU.

Today it runs the data half: writes the phantom dataset in real formats (DICOM + VinDr-style CSV + per-organ PNG
masks; DeepLesion-style 16-bit PNG + DL_info.csv + TotalSegmentator-style NIfTI masks), converts it with
`configs/data/phantom.py` into Easy/Medium/Hard VQA-CoT TFRecords, and prints the dataset summary and one record.
Training and evaluation stages are added to this command as they land (see README). The one module of
medclm_jax that imports data_gen: it composes both halves.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="medclm demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("-n", type=int, default=48, help="phantom images to generate")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from data_gen import phantom
    from data_gen.build import format_summary, run_build
    from data_gen.config import load_dataset_config
    from medclm_jax.records import decode_example, read_tfrecord, schema

    raw = os.path.join(args.workdir, "phantom")
    out = os.path.join(args.workdir, "dataset")
    print(f"[1/2] phantom data -> {raw}")
    phantom.write_phantom(raw, args.n, seed=args.seed)
    print(f"[2/2] data_gen build -> {out}")
    cfg = load_dataset_config("phantom", f"root={raw}")
    info = run_build(cfg, out, workers=args.workers, overwrite=True)
    print(format_summary(info))
    first = sorted(f for f in os.listdir(out) if f.endswith(".tfrecord"))[0]
    ex = decode_example(next(iter(read_tfrecord(os.path.join(out, first)))))
    print(f"\none record of {first}:")
    shown = (schema.DOMAIN, schema.LESION_CLASS, schema.LESION_BOX, schema.LESION_ORGAN, schema.LESION_LOCATION,
             schema.RATIONALE_SEED, schema.question_key("easy"), schema.cot_key("easy"), schema.answer_key("easy"),
             schema.question_key("medium"), schema.question_key("hard"), schema.answer_key("hard"))
    for key in shown:
        values = [v.decode() if isinstance(v, bytes) else round(v, 3) for v in ex.get(key, [])]
        print(f"  {key:<16} {values[0] if len(values) == 1 else values}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`medclm demo`: the main job on the built-in sample data, end to end on a CPU.

Writes the phantom dataset in real formats (DICOM + VinDr-style CSV + per-organ PNG masks; DeepLesion-style 16-bit
PNG + DL_info.csv + TotalSegmentator-style NIfTI masks), converts it with `configs/data/phantom.py` into
Easy/Medium/Hard VQA-CoT TFRecords, trains a model from scratch with the curriculum (`medclm train`), and evaluates
it on the held-out test split in all three stages (`medclm eval`, which also writes eval/report.html: the metric
tables, the training curves and examples with their boxes, one page that opens offline). Each stage is the real
command, so the demo shows exactly what a user runs; a rerun resumes the training run and the evaluation. `--quick`
is the few-minute version that CI runs. This module composes both halves, so it may import data_gen.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="medclm demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("-n", type=int, default=64, help="phantom images to generate")
    p.add_argument("--test", type=float, default=0.25,
                   help="share of the images held out for the test split (default 0.25: ~16 images, ~60 questions)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="small", help="model preset trained from scratch (default small)")
    p.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N test examples only")
    p.add_argument("--quick", action="store_true", help="tiny model, 8 steps, 6 test examples: minutes, for CI")
    p.add_argument("--data-only", action="store_true", help="stop after the dataset (no training, no evaluation)")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.steps, args.limit = "tiny", 8, args.limit or 6

    from data_gen import phantom
    from data_gen.build import format_summary, run_build
    from data_gen.config import load_dataset_config
    from medclm_jax.records import decode_example, read_tfrecord, schema

    raw = os.path.join(args.workdir, "phantom")
    out = os.path.join(args.workdir, "dataset")
    stages = 2 if args.data_only else 4
    if _same_phantom(raw, args.n, args.seed):  # rewriting it would change every file's mtime: a full rebuild
        print(f"[1/{stages}] phantom data -> {raw} (reused: {args.n} images, seed {args.seed})")
    else:
        print(f"[1/{stages}] phantom data -> {raw}")
        phantom.write_phantom(raw, args.n, seed=args.seed)
    print(f"[2/{stages}] data_gen build -> {out}")
    cfg = load_dataset_config("phantom", f"root={raw},test={args.test}")
    info = run_build(cfg, out, workers=args.workers)  # keeps the shards of an earlier demo whose inputs match
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
    if args.data_only:
        return 0

    from medclm_jax.commands import eval as eval_command
    from medclm_jax.commands import train as train_command

    run = os.path.join(args.workdir, "run")
    config = os.path.join(repo_configs(), "train.py")
    print(f"\n[3/4] medclm train ({args.model}, {args.steps} steps, Easy -> Medium -> Hard) -> {run}")
    rc = train_command.main(["--config", f"{config}:model={args.model},mesh=cpu,data={out},steps={args.steps}",
                             "--workdir", run, "--set", f"seed={args.seed}",
                             "--set", f"optim.warmup_steps={min(20, args.steps // 5)}",
                             *curriculum_for(args.steps)])
    if rc:
        return rc
    evaluation = os.path.join(args.workdir, "eval")
    print(f"\n[4/4] medclm eval on the held-out test split (all three stages) -> {evaluation}")
    eval_args = ["--checkpoint", os.path.join(run, "final"), "--data", out, "--split", "test", "--out", evaluation,
                 "--max-new-tokens", "96"] + (["--limit", str(args.limit)] if args.limit else [])
    rc = eval_command.main(eval_args)
    if rc == 0:
        print(f"\nmetrics: {os.path.join(evaluation, 'metrics.json')}; predictions: "
              f"{os.path.join(evaluation, 'predictions.jsonl')}; training log: {os.path.join(run, 'metrics.jsonl')}")
        print(f"report (open it in a browser, it works offline): {os.path.join(evaluation, 'report.html')}")
    return rc


def _same_phantom(folder: str, n: int, seed: int) -> bool:
    """Whether `folder` holds the phantom data a previous demo wrote with these settings (its phantom.json)."""
    try:
        with open(os.path.join(folder, "phantom.json"), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    return info.get("seed") == seed and info.get("n_cxr", 0) + info.get("n_ct", 0) == n


def curriculum_for(steps: int) -> list[str]:
    """`--set`s that scale the adaptive scheduler's step constants to a short run.

    Its defaults are sized for real datasets (Easy for at least 200 steps, Medium forced by step 2000): a demo of a
    few hundred steps would never leave Easy. Here a domain may enter Medium after 5% of the run, must by 25%, and
    Hard joins on a plateau or by 50%, so the demo shows the whole curriculum.
    """
    scaled = {"min_easy_steps": steps // 20, "max_easy_steps": max(1, steps // 4),
              "medium_ramp_steps": max(1, steps // 10), "max_medium_steps": max(1, steps // 4),
              "plateau_window": max(2, steps // 20)}
    return [x for k, v in scaled.items() for x in ("--set", f"curriculum.adaptive.{k}={v}")]


def repo_configs() -> str:
    """The repository's configs/ folder (config files ship with the repository and load by path)."""
    from data_gen.config import config_path

    return os.path.dirname(os.path.dirname(config_path("phantom")))


if __name__ == "__main__":
    sys.exit(main())

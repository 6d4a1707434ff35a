"""Curriculum ablation: the same compute budget under four stage schedulers, scored on the held-out test split.

Arms (`medclm_jax/train/curriculum.py`, chosen with `curriculum.policy`):
  adaptive   the full curriculum (Easy -> Medium -> Hard, loss-gated)
  hard_only  Hard answer supervision only
  uniform    Easy / Medium / Hard 1/3 each from step 0
  reference  the authors' released rule and constants
Every arm trains the same model preset for the same steps at the same batch size (so the same examples seen) with
the same seeds. The adaptive scheduler's step constants are scaled to the run length with the demo's
`curriculum_for` (its defaults are sized for real datasets and would keep a short run in Easy); `reference` has
epoch constants instead, so its `steps_per_epoch` is set to steps // 25: its 4-epoch Easy warm-up then covers the
first 16% of the run and its Hard epoch (19) falls at 76%, the whole published schedule inside the run.

Each stage is the real command, called in this process: `medclm-data phantom` + `medclm-data build` (phantom data,
split so the test split holds >= 60 images), `medclm train` (one run per arm and seed), `medclm eval` on the test
split (all three stages of every test record). The table holds the metrics of `medclm eval`'s metrics.json (mean
± std over seeds, overall and per stage) and the realized stage mix of each quarter of the run, from the training
log (`mix/{stage}` of WORKDIR/metrics.jsonl).

Resumable: OUT/results/<arm>-s<seed>.json caches a finished run's numbers; an interrupted training run continues
from its last checkpoint and an interrupted evaluation from its predictions file, so a re-run loses nothing.
Settings are fixed per OUT (OUT/settings.json): a re-run with other settings is refused.

    python benchmarks/curriculum.py --out runs/curriculum            # the ablation (see --help for the budget)
    python benchmarks/curriculum.py --quick --out /tmp/cq            # the smallest mode (a test runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ARMS = ("adaptive", "hard_only", "uniform", "reference")
STAGES = ("easy", "medium", "hard")
METRICS = (("llava_med", "open_recall", "open recall"), ("llava_med", "closed_accuracy", "closed acc"),
           ("grounding", "mean_iou", "mean IoU"), ("grounding", "acc_at_0.5", "acc@0.5"),
           ("organ", "agreement", "organ agr."), ("format", "reasoning_answer", "reasoning fmt"))
QUARTERS = (0.25, 0.5, 0.75, 1.0)
REFERENCE_EPOCHS = 25  # `reference`: the run spans this many of the authors' epochs (see the module docstring)


def arm_sets(arm: str, steps: int) -> list[str]:
    """The `--set`s that choose and configure `arm`'s scheduler for a run of `steps` steps."""
    from medclm_jax.commands.demo import curriculum_for

    sets = ["--set", f"curriculum.policy={arm}"]
    if arm == "adaptive":
        sets += curriculum_for(steps)
    elif arm == "reference":
        sets += ["--set", f"curriculum.steps_per_epoch={max(1, steps // REFERENCE_EPOCHS)}"]
    return sets


def build_data(out: str, args: argparse.Namespace) -> str:
    """The phantom dataset through the real commands; reused when OUT already holds its build."""
    from data_gen import cli as data_cli
    from medclm_jax.commands.demo import repo_configs

    raw, data = os.path.join(out, "phantom"), os.path.join(out, "dataset")
    if os.path.exists(os.path.join(data, "dataset_info.json")):
        return data
    size = str(args.image_px)
    rc = data_cli.main(["phantom", "--out", raw, "-n", str(args.n), "--cxr-size", size, "--ct-size", size])
    config = os.path.join(repo_configs(), "data", "phantom.py")
    rc = rc or data_cli.main(["build", "--config", f"{config}:root={raw},test={args.test},val={args.val}",
                              "--out", data, "--workers", "2", "--no-progress"])
    if rc:
        raise SystemExit(f"curriculum benchmark: building the phantom dataset in {out} failed (exit {rc})")
    return data


def train(data: str, workdir: str, arm: str, seed: int, args: argparse.Namespace) -> None:
    """`medclm train` for one arm and seed (continues an interrupted run from its checkpoint)."""
    from medclm_jax.commands import train as train_command
    from medclm_jax.commands.demo import repo_configs

    if os.path.isdir(os.path.join(workdir, "final")):
        return
    config = os.path.join(repo_configs(), "train.py")
    sets = {"seed": seed, "data.val_split": "", "eval_every": 0, "checkpoint_every": max(1, args.steps // 2),
            "optim.warmup_steps": min(20, args.steps // 5), "compile_cache": os.path.join(args.out, "xla_cache")}
    argv = ["--config", f"{config}:model={args.model},mesh=cpu,data={data},steps={args.steps},batch={args.batch}",
            "--workdir", workdir, *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")],
            *arm_sets(arm, args.steps)]
    if train_command.main(argv):
        raise SystemExit(f"curriculum benchmark: medclm train {' '.join(argv)} failed")


def evaluate(data: str, workdir: str, out: str, args: argparse.Namespace) -> dict[str, Any]:
    """`medclm eval` of the run's final model on the test split (continues an interrupted evaluation)."""
    from medclm_jax.commands import eval as eval_command

    argv = ["--checkpoint", os.path.join(workdir, "final"), "--data", data, "--split", "test", "--out", out,
            "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.eval_batch), "--no-progress"]
    argv += ["--limit", str(args.limit)] if args.limit else []
    if eval_command.main(argv):
        raise SystemExit(f"curriculum benchmark: medclm eval {' '.join(argv)} failed")
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def stage_mix(metrics_jsonl: str, steps: int) -> list[list[float]]:
    """Realized (easy, medium, hard) shares of the examples trained in each quarter of the run, from the training
    log's windowed `mix/{stage}` weighted by each window's `examples`."""
    sums = [[0.0, 0.0, 0.0] for _ in QUARTERS]
    with open(metrics_jsonl) as f:
        for line in f:
            row = json.loads(line)
            if row.get("kind") != "train":
                continue
            q = next(i for i, frac in enumerate(QUARTERS) if row["step"] <= frac * steps or frac == 1.0)
            for i, s in enumerate(STAGES):
                sums[q][i] += row["examples"] * row.get(f"mix/{s}", 0.0)
    return [[x / max(sum(row), 1e-9) for x in row] for row in sums]


def scores(out: str, name: str) -> dict[str, dict[str, float | None]]:
    """The table's metrics (percent) of run `name`, read from its `medclm eval` metrics.json, per scope ('overall'
    and each stage); None where a scope has no such score (e.g. organ agreement without any reasoning)."""
    with open(os.path.join(out, "eval", name, "metrics.json")) as f:
        metrics = json.load(f)["metrics"]
    sections = {"overall": metrics, **{s: metrics.get("by_stage", {}).get(s, {}) for s in STAGES}}
    return {scope: {f"{g}/{k}": sec.get(g, {}).get(k) for g, k, _ in METRICS} for scope, sec in sections.items()}


def cached_result(out: str, arm: str, seed: int) -> dict[str, Any] | None:
    """A finished run's summary with its scores, or None when the run has not finished."""
    name = f"{arm}-s{seed}"
    path = os.path.join(out, "results", f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return {**json.load(f), "scores": scores(out, name)}


def run_one(data: str, arm: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One arm and seed: trained, evaluated and summarized, or read back from OUT/results."""
    name = f"{arm}-s{seed}"
    cached = os.path.join(args.out, "results", f"{name}.json")
    if os.path.exists(cached):
        print(f"[{name}] cached: {cached}", flush=True)
        return cached_result(args.out, arm, seed)
    workdir = os.path.join(args.out, "runs", name)
    t0 = time.time()
    train(data, workdir, arm, seed, args)
    t1 = time.time()
    result = evaluate(data, workdir, os.path.join(args.out, "eval", name), args)
    summary = {"arm": arm, "seed": seed, "train_seconds": round(t1 - t0, 1), "eval_seconds": round(time.time() - t1, 1),
               "n_examples": result["run"]["n_examples"],
               "mix": stage_mix(os.path.join(workdir, "metrics.jsonl"), args.steps)}
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    with open(cached + ".tmp", "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(cached + ".tmp", cached)
    print(f"[{name}] trained in {summary['train_seconds']} s, evaluated in {summary['eval_seconds']} s", flush=True)
    return cached_result(args.out, arm, seed)


def _mean_std(values: Sequence[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    missing = f" ({len(vals)}/{len(values)})" if len(vals) < len(values) else ""
    return f"{statistics.fmean(vals):.1f} ± {std:.1f}{missing}"


def table(results: Sequence[dict[str, Any]], arms: Sequence[str]) -> str:
    """Markdown: scores (mean ± std over seeds) per scope and arm, then the stage mix per quarter and arm."""
    lines = []
    for scope in ("overall",) + STAGES:
        lines += [f"\n**{scope}** (test split; percent, mean ± std over seeds; (k/n): k of n seeds had a score)\n",
                  "| arm | " + " | ".join(label for _, _, label in METRICS) + " |",
                  "|---" * (len(METRICS) + 1) + "|"]
        for arm in arms:
            runs = [r for r in results if r["arm"] == arm]
            cells = [_mean_std([r["scores"][scope][f"{g}/{k}"] for r in runs]) for g, k, _ in METRICS]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["\n**stage mix** (share of trained examples Easy / Medium / Hard in each quarter of the steps, mean over "
              "seeds)\n", "| arm | " + " | ".join(f"steps ≤ {int(q * 100)}%" for q in QUARTERS) + " |",
              "|---" * (len(QUARTERS) + 1) + "|"]
    for arm in arms:
        runs = [r for r in results if r["arm"] == arm]
        cells = ["/".join(f"{statistics.fmean(r['mix'][q][i] for r in runs):.2f}" for i in range(3))
                 for q in range(len(QUARTERS))]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def check_settings(args: argparse.Namespace) -> None:
    """OUT's results are only comparable under one setting: record it, or refuse a different one."""
    keys = ("n", "test", "val", "image_px", "model", "steps", "batch", "limit", "max_new_tokens")
    now = {k: getattr(args, k) for k in keys}
    path = os.path.join(args.out, "settings.json")
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        if before != now:
            raise SystemExit(f"curriculum benchmark: {path} holds other settings ({before}) than this run ({now}); "
                             "use another --out, or remove that folder to start over")
        return
    os.makedirs(args.out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(now, f, indent=1)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/curriculum", help="everything goes here; a re-run resumes")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("-n", type=int, default=400, help="phantom images (half radiographs, half CT)")
    p.add_argument("--test", type=float, default=0.2, help="test split fraction of the images")
    p.add_argument("--val", type=float, default=0.05, help="val split fraction (unused by the runs)")
    p.add_argument("--image-px", type=int, default=256, help="phantom image side in pixels")
    p.add_argument("--model", default="tiny", help="preset trained from scratch (tiny: 32 px; small: 64 px)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N test examples only (0: all)")
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--report", action="store_true",
                   help="train nothing: the table of the runs finished so far (e.g. while the ablation runs)")
    p.add_argument("--quick", action="store_true",
                   help="smallest mode: 16 images, 4 steps, 1 seed, 6 test examples in one batch of 8, 8 new tokens "
                        "(for the test)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.test, args.steps, args.seeds, args.limit, args.max_new_tokens = 16, 0.25, 4, 1, 6, 8
        args.image_px, args.eval_batch = 64, 8
    arms = args.arms.split(",")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        p.error(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
    args.out = os.path.abspath(args.out)
    check_settings(args)
    if args.report:
        results = [r for seed in range(args.seeds) for arm in arms if (r := cached_result(args.out, arm, seed))]
        arms = [arm for arm in arms if any(r["arm"] == arm for r in results)]
        if not results:
            raise SystemExit(f"curriculum benchmark: no finished run in {args.out}/results yet")
    else:
        data = build_data(args.out, args)
        results = [run_one(data, arm, seed, args) for seed in range(args.seeds) for arm in arms]
        with open(os.path.join(args.out, "table.md"), "w") as f:
            f.write(table(results, arms))
    seeds = {arm: sum(r["arm"] == arm for r in results) for arm in arms}
    print(f"\n{args.model}, {args.steps} steps x batch {args.batch}, seeds per arm {seeds}, test examples per run: "
          f"{results[0]['n_examples']}\n{table(results, arms)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

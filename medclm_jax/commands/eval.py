"""`medclm eval`: a checkpoint's answers on our test split (all three stages) or a public benchmark, scored.

    medclm eval --checkpoint RUN/final --data DATA [--split test] [--limit N]
    medclm eval --checkpoint ckpt/medgemma --benchmark vqa_rad --root VQA_RAD [--batch-size 32]

Generation: the checkpoint's own prompt layout (trained from scratch, PaliGemma or Gemma 3; `--prompt-format`
overrides), greedy KV-cache decoding jitted over all devices (`--mesh`), `--batch-size` rows at a time. Output in
`--out` (default: RUN/eval/<task> for a training run's final/, else medclm-eval/<task>): predictions.jsonl (one line
per example: question, generated text, parsed reasoning / answer / box, reference, per-question scores),
references.jsonl, metrics.json, run.json, and report.html (one offline page: the metric tables, the training run's
curves, the best / worst / random examples with their images and boxes). Stopped midway (Ctrl-C, preemption,
`--limit`), the same command continues where it stopped; other settings are refused unless `--overwrite`. The table
printed at the end, and metrics.json, hold every metric of `medclm score` overall and per stage, domain, answer type,
modality and organ (`medclm score --pred OUT/predictions.jsonl --ref OUT/references.jsonl` recomputes them).
Exit status 0 when done, 2 on unusable input or settings (the message says which and what to do).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Optional, Sequence

# jax-free modules: `--help` starts fast; jax is imported once a command runs.
from medclm_jax.data.prompts import FORMATS as PROMPT_FORMATS
from medclm_jax.eval.benchmarks import LOADERS as BENCHMARKS
from medclm_jax.eval.grounding import FORMS as BOX_FORMS


def add_generation_args(p: argparse.ArgumentParser, batch_size: int = 8) -> None:
    """The flags `medclm eval` and `medclm predict` share: prompt layout, decoding, mesh."""
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=128, help="decode steps per answer (default 128)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--max-len", type=int, default=None,
                   help="prompt length in tokens, image placeholders included (default: placeholders + 128)")
    g.add_argument("--prompt-format", choices=sorted(PROMPT_FORMATS), default=None,
                   help="prompt layout (default: the checkpoint's: 'trained' for a tokenizer trained here, else "
                        "its family's)")
    g.add_argument("--task-prefix", default=None, help="text in front of the question (paligemma: 'answer en ')")
    g.add_argument("--system", default="", help="system instruction (gemma3 only)")
    default = f"default {batch_size}" if batch_size else "default: the smallest that divides over the mesh"
    g.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"rows per generation call, all processes together ({default}); a multiple of the mesh's "
                        "batch shards")
    g.add_argument("--mesh", default="data=-1",
                   help="device mesh axis sizes, e.g. 'data=-1' (default: data-parallel over every device) or "
                        "'data=1,tensor=-1' (a model split over the devices)")


def mesh_shape(text: str) -> dict[str, int]:
    """'data=-1,tensor=2' -> {'data': -1, 'tensor': 2}, axes checked."""
    from medclm_jax.config_file import parse_arg  # pylint: disable=import-outside-toplevel
    from medclm_jax.model.sharding import MESH_AXES  # pylint: disable=import-outside-toplevel

    out = {}
    for key, value in parse_arg(text).items():
        if key not in MESH_AXES:
            raise ValueError(f"--mesh {text!r}: unknown axis {key!r}; axes are {', '.join(MESH_AXES)}")
        try:
            out[key] = int(value)
        except ValueError:
            raise ValueError(f"--mesh {text!r}: {key}={value!r} is not an integer") from None
    return out


def generate_options(args: argparse.Namespace, batch_size: Optional[int] = None) -> Any:
    from medclm_jax.eval.generate import GenerateOptions  # pylint: disable=import-outside-toplevel

    return GenerateOptions(batch_size=batch_size or args.batch_size, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                           max_len=args.max_len, prompt_format=args.prompt_format, task_prefix=args.task_prefix,
                           system=args.system)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medclm eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="a model checkpoint (`medclm convert --from-hf` output, or a training run's final/ or the "
                        "run's folder itself)")
    p.add_argument("--data", default=None, help="a `medclm-data build` output folder (every record of --split in "
                   "the three stages)")
    p.add_argument("--benchmark", choices=sorted(BENCHMARKS), default=None, help="a public benchmark instead of --data")
    p.add_argument("--root", default=None, help="the benchmark's unpacked release folder")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--out", default=None,
                   help="output folder (default: RUN/eval/<task> for a run's final/, else medclm-eval/<task>)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N examples only (a rerun without "
                   "it continues)")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out that holds an evaluation")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="an unreadable record: stop with its shard and offset (default), or skip and count it")
    p.add_argument("--box-form", choices=BOX_FORMS, default="auto",
                   help="how boxes in the answers are read (see medclm_jax/eval/grounding.py)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_generation_args(p)
    return p


def default_out(checkpoint: str, task: str) -> str:
    """RUN/eval/<task> when `checkpoint` is a training run's final/ (beside its checkpoints/), else
    medclm-eval/<task> in the current folder."""
    parent = os.path.dirname(os.path.abspath(checkpoint))
    if os.path.basename(os.path.abspath(checkpoint)) == "final" and os.path.isdir(os.path.join(parent, "checkpoints")):
        return os.path.join(parent, "eval", task)
    return os.path.join("medclm-eval", task)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.data is None) == (args.benchmark is None):
        parser.error("give exactly one of --data DIR or --benchmark NAME --root DIR")
    if args.benchmark and not args.root:
        parser.error(f"--benchmark {args.benchmark} needs --root (the unpacked release folder)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    # pylint: disable=import-outside-toplevel
    from medclm_jax.eval import run
    from medclm_jax.eval.benchmarks import BenchmarkError
    from medclm_jax.eval.generate import Generator, resolve_checkpoint
    from medclm_jax.eval.score import format_table
    from medclm_jax.model import sharding
    from medclm_jax.model.checkpoint import check_apart
    from medclm_jax.records.errors import RecordError

    try:
        checkpoint = resolve_checkpoint(args.checkpoint)
        name = args.split if args.data else f"{args.benchmark}-{args.split}"
        out = args.out or default_out(checkpoint, name)
        for source in (checkpoint, args.data or args.root):
            check_apart(source, out)
        generator = Generator.load(checkpoint, generate_options(args), sharding.make_mesh(mesh_shape(args.mesh)))
        if args.data:
            task = run.record_task(args.data, args.split, generator.image_size, generator.cfg.family,
                                   on_error=args.on_error)
        else:
            run.claim_out_dir(out)  # before the loader extracts embedded images into it
            task = run.benchmark_task(args.benchmark, args.root, args.split, generator.image_size,
                                      generator.cfg.family, extract_dir=os.path.join(out, run.EXTRACTED))
        result = run.evaluate(task, generator, out, limit=args.limit, on_error=args.on_error,
                              box_form=args.box_form, overwrite=args.overwrite, progress=not args.no_progress)
    except (run.EvalError, BenchmarkError, RecordError, FileNotFoundError, ValueError) as e:
        print(f"medclm eval: {e}", file=sys.stderr)
        return 2
    if result.metrics is None:  # not process 0
        return 0
    r = result.run
    limited = f" (--limit {args.limit} of {r['n_total']})" if r["n_examples"] < r["n_total"] else ""
    print(f"{task.name}: {r['n_scored']} of {r['n_examples']} examples scored{limited}; {r['generated_now']} "
          f"generated now, {r['n_skipped']} skipped, {sum(r['not_generated'].values())} not generated "
          f"({', '.join(r['not_generated']) or 'none'})")
    print(format_table(result.metrics))
    if task.describe.get("overlap"):
        print(f"note: {task.describe['overlap']}")
    print(f"wrote {os.path.join(out, run.PREDICTIONS)}, {run.REFERENCES}, {run.METRICS}, {run.REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`medclm score --pred FILE --ref FILE [--json OUT]`: the field's metrics on prediction/reference files.

Accepts our JSONL and LLaVA-Med's own files (formats in `medclm_jax/eval/score.py`). Prints the table; with
`--json` also writes the flat metrics (`llava_med/open_recall`, `llava_med/closed_accuracy`, ... in percent).
Exit status 0 on success, 2 on unusable input (the message names the file, line and field).
No jax import: it starts fast and runs where jax is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from medclm_jax.eval.grounding import FORMS
from medclm_jax.eval.records import ScoreInputError, read_predictions, read_references
from medclm_jax.eval.score import flatten, format_table, score


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medclm score",
        description="Score predictions against references: LLaVA-Med open recall / closed accuracy (bit for bit), "
                    "strict VQA metrics, grounding IoU, organ agreement, format adherence, report metrics.",
    )
    p.add_argument("--pred", required=True, type=Path,
                   help="predictions: our JSONL ({id, prediction}) or LLaVA-Med's answer JSONL ({question_id, text})")
    p.add_argument("--ref", required=True, type=Path,
                   help="references: our JSONL ({id, answer, answer_type, ...}) or LLaVA-Med's test.json")
    p.add_argument("--json", type=Path, default=None, help="also write the flat metrics dict to this JSON file")
    p.add_argument("--box-form", choices=FORMS, default="auto",
                   help="how boxes are written in predictions (default: auto-detect, see medclm_jax/eval/grounding.py)")
    p.add_argument("--allow-missing", action="store_true",
                   help="score references without a prediction as empty (counted) instead of failing")
    return p


def _check_writable(path: Path) -> None:
    """Fail before scoring when `--json` cannot be written (a folder, a missing or read-only parent)."""
    if path.is_dir():
        raise ScoreInputError(f"--json {path}: is a folder; give a file name, e.g. {path / 'metrics.json'}")
    parent = path.parent if str(path.parent) else Path(".")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK) or (
            path.exists() and not os.access(path, os.W_OK)):
        raise ScoreInputError(f"--json {path}: cannot write there ({existing} is not a writable folder); choose "
                              "another path")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.json is not None:
            _check_writable(args.json)
        preds = read_predictions(args.pred)
        refs = read_references(args.ref)
        if not refs:
            raise ScoreInputError(f"{args.ref}: no references found")
        metrics = score(preds, refs, box_form=args.box_form, allow_missing=args.allow_missing)
    except ScoreInputError as e:
        print(f"medclm score: {e}", file=sys.stderr)
        return 2
    print(format_table(metrics))
    if args.json is not None:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(flatten(metrics), indent=1, sort_keys=True) + "\n", encoding="utf-8")
        except OSError as e:
            print(f"medclm score: --json {args.json}: cannot write it ({e.strerror or e}); choose another path",
                  file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

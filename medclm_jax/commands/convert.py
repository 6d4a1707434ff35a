"""`medclm convert`: Hugging Face VLM checkpoints (safetensors + config.json) <-> our model checkpoint (Orbax).

  medclm convert --from-hf HF_DIR --to DIR      PaliGemma 1/2 or Gemma 3 / MedGemma -> our model checkpoint
                                                (params + config metadata), tokenizer files copied
  medclm convert --from DIR --to-hf HF_DIR      back to (sharded) safetensors + config.json that
                                                transformers (and vLLM) load
  medclm convert --from DIR --to DIR2 --layout unrolled|scan
                                                the same checkpoint with layers unrolled (serving: ring-buffer
                                                KV caches) or stacked for nn.scan (training)

The conversion is `medclm_jax.model.convert`; the checkpoint layout is `medclm_jax.model.checkpoint`.
The output is never the input, nor a folder holding it or inside it; it is a new or empty folder, or (with
`--overwrite`) an earlier output of ours, of which only what it wrote is replaced: a folder holding anything else
is refused before anything is read or written.
Exit status 0 on success, 1 on an unusable input or output folder (one line naming it), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import logging
import sys

import jax
import numpy as np

from medclm_jax.model import checkpoint, convert

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medclm convert", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  medclm convert --from-hf ~/hf/paligemma-3b-pt-224 --to ckpt/pg224\n"
               "  medclm convert --from ckpt/pg224 --to-hf out/pg224-hf")
    p.add_argument("--from-hf", dest="from_hf", metavar="DIR",
                   help="Hugging Face model folder (config.json + safetensors)")
    p.add_argument("--to", metavar="DIR", help="output folder for our checkpoint (with --from-hf)")
    p.add_argument("--from", dest="from_ours", metavar="DIR", help="our checkpoint folder (with --to-hf)")
    p.add_argument("--to-hf", dest="to_hf", metavar="DIR", help="output Hugging Face folder (with --from)")
    p.add_argument("--param-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="dtype of the imported params (auto: as stored)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"],
                   help="compute dtype recorded in the config (default: bfloat16)")
    p.add_argument("--layout", default=None, choices=["scan", "unrolled"],
                   help="stack layers for nn.scan (training; the default for --from-hf) or keep one subtree "
                        "per layer (serving: ring-buffer KV caches on sliding-window layers); with --from DIR "
                        "--to DIR it re-saves our checkpoint in that layout")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier checkpoint at --to, or an earlier export at --to-hf (only what it wrote "
                        "is removed; a folder holding anything else is refused)")
    p.add_argument("--max-shard-gb", type=float, default=2.0, help="safetensors shard size for --to-hf")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    relayout_only = bool(args.from_ours and args.to and not args.from_hf and not args.to_hf)
    if relayout_only and args.layout is None:
        parser.error("--from DIR --to DIR re-saves a checkpoint in another layout: give --layout scan|unrolled")
    if not relayout_only and (bool(args.from_hf) == bool(args.from_ours) or bool(args.from_hf) != bool(args.to)
                              or bool(args.from_ours) != bool(args.to_hf)):
        parser.error("use --from-hf DIR --to DIR, --from DIR --to-hf DIR, or --from DIR --to DIR --layout ...")
    source = args.from_hf or args.from_ours
    try:
        # Refuse an unusable output before the (slow) load: never the input itself, and only a new or empty
        # folder or an earlier output of ours.
        checkpoint.check_apart(source, args.to or args.to_hf)
        if args.to:
            checkpoint.check_output_dir(args.to, args.overwrite)
        else:
            convert.check_export_dir(args.to_hf, args.overwrite)
        if relayout_only:
            cfg, params = convert.relayout(*checkpoint.load_checkpoint(args.from_ours),
                                           scan_layers=args.layout == "scan")
            params = convert.to_jax_leafwise(params)
            checkpoint.save_checkpoint(args.to, cfg, params, tokenizer_dir=args.from_ours, overwrite=args.overwrite)
            log.info("wrote %s (%s layout)", args.to, args.layout)
        elif args.from_hf:
            cfg, params = convert.load_hf(args.from_hf, param_dtype=args.param_dtype, dtype=args.dtype,
                                          scan_layers=(args.layout or "scan") == "scan")
            params = convert.to_jax_leafwise(params)
            checkpoint.save_checkpoint(args.to, cfg, params, tokenizer_dir=args.from_hf, overwrite=args.overwrite)
            log.info("wrote %s (%s, %s params)", args.to, cfg.family,
                     f"{sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)):,}")
        else:
            cfg, params = checkpoint.load_checkpoint(args.from_ours)
            files = convert.export_hf(params, cfg, args.to_hf, tokenizer_dir=args.from_ours,
                                      max_shard_bytes=int(args.max_shard_gb * (1 << 30)), overwrite=args.overwrite)
            log.info("wrote %s: %s", args.to_hf, ", ".join(files))
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"medclm convert: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # permissions, a full disk
        print(f"medclm convert: error: {e.filename or args.to or args.to_hf}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

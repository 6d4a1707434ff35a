"""`medclm-data build`: convert a detection dataset into sharded curriculum TFRecords.

    medclm-data build --config configs/data/vindr_cxr.py:root=/data/vindr,masks=/data/cxas --out /data/out \
        [--workers 8] [--runner local|beam] [--set write.records_per_shard=512] [--overwrite]

The build itself (resume, rejects, dataset_info.json) is `data_gen.build.run_build`. Arguments this parser does
not know go to Beam with `--runner beam`. A whole-dataset problem (a config key, a CSV missing a column) exits
with status 2 and one line, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from data_gen.build import format_summary, run_build
from data_gen.errors import ConfigError, InputError
from medclm_jax.config_file import ConfigFileError, load_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medclm-data build", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="configs/data/<name>.py[:k=v,...]")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set write.records_per_shard=256")
    p.add_argument("--runner", choices=["local", "beam"], default="local")
    p.add_argument("--workers", type=int, default=1, help="processes for the local runner")
    p.add_argument("--overwrite", action="store_true", help="replace a different build in --out")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = build_parser()
    args, beam_args = p.parse_known_args(argv)
    if beam_args and args.runner != "beam":
        p.error(f"unrecognized arguments: {' '.join(beam_args)}")
    try:
        cfg = load_config(args.config, args.set)
        info = run_build(cfg, args.out, runner=args.runner, workers=args.workers, overwrite=args.overwrite,
                         progress=not args.no_progress, pipeline_args=beam_args)
    except (ConfigFileError, ConfigError, InputError) as e:
        # Whole-dataset problems (a config key, a CSV missing a column): one clear line, no traceback.
        p.error(str(e))
    print(format_summary(info))
    print(f"wrote {args.out}/dataset_info.json and rejects.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())

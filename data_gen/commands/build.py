"""`medclm-data build`: convert a detection dataset into sharded curriculum TFRecords.

    medclm-data build --config configs/data/vindr_cxr.py:root=/data/vindr,masks=/data/cxas --out /data/out \
        [--workers 8] [--runner local|beam] [--set write.records_per_shard=512] [--overwrite]

The build itself (resume, rejects, dataset_info.json, what may be written where) is `data_gen.build.run_build`.
Arguments this parser does not know go to Beam with `--runner beam`.

Exit status: 0 built; 1 built, but no record was written or more than `--max-reject-share` of the images were
rejected for one same reason (that reason is the first line); 2 a whole-dataset problem (a config key, a CSV
missing a column, an unusable `--out`: one line, no traceback, nothing written); 128 + the signal when stopped by
Ctrl-C or SIGTERM (the workers are stopped, the finished shards kept, and the line says how to resume).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from typing import Optional, Sequence

from data_gen.build import DEFAULT_MAX_REJECT_SHARE, REJECTS, OutputError, build_failure, format_summary, run_build
from data_gen.errors import ConfigError, InputError
from medclm_jax.config_file import ConfigFileError, load_config


class Stopped(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so the same clean-up runs (`except Exception` in the
    per-image conversion does not swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum, frame):
    signal.signal(signum, signal.SIG_IGN)  # a second signal must not interrupt the clean-up
    raise Stopped(signum)


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medclm-data build", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="configs/data/<name>.py[:k=v,...]")
    p.add_argument("--out", required=True,
                   help="output folder: new, empty, or holding an earlier build of this command (never a dataset "
                        "folder)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set write.records_per_shard=256")
    p.add_argument("--runner", choices=["local", "beam"], default="local")
    p.add_argument("--workers", type=int, default=1, help="processes for the local runner")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the earlier build in --out (only the files it wrote are removed) and rebuild "
                        "from scratch")
    p.add_argument("--allow-out-inside-root", action="store_true",
                   help="allow --out inside the dataset folder (never the dataset folder itself or one holding it)")
    p.add_argument("--max-reject-share", type=_share, default=DEFAULT_MAX_REJECT_SHARE, metavar="F",
                   help="exit with status 1 when more than this share of the images is rejected for one same reason "
                        f"(default {DEFAULT_MAX_REJECT_SHARE}; 1: only when every image is)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    args, beam_args = p.parse_known_args(argv)
    if beam_args and args.runner != "beam":
        p.error(f"unrecognized arguments: {' '.join(beam_args)}")
    in_main_thread = threading.current_thread() is threading.main_thread()  # where signal handlers can be set
    previous_handler = signal.signal(signal.SIGTERM, _stop) if in_main_thread else None
    try:
        cfg = load_config(args.config, args.set)
        info = run_build(cfg, args.out, runner=args.runner, workers=args.workers, overwrite=args.overwrite,
                         progress=not args.no_progress, pipeline_args=beam_args,
                         allow_out_inside_root=args.allow_out_inside_root)
    except (ConfigFileError, ConfigError, InputError, OutputError) as e:
        # Whole-dataset problems (a config key, a CSV missing a column, an unusable --out): one line, no traceback.
        p.exit(2, f"{p.prog}: error: {e}\n")
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"{p.prog}: stopped by {signal.Signals(signum).name}: the workers are stopped and the finished shards "
              f"in {args.out} are kept. To resume, run the same command again:\n  "
              f"{shlex.join(['medclm-data', 'build', *argv])}", file=sys.stderr)
        return 128 + int(signum)
    except OSError as e:  # disk full, permissions changed mid-build, ...
        print(f"{p.prog}: error: {e.filename or args.out}: {e.strerror or e}. The finished shards are kept: fix "
              "this, then run the same command again to resume", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
    failure = build_failure(info, args.max_reject_share, args.out)
    if failure:
        print(f"{p.prog}: error: {failure}", file=sys.stderr)
    print(format_summary(info))
    print(f"wrote {args.out}/dataset_info.json; the rejects, which name source files, are in {args.out}/{REJECTS} "
          "(keep them with the data: they are not part of the dataset)")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())

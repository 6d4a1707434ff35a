"""`medclm train`: curriculum training of a VLM on a `medclm-data build` output; resumes where it stopped.

    medclm train --config configs/train.py:model=tiny,mesh=cpu,data=DIR --workdir RUN [--set key=value ...]
    medclm train --config configs/train.py:model=paligemma_3b_224,mesh=gpu_1x8 --compile_only

The run is `medclm_jax.train.loop.train_and_evaluate`; the config's keys are documented in `configs/train.py`.
Run the same command again to continue a stopped run (its workdir's newest checkpoint). SIGTERM / SIGINT save a
checkpoint and exit 0 with a line saying how to resume. `--compile_only` lowers and compiles the train step for
the configured mesh from shapes alone and prints XLA's bytes per device (`memory_analysis()`); with `--topology`
(e.g. `v5e:16x16`) it compiles for a TPU slice from this machine, which needs the TPU compiler (libtpu)
installed here.
Exit status 0 when done or stopped by a signal, 1 on a non-finite loss or an unusable input, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medclm train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="configs/train.py:model=...,mesh=...,data=DIR")
    p.add_argument("--workdir", help="the run's folder: checkpoints, metrics.jsonl, final/ (required to train)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set optim.lr=1e-4")
    p.add_argument("--compile_only", "--compile-only", action="store_true",
                   help="compile the train step for the mesh and print its bytes per device; train nothing")
    p.add_argument("--topology", default=None,
                   help="with --compile_only: a TPU topology to compile for from this machine (needs libtpu)")
    return p


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.3f} GiB ({n:,} bytes)"


def _topology_devices(name: str) -> list:
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel

    try:
        return list(topologies.get_topology_desc(name, platform="tpu").devices)
    except Exception as e:  # pylint: disable=broad-except  # no TPU plugin: RuntimeError / ValueError / ...
        raise SystemExit(f"medclm train: cannot describe TPU topology {name!r} on this machine ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); ahead-of-time TPU compilation needs the TPU "
                         "compiler plugin (libtpu) installed, which a CPU-only environment lacks") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save INFO lines
    from medclm_jax.config_file import ConfigFileError, load_config  # pylint: disable=import-outside-toplevel
    from medclm_jax.train import loop, metrics  # pylint: disable=import-outside-toplevel

    try:
        config = load_config(args.config, args.set)
    except ConfigFileError as e:
        print(f"medclm train: {e}", file=sys.stderr)
        return 2
    if args.compile_only:
        devices = _topology_devices(args.topology) if args.topology else None
        report = loop.compile_only(config, devices)
        print(f"train step of {config.model.name}, global batch {config.batch_size} x {config.data.max_len} tokens, "
              f"mesh {dict(config.mesh)}: bytes per device")
        for key in ("arguments", "outputs", "aliased", "temporaries", "total"):
            if key in report:
                print(f"  {key:<12} {_gib(report[key])}")
        return 0
    if not args.workdir:
        parser.error("--workdir is required to train")
    if not config.data.dir:
        parser.error("the config names no data: add data=DIR to --config or --set data.dir=DIR")
    try:
        result = loop.train_and_evaluate(config, args.workdir)
    except metrics.NonFiniteLoss as e:
        print(f"medclm train: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:  # config, data and checkpoint errors name what to fix
        logging.getLogger(__name__).debug("traceback", exc_info=True)
        print(f"medclm train: error: {e}", file=sys.stderr)
        return 1
    if result.stopped_by:
        again = " ".join(["medclm train", "--config", shlex.quote(args.config), "--workdir",
                          shlex.quote(args.workdir), *(f"--set {shlex.quote(s)}" for s in args.set)])
        print(f"medclm train: stopped by {result.stopped_by} after step {result.step}; checkpoint saved in "
              f"{result.checkpoint}. Resume with: {again}")
        return 0
    print(f"medclm train: done, {result.step} steps; model checkpoint {result.final} (export: medclm convert "
          f"--from {result.final} --to-hf DIR)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

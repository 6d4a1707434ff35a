"""`medclm` console script: one subcommand per job; each lives in its own module with a `main(argv)`.

Subcommands are imported lazily so `medclm score` does not pay for importing jax.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS = {
    "train": ("medclm_jax.train.main", "curriculum training (resumes from --workdir)"),
    "eval": ("medclm_jax.eval.run", "metrics table + JSON + HTML report for a checkpoint on a dataset"),
    "score": ("medclm_jax.eval.score_cli", "the field's metrics on prediction/reference files"),
    "predict": ("medclm_jax.eval.predict", "answer, CoT and box overlay for one image"),
    "convert": ("medclm_jax.model.convert", "pretrained weights in (--from-hf) and out (--to-hf)"),
    "demo": ("medclm_jax.demo", "phantom data -> data_gen -> train -> eval, minutes on CPU"),
}


def _usage(prog: str, commands: dict[str, tuple[str, str]]) -> str:
    lines = [f"usage: {prog} <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in commands.items()]
    lines += ["", f"`{prog} <command> --help` for a command's options."]
    return "\n".join(lines)


def dispatch(prog: str, commands: dict[str, tuple[str, str]], argv: list[str] | None) -> int:
    """Runs `commands[argv[0]]`'s module `main(argv[1:])`; the module is imported only when chosen."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(prog, commands))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"{prog}: unknown command {name!r}\n\n{_usage(prog, commands)}", file=sys.stderr)
        return 2
    module = importlib.import_module(commands[name][0])
    return int(module.main(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    return dispatch("medclm", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())

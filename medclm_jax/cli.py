"""`medclm` console script: one subcommand per job; each is a thin module in `medclm_jax/commands/` with a
`main(argv)`.

Subcommands are imported lazily so `medclm score` does not pay for importing jax.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help). A command is listed once its module exists (tests run every `--help`).
COMMANDS = {
    "score": ("medclm_jax.commands.score", "the field's metrics on prediction/reference files"),
    "convert": ("medclm_jax.commands.convert", "pretrained weights in (--from-hf) and out (--to-hf)"),
    "demo": ("medclm_jax.commands.demo", "phantom data -> data_gen -> train -> eval on the test split (--quick: CI)"),
    "train": ("medclm_jax.commands.train", "curriculum training (Easy -> Medium -> Hard); resumes"),
    "eval": ("medclm_jax.commands.eval", "a checkpoint on a test split or benchmark: predictions + metrics; resumes"),
    "predict": ("medclm_jax.commands.predict", "one image + question -> reasoning, answer, box drawn on the image"),
    "inspect-batch": ("medclm_jax.commands.inspect_batch",
                      "PNG grid of the Easy/Medium/Hard views the model sees, with their texts"),
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

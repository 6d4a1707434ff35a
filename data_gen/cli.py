"""`medclm-data` console script: `build` (convert a detection dataset) and `phantom` (built-in sample data)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "build": ("data_gen.build", "convert a detection dataset into Easy/Medium/Hard VQA-CoT TFRecords"),
    "phantom": ("data_gen.phantom", "write the built-in sample dataset in real formats (DICOM + CSV + masks)"),
}


def _usage() -> str:
    lines = ["usage: medclm-data <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"medclm-data: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

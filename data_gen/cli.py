"""`medclm-data` console script: `build` (convert a detection dataset) and `phantom` (built-in sample data).

Each command is a thin module in `data_gen/commands/`, imported only when chosen (`medclm_jax.cli.dispatch`).
"""

from __future__ import annotations

import sys

from medclm_jax.cli import dispatch

COMMANDS = {
    "build": ("data_gen.commands.build", "convert a detection dataset into Easy/Medium/Hard VQA-CoT TFRecords"),
    "phantom": ("data_gen.commands.phantom", "write the built-in sample dataset in real formats (DICOM + CSV + masks)"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("medclm-data", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())

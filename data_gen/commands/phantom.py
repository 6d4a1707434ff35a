"""`medclm-data phantom --out DIR -n N [--seed S]`: write the built-in sample dataset and print its summary as JSON.

The dataset and its layout are `data_gen.phantom` (`write_phantom`). Exit status 2 when --out holds something
other than a previous phantom, or -n is negative.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from data_gen.phantom import write_phantom


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medclm-data phantom",
        description="Write the built-in sample dataset in real formats: DX/CR DICOM chest radiographs with a "
                    "VinDr-style CSV and per-organ PNG masks, DeepLesion-style 16-bit PNG CT slices with "
                    "DL_info.csv and TotalSegmentator-style NIfTI masks. Deterministic under --seed.")
    p.add_argument("--out", required=True, help="output folder (created; a previous phantom is replaced)")
    p.add_argument("-n", type=int, default=40, help="number of images, half radiographs, half CT (default 40)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--cxr-size", type=int, default=512, help="radiograph side in pixels (default 512)")
    p.add_argument("--ct-size", type=int, default=512, help="CT slice side in pixels (default 512)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = write_phantom(args.out, args.n, args.seed, cxr_size=args.cxr_size, ct_size=args.ct_size)
    except (FileExistsError, ValueError) as e:
        print(f"medclm-data phantom: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

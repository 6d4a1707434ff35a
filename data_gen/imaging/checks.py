"""Pixel sanity checks shared by every reader: an image that cannot carry a finding is rejected, not windowed."""

from __future__ import annotations

import numpy as np

from data_gen.errors import InputError


def check_pixels(values: np.ndarray, path: str) -> None:
    """Reject non-finite and constant images.

    A NaN (or inf) pixel poisons every window and statistic downstream; a constant image (all air, a blank
    export, a failed reconstruction) holds nothing to ask about.

    Args:
      values: the numeric pixel values (`[H, W]` or `[H, W, C]`) before windowing.
      path: the file, for the message.

    Raises:
      InputError: reason `nan_pixels` or `constant_image`.
    """
    v = np.asarray(values)
    if v.size == 0:
        raise InputError("the image has no pixels (zero rows or columns)", path=path, reason="empty_image")
    if np.issubdtype(v.dtype, np.floating):
        bad = ~np.isfinite(v)
        n_bad = int(bad.sum())
        if n_bad:
            raise InputError(
                f"{n_bad} of {v.size} pixels are NaN or infinite; fix or drop the file (the converter does not "
                "guess values for missing pixels)",
                path=path,
                reason="nan_pixels",
            )
    if v.min() == v.max():
        raise InputError(
            f"every pixel has the same value ({v.flat[0]!r}); a constant image holds no finding, drop it",
            path=path,
            reason="constant_image",
        )

"""The trainer's progress bar on process 0: step / total, ETA, steps/s and the last logged loss (tqdm).

    bar = ProgressBar(total_steps, start_step, active=jax.process_index() == 0)
    bar.advance()                 # after each dispatched step: host bookkeeping only, no device sync
    bar.show(record)              # at each train log line: its loss and steps/s (already on the host)
    bar.close()

It never waits for the devices: `advance` counts dispatched steps, and the loss comes from the log line, which the
trainer made from metrics fetched one step late (`train.metrics`). In steady state the dispatch rate is the device
rate, because the loop blocks on step s - 1's metrics before it dispatches step s + 1.

It draws only on a terminal: tqdm's `disable=None` turns it off when the stream is not a TTY (a batch job's log, a
pipe, `nohup`), where the log lines already say the same; on a terminal it redraws at most every `mininterval`
seconds. While it is shown, the `logging` lines are routed through tqdm so they print above the bar
(`tqdm.contrib.logging.logging_redirect_tqdm`).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Mapping, Optional, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


class ProgressBar:
    """A tqdm bar over training steps (module docstring); a no-op when inactive or not on a terminal."""

    def __init__(self, total: int, start: int, *, active: bool = True, file: Optional[TextIO] = None,
                 mininterval: float = 1.0):
        self._bar = tqdm(total=total, initial=start, unit="step", desc="train", dynamic_ncols=True,
                         file=file if file is not None else sys.stderr, mininterval=mininterval,
                         disable=None if active else True, smoothing=0.1)
        self._redirect = contextlib.ExitStack()
        if not self._bar.disable:
            self._redirect.enter_context(logging_redirect_tqdm())

    @property
    def enabled(self) -> bool:
        return not self._bar.disable

    def advance(self, steps: int = 1) -> None:
        self._bar.update(steps)

    def show(self, record: Mapping[str, Any]) -> None:
        """The train log line's loss (and MFU when it has one) beside the bar."""
        if self.enabled:
            postfix = {"loss": f"{record['loss']:.4f}"}
            if record.get("mfu") is not None:
                postfix["mfu"] = f"{record['mfu']:.1%}"
            self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self._bar.close()
        self._redirect.close()

"""Model FLOPs utilisation of a training run: its throughput in model FLOPs over the peak of all its devices.

    meter, note = Mfu.for_run(model_cfg, config.data.max_len, jax.devices()[0].device_kind, jax.device_count(),
                              config.peak_flops_per_device)   # meter None: the chip's peak is unknown
    record["mfu"] = meter(record["tokens_per_s"])

Numerator: the logged `tokens_per_s` (real text tokens, `mask_input`, of the global batches per second) times the
forward + backward model FLOPs of one token of a full row (`model.flops.flops_per_token` at `text_len` =
`data.max_len`, the length every row is padded to). Padding positions are computed but not counted, so padding
shows as lost utilisation (their share of the image cost included), as it should: it is work the run wastes.

Denominator: the bf16 dense peak of one chip times `jax.device_count()` (every device of the run, all processes).
The peak is `peak_flops_per_device` when the config sets it (needed on CPU, or to use another convention), else
the peak of the detected chip in `PEAK_BF16_FLOPS`; on a chip not in the table and without the key, MFU is left
out of the log, never guessed.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

from medclm_jax.model import flops
from medclm_jax.model.vlm import VLMConfig

# (jax `device_kind`, full match, case-insensitive; bf16 dense peak FLOP/s per chip; source). First match wins.
# TPU names are the ones jax itself maps to chip versions (jax/_src/pallas/mosaic/tpu_info.py,
# `chip_version_from_device_kind`); GPU names are CUDA's device names ("NVIDIA H100 80GB HBM3" is the SXM part).
# NVIDIA's datasheets quote tensor-core figures "with sparsity": the dense peak is half of them.
PEAK_BF16_FLOPS: tuple[tuple[str, float, str], ...] = (
    (r"TPU v4", 275e12, "Google Cloud TPU v4 docs: 275 TFLOPs bf16 per chip"),
    (r"TPU v5 lite|TPU v5e", 197e12, "Google Cloud TPU v5e docs: 197 TFLOPs bf16 per chip"),
    (r"TPU v5p?", 459e12, "Google Cloud TPU v5p docs: 459 TFLOPs bf16 per chip"),
    (r"TPU v6 lite|TPU v6e", 918e12, "Google Cloud TPU v6e (Trillium) docs: 918 TFLOPs bf16 per chip"),
    (r"NVIDIA H100.*PCIe.*", 1513e12 / 2, "NVIDIA H100 datasheet, PCIe: 1,513 TFLOPS bf16 with sparsity"),
    (r"NVIDIA H100.*NVL.*", 1671e12 / 2, "NVIDIA H100 datasheet, NVL: 1,671 TFLOPS bf16 with sparsity"),
    (r"NVIDIA H100.*", 1979e12 / 2, "NVIDIA H100 datasheet, SXM: 1,979 TFLOPS bf16 with sparsity"),
    (r"NVIDIA H200.*NVL.*", 1671e12 / 2, "NVIDIA H200 datasheet, NVL: 1,671 TFLOPS bf16 with sparsity"),
    (r"NVIDIA H200.*", 1979e12 / 2, "NVIDIA H200 datasheet, SXM: 1,979 TFLOPS bf16 with sparsity"),
    (r"NVIDIA A100.*", 312e12, "NVIDIA A100 datasheet: 312 TFLOPS bf16 dense (SXM and PCIe, 40 and 80 GB)"),
)


def chip_peak_flops(device_kind: str) -> Optional[tuple[float, str]]:
    """(bf16 dense peak FLOP/s, its source) of one chip named `device_kind`, or None when it is not in the table."""
    for pattern, peak, source in PEAK_BF16_FLOPS:
        if re.fullmatch(pattern, device_kind.strip(), flags=re.IGNORECASE):
            return peak, source
    return None


def peak_flops(device_kind: str, configured: float = 0.0) -> Optional[tuple[float, str]]:
    """(peak FLOP/s per device, where it comes from): `configured` when > 0, else the chip's; None when neither."""
    if configured and configured > 0:
        return float(configured), "config peak_flops_per_device"
    return chip_peak_flops(device_kind)


@dataclasses.dataclass(frozen=True)
class Mfu:
    """MFU from a throughput: `flops_per_token` (training, per text token), `peak` per device, `devices`."""

    flops_per_token: float
    peak: float
    devices: int

    def __call__(self, tokens_per_s: float) -> float:
        return flops.mfu(tokens_per_s, self.flops_per_token, self.peak, self.devices)

    @classmethod
    def for_run(cls, model_cfg: VLMConfig, text_len: int, device_kind: str, devices: int,
                configured_peak: float = 0.0) -> tuple[Optional["Mfu"], str]:
        """(the run's meter or None, a sentence for the log saying which peak, or why there is no MFU)."""
        found = peak_flops(device_kind, configured_peak)
        if found is None:
            return None, (f"no MFU in the log: the peak of {device_kind!r} is not known (train/mfu.py "
                          "PEAK_BF16_FLOPS); set peak_flops_per_device (FLOP/s per device) to log it")
        peak, source = found
        per_token = flops.flops_per_token(model_cfg, text_len, train=True)
        return cls(per_token, peak, int(devices)), (
            f"MFU against {peak / 1e12:.4g} TFLOP/s per device x {devices} ({source}; {device_kind!r}), "
            f"{per_token / 1e9:.4g} GFLOP per token (forward + backward, rows of {text_len} tokens)")

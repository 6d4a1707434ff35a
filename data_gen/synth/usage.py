"""What the CoT-QA backend did in a build: records written by the VLM, template fallbacks and their share, and
how many images each endpoint host received. Pure functions over the build's counters.

Counters it reads (summed over shards):
  * per record, from `pipeline.convert_image`: `synth:llm` (written by the VLM) and
    `synth:template_fallback:<reason>` (templates stood in; the reason of the failed stage);
  * the backend's own counters, when the runner merged them with `backend_counters(synthesizer)`:
    `synth_backend:images_sent:<host>`, `synth_backend:requests`, `synth_backend:cache_hit`, ...
"""

from __future__ import annotations

from typing import Any, Mapping

BACKEND_PREFIX = "synth_backend:"
_RECORD_LLM = "synth:llm"
_RECORD_FALLBACK = "synth:template_fallback:"
_IMAGES_SENT = BACKEND_PREFIX + "images_sent:"


def backend_counters(synthesizer: Any) -> dict[str, int]:
    """A synthesizer's `stats` under `BACKEND_PREFIX`, to merge into a shard's counters."""
    return {BACKEND_PREFIX + str(k): int(v) for k, v in dict(getattr(synthesizer, "stats", {}) or {}).items()}


def summarize(stats: Mapping[str, int], backend: str) -> dict[str, Any]:
    """The backend's share of the records, for `dataset_info.json` (`stats.synth`).

    Args:
      stats: the build's summed counters (see the module docstring).
      backend: `synth.backend`.

    Returns:
      {"backend", "records_by_vlm", "fallback_records", "fallback_share" (of the records the VLM was asked for,
      in [0, 1]), "fallback_reasons" {reason: records}, "images_sent" {host: images}, "requests", "cache_hits"};
      only {"backend"} for the template backend.
    """
    if backend != "llm":
        return {"backend": backend}
    by_vlm = int(stats.get(_RECORD_LLM, 0))
    reasons = {k[len(_RECORD_FALLBACK):]: int(v) for k, v in sorted(stats.items()) if k.startswith(_RECORD_FALLBACK)}
    fallback = sum(reasons.values())
    asked = by_vlm + fallback
    return {
        "backend": backend,
        "records_by_vlm": by_vlm,
        "fallback_records": fallback,
        "fallback_share": round(fallback / asked, 4) if asked else 0.0,
        "fallback_reasons": reasons,
        "images_sent": {k[len(_IMAGES_SENT):]: int(v) for k, v in sorted(stats.items()) if k.startswith(_IMAGES_SENT)},
        "requests": int(stats.get(BACKEND_PREFIX + "requests", 0)),
        "cache_hits": int(stats.get(BACKEND_PREFIX + "cache_hit", 0)),
    }


def format_usage(summary: Mapping[str, Any]) -> list[str]:
    """The lines the build prints at the end (none for the template backend), e.g.

        synth: 118 of 120 records by the VLM, 2 template fallbacks (1.7%: timeout 2)
        synth: 10.0.0.5 received 354 images
    """
    if summary.get("backend") != "llm":
        return []
    by_vlm, fallback = summary["records_by_vlm"], summary["fallback_records"]
    reasons = ", ".join(f"{r} {n}" for r, n in summary["fallback_reasons"].items())
    lines = [f"synth: {by_vlm} of {by_vlm + fallback} records by the VLM, {fallback} template fallbacks "
             f"({100 * summary['fallback_share']:.1f}%{': ' + reasons if reasons else ''})"]
    for host, n in summary["images_sent"].items():
        lines.append(f"synth: {host} received {n} images")
    if summary["fallback_share"] >= 0.5:
        lines.append("warning: most records fell back to templates; check the endpoint and the rejects of its replies")
    return lines

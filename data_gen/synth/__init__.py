"""CoT-QA synthesis: one protocol, two backends, chosen by `synth.backend` in the build config.

  template (default)  `templates.TemplateSynthesizer`: deterministic paraphrase banks, no network.
  llm                 `llm.LLMSynthesizer`: a VLM behind an OpenAI-compatible endpoint, validated, cached,
                      falling back to templates per record with the reason counted.

Usage (what `data_gen.pipeline` does):

    synthesizer = get_synthesizer(cfg.synth)
    qa = synthesizer.synthesize(SynthInput(seed=..., image_lesions=..., class_vocab=..., key=..., pixels=...))
    qa.easy.question, qa.easy.cot, qa.easy.answer, qa.backend

Before the first image the build calls `preflight(cfg.synth)` (the llm endpoint is local unless allowed, and
answers unless fallback is allowed; `endpoint.py`) and at the end reports `usage.summarize` / `usage.format_usage`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

from data_gen.synth.settings import LLMSettings, SynthSettings
from data_gen.types import CurriculumQA, SynthInput


@runtime_checkable
class QASynthesizer(Protocol):
    """Writes the Easy/Medium/Hard views of one (image, lesion). Implementations are thread-safe and picklable
    and keep a `stats` Counter (records written, fallbacks and their reasons, requests, cache hits)."""

    name: str
    stats: Any

    def synthesize(self, inp: SynthInput) -> CurriculumQA: ...

    def synthesize_many(self, inputs: Iterable[SynthInput]) -> list[CurriculumQA]: ...


def _template(settings: SynthSettings) -> QASynthesizer:
    from data_gen.synth.templates import TemplateSynthesizer

    return TemplateSynthesizer(settings)


def _llm(settings: SynthSettings) -> QASynthesizer:
    from data_gen.synth.llm import LLMSynthesizer

    return LLMSynthesizer(settings)


REGISTRY: dict[str, Callable[[SynthSettings], QASynthesizer]] = {"template": _template, "llm": _llm}


def preflight(cfg: Any = None) -> list[str]:
    """Checks the backend's endpoint before the first image (`endpoint.preflight`); returns lines to print.

    Raises:
      ConfigError: a bad setting, a remote endpoint not allowed, or an endpoint that does not answer (unless
        `synth.llm.allow_fallback`).
    """
    from data_gen.synth.endpoint import preflight as check

    settings = cfg if isinstance(cfg, SynthSettings) else SynthSettings.from_config(cfg)
    key_env = settings.llm.api_key_env
    return check(settings, api_key=os.environ.get(key_env, "") if key_env else "")


def get_synthesizer(cfg: Any = None) -> QASynthesizer:
    """The backend named by `cfg.backend` ('template' when cfg is None or has no backend).

    Args:
      cfg: the `synth` section of the build config (ConfigDict, dict or anything with attributes): backend, seed,
        llm (base_url, model, api_key_env, max_concurrency, timeout_s, retries, cache_dir, ...).

    Raises:
      ConfigError: unknown backend or a bad llm setting (the message names the key).
    """
    settings = cfg if isinstance(cfg, SynthSettings) else SynthSettings.from_config(cfg)
    return REGISTRY[settings.backend](settings)


__all__ = ["QASynthesizer", "get_synthesizer", "preflight", "REGISTRY", "SynthSettings", "LLMSettings"]

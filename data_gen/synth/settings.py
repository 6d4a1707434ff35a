"""The `synth` config section, read once into frozen, validated settings.

The build config (`configs/data/*.py`) holds an ml_collections `ConfigDict`; tests often pass a plain dict.
Both are read here so the backends work with typed values and a bad value fails early, naming its key.

```
synth.backend          'template' (default) | 'llm'
synth.seed             int: seeds every template choice together with SynthInput.key
synth.llm.base_url     OpenAI-compatible server root, e.g. 'http://127.0.0.1:8000/v1' (POST {base_url}/chat/completions)
synth.llm.model        model name the server expects (e.g. 'FreedomIntelligence/HuatuoGPT-Vision-34B')
synth.llm.api_key_env  name of the env var holding the API key ('' = no Authorization header)
synth.llm.max_concurrency  requests in flight at once, per process (a semaphore)
synth.llm.timeout_s    per-request timeout in seconds
synth.llm.retries      extra attempts per stage after an HTTP error, timeout or invalid reply
synth.llm.cache_dir    on-disk reply cache ('' = none); a re-run with the same inputs never re-asks
synth.llm.temperature, max_tokens, backoff_s (first retry delay; doubles each retry)
```
"""

from __future__ import annotations

import dataclasses
from typing import Any

from data_gen.errors import ConfigError

BACKENDS = ("template", "llm")


def _get(cfg: Any, key: str, default: Any) -> Any:
    if cfg is None:
        return default
    if hasattr(cfg, "get"):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


@dataclasses.dataclass(frozen=True)
class LLMSettings:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "default"
    api_key_env: str = ""
    max_concurrency: int = 4
    timeout_s: float = 120.0
    retries: int = 2
    cache_dir: str = ""
    temperature: float = 0.2
    max_tokens: int = 512
    backoff_s: float = 1.0

    @classmethod
    def from_config(cls, cfg: Any) -> "LLMSettings":
        d = cls()
        s = cls(
            base_url=str(_get(cfg, "base_url", d.base_url)).rstrip("/"),
            model=str(_get(cfg, "model", d.model)),
            api_key_env=str(_get(cfg, "api_key_env", d.api_key_env)),
            max_concurrency=int(_get(cfg, "max_concurrency", d.max_concurrency)),
            timeout_s=float(_get(cfg, "timeout_s", d.timeout_s)),
            retries=int(_get(cfg, "retries", d.retries)),
            cache_dir=str(_get(cfg, "cache_dir", d.cache_dir)),
            temperature=float(_get(cfg, "temperature", d.temperature)),
            max_tokens=int(_get(cfg, "max_tokens", d.max_tokens)),
            backoff_s=float(_get(cfg, "backoff_s", d.backoff_s)),
        )
        if not s.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"synth.llm.base_url must be an http(s) URL, got {s.base_url!r}")
        if s.max_concurrency < 1:
            raise ConfigError(f"synth.llm.max_concurrency must be >= 1, got {s.max_concurrency}")
        if s.retries < 0:
            raise ConfigError(f"synth.llm.retries must be >= 0, got {s.retries}")
        if s.timeout_s <= 0:
            raise ConfigError(f"synth.llm.timeout_s must be > 0, got {s.timeout_s}")
        if s.backoff_s < 0:
            raise ConfigError(f"synth.llm.backoff_s must be >= 0, got {s.backoff_s}")
        return s


@dataclasses.dataclass(frozen=True)
class SynthSettings:
    backend: str = "template"
    seed: int = 0
    llm: LLMSettings = dataclasses.field(default_factory=LLMSettings)

    @classmethod
    def from_config(cls, cfg: Any) -> "SynthSettings":
        backend = str(_get(cfg, "backend", "template")).lower()
        if backend not in BACKENDS:
            raise ConfigError(f"synth.backend must be one of {BACKENDS}, got {backend!r}")
        try:
            seed = int(_get(cfg, "seed", 0))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"synth.seed must be an integer, got {_get(cfg, 'seed', 0)!r}") from e
        llm = LLMSettings.from_config(_get(cfg, "llm", None)) if backend == "llm" else LLMSettings()
        return cls(backend=backend, seed=seed, llm=llm)

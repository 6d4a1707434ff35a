"""The `synth` config section, read once into frozen, validated settings whose fields hold its defaults.

The build config (`configs/data/*.py`) holds an ml_collections `ConfigDict` (its `synth` section is written from
these defaults by `data_gen.config`); tests often pass a plain dict. Both are read here so the backends work with
typed values and a bad key or value fails early, naming its key.

```
synth.backend          'template' (default) | 'llm'
synth.seed             int: seeds every template choice together with SynthInput.key
synth.llm.base_url     OpenAI-compatible server root, e.g. 'http://127.0.0.1:8000/v1' (POST {base_url}/chat/completions)
synth.llm.model        model name the server expects (e.g. 'FreedomIntelligence/HuatuoGPT-Vision-34B')
synth.llm.api_key_env  name of the env var holding the API key ('' or an unset variable = no Authorization header)
synth.llm.max_concurrency  requests in flight at once, per process (a semaphore)
synth.llm.timeout_s    per-request timeout in seconds
synth.llm.retries      extra attempts per stage after an HTTP error, timeout or invalid reply
synth.llm.cache_dir    on-disk reply cache ('' = none); a re-run with the same inputs never re-asks
synth.llm.temperature, max_tokens, backoff_s (first retry delay; doubles each retry)
synth.llm.allow_remote   False: the endpoint must be on this machine or its local network (loopback, private,
                         link-local addresses); True: images and seed text may go to a server elsewhere
synth.llm.allow_fallback False: an endpoint that does not answer before the first image stops the build; True:
                         the build goes on and records fall back to templates (counted, share reported)
```

What is sent: the windowed, de-identified image (as stored in the record; Easy's with the box drawn) and the
prompt built from the seed rationale, never DICOM tags, file names, paths or dataset ids (`data_gen.synth.prompts`).
The remote-host rule is checked here for IP literals and, with name resolution, by `endpoint.preflight` before the
first image.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from data_gen.errors import ConfigError
from data_gen.synth.endpoint import host_of, literal_scope, remote_refusal
from medclm_jax.config_file import settings_from

BACKENDS = ("template", "llm")


@dataclasses.dataclass(frozen=True)
class LLMSettings:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "default"
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 8
    timeout_s: float = 120.0
    retries: int = 2
    cache_dir: str = ""
    temperature: float = 0.2
    max_tokens: int = 512
    backoff_s: float = 1.0
    allow_remote: bool = False
    allow_fallback: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> "LLMSettings":
        return _validated(settings_from(cls, cfg, "synth.llm"))


def _validated(s: LLMSettings) -> LLMSettings:
    s = dataclasses.replace(s, base_url=s.base_url.rstrip("/"))
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
    if not 0 <= s.temperature <= 2:
        raise ConfigError(f"synth.llm.temperature must be in [0, 2], got {s.temperature}")
    if s.max_tokens < 1:
        raise ConfigError(f"synth.llm.max_tokens must be >= 1, got {s.max_tokens}")
    if not s.model.strip():
        raise ConfigError("synth.llm.model is empty: set it to the model name the server serves")
    if literal_scope(host_of(s.base_url)) == "remote" and not s.allow_remote:
        raise ConfigError(remote_refusal(s.base_url))
    return s


@dataclasses.dataclass(frozen=True)
class SynthSettings:
    backend: str = "template"
    seed: int = 0
    llm: LLMSettings = dataclasses.field(default_factory=LLMSettings)

    @classmethod
    def from_config(cls, cfg: Any) -> "SynthSettings":
        """Reads the `synth` ConfigDict, a dict, a SynthSettings or None (the defaults).

        The `llm` subsection's keys are always checked; its values are validated (and kept) only for the llm
        backend.

        Raises:
          ConfigFileError: a key that is not a field (the message names the nearest) or a value of the wrong type.
          ConfigError: an unknown backend or a bad llm setting.
        """
        s = settings_from(cls, cfg, "synth")
        backend = s.backend.lower()
        if backend not in BACKENDS:
            raise ConfigError(f"synth.backend must be one of {BACKENDS}, got {backend!r}")
        llm = _validated(s.llm) if backend == "llm" else LLMSettings()
        return dataclasses.replace(s, backend=backend, llm=llm)

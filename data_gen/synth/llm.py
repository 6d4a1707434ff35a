"""The LLM backend: a medical VLM behind any OpenAI-compatible chat endpoint writes the three views.

Per (image, lesion) and stage: build the prompt and the image (Easy with the box drawn), look the content key up
in the on-disk cache, else ask the server (at most `max_concurrency` requests in flight per process), parse and
validate the reply (`reply.py`), and retry on HTTP errors, timeouts and invalid replies up to `retries` times.
When a stage still fails, the whole record falls back to the template backend (so its three views stay
consistent) with `CurriculumQA.backend = 'template_fallback:<reason>'`, and the reason is counted in `stats`.

Only the windowed image and the prompt built from the seed rationale are sent (`prompts.py`), never DICOM tags,
paths or ids. The endpoint is checked before the first image by `endpoint.preflight` (local network unless
`synth.llm.allow_remote`; answering unless `synth.llm.allow_fallback`); a record that still fails afterwards
falls back as above, and the build reports the share (`usage.py`).

`stats` counters (a `collections.Counter`, thread-safe updates):
  requests, cache_hit, llm (records written by the VLM), fallback, fallback:<reason>, error:<reason>
  (http_error, timeout, connection_error, bad_response), invalid:<reason> (see reply.py), cache_invalid,
  images_sent:<host> (requests that carried an image, per endpoint host).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import threading
import time
from typing import Iterable, Optional

from data_gen.synth.cache import ReplyCache, cache_key, image_digest
from data_gen.synth.chat import ChatError, chat_completion, png_data_url
from data_gen.synth.endpoint import host_of
from data_gen.synth.prompts import SYSTEM, stage_image, stage_prompt
from data_gen.synth.reply import ReplyError, parse_reply, validate_reply
from data_gen.synth.scene import Scene
from data_gen.synth.settings import SynthSettings
from data_gen.synth.templates import STAGES, synthesize_views
from data_gen.types import CurriculumQA, QAView, SynthInput

# Client errors a retry cannot fix (bad request, auth, unknown model): fail the stage at once.
_NO_RETRY_STATUS = frozenset({400, 401, 403, 404, 405, 413, 422})


class _StageFailed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class LLMSynthesizer:
    """`QASynthesizer` that asks a VLM; see the module docstring. Picklable (locks are rebuilt per process)."""

    name = "llm"

    def __init__(self, settings: SynthSettings):
        self.settings = settings
        self.llm = settings.llm
        self.host = host_of(self.llm.base_url)
        self.cache = ReplyCache(self.llm.cache_dir)
        self.stats: collections.Counter[str] = collections.Counter()
        self._init_sync()

    def _init_sync(self) -> None:
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.llm.max_concurrency)

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"], state["_slots"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_sync()

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.stats[name] += n

    # ---- one record ------------------------------------------------------------------------------------------
    def synthesize(self, inp: SynthInput) -> CurriculumQA:
        scene = Scene.from_input(inp)
        views: dict[str, QAView] = {}
        for stage in STAGES:
            try:
                views[stage] = self._stage_view(stage, inp, scene)
            except _StageFailed as e:
                self._count("fallback")
                self._count(f"fallback:{e.reason}")
                qa = synthesize_views(inp, self.settings.seed)
                return dataclasses.replace(qa, backend=f"template_fallback:{e.reason}")
        self._count("llm")
        return CurriculumQA(easy=views["easy"], medium=views["medium"], hard=views["hard"], backend="llm")

    def synthesize_many(self, inputs: Iterable[SynthInput]) -> list[CurriculumQA]:
        """Records in input order; up to `max_concurrency` records are worked on (and requests sent) at once."""
        inputs = list(inputs)
        if len(inputs) <= 1:
            return [self.synthesize(inp) for inp in inputs]
        workers = min(self.llm.max_concurrency, len(inputs))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synth-llm") as pool:
            return list(pool.map(self.synthesize, inputs))

    # ---- one stage -------------------------------------------------------------------------------------------
    def _payload(self, prompt: str, image) -> dict:
        content = [{"type": "text", "text": prompt}]
        if image is not None:
            content.insert(0, {"type": "image_url", "image_url": {"url": png_data_url(image)}})
        return {
            "model": self.llm.model,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}],
            "temperature": self.llm.temperature,
            "max_tokens": self.llm.max_tokens,
        }

    def _validated(self, stage: str, text: str, inp: SynthInput, scene: Scene) -> QAView:
        return validate_reply(stage, parse_reply(text), scene, inp.seed.box_norm if not scene.negative else None)

    def _stage_view(self, stage: str, inp: SynthInput, scene: Scene) -> QAView:
        prompt = stage_prompt(stage, inp, scene)
        image = stage_image(stage, inp, scene)
        key = cache_key(self.llm.model, SYSTEM, prompt, image_digest(image))
        cached = self.cache.get(key)
        if cached is not None:
            try:
                view = self._validated(stage, cached, inp, scene)
                self._count("cache_hit")
                return view
            except ReplyError:
                self._count("cache_invalid")  # validation rules changed since: ask again
        payload: Optional[dict] = None
        api_key = os.environ.get(self.llm.api_key_env, "") if self.llm.api_key_env else ""
        reason = "no_attempt"
        for attempt in range(1 + self.llm.retries):
            if attempt and self.llm.backoff_s > 0:
                time.sleep(self.llm.backoff_s * 2 ** (attempt - 1))
            if payload is None:
                payload = self._payload(prompt, image)
            try:
                with self._slots:
                    self._count("requests")
                    if image is not None:
                        self._count(f"images_sent:{self.host}")
                    text = chat_completion(self.llm.base_url, payload, api_key=api_key, timeout_s=self.llm.timeout_s)
            except ChatError as e:
                reason = e.reason
                self._count(f"error:{reason}")
                if e.status in _NO_RETRY_STATUS:
                    break
                continue
            try:
                view = self._validated(stage, text, inp, scene)
            except ReplyError as e:
                reason = e.reason
                self._count(f"invalid:{reason}")
                continue
            self.cache.put(key, text, model=self.llm.model, stage=stage)
            return view
        raise _StageFailed(reason)

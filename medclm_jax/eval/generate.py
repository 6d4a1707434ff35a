"""Answering batches of (image, question) with a model checkpoint: the prompt of its family, KV-cache decoding
jitted over the device mesh, the generated text.

    gen = Generator.load("runs/tiny/final", GenerateOptions(batch_size=8))
    rows = [gen.prompt_row(question, gen.model_input(pixels)) for question, pixels in ...]   # <= gen.local_batch
    texts = gen.generate(rows, step=b)        # one string per row; None rows are padding and give None

Which prompt. A checkpoint is answered in the layout it was trained on (`data/prompts.py`): `trained` when its
tokenizer was made by `model.tokenizer.train_tokenizer` (the tiny/small presets trained from scratch; the tokenizer's
config says so), else its family's (`paligemma`: `answer en {question}\\n`; `gemma3`: the chat turn). The same rule
covers a converted pretrained checkpoint (`medclm convert --from-hf`) and a fine-tuned run's `final/`, which both
carry their tokenizer. `GenerateOptions.prompt_format` / `task_prefix` / `system` override it.

Decoding (`model.vlm.generate`, `model/decode.py`): prefill of image + prompt, then one token per step in a
`lax.while_loop` that stops when every row has written an end id; the end ids are the prompt format's
(`prompts.end_ids`: `<eos>`, or `<end_of_turn>` for gemma3), so decoding stops where training targets end. Greedy by
default; with a temperature, batch b samples with `fold_in(key(seed), b)`, so a resumed evaluation draws what the
uninterrupted one drew.

Sharding. Parameters are restored straight into their shardings on the mesh (logical axis rules,
`model/sharding.py`); each process builds `local_batch` rows, `shard_batch` makes the global arrays over the
batch axes, and the two jitted programs (image + prompt embedding, the decode loop) are traced under the mesh's
rules. The global batch must divide over the batch axes (`data` x `fsdp`). With several processes every process
gets its own rows' tokens back (the decoded tokens are gathered over processes).

Shapes are fixed (`batch_size` rows, `max_len` prompt tokens, `max_new_tokens` steps), so both programs compile
once per run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from medclm_jax.data import images, prompts
from medclm_jax.model import checkpoint as model_ckpt
from medclm_jax.model import decode, sharding, tokenizer, vlm

DEFAULT_TEXT_LEN = 128  # prompt tokens beside the image placeholders when `max_len` is not given


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    """How prompts are laid out and answers decoded (the command line's generation flags).

    Attributes:
      batch_size: global rows per generate call (a multiple of the mesh's batch shards).
      max_new_tokens: decode steps (an answer longer than this is cut).
      temperature, top_k, top_p: `decode.Sampling` (temperature 0 = greedy).
      seed: sampling seed (batch b uses `fold_in(key(seed), b)`).
      max_len: prompt length T in tokens, image placeholders included (Gemma 3); None = placeholders + 128.
      prompt_format: a key of `prompts.FORMATS`; None = the checkpoint's (module docstring).
      task_prefix: text in front of the question; None = the format's default (`answer en ` for paligemma).
      system: a system instruction (gemma3 only).
    """

    batch_size: int = 8
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_len: Optional[int] = None
    prompt_format: Optional[str] = None
    task_prefix: Optional[str] = None
    system: str = ""

    def __post_init__(self):
        if self.batch_size < 1 or self.max_new_tokens < 1 or (self.max_len is not None and self.max_len < 2):
            raise ValueError(f"GenerateOptions: need batch_size >= 1, max_new_tokens >= 1, max_len >= 2; got {self}")
        decode.Sampling(self.temperature, self.top_k, self.top_p)  # checks the ranges

    @property
    def sampling(self) -> decode.Sampling:
        return decode.Sampling(self.temperature, self.top_k, self.top_p)


def resolve_checkpoint(path: str) -> str:
    """The model checkpoint at `path`: the folder itself, or a training run's `final/` when given its workdir.

    Raises:
      FileNotFoundError: naming what was looked for.
    """
    path = os.path.abspath(os.fspath(path))
    for candidate in (path, os.path.join(path, "final")):
        if model_ckpt.is_checkpoint(candidate):
            return candidate
    if os.path.isdir(os.path.join(path, "checkpoints")):
        raise FileNotFoundError(f"{path}: a training run without final/ (it has not finished, or was stopped); "
                                "finish it with `medclm train` (it resumes), then evaluate WORKDIR/final")
    raise FileNotFoundError(f"{path}: not a model checkpoint (no _CHECKPOINT_METADATA, params/ and metadata/); pass "
                            "a `medclm convert --from-hf` output or a training run's final/ folder")


def trained_here(checkpoint_dir: str) -> bool:
    """Whether the checkpoint's tokenizer was trained by `tokenizer.train_tokenizer` (a model trained from scratch
    on our data, whose prompts use the `trained` format)."""
    path = os.path.join(checkpoint_dir, tokenizer.TOKENIZER_CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and isinstance(config.get("medclm"), dict) and bool(
        config["medclm"].get("trained_by"))


def model_input(pixels: np.ndarray, size: int, family: str) -> np.ndarray:
    """uint8[H, W] or [H, W, 3] (windowed) -> float32[size, size, 3] in [-1, 1], as the records' images reach the
    model (`data/images.py`: squash-resize with the family's filter, grey to three channels)."""
    return images.to_model_range(images.to_rgb(images.resize_square(np.asarray(pixels), size, family)))


def batch_unit(mesh: jax.sharding.Mesh) -> int:
    """The smallest global batch that divides over the mesh's batch axes (`batch` rule) and the processes."""
    spec = sharding.batch_sharding(mesh).spec
    axes = spec[0] if len(spec) else None
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return math.lcm(math.prod(mesh.shape[a] for a in axes), jax.process_count())


class Generator:
    """A model checkpoint ready to answer batches (module docstring). Build it with `Generator.load`.

    Attributes:
      cfg: the `VLMConfig`; params: its parameters on `mesh`; tok: its tokenizer.
      prompt: the `PromptSettings` prompts are encoded with; end_ids: the ids that end an answer.
      batch_size: global rows per call; local_batch: this process's rows.
    """

    def __init__(self, cfg: vlm.VLMConfig, params: Any, tok: Any, prompt: prompts.PromptSettings,
                 mesh: jax.sharding.Mesh, options: GenerateOptions, checkpoint: str = ""):
        self.cfg, self.params, self.tok, self.prompt, self.mesh, self.options = cfg, params, tok, prompt, mesh, options
        self.checkpoint = checkpoint
        self.end_ids = prompts.end_ids(tok, prompt)
        unit = batch_unit(mesh)
        if options.batch_size % unit:
            raise ValueError(f"batch size {options.batch_size} does not divide over the mesh's batch shards "
                             f"({dict(mesh.shape)}) and {jax.process_count()} process(es); use a multiple of {unit}")
        self.batch_size = options.batch_size
        self.local_batch = options.batch_size // jax.process_count()
        self._pad: Optional[dict[str, np.ndarray]] = None

    @classmethod
    def load(cls, checkpoint: str, options: GenerateOptions = GenerateOptions(),
             mesh: Optional[jax.sharding.Mesh] = None) -> "Generator":
        """Reads the checkpoint (weights straight into their shardings on `mesh`, default: data-parallel over all
        devices), its tokenizer and config, and fixes the prompt layout (module docstring).

        Raises:
          FileNotFoundError: not a checkpoint, or no tokenizer beside it.
          ValueError: the tokenizer does not match the model, or an option does not fit the format.
        """
        checkpoint = resolve_checkpoint(checkpoint)
        mesh = mesh or sharding.make_mesh()
        cfg = model_ckpt.load_config(checkpoint)
        with sharding.mesh_rules(mesh):
            abstract = jax.eval_shape(lambda: vlm.init_params(cfg, jax.random.key(0)))
        shardings = sharding.logical_to_sharding(abstract, mesh)["params"]
        # `load_checkpoint` without its second trace of the model: the stored tree is checked against this one.
        params = model_ckpt.load_params(checkpoint, sharding.unbox(abstract)["params"], shardings)
        tok = tokenizer.load_tokenizer(checkpoint)
        max_len = options.max_len or len(vlm.image_placeholder_ids(cfg)) + DEFAULT_TEXT_LEN
        settings = prompts.settings_for_model(
            cfg, tok, max_len=max_len, pretrained=not trained_here(checkpoint), prompt_format=options.prompt_format,
            task_prefix=options.task_prefix, system=options.system)
        return cls(cfg, {"params": params}, tok, settings, mesh, options, checkpoint)

    # -- rows -----------------------------------------------------------------------------------------------------

    @property
    def image_size(self) -> int:
        return self.cfg.vision.image_size

    def model_input(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels -> this model's float32[S, S, 3] input (`model_input`)."""
        return model_input(pixels, self.image_size, self.cfg.family)

    def prompt_row(self, question: str, image: np.ndarray, *, where: str = "") -> dict[str, np.ndarray]:
        """One row: `image` float32[S, S, 3] in [-1, 1] and the prompt of `question`, int32[T] each.

        Raises:
          prompts.TooLong: the prompt does not fit `max_len` (reason `prompt_too_long`).
        """
        tokens = prompts.encode_prompt(self.tok, self.prompt, question, where=where)
        image = np.asarray(image, np.float32)
        want = (self.image_size, self.image_size, 3)
        if image.shape != want:
            raise ValueError(f"{where + ': ' if where else ''}image of shape {image.shape}, the model takes {want}")
        return {"image": image, "text": tokens.text, "mask_ar": tokens.mask_ar, "mask_input": tokens.mask_input}

    def padding_row(self) -> dict[str, np.ndarray]:
        """A well-formed row that stands in for nothing (an empty question on a black image)."""
        if self._pad is None:
            s = self.image_size
            self._pad = self.prompt_row("", np.full((s, s, 3), -1.0, np.float32))
        return self._pad

    def describe(self) -> dict[str, Any]:
        """What decides the generated text (for an evaluation's identity: a resumed run must match it)."""
        o = self.options
        return {"checkpoint": self.checkpoint, "family": self.cfg.family, "prompt_format": self.prompt.format,
                "max_len": self.prompt.max_len, "task_prefix": self.prompt.task_prefix, "system": self.prompt.system,
                "max_new_tokens": o.max_new_tokens, "temperature": o.temperature, "top_k": o.top_k,
                "top_p": o.top_p, "seed": o.seed}

    # -- generation -----------------------------------------------------------------------------------------------

    def generate(self, rows: Sequence[Optional[Mapping[str, np.ndarray]]], step: int = 0) -> list[Optional[str]]:
        """Generated text for this process's `rows` (at most `local_batch`; None = a padding row, answered None).

        `step` seeds sampling (ignored when greedy). With several processes every process must call it together.
        """
        if len(rows) > self.local_batch:
            raise ValueError(f"{len(rows)} rows for a local batch of {self.local_batch}")
        full = list(rows) + [None] * (self.local_batch - len(rows))
        batch = {k: np.stack([np.asarray((r if r is not None else self.padding_row())[k]) for r in full])
                 for k in ("image", "text", "mask_ar", "mask_input")}
        batch["mask_loss"] = np.zeros_like(batch["text"])
        rng = jax.random.fold_in(jax.random.key(self.options.seed), step)
        with sharding.mesh_rules(self.mesh):
            arrays = sharding.shard_batch(batch, self.mesh)
            out = vlm.generate(self.cfg, self.params, arrays, max_new_tokens=self.options.max_new_tokens,
                               sampling=self.options.sampling, rng=rng, eos_id=self.end_ids)
        tokens, lengths = _local_rows(out.tokens, self.local_batch), _local_rows(out.lengths, self.local_batch)
        return [None if r is None else self.text(tokens[i, :lengths[i]]) for i, r in enumerate(rows)]

    def text(self, ids: Sequence[int]) -> str:
        """Generated ids -> text: the end ids dropped, special tokens skipped (location tokens kept), stripped."""
        ends = set(self.end_ids)
        return self.tok.decode([int(i) for i in ids if int(i) not in ends], skip_special=True).strip()

    def answer(self, question: str, image: np.ndarray) -> str:
        """The generated text for one image (float32[S, S, 3]) and question (a batch with padding rows)."""
        return self.generate([self.prompt_row(question, image)])[0]


def _local_rows(x: jax.Array, local_batch: int) -> np.ndarray:
    """This process's rows of a global [G, ...] array, as numpy (gathered over processes when there are several)."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    full = np.asarray(multihost_utils.process_allgather(x, tiled=True))
    start = jax.process_index() * local_batch
    return full[start:start + local_batch]

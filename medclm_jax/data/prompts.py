"""Prompt formats per checkpoint family: (question, target) -> fixed-length token ids, masks and loss spans.

A pretrained model is fine-tuned on the sequence layout it was pretrained on (`FORMATS`; `|` splits the prompt,
which is never a loss target, from the target):

  paligemma   PaliGemma 1/2 (big_vision's prefix-LM): the image tokens are the model's prefix, outside `text`;
              `<bos> answer en {question}` `\\n` | `{target}<eos>`.
              mask_ar 0 on the prompt (full attention with the image), 1 on the target. The task prefix
              (`answer en `, PaliGemma's VQA task) is `PromptSettings.task_prefix`. As in big_vision, the
              separator `\\n` is tokenized on its own and belongs to the prompt.
  gemma3      Gemma 3 / MedGemma chat turns (the chat template, then the processor's image expansion):
              `<bos><start_of_turn>user\\n[{system}\\n\\n]\\n\\n<start_of_image>` 256 x image soft token
              `<end_of_image>\\n\\n{question}<end_of_turn>\\n<start_of_turn>model\\n` | `{target}<end_of_turn>`.
              mask_ar 1 everywhere: Gemma 3 is a causal LM (its image block is bidirectional, which the model
              applies itself). The target ends with `<end_of_turn>`, where MedGemma-it stops generating.
  trained     the tiny/small presets, trained from scratch with `model.tokenizer.train_tokenizer`'s vocabulary
              (no chat tokens): `<bos>` [image placeholders] `{question}` `\\n` | `{target}<eos>`, prefix-LM like
              PaliGemma; the placeholders (`<start_of_image>` N x `<image>` `<end_of_image>`) are there only for a
              gemma3-family model, whose image goes inside `text`.

Text between special tokens is tokenized as one string, as transformers' processors do, so the ids equal theirs.

Loss spans (`span`, int per token; made by tokenizing the parts separately, never by searching decoded text):
  0  prompt, image placeholders, padding
  1  reasoning: `Reasoning: {cot}` (the marker belongs to its span)
  2  answer: ` Answer: {answer}` and the end token (`<eos>` / `<end_of_turn>`), so the model learns to stop.
`mask_loss == (span > 0)`: every target token is in exactly one span and the markers are learned, so generated
text follows the format the metrics parse (`eval/cot.py`). Hard targets have span 2 only. The target is cut in two
just before the space that precedes ` Answer:`; tokenizers that start a piece at a space (SentencePiece's `▁`,
the Metaspace pre-tokenizer of our trained BPE) split there anyway, so the two parts' ids equal the whole
target's ids (tests/data/test_prompts.py checks it on a trained tokenizer).

Length (`PromptSettings.max_len` = T, fixed so the train step compiles once; it counts `text` only: PaliGemma's
image prefix is outside it, Gemma 3's placeholders inside it):
  - the prompt and the whole answer span must fit, else the example is dropped: `TooLong` with reason
    `prompt_too_long` or `answer_truncated` (never trained on a cut answer);
  - the reasoning is cut from its end to make room (`Tokens.reasoning_cut` counts the tokens cut; the pipeline
    counts those examples); at least one reasoning token must stay, else `no_room_for_reasoning` drops it (an
    Easy/Medium example without reasoning would have an empty L_cot span);
  - the rest is padding: pad id, mask_ar 1, mask_input / mask_loss / span 0.

Pure numpy (no jax): runs in Grain worker processes. The tokenizer is `medclm_jax.model.tokenizer.Tokenizer` (or
anything with its `encode`, `token_to_id`, `bos_id`, `eos_id`, `pad_id`).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable

import numpy as np

from medclm_jax.data.targets import Target
from medclm_jax.records.errors import RecordError

START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
PALIGEMMA_TASK_PREFIX = "answer en "
SPAN_NONE, SPAN_REASONING, SPAN_ANSWER = 0, 1, 2


class TooLong(RecordError):
    """The example does not fit `max_len`; `reason` is `prompt_too_long`, `answer_truncated` or
    `no_room_for_reasoning` (counted by the pipeline like any unusable record)."""


@dataclasses.dataclass(frozen=True)
class PromptSettings:
    """The sequence layout, read once from the model config (`settings_for_model`).

    Attributes:
      format: a key of `FORMATS`.
      max_len: T, the fixed `text` length.
      image_placeholder: ids `text` carries where the image goes (Gemma 3 family: `<start_of_image>`, N x image
        token, `<end_of_image>`, as `model.vlm.image_placeholder_ids`); empty when the image is the model's prefix.
      task_prefix: text in front of the question; None = the format's default (`answer en ` for paligemma,
        nothing otherwise).
      system: Gemma 3 only: a system instruction, written at the start of the user turn (the chat template's rule).
    """

    format: str
    max_len: int
    image_placeholder: tuple[int, ...] = ()
    task_prefix: str | None = None
    system: str = ""

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"PromptSettings.format={self.format!r}: expected one of {sorted(FORMATS)}")
        if self.max_len <= 0:
            raise ValueError(f"PromptSettings.max_len={self.max_len}: must be positive")
        FORMATS[self.format].check(self)


@dataclasses.dataclass(frozen=True)
class Tokens:
    """One example's `text` row and its masks, each int32[T] (see the module docstring).

    Attributes:
      prompt_len: tokens of the prompt (image placeholders included); the target starts there.
      length: real tokens (prompt + target); padding follows.
      reasoning_cut: reasoning tokens cut to fit `max_len` (0 = the whole target fits).
    """

    text: np.ndarray
    mask_ar: np.ndarray
    mask_input: np.ndarray
    mask_loss: np.ndarray
    span: np.ndarray
    prompt_len: int
    length: int
    reasoning_cut: int = 0


@dataclasses.dataclass(frozen=True)
class Format:
    """One layout: the prompt's ids, the prompt's mask_ar, the ids that close a target, a settings check."""

    name: str
    prompt: Callable[[Any, PromptSettings, str], list[int]]
    prompt_ar: int
    end: Callable[[Any], list[int]]
    check: Callable[[PromptSettings], None]


def _special(tok: Any, token: str) -> int:
    i = tok.token_to_id(token)
    if i is None:
        raise ValueError(f"the tokenizer ({getattr(tok, 'path', tok)}) has no {token!r}; this prompt format needs it "
                         f"(a Gemma 3 / MedGemma tokenizer has it; for a trained tokenizer use format 'trained')")
    return i


def _bos(tok: Any) -> int:
    if tok.bos_id is None:
        raise ValueError(f"the tokenizer ({getattr(tok, 'path', tok)}) has no <bos>; Gemma-family prompts start "
                         f"with it")
    return tok.bos_id


# ---- paligemma ------------------------------------------------------------------------------------------------
def _paligemma_prompt(tok: Any, s: PromptSettings, question: str) -> list[int]:
    prefix = PALIGEMMA_TASK_PREFIX if s.task_prefix is None else s.task_prefix
    return [_bos(tok), *tok.encode(prefix + question), *tok.encode("\n")]


def _paligemma_check(s: PromptSettings) -> None:
    if s.image_placeholder:
        raise ValueError("format 'paligemma': the image is the model's prefix, outside `text`, so there are no "
                         "image placeholders; a gemma3-family model takes format 'gemma3' or 'trained'")
    if s.system:
        raise ValueError("format 'paligemma' has no system instruction; put it in task_prefix")


# ---- gemma3 ---------------------------------------------------------------------------------------------------
def _gemma3_prompt(tok: Any, s: PromptSettings, question: str) -> list[int]:
    sot, eot = _special(tok, START_OF_TURN), _special(tok, END_OF_TURN)
    system = f"{s.system}\n\n" if s.system else ""
    # The chat template writes <start_of_image> in the user turn; the processor widens it to
    # "\n\n" <start_of_image> N x soft token <end_of_image> "\n\n", and text around special tokens merges.
    return [_bos(tok), sot, *tok.encode(f"user\n{system}\n\n"), *s.image_placeholder,
            *tok.encode(f"\n\n{s.task_prefix or ''}{question}"), eot, *tok.encode("\n"), sot, *tok.encode("model\n")]


def _gemma3_check(s: PromptSettings) -> None:
    if len(s.image_placeholder) < 3:
        raise ValueError("format 'gemma3': the image goes inside the user turn, so image_placeholder must hold "
                         "<start_of_image>, the image tokens and <end_of_image> (model.vlm.image_placeholder_ids)")


# ---- trained --------------------------------------------------------------------------------------------------
def _trained_prompt(tok: Any, s: PromptSettings, question: str) -> list[int]:
    return [_bos(tok), *s.image_placeholder, *tok.encode(f"{s.task_prefix or ''}{question}"), *tok.encode("\n")]


def _no_check(s: PromptSettings) -> None:
    if s.system:
        raise ValueError(f"format {s.format!r} has no system instruction; put it in task_prefix")


FORMATS: dict[str, Format] = {
    "paligemma": Format("paligemma", _paligemma_prompt, 0, lambda tok: [tok.eos_id], _paligemma_check),
    "gemma3": Format("gemma3", _gemma3_prompt, 1, lambda tok: [_special(tok, END_OF_TURN)], _gemma3_check),
    "trained": Format("trained", _trained_prompt, 0, lambda tok: [tok.eos_id], _no_check),
}


def default_format(family: str, pretrained: bool) -> str:
    """The layout a model knows: its family's for a pretrained checkpoint, `trained` for one trained here."""
    if not pretrained:
        return "trained"
    if family not in ("paligemma", "gemma3"):
        raise ValueError(f"no prompt format for model family {family!r}")
    return family


def settings_for_model(cfg: Any, tok: Any, *, max_len: int, pretrained: bool, prompt_format: str | None = None,
                       task_prefix: str | None = None, system: str = "") -> PromptSettings:
    """`PromptSettings` for a `model.vlm.VLMConfig` and its tokenizer, checking that their special ids agree.

    Run it in the main process (it imports the model package, hence jax); the settings it returns are plain data
    that Grain workers receive pickled.
    """
    from medclm_jax.model.vlm import image_placeholder_ids  # pylint: disable=import-outside-toplevel

    eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, tuple) else (cfg.eos_token_id,)
    problems = []
    if tok.bos_id != cfg.bos_token_id:
        problems.append(f"<bos> is {tok.bos_id} in the tokenizer, {cfg.bos_token_id} in the model")
    if tok.pad_id != cfg.pad_token_id:
        problems.append(f"<pad> is {tok.pad_id} in the tokenizer, {cfg.pad_token_id} in the model")
    if tok.eos_id not in eos:
        problems.append(f"<eos> is {tok.eos_id} in the tokenizer, {eos} in the model")
    if tok.vocab_size > cfg.text.vocab_size:
        problems.append(f"the tokenizer has {tok.vocab_size} ids, the model's embedding {cfg.text.vocab_size} rows")
    if cfg.family == "gemma3":
        for name, want in (("<start_of_image>", cfg.boi_token_id), ("<end_of_image>", cfg.eoi_token_id)):
            if tok.token_to_id(name) != want:
                problems.append(f"{name} is {tok.token_to_id(name)} in the tokenizer, {want} in the model")
    if problems:
        raise ValueError(f"tokenizer {getattr(tok, 'path', '')} does not match the model: " + "; ".join(problems))
    return PromptSettings(format=prompt_format or default_format(cfg.family, pretrained), max_len=max_len,
                          image_placeholder=tuple(int(i) for i in image_placeholder_ids(cfg)),
                          task_prefix=task_prefix, system=system)


def end_ids(tok: Any, settings: PromptSettings) -> tuple[int, ...]:
    """The ids that close a target (`<eos>`, or `<end_of_turn>` for gemma3): pass them to `model.vlm.generate` as
    `eos_id`, so decoding stops where training targets end whatever the checkpoint's config lists."""
    return tuple(FORMATS[settings.format].end(tok))


def target_parts(target: Target) -> tuple[str, str]:
    """(reasoning text, answer text), concatenating to `target.text`: `('Reasoning: {cot}', ' Answer: {answer}')`,
    or `('', 'Answer: {answer}')` for Hard. The cut is the end of the cot, just before ` Answer:`."""
    if target.reasoning is None:
        return "", target.text
    cut = target.reasoning[1]
    return target.text[:cut], target.text[cut:]


def _row(ids: list[int], fill: int, length: int) -> np.ndarray:
    out = np.full(length, fill, np.int32)
    out[:len(ids)] = ids
    return out


def _pad_id(tok: Any) -> int:
    if tok.pad_id is None:
        raise ValueError(f"the tokenizer ({getattr(tok, 'path', tok)}) has no <pad>; batches are right-padded")
    return tok.pad_id


def encode(tok: Any, settings: PromptSettings, question: str, target: Target, *, where: str = "") -> Tokens:
    """One example's `text`, masks and spans, int32[T] each (layout and length rules: the module docstring).

    Raises:
      TooLong: the prompt and the answer span do not fit `max_len` (or no reasoning token would be left).
    """
    fmt = FORMATS[settings.format]
    prompt = fmt.prompt(tok, settings, question)
    reasoning_text, answer_text = target_parts(target)
    reasoning = tok.encode(reasoning_text) if reasoning_text else []
    answer = [*tok.encode(answer_text), *fmt.end(tok)]
    t = settings.max_len
    room = t - len(prompt) - len(answer)  # what is left for the reasoning
    prefix = f"{where}: " if where else ""
    need = f"prompt {len(prompt)} + reasoning {len(reasoning)} + answer {len(answer)} tokens, max_len {t}"
    if len(prompt) >= t:
        raise TooLong(f"{prefix}the prompt alone fills max_len ({need}); raise max_len", reason="prompt_too_long")
    if room < 0:
        raise TooLong(f"{prefix}the answer would be cut ({need}); the example is dropped, raise max_len",
                      reason="answer_truncated")
    if reasoning and room == 0:
        raise TooLong(f"{prefix}no reasoning token fits ({need}); raise max_len", reason="no_room_for_reasoning")
    keep = min(len(reasoning), room)
    target_ids = reasoning[:keep] + answer
    ids = prompt + target_ids
    n_p, n = len(prompt), len(ids)
    mask_ar = _row([fmt.prompt_ar] * n_p + [1] * len(target_ids), 1, t)
    span = _row([SPAN_NONE] * n_p + [SPAN_REASONING] * keep + [SPAN_ANSWER] * len(answer), SPAN_NONE, t)
    return Tokens(text=_row(ids, _pad_id(tok), t), mask_ar=mask_ar, mask_input=_row([1] * n, 0, t),
                  mask_loss=(span > 0).astype(np.int32), span=span, prompt_len=n_p, length=n,
                  reasoning_cut=len(reasoning) - keep)


def encode_prompt(tok: Any, settings: PromptSettings, question: str, *, where: str = "") -> Tokens:
    """The prompt alone, right-padded to `max_len` (for `model.vlm.generate`: the answer is generated after it)."""
    fmt = FORMATS[settings.format]
    prompt = fmt.prompt(tok, settings, question)
    t = settings.max_len
    if len(prompt) >= t:
        raise TooLong(f"{where + ': ' if where else ''}the prompt ({len(prompt)} tokens) fills max_len {t}",
                      reason="prompt_too_long")
    n = len(prompt)
    zeros = np.zeros(t, np.int32)
    return Tokens(text=_row(prompt, _pad_id(tok), t), mask_ar=_row([fmt.prompt_ar] * n, 1, t),
                  mask_input=_row([1] * n, 0, t), mask_loss=zeros, span=zeros.copy(), prompt_len=n, length=n)


def outcome(tokens: Tokens | None = None, error: RecordError | None = None) -> collections.Counter:
    """Counts for one example, for the pipeline to add up: `kept` (+ `reasoning_truncated`), or `dropped` and
    `dropped:{reason}`."""
    if error is not None:
        return collections.Counter({"dropped": 1, f"dropped:{error.reason}": 1})
    if tokens is None:
        raise ValueError("outcome: give the Tokens of a kept example or the error that dropped it")
    return collections.Counter({"kept": 1, "reasoning_truncated": int(tokens.reasoning_cut > 0)})

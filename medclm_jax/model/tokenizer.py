"""Tokenizers that live beside a checkpoint: load a pretrained one, or train one for a from-scratch model.

Pretrained checkpoints (PaliGemma 1/2, Gemma 3 / MedGemma) ship either a Hugging Face ``tokenizer.json`` (read with
the ``tokenizers`` library) or a SentencePiece ``tokenizer.model``; :func:`load_tokenizer` reads whichever is there
(``tokenizer.json`` first) and wraps it in one :class:`Tokenizer` with the ids the model and the input pipeline need:
``<pad>``, ``<eos>``, ``<bos>``, ``<unk>``, the image tokens, and PaliGemma's location tokens ``<loc0000>`` ..
``<loc1023>`` (box coordinates in 1024 bins) and segmentation tokens ``<seg000>`` .. ``<seg127>`` as *single* ids.

Models trained from scratch (``tiny``, ``small``) get a byte-fallback BPE trained on the dataset's text by
:func:`train_tokenizer`, with Gemma's special-token layout (``<pad>`` = 0, ``<eos>`` = 1, ``<bos>`` = 2, ``<unk>`` = 3)
and the loc tokens, saved as ``tokenizer.json`` + ``tokenizer_config.json`` so that both :func:`load_tokenizer` and
transformers' ``PreTrainedTokenizerFast`` read it back.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from medclm_jax.records import boxes

NUM_LOC_TOKENS = boxes.LOC_BINS
NUM_SEG_TOKENS = 128
TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"

# Gemma's ids for these four are fixed (0..3) in every released vocabulary; a trained tokenizer keeps them.
PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
IMAGE, START_OF_IMAGE, END_OF_IMAGE = "<image>", "<start_of_image>", "<end_of_image>"
_METASPACE = "\u2581"  # SentencePiece's visible space, kept so pieces decode the way Gemma's do.
_ATOMIC = re.compile(r"(<loc\d{4}>|<seg\d{3}>)")


loc_token = boxes.loc_token  # the one definition of the location-token format lives with the boxes


def seg_token(index: int) -> str:
    """The segmentation-codebook token ``index`` in [0, 128): ``<seg007>``."""
    if not 0 <= index < NUM_SEG_TOKENS:
        raise ValueError(f"segmentation code {index} is outside [0, {NUM_SEG_TOKENS})")
    return f"<seg{index:03d}>"


class _HFBackend:
    """``tokenizers.Tokenizer`` behind the small interface :class:`Tokenizer` needs."""

    def __init__(self, tok: Any):
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        # Special tokens (Gemma's post-processor adds <bos>) are added by Tokenizer.encode, never here.
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)


class _SPBackend:
    """``sentencepiece.SentencePieceProcessor`` behind the same interface."""

    def __init__(self, sp: Any):
        self.sp = sp

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text, out_type=int))

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))

    def token_to_id(self, token: str) -> int | None:
        i = self.sp.piece_to_id(token)
        # piece_to_id answers unk_id for a piece it does not know; only an exact match counts.
        return i if self.sp.id_to_piece(i) == token else None

    def vocab_size(self) -> int:
        return self.sp.get_piece_size()


class Tokenizer:
    """Encode/decode with the ids a VLM needs, whatever file the tokenizer came from.

    Attributes:
      path: the file it was read from.
      vocab_size: number of ids (including added tokens); the model's embedding needs at least this many rows.
      pad_id, eos_id, bos_id, unk_id: special ids (``None`` where the vocabulary has no such token).
      image_id: id of ``<image>`` (PaliGemma's image placeholder) or ``None``.
      loc_ids: int32[1024] ids of ``<loc0000>`` .. ``<loc1023>``, or ``None`` if the vocabulary lacks them.
      seg_ids: int32[128] ids of ``<seg000>`` .. ``<seg127>``, or ``None``.
    """

    def __init__(self, backend: _HFBackend | _SPBackend, path: str, special: dict[str, str] | None = None):
        self._backend = backend
        self.path = path
        special = {"pad": PAD, "eos": EOS, "bos": BOS, "unk": UNK, **(special or {})}
        self.vocab_size = backend.vocab_size()
        self.pad_id = backend.token_to_id(special["pad"])
        self.eos_id = backend.token_to_id(special["eos"])
        self.bos_id = backend.token_to_id(special["bos"])
        self.unk_id = backend.token_to_id(special["unk"])
        if self.eos_id is None:
            raise ValueError(f"{path}: the vocabulary has no end-of-sequence token {special['eos']!r}; "
                             f"set 'eos_token' in {TOKENIZER_CONFIG} beside it")
        self.image_id = backend.token_to_id(IMAGE)
        self.loc_ids = self._ids([loc_token(i) for i in range(NUM_LOC_TOKENS)])
        self.seg_ids = self._ids([seg_token(i) for i in range(NUM_SEG_TOKENS)])
        self._atomic = {}
        for table, fmt in ((self.loc_ids, loc_token), (self.seg_ids, seg_token)):
            if table is not None:
                self._atomic.update({fmt(i): int(t) for i, t in enumerate(table)})
        # Some vocabularies hold the loc pieces but their tokenizer does not match them in text (SentencePiece
        # CONTROL pieces, BPE entries without an added-token rule). Then text is cut at those tokens first.
        self._split_atomic = bool(self._atomic) and any(
            backend.encode(tok) != [i] for tok, i in ((loc_token(0), self._atomic.get(loc_token(0))),
                                                       (loc_token(1023), self._atomic.get(loc_token(1023))))
            if i is not None)
        self._skip = {i for i in (self.pad_id, self.bos_id, self.eos_id) if i is not None}

    def _ids(self, tokens: list[str]) -> np.ndarray | None:
        ids = [self._backend.token_to_id(t) for t in tokens]
        return None if any(i is None for i in ids) else np.asarray(ids, np.int32)

    def token_to_id(self, token: str) -> int | None:
        """The id of one vocabulary entry (e.g. ``'<start_of_image>'``), or ``None`` if absent."""
        return self._backend.token_to_id(token)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``; ``<locNNNN>`` / ``<segNNN>`` in the text become their single ids.

        Args:
          text: the string; no special tokens are added unless asked for.
          add_bos: prepend ``<bos>`` (Gemma-family models expect it at the start of a sequence).
          add_eos: append ``<eos>`` (the end of a training target).
        """
        if self._split_atomic:
            ids = []
            for part in _ATOMIC.split(text):
                if part in self._atomic:
                    ids.append(self._atomic[part])
                elif part:
                    ids.extend(self._backend.encode(part))
        else:
            ids = self._backend.encode(text)
        if add_bos:
            if self.bos_id is None:
                raise ValueError(f"{self.path}: add_bos=True but the vocabulary has no <bos> token")
            ids = [self.bos_id, *ids]
        if add_eos:
            ids = [*ids, self.eos_id]
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Text of ``ids``; with ``skip_special``, ``<pad>``/``<bos>``/``<eos>`` are dropped (loc tokens stay)."""
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in self._skip]
        return self._backend.decode(ids)

    def __repr__(self) -> str:
        return (f"Tokenizer({self.path!r}, vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, "
                f"pad={self.pad_id}, loc={'yes' if self.loc_ids is not None else 'no'})")


def _special_names(config_path: str) -> dict[str, str]:
    """Special-token names from an HF ``tokenizer_config.json`` (values are strings or ``{'content': ...}``)."""
    if not os.path.exists(config_path):
        return {}
    try:
        with open(config_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_path}: not a readable JSON tokenizer config ({e})") from e
    names = {}
    for key in ("pad", "eos", "bos", "unk"):
        value = cfg.get(f"{key}_token")
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            names[key] = value
    return names


def load_tokenizer(checkpoint_dir: str | os.PathLike) -> Tokenizer:
    """Reads the tokenizer that sits in a checkpoint's folder.

    Args:
      checkpoint_dir: a folder holding ``tokenizer.json`` (preferred) or ``tokenizer.model`` (SentencePiece),
        optionally with ``tokenizer_config.json`` naming the special tokens; or the path of either file itself.

    Returns:
      A :class:`Tokenizer`.

    Raises:
      FileNotFoundError: the folder holds neither file.
      ValueError: the file exists but cannot be parsed.
    """
    path = os.fspath(checkpoint_dir)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isdir(path):
        candidates = [os.path.join(path, TOKENIZER_JSON), os.path.join(path, SENTENCEPIECE_MODEL)]
        found = [c for c in candidates if os.path.isfile(c)]
        if not found:
            raise FileNotFoundError(
                f"{path}: no tokenizer here (looked for {TOKENIZER_JSON} and {SENTENCEPIECE_MODEL}). Copy the "
                f"tokenizer files from the pretrained checkpoint into this folder, or train one with "
                f"medclm_jax.model.tokenizer.train_tokenizer for a model trained from scratch.")
        path = found[0]
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such tokenizer file or folder")
    special = _special_names(os.path.join(folder, TOKENIZER_CONFIG))
    if path.endswith(".json"):
        import tokenizers
        try:
            backend = _HFBackend(tokenizers.Tokenizer.from_file(path))
        except Exception as e:  # the Rust parser raises plain Exception subclasses
            raise ValueError(f"{path}: not a valid Hugging Face tokenizer.json ({e})") from e
    else:
        import sentencepiece
        sp = sentencepiece.SentencePieceProcessor()
        try:
            sp.load(path)
        except Exception as e:  # noqa: BLE001 - sentencepiece raises OSError or RuntimeError
            raise ValueError(f"{path}: not a valid SentencePiece model ({e})") from e
        backend = _SPBackend(sp)
        # SentencePiece knows its own special ids; a config only overrides what it names.
        for key, i in (("pad", sp.pad_id()), ("eos", sp.eos_id()), ("bos", sp.bos_id()), ("unk", sp.unk_id())):
            if key not in special and i >= 0:
                special[key] = sp.id_to_piece(i)
    return Tokenizer(backend, path, special)


# ------------------------------------------------------------------------------------------------------------
# Training a tokenizer for a model trained from scratch.
# ------------------------------------------------------------------------------------------------------------

_RESERVED = (PAD, EOS, BOS, UNK, IMAGE, START_OF_IMAGE, END_OF_IMAGE)
_BYTES = tuple(f"<0x{b:02X}>" for b in range(256))


def _pipeline(tok: Any) -> None:
    """Gemma-like text handling: no normalization, spaces become ``▁`` attached to the next word."""
    from tokenizers import decoders, pre_tokenizers
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="never", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace(_METASPACE, " "), decoders.ByteFallback(), decoders.Fuse()])


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike, *,
                    min_frequency: int = 2) -> Tokenizer:
    """Trains a byte-fallback BPE on ``texts`` and saves it in ``out_dir`` beside a checkpoint.

    Id layout (fixed, so a model config can rely on it): 0 ``<pad>``, 1 ``<eos>``, 2 ``<bos>``, 3 ``<unk>``,
    4 ``<image>``, 5 ``<start_of_image>``, 6 ``<end_of_image>``, 7..1030 ``<loc0000>``..``<loc1023>``, then the 256
    byte pieces ``<0x00>``..``<0xFF>`` (any character outside the learned vocabulary falls back to its UTF-8
    bytes, so nothing is ever ``<unk>``), then the learned pieces, then ``<unusedN>`` filler so the vocabulary
    has exactly ``vocab_size`` entries (the model's embedding size).

    Args:
      texts: training strings (questions, rationales, answers), iterated once.
      vocab_size: total vocabulary size, > 1287 (the reserved tokens plus the byte pieces).
      out_dir: folder for ``tokenizer.json`` and ``tokenizer_config.json`` (created if needed).
      min_frequency: a pair must occur this often to be merged.

    Returns:
      The saved tokenizer, read back with :func:`load_tokenizer`.
    """
    import tokenizers
    from tokenizers import AddedToken, models, processors, trainers

    fixed = list(_RESERVED) + [loc_token(i) for i in range(NUM_LOC_TOKENS)] + list(_BYTES)
    if vocab_size <= len(fixed):
        raise ValueError(f"vocab_size={vocab_size} leaves no room for learned pieces: the special, location and "
                         f"byte tokens already take {len(fixed)}; use at least {len(fixed) + 256}")
    # Learn merges on the text alone; the reserved ids are laid out afterwards.
    learner = tokenizers.Tokenizer(models.BPE(unk_token=UNK))
    _pipeline(learner)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(fixed), min_frequency=min_frequency,
                                  special_tokens=[], show_progress=False)
    learner.train_from_iterator(iter(texts), trainer=trainer)
    learned = json.loads(learner.to_str())["model"]
    vocab = {tok: i for i, tok in enumerate(fixed)}
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    for n in range(vocab_size - len(vocab)):
        vocab[f"<unused{n}>"] = len(vocab)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned["merges"]]

    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK, byte_fallback=True,
                                          fuse_unk=True))
    _pipeline(tok)
    # Added-token rules make the reserved tokens match as whole strings before BPE runs. The loc tokens are not
    # "special": they are ordinary output (box coordinates) and must survive decoding.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _RESERVED])
    tok.add_tokens([AddedToken(loc_token(i), special=False, normalized=False) for i in range(NUM_LOC_TOKENS)])
    # Like Gemma's tokenizer.json: transformers' encode() prepends <bos>. (Tokenizer.encode adds it only on request.)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, vocab[BOS])])

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, TOKENIZER_JSON))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": PAD, "eos_token": EOS, "bos_token": BOS, "unk_token": UNK,
        "add_bos_token": True, "add_eos_token": False,
        "padding_side": "right",
        "model_max_length": 1 << 20,
        "medclm": {"trained_by": "medclm_jax.model.tokenizer.train_tokenizer", "algorithm": "bpe",
                   "byte_fallback": True, "vocab_size": vocab_size},
    }
    with open(os.path.join(out_dir, TOKENIZER_CONFIG), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return load_tokenizer(out_dir)

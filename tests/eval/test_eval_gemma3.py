"""`medclm eval` with a Gemma 3 (MedGemma) family checkpoint: the image inside `text`, the prompt of the family, the
end ids of the format, and the stop ids of the pretrained Gemma 3 presets.

Two tiny Gemma 3 checkpoints (the `tiny_gemma3` preset, random weights): one with a tokenizer trained here (the
`trained` layout with image placeholders), one whose tokenizer is "pretrained" (no `medclm` marker in its config)
and holds Gemma 3's chat tokens, so eval answers in the `gemma3` chat turn. References: the chat template written
out by hand, the tokenizer's own ids for the end tokens, and one-example generation for the batched predictions.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tokenizers

from medclm_jax import cli
from medclm_jax.data import prompts
from medclm_jax.eval import generate as generate_lib
from medclm_jax.eval import run
from medclm_jax.eval.generate import GenerateOptions, Generator
from medclm_jax.model import presets
from medclm_jax.model import tokenizer as T
from test_eval_benchmark_runs import CORPUS, by_hand, slake_release
from test_eval_run import FAST, lines, random_checkpoint

CHAT_TOKENS = (prompts.START_OF_TURN, prompts.END_OF_TURN)


def chat_tokenizer(tok_dir):
    """A trained tokenizer given Gemma 3's chat tokens as special ids (inside the tiny model's 2048 rows) and
    marked as not trained here, as a converted Gemma 3 checkpoint's tokenizer is."""
    T.train_tokenizer(iter(CORPUS), vocab_size=2048 - len(CHAT_TOKENS), out_dir=tok_dir)
    path = os.path.join(tok_dir, T.TOKENIZER_JSON)
    tok = tokenizers.Tokenizer.from_file(path)
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in CHAT_TOKENS])
    tok.save(path)
    config_path = os.path.join(tok_dir, T.TOKENIZER_CONFIG)
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    del config["medclm"]
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f)


@pytest.fixture(scope="module", params=["trained", "gemma3"])
def ckpt(request, tmp_path_factory):
    """(checkpoint folder, the prompt format it should be answered in)."""
    tok_dir = tmp_path_factory.mktemp(f"g3_tok_{request.param}")
    if request.param == "gemma3":
        chat_tokenizer(tok_dir)
    else:
        T.train_tokenizer(iter(CORPUS), vocab_size=2048, out_dir=tok_dir)
    out = tmp_path_factory.mktemp(f"g3_ckpt_{request.param}") / "ckpt"
    return random_checkpoint(out, "tiny_gemma3", tok_dir, seed=1), request.param


def test_gemma3_checkpoint_is_evaluated_in_its_family_layout(ckpt, tmp_path, monkeypatch, capsys):
    path, fmt = ckpt
    root = tmp_path / "slake"
    root.mkdir()
    expected = slake_release(root)
    ends, real = [], generate_lib.vlm.generate

    def spy(cfg, variables, batch, **kw):  # the ids decoding stops at, then the real decoding
        ends.append(tuple(kw["eos_id"]))
        return real(cfg, variables, batch, **kw)

    monkeypatch.setattr(generate_lib.vlm, "generate", spy)
    out = tmp_path / "out"
    assert cli.main(["eval", "--checkpoint", path, "--benchmark", "slake", "--root", str(root), "--out", str(out),
                     *FAST]) == 0, capsys.readouterr().err
    generation = json.loads((out / run.RUN).read_text())["generation"]
    assert (generation["family"], generation["prompt_format"]) == ("gemma3", fmt)

    gen = Generator.load(path, GenerateOptions(max_new_tokens=10))
    tok = gen.tok
    want_end = tok.token_to_id(prompts.END_OF_TURN) if fmt == "gemma3" else tok.eos_id
    assert want_end is not None and set(ends) == {(want_end,)}

    # The prompt row, decoded: the family's layout written out by hand, the image placeholders inside `text`.
    question = "Is there a mass?"
    row = gen.prompt_row(question, np.zeros((32, 32, 3), np.float32))
    n = int(row["mask_input"].sum())
    image = "<start_of_image>" + "<image>" * gen.cfg.mm_tokens_per_image + "<end_of_image>"
    if fmt == "gemma3":
        layout = (f"<bos><start_of_turn>user\n\n\n{image}\n\n{question}<end_of_turn>\n<start_of_turn>model\n")
        assert row["mask_ar"][:n].tolist() == [1] * n  # causal: Gemma 3 makes the image block bidirectional itself
    else:
        layout = f"<bos>{image}{question}\n"
        assert row["mask_ar"][:n].tolist() == [0] * n  # prefix-LM over image + prompt
    assert tok.decode(row["text"][:n].tolist(), skip_special=False) == layout

    preds = lines(out / run.PREDICTIONS)
    assert [p["id"] for p in preds] == list(expected)
    for p in preds:  # batched over the 8 devices = each example alone
        assert gen.answer(p["question"], by_hand(root / expected[p["id"]][0], family="gemma3")) == p["prediction"]
    assert cli.main(["score", "--pred", str(out / run.PREDICTIONS), "--ref", str(out / run.REFERENCES)]) == 0


def test_pretrained_gemma3_presets_stop_at_eos_and_end_of_turn():
    """A Gemma 3 / MedGemma answer ends with <end_of_turn> (106 in Gemma 3's vocabulary), its text with <eos> (1):
    the pretrained gemma3-family presets stop at both, so `vlm.generate` with the config's own ids stops where
    instruction-tuned targets end, not only where `medclm eval` passes the format's end ids."""
    gemma3 = [name for name in presets.PRESETS if name not in presets.TRAINED_FROM_SCRATCH
              and presets.get_model_config(name).family == "gemma3"]
    assert "medgemma_4b" in gemma3
    for name in gemma3:
        eos = presets.get_model_config(name).eos_token_id
        assert isinstance(eos, tuple) and set(eos) == {1, 106}, name

"""Tokenizers read from a checkpoint folder and trained for from-scratch models (all built here, offline)."""

import io
import json
import os

import pytest

from medclm_jax.model import tokenizer as T

CORPUS = [
    "There is a nodule in the right upper zone of the lung.",
    "Reasoning: the box [0.2500, 0.3333, 0.5833, 0.6667] lies in the left lobe of liver. Answer: lesion",
    "Question: Is there an abnormality in the highlighted region? Answer: yes",
    "No finding.\nPleural effusion at the right costophrenic angle.",
] * 30

SAMPLES = [
    "There is a nodule in the right lung.",
    "Answer: <loc0000><loc0512><loc1023><loc0007> nodule",
    "  leading spaces, double  spaces and a tab\there\n",
    "unseen characters: café, 肺结节, emoji \U0001f9e0, math ∑",
    "",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained_tok")
    return out, T.train_tokenizer(iter(CORPUS), vocab_size=1600, out_dir=out)


def test_trained_layout_and_round_trip(trained):
    out, tok = trained
    assert sorted(os.listdir(out)) == ["tokenizer.json", "tokenizer_config.json"]
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id, tok.image_id) == (0, 1, 2, 3, 4)
    assert tok.token_to_id("<start_of_image>") == 5 and tok.token_to_id("<end_of_image>") == 6
    assert tok.vocab_size == 1600
    assert tok.loc_ids.tolist() == list(range(7, 7 + 1024))
    assert tok.seg_ids is None
    for text in SAMPLES:
        ids = tok.encode(text)
        assert tok.unk_id not in ids  # byte fallback covers every character
        assert tok.decode(ids) == text
    # Learned merges make the training text shorter than its characters.
    assert len(tok.encode(CORPUS[0])) < len(CORPUS[0]) // 2


def test_loc_tokens_are_single_ids(trained):
    _, tok = trained
    for i in (0, 1, 511, 1023):
        assert tok.encode(T.loc_token(i)) == [7 + i]
    ids = tok.encode("box<loc0100><loc0200>end")
    assert ids.count(107) == 1 and ids.count(207) == 1
    assert tok.decode([107, 207]) == "<loc0100><loc0200>"


def test_special_tokens_added_and_skipped(trained):
    _, tok = trained
    ids = tok.encode("yes", add_bos=True, add_eos=True)
    assert ids[0] == 2 and ids[-1] == 1 and ids[1:-1] == tok.encode("yes")
    assert tok.decode(ids + [0, 0]) == "yes"
    assert tok.decode([2, *tok.encode("yes"), 1], skip_special=False) == "<bos>yes<eos>"


def test_transformers_reads_the_trained_tokenizer(trained):
    transformers = pytest.importorskip("transformers")
    out, tok = trained
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    assert (hf.pad_token_id, hf.eos_token_id, hf.bos_token_id) == (0, 1, 2)
    for text in SAMPLES[:4]:
        assert hf.encode(text) == tok.encode(text, add_bos=True)
        assert hf.decode(tok.encode(text)) == text


def test_tokenizer_json_built_here(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import AddedToken, models, pre_tokenizers

    words = ["<pad>", "<eos>", "<bos>", "<unk>", "the", "lung", "nodule", "in", "right"]
    vocab = {w: i for i, w in enumerate(words)}
    vocab.update({T.loc_token(i): len(words) + i for i in range(1024)})
    vocab.update({T.seg_token(i): len(words) + 1024 + i for i in range(128)})
    raw = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    # Whitespace() would cut "<loc0001>" into "<", "loc0001", ">": only added-token rules keep them whole.
    raw.add_tokens([AddedToken(t, normalized=False) for t in list(vocab)[len(words):]])
    raw.save(str(tmp_path / "tokenizer.json"))

    tok = T.load_tokenizer(tmp_path)
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.loc_ids[0] == 9 and tok.loc_ids[-1] == 9 + 1023 and tok.seg_ids[5] == 9 + 1024 + 5
    assert tok.encode("the nodule <loc0003> <seg005> in lung") == [4, 6, 12, 9 + 1029, 7, 5]
    assert tok.encode("the spleen") == [4, 3]
    assert T.load_tokenizer(tmp_path / "tokenizer.json").encode("right lung") == [8, 5]


def test_loc_tokens_in_vocab_without_added_rules(tmp_path):
    """A vocabulary holding the loc pieces whose pre-tokenizer would split them still yields single ids."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "yes", "<", ">"])}
    vocab.update({T.loc_token(i): 7 + i for i in range(1024)})
    raw = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.save(str(tmp_path / "tokenizer.json"))
    assert raw.encode("<loc0002>").ids != [9]  # the premise: the raw tokenizer does split it

    tok = T.load_tokenizer(tmp_path)
    assert tok.encode("yes<loc0002> yes <loc1023>") == [4, 9, 4, 7 + 1023]


def _train_sentencepiece(tmp_path, **symbols):
    spm = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=1500, model_type="bpe",
        byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3, hard_vocab_limit=False,
        add_dummy_prefix=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
        minloglevel=2, **symbols)  # Gemma-like: no normalization, spaces kept as written
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor()
    sp.load(str(tmp_path / "tokenizer.model"))
    return sp


def test_sentencepiece_model_trained_here(tmp_path):
    locs = [T.loc_token(i) for i in range(1024)]
    segs = [T.seg_token(i) for i in range(128)]
    sp = _train_sentencepiece(tmp_path, user_defined_symbols=locs + segs)
    tok = T.load_tokenizer(tmp_path)
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == sp.get_piece_size()
    assert tok.loc_ids.tolist() == [sp.piece_to_id(t) for t in locs]
    assert tok.seg_ids.tolist() == [sp.piece_to_id(t) for t in segs]
    for text in SAMPLES[:4]:
        ids = tok.encode(text)
        assert ids == sp.encode(text)
        assert tok.decode(ids) == sp.decode(ids) == text
    assert tok.encode("<loc0042>") == [sp.piece_to_id("<loc0042>")]


def test_sentencepiece_control_loc_pieces_still_single(tmp_path):
    """CONTROL pieces are never matched in text by SentencePiece itself; the wrapper cuts them out first."""
    sp = _train_sentencepiece(tmp_path, control_symbols=[T.loc_token(i) for i in range(1024)])
    loc5 = sp.piece_to_id("<loc0005>")
    assert sp.encode("<loc0005>") != [loc5]  # the premise
    tok = T.load_tokenizer(tmp_path)
    ids = tok.encode("nodule <loc0005><loc0006> lung")
    assert ids == sp.encode("nodule ") + [loc5, loc5 + 1] + sp.encode(" lung")


def test_tokenizer_json_preferred_over_sentencepiece(tmp_path, trained):
    out, _ = trained
    _train_sentencepiece(tmp_path, user_defined_symbols=["<loc0000>"])
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    assert T.load_tokenizer(tmp_path).path.endswith("tokenizer.json")


def test_config_names_special_tokens(tmp_path, trained):
    out, _ = trained
    (tmp_path / "tokenizer.json").write_bytes((out / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": {"content": "<end_of_image>"}, "pad_token": "<image>"}))
    tok = T.load_tokenizer(tmp_path)
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (6, 4, 2)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json and tokenizer\.model"):
        T.load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        T.load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        T.load_tokenizer(tmp_path / "missing")
    with pytest.raises(ValueError, match="at least"):
        T.train_tokenizer(["a b c"], vocab_size=1000, out_dir=tmp_path / "small")
    with pytest.raises(ValueError, match="outside"):
        T.loc_token(1024)

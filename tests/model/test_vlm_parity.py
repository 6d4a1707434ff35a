"""VLM composition: logit parity with transformers' PaliGemma (Gemma 1 and 2 text) and Gemma 3 multimodal models,
greedy decoding against HF generate, and the real presets' sizes against published parameter counts."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_tiny_vlm as tiny  # noqa: E402

from medclm_jax.model import convert, presets, vlm  # noqa: E402


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """kind -> (HF model, folder with its save_pretrained safetensors)."""
    out = {}
    for kind in tiny.KINDS:
        model = tiny.hf_model(kind)
        path = tmp_path_factory.mktemp(kind)
        model.save_pretrained(path)
        out[kind] = (model, path)
    return out


@functools.lru_cache
def _forward(cfg):
    return jax.jit(vlm.VLM(cfg).apply)  # one compile per config across tests


def _ours(cfg, params, batch):
    return np.asarray(_forward(cfg)({"params": params}, {k: jnp.asarray(v) for k, v in batch.items()}))


@pytest.mark.parametrize("kind,scan,remat", [("paligemma", False, "none"), ("paligemma2", True, "none"),
                                             ("gemma3", True, "full")])
def test_logits_match_hf(checkpoints, kind, scan, remat):
    model, path = checkpoints[kind]
    cfg, params = convert.load_hf(path, param_dtype="float32", dtype="float32", scan_layers=scan,
                                  remat_policy=remat)
    assert cfg.family == ("gemma3" if kind == "gemma3" else "paligemma")
    batch = tiny.batch(cfg)
    ours = _ours(cfg, params, batch)
    ref = tiny.hf_text_logits(model, cfg, vlm.hf_inputs(cfg, batch))
    assert ours.shape == ref.shape == batch["text"].shape + (tiny.VOCAB,)
    valid = batch["mask_input"].astype(bool)  # HF and we differ only in what padding queries see
    assert np.abs(ours - ref)[valid].max() <= 1e-4


def test_masks_matter(checkpoints):
    """Negative controls: the parity above would fail with a plain causal mask (so it tests the masks)."""
    model, path = checkpoints["paligemma"]
    cfg, params = convert.load_hf(path, param_dtype="float32", dtype="float32", scan_layers=False)
    batch = tiny.batch(cfg)
    causal = dict(batch, mask_ar=np.ones_like(batch["mask_ar"]))
    ref = tiny.hf_text_logits(model, cfg, vlm.hf_inputs(cfg, batch))
    assert np.abs(_ours(cfg, params, causal) - ref)[batch["mask_input"] == 1].max() > 1e-2

    model, path = checkpoints["gemma3"]
    cfg, params = convert.load_hf(path, param_dtype="float32", dtype="float32", scan_layers=True,
                                  remat_policy="full")
    batch = tiny.batch(cfg)
    hf_causal = dict(vlm.hf_inputs(cfg, batch))
    hf_causal["token_type_ids"] = np.zeros_like(hf_causal["token_type_ids"])  # no bidirectional image block
    ref = tiny.hf_text_logits(model, cfg, hf_causal)
    assert np.abs(_ours(cfg, params, batch) - ref)[batch["mask_input"] == 1].max() > 1e-2


def test_validate_batch_names_the_problem():
    pali = presets.get_model_config("tiny")
    vlm.validate_batch(pali, tiny.batch(pali))
    with pytest.raises(ValueError, match=r"row 0: 1 image placeholder tokens \(4\), expected 0 for paligemma"):
        vlm.validate_batch(pali, dict(tiny.batch(pali), text=np.where(np.arange(10) == 3, 4, tiny.batch(pali)["text"])))
    cfg = dataclasses.replace(presets.get_model_config("tiny_gemma3"), image_token_id=tiny.IMAGE_TOKEN,
                              boi_token_id=tiny.BOI, eoi_token_id=tiny.EOI)
    good = tiny.batch(cfg)
    vlm.validate_batch(cfg, good)
    with pytest.raises(ValueError, match=r"row 1: 3 image placeholder tokens \(299\), expected 4 for gemma3"):
        bad = dict(good, text=good["text"].copy())
        bad["text"][1, bad["text"][1].tolist().index(tiny.IMAGE_TOKEN)] = 9
        vlm.validate_batch(cfg, bad)
    with pytest.raises(ValueError, match=r"batch\['image'\]: shape \(2, 3, 32, 32\), expected \(2, 32, 32, 3\)"):
        vlm.validate_batch(cfg, dict(good, image=good["image"].transpose(0, 3, 1, 2)))
    with pytest.raises(ValueError, match=r"values in \[0, 255\], expected \[-1, 1\]"):
        vlm.validate_batch(cfg, dict(good, image=np.full_like(good["image"], 255.0) * (good["image"] > 0)))


def test_attention_mask_by_hand():
    # Row: 2 image tokens (block), a prefix token, two causal tokens, one pad.
    mask_ar = jnp.array([[0, 0, 0, 1, 1, 1]])
    mask_input = jnp.array([[1, 1, 1, 1, 1, 0]])
    is_image = jnp.array([[True, True, False, False, False, False]])
    expected = np.array([[1, 1, 1, 0, 0, 0],
                         [1, 1, 1, 0, 0, 0],
                         [1, 1, 1, 0, 0, 0],
                         [1, 1, 1, 1, 0, 0],
                         [1, 1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 1, 1]], bool)  # the pad query sees the real tokens and itself only
    np.testing.assert_array_equal(np.asarray(vlm.attention_mask(mask_ar, mask_input, is_image))[0], expected)
    # Causal text with an image block in the middle: the block is bidirectional, text after it sees it all.
    m = np.asarray(vlm.attention_mask(jnp.ones((1, 5), int), jnp.ones((1, 5), int),
                                      jnp.array([[False, True, True, False, False]])))[0]
    np.testing.assert_array_equal(m, np.array([[1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0],
                                               [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool))


N_NEW = 12


@pytest.mark.parametrize("kind,scan", [("paligemma", False), ("paligemma2", True), ("gemma3", False)])
def test_batched_greedy_decode_matches_hf_generate_row_by_row(tmp_path, kind, scan):
    """Three right-padded prompts of different lengths in one batch, 12 new tokens; each row equals HF
    ``generate`` on that row's prompt alone. Gemma 3 unrolled decodes through ring caches (window 6 < every
    prompt); PaliGemma 2 scanned keeps full caches and masks its window (24 < prompt + answer)."""
    model = tiny.hf_decoding_model(kind, seed=4)
    model.save_pretrained(tmp_path)
    cfg, params = convert.load_hf(tmp_path, param_dtype="float32", dtype="float32", scan_layers=scan)
    batch = tiny.prompts(cfg, (2, 6, 4), seed=1)
    lengths = batch["mask_input"].sum(axis=1)
    assert len(set(lengths.tolist())) == 3  # padding in two rows
    ours = vlm.generate(cfg, {"params": params}, batch, max_new_tokens=N_NEW, eos_id=())
    for row, n in enumerate(lengths):
        alone = {k: v[row:row + 1, :n] for k, v in batch.items() if k != "image"}
        alone["image"] = batch["image"][row:row + 1]
        inputs = {k: torch.from_numpy(v) for k, v in vlm.hf_inputs(cfg, alone).items()}
        with torch.no_grad():
            ref = model.generate(**inputs, max_new_tokens=N_NEW, do_sample=False, eos_token_id=None)
        ref = ref[0, inputs["input_ids"].shape[1]:].numpy()
        # A varied reference: a decoder whose new tokens ignore the cache cannot reproduce it by chance.
        assert len(set(ref.tolist())) >= 4, (row, ref)
        np.testing.assert_array_equal(np.asarray(ours.tokens)[row], ref, err_msg=f"{kind} row {row}")


@pytest.mark.parametrize("name,vocab,published", [
    # keras-hub's preset metadata (vocabularies without HF's padding rows: 257152 / 262144).
    ("paligemma_3b_224", 257152, 2_923_335_408),
    ("paligemma_3b_448", 257152, 2_924_220_144),
    ("paligemma2_3b_224", 257152, 3_032_094_960),
    ("medgemma_4b", 262144, 4_299_915_632),  # = keras-hub gemma3_instruct_4b
])
def test_pretrained_presets_have_published_sizes(name, vocab, published):
    cfg = presets.get_model_config(name)
    cfg = dataclasses.replace(cfg, image_token_id=0, text=dataclasses.replace(cfg.text, vocab_size=vocab))
    abstract = jax.eval_shape(lambda: vlm.init_params(cfg, jax.random.key(0)))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract)) == published


def test_small_preset_trains_shapes():
    cfg = presets.get_model_config("small")
    batch = vlm.dummy_batch(cfg, 2, 12)
    out = jax.eval_shape(lambda: vlm.VLM(cfg).apply(vlm.init_params(cfg, jax.random.key(0)), batch))
    assert out.shape == (2, 12, 4096) and out.dtype == jnp.float32
    with pytest.raises(ValueError, match="unknown model config 'nope'.*medgemma_4b"):
        presets.get_model_config("nope")

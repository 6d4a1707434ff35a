"""The batch contract: records -> views -> tokens -> `collate`, checked by our `validate_batch` and the model's, and
fed to the tiny VLMs (PaliGemma layout and Gemma 3 layout) to prove the contract fits the model."""

import io

import numpy as np
import pytest
from PIL import Image

from medclm_jax.data import batch as B
from medclm_jax.data import prompts, views
from medclm_jax.model import tokenizer as T
from medclm_jax.records import decode_example, encode_example, schema

DOMAINS = {"effusion_xray": 0, "nodule_xray": 1}
COT = "The right lung is in view. The box [0.25, 0.25, 0.75, 0.75] holds a round opacity."


def record(*, negative=False, pool="easy_medium", domain="nodule_xray") -> dict:
    pixels = np.full((40, 48), 90, np.uint8)
    pixels[12:20, 14:26] = 220
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    rec = {
        "image/encoded": buf.getvalue(), "image/format": "png", "image/height": 40, "image/width": 48,
        "image/id": "abc", "image/modality": "xray", "image/source": "phantom",
        "lesion/class": schema.NO_FINDING if negative else "nodule",
        "lesion/box": np.asarray([] if negative else [0.25, 0.25, 0.75, 0.75], np.float32),
        "lesion/organ": "none" if negative else "right lung", "lesion/organ_score": 0.5,
        "lesion/organ_method": "containment", "lesion/location": "right upper zone", "domain": domain,
        "rationale/seed": "seed", "curriculum/pool": pool, "synth/backend": "template", "split": "train",
    }
    for stage in schema.STAGES:
        rec[f"{stage}/question"] = f"Is there an abnormality ({stage})?"
        rec[f"{stage}/answer"] = "no" if negative else "a nodule"
        rec[f"{stage}/answer_type"] = "open"
        if stage != "hard":
            rec[f"{stage}/cot"] = "No focal lesion is seen." if negative else COT
    return decode_example(encode_example(rec))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = [f"Reasoning: {COT} Answer: a nodule", "Is there an abnormality (easy)?", "No focal lesion."] * 20
    return T.train_tokenizer(iter(corpus), vocab_size=2048, out_dir=tmp_path_factory.mktemp("tok"))


def rows(tok, *, image_size=32, family="paligemma", placeholder=(), max_len=96, fmt="trained"):
    settings = views.ViewSettings(image_size, family)
    ps = prompts.PromptSettings(fmt, max_len, image_placeholder=placeholder)
    cases = [(record(), "easy"), (record(), "medium"), (record(pool="hard", domain="effusion_xray"), "hard"),
             (record(negative=True), "easy")]
    out = []
    for i, (rec, stage) in enumerate(cases):
        v = views.make_view(rec, stage, settings, domain_ids=DOMAINS, example_id=100 + i)
        out.append(B.example_row(v, prompts.encode(tok, ps, v.question, v.target)))
    return out


def test_collate_makes_the_contract(tok):
    batch = B.collate(rows(tok))
    B.validate_batch(batch, image_size=32, max_len=96, batch_size=4)
    assert {k: (v.dtype, v.shape) for k, v in batch.items()} == {
        "image": (np.float32, (4, 32, 32, 3)), "text": (np.int32, (4, 96)), "mask_ar": (np.int32, (4, 96)),
        "mask_input": (np.int32, (4, 96)), "mask_loss": (np.int32, (4, 96)), "span": (np.int32, (4, 96)),
        "stage": (np.int32, (4,)), "domain": (np.int32, (4,)), "example_id": (np.int32, (4,)),
        "box": (np.float32, (4, 4)), "has_box": (np.int32, (4,)), "weight": (np.float32, (4,))}
    assert batch["stage"].tolist() == [0, 1, 2, 0] and batch["domain"].tolist() == [1, 1, 0, 1]
    assert batch["example_id"].tolist() == [100, 101, 102, 103] and batch["weight"].tolist() == [1, 1, 1, 1]
    assert batch["has_box"].tolist() == [1, 1, 1, 0] and batch["box"][3].tolist() == [0, 0, 0, 0]
    np.testing.assert_allclose(batch["box"][0], [0.25, 0.25, 0.75, 0.75])
    assert (batch["span"][2] == 1).sum() == 0 and (batch["span"][:2] == 1).any(-1).all()  # Hard: answer only
    # mask_loss is exactly the target: after the prompt, on every real token.
    for r in range(4):
        n = batch["mask_input"][r].sum()
        p = n - batch["mask_loss"][r].sum()
        assert batch["mask_loss"][r].tolist() == [0] * p + [1] * (n - p) + [0] * (96 - n)


def test_short_batch_is_padded_with_weightless_copies(tok):
    batch = B.collate(rows(tok)[:3], batch_size=5)
    B.validate_batch(batch, batch_size=5)
    assert batch["weight"].tolist() == [1, 1, 1, 0, 0] and batch["example_id"].tolist()[3:] == [-1, -1]
    assert not batch["mask_loss"][3:].any() and not batch["span"][3:].any() and not batch["has_box"][3:].any()
    np.testing.assert_array_equal(batch["text"][3], batch["text"][0])  # a well-formed row for the model
    np.testing.assert_array_equal(batch["image"][4], batch["image"][0])
    with pytest.raises(ValueError, match="3 rows for a batch of 2"):
        B.collate(rows(tok)[:3], batch_size=2)
    with pytest.raises(ValueError, match="no rows"):
        B.collate([])


def _broken(batch, key, value):
    out = dict(batch)
    out[key] = value
    return out


def test_validate_batch_names_what_is_wrong(tok):
    batch = B.collate(rows(tok))
    cases = [
        (_broken(batch, "text", batch["text"].astype(np.int64)), r"batch\['text'\]: dtype int64, expected int32"),
        (_broken(batch, "image", batch["image"][:, :16]), r"batch\['image'\]: shape \(4, 16, 32, 3\), expected "
                                                         r"\(4, 32, 32, 3\)"),
        (_broken(batch, "image", batch["image"] * 2), r"batch\['image'\]: values in"),
        ({k: v for k, v in batch.items() if k != "span"}, r"missing keys \['span'\]"),
        (_broken(batch, "mask_loss", np.zeros_like(batch["mask_loss"])), r"batch\['span'\]: not equal to mask_loss"),
        (_broken(batch, "stage", np.full(4, 3, np.int32)), r"batch\['stage'\]: values outside"),
        (_broken(batch, "weight", np.asarray([1, 1, 1, 0], np.float32)), r"batch\['weight'\]: padding rows \[3\]"),
        (_broken(batch, "mask_ar", np.zeros_like(batch["mask_ar"])), r"batch\['mask_ar'\]: 0 \(prefix\) on target"),
        (_broken(batch, "box", batch["box"][:, ::-1].copy()), r"batch\['box'\]: not normalized xyxy"),
        (_broken(batch, "weight", [1.0] * 4), r"batch\['weight'\]: a list, expected a numpy array"),
    ]
    for broken, message in cases:
        with pytest.raises(ValueError, match=message):
            B.validate_batch(broken, image_size=32)
    with pytest.raises(ValueError, match=r"batch\['text'\]: shape \(4, 96\), expected \(4, 128\)"):
        B.validate_batch(batch, max_len=128)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "tiny_gemma3"])
def test_the_tiny_vlm_takes_a_collated_batch(tok, preset):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from medclm_jax.model import presets, vlm

    cfg = presets.get_model_config(preset)
    ps = prompts.settings_for_model(cfg, tok, max_len=96, pretrained=False)
    batch = B.collate(rows(tok, image_size=cfg.vision.image_size, placeholder=ps.image_placeholder, fmt=ps.format),
                      batch_size=6)
    B.validate_batch(batch, image_size=cfg.vision.image_size, max_len=96)
    vlm.validate_batch(cfg, batch)
    variables = jax.jit(vlm.init_params, static_argnums=(0, 2, 3))(cfg, jax.random.PRNGKey(0), 6, 96)
    logits = jax.jit(vlm.VLM(cfg).apply)(variables, {k: jnp.asarray(batch[k]) for k in B.MODEL_KEYS})
    assert logits.shape == (6, 96, cfg.text.vocab_size) and bool(jnp.isfinite(logits).all())
    # Next-token cross-entropy on each span: finite and positive at init.
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, jnp.asarray(batch["text"][:, 1:, None]), axis=-1)[..., 0]
    for span in (1, 2):
        m = jnp.asarray((batch["span"][:, 1:] == span) * batch["weight"][:, None])
        loss = (nll * m).sum() / m.sum()
        assert bool(jnp.isfinite(loss)) and float(loss) > 0

"""`medclm convert`: HF -> Orbax -> HF round trips reload in transformers with identical logits; bad checkpoints
give errors that name the tensor / file; the safetensors reader agrees with torch's writer (bf16 included)."""

import json
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_tiny_vlm as tiny  # noqa: E402

from medclm_jax.commands import convert as convert_command  # noqa: E402
from medclm_jax.model import checkpoint, convert, presets, safetensors_io, vlm  # noqa: E402


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    out = {}
    for kind in tiny.KINDS:
        model = tiny.hf_model(kind, seed=3)
        path = tmp_path_factory.mktemp(f"hf_{kind}")
        model.save_pretrained(path)
        (path / "tokenizer.json").write_text('{"stand-in": true}')  # must travel with the checkpoint
        out[kind] = (model, path)
    return out


def _logits(model, inputs):
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_cli_round_trip_reloads_in_transformers(hf_dirs, tmp_path, kind):
    model, hf_dir = hf_dirs[kind]
    ours, back = tmp_path / "ours", tmp_path / "back"
    assert convert_command.main(["--from-hf", str(hf_dir), "--to", str(ours), "--param-dtype", "float32"]) == 0
    assert (ours / "tokenizer.json").is_file() and (ours / "params").is_dir()
    # A tiny shard limit forces the sharded layout (index + several files).
    assert convert_command.main(["--from", str(ours), "--to-hf", str(back), "--max-shard-gb", "0.00005"]) == 0
    assert (back / safetensors_io.INDEX_NAME).is_file() and len(list(back.glob("model-*.safetensors"))) > 1
    assert (back / "tokenizer.json").read_text() == '{"stand-in": true}'

    cls = type(model)
    reloaded, info = cls.from_pretrained(back, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.eval().state_dict().items()):
        assert torch.equal(a, b), name
    cfg = checkpoint.load_config(ours)
    inputs = vlm.hf_inputs(cfg, tiny.batch(cfg))
    np.testing.assert_array_equal(_logits(reloaded, inputs), _logits(model, inputs))
    # The exported (Hub-layout, sharded) folder converts again to the same config.
    assert convert.load_hf(back, param_dtype="float32")[0] == convert.load_hf(hf_dir, param_dtype="float32")[0]


def test_bf16_reader_matches_torch_writer(tmp_path):
    tiny.hf_model("gemma3", seed=5).to(torch.bfloat16).save_pretrained(tmp_path)
    reader = safetensors_io.SafetensorsReader(tmp_path)
    from safetensors.torch import load_file

    ref = load_file(tmp_path / "model.safetensors")
    assert sorted(reader.keys()) == sorted(ref)
    for name, tensor in ref.items():
        got = reader.get(name)
        assert got.dtype.name == "bfloat16" and got.shape == tuple(tensor.shape)
        np.testing.assert_array_equal(got.astype(np.float32), tensor.float().numpy(), err_msg=name)
    cfg, params = convert.load_hf(tmp_path)  # param_dtype auto: bf16 as stored
    assert cfg.text.param_dtype == "bfloat16"
    assert params["decoder"]["embedder"]["embedding"].dtype.name == "bfloat16"
    checkpoint.save_checkpoint(tmp_path / "ours", cfg, params)
    cfg2, params2 = checkpoint.load_checkpoint(tmp_path / "ours")
    assert cfg2 == cfg
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        assert b.dtype.name == "bfloat16"
        np.testing.assert_array_equal(np.asarray(b), a)
    with pytest.raises(FileExistsError):
        checkpoint.save_checkpoint(tmp_path / "ours", cfg, params)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _rewrite(path, edit):
    """Rewrites model.safetensors with `edit(dict of arrays)` applied."""
    reader = safetensors_io.SafetensorsReader(path)
    tensors = {k: reader.get(k) for k in reader.keys()}
    reader.close()
    edit(tensors)
    safetensors_io.write_file(path / "model.safetensors", tensors.items())


def test_missing_tensor_names_it_and_its_shape(hf_dirs, tmp_path):
    path = _copy(hf_dirs["paligemma"][1], tmp_path / "ckpt")
    _rewrite(path, lambda t: t.pop("language_model.model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"language_model\.model\.layers\.1\.mlp\.up_proj\.weight.*\(96, 64\)"):
        convert.load_hf(path)
    _rewrite(path, lambda t: t.pop("vision_tower.encoder.layers.0.self_attn.q_proj.bias"))
    with pytest.raises(ValueError, match=r"vision_tower\.encoder\.layers\.0\.self_attn\.q_proj\.bias.*\(32,\)"):
        convert.load_hf(path)


def test_unused_tensors_are_reported(hf_dirs, tmp_path, caplog):
    path = _copy(hf_dirs["paligemma"][1], tmp_path / "ckpt")
    _rewrite(path, lambda t: t.update({"language_model.model.layers.7.mlp.up_proj.weight": np.zeros((96, 64)),
                                       "language_model.lm_head.weight": np.zeros((tiny.VOCAB, 64))}))
    with caplog.at_level("WARNING"):
        convert.load_hf(path)
    assert "1 tensors were not used" in caplog.text and "layers.7.mlp.up_proj" in caplog.text


def test_wrong_shape_names_tensor_and_expected_shape(hf_dirs, tmp_path, capsys):
    path = _copy(hf_dirs["gemma3"][1], tmp_path / "ckpt")
    _rewrite(path, lambda t: t.update({"multi_modal_projector.mm_input_projection_weight":
                                       np.zeros((32, 63), np.float32)}))
    with pytest.raises(ValueError, match=r"mm_input_projection_weight.*expected shape \(32, 64\).*\(32, 63\)"):
        convert.load_hf(path)
    assert convert_command.main(["--from-hf", str(path), "--to", str(tmp_path / "out")]) == 1
    assert "mm_input_projection_weight" in capsys.readouterr().err


def test_unsupported_architecture_lists_supported(hf_dirs, tmp_path):
    path = _copy(hf_dirs["paligemma"][1], tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["LlavaForConditionalGeneration"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"LlavaForConditionalGeneration.*Gemma3ForConditionalGeneration.*"
                                         r"PaliGemmaForConditionalGeneration"):
        convert.load_hf(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage_header", "huge_header_length"])
def test_corrupt_safetensors_is_reported(hf_dirs, tmp_path, damage, capsys):
    path = _copy(hf_dirs["paligemma"][1], tmp_path / "ckpt")
    file = path / "model.safetensors"
    data = file.read_bytes()
    if damage == "truncate":
        file.write_bytes(data[: len(data) - 1000])
    elif damage == "garbage_header":
        file.write_bytes(data[:8] + b"\xff" * 40 + data[48:])
    else:
        file.write_bytes((2**40).to_bytes(8, "little") + data[8:])
    with pytest.raises(safetensors_io.SafetensorsError, match=r"model\.safetensors: not a valid safetensors"):
        convert.load_hf(path)
    assert convert_command.main(["--from-hf", str(path), "--to", str(tmp_path / "out")]) == 1
    assert "not a valid safetensors file" in capsys.readouterr().err


def test_all_three_name_layouts_are_detected():
    # Hub (4.x), transformers 5.x save_pretrained, transformers 5.x in-memory state dict.
    for vision, proj, text in [("vision_tower.vision_model.", "multi_modal_projector.", "language_model.model."),
                               ("vision_tower.", "multi_modal_projector.", "language_model.model."),
                               ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model.")]:
        names = [vision + "post_layernorm.weight", proj + "linear.weight", text + "embed_tokens.weight",
                 "lm_head.weight", "language_model.lm_head.weight"]
        assert convert.detect_prefixes(names) == {"vision": vision, "projector": proj, "text": text}
    with pytest.raises(ValueError, match="mixed"):
        convert.detect_prefixes(["vision_tower.a", "model.vision_tower.b", "multi_modal_projector.c",
                                 "language_model.model.d"])


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_presets_survive_hf_config_round_trip(name):
    cfg = presets.get_model_config(name)
    hf = json.loads(json.dumps(convert.vlm_config_to_hf(cfg)))  # what config.json holds
    ours = dict(dtype=cfg.text.dtype, param_dtype=cfg.text.param_dtype, scan_layers=cfg.text.scan_layers,
                remat_policy=cfg.text.remat_policy)
    assert convert.vlm_config_from_hf(hf, **ours) == cfg


def test_cli_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        convert_command.main(["--help"])
    assert exit_.value.code == 0 and "--from-hf" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        convert_command.main(["--from-hf", "x"])  # no --to
    assert exit_.value.code == 2
    assert convert_command.main(["--from-hf", "/nonexistent", "--to", "/tmp/x"]) == 1
    assert "config.json: missing" in capsys.readouterr().err


def test_reader_copies_each_tensor_and_reports_a_file_cut_short_after_opening(tmp_path):
    import ml_dtypes

    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.array([3], np.int64),
               "e": np.zeros((0, 4), ml_dtypes.bfloat16), "b": np.ones((4, 5), ml_dtypes.bfloat16)}
    path = tmp_path / "model.safetensors"
    safetensors_io.write_file(path, tensors.items())
    reader = safetensors_io.SafetensorsReader(tmp_path)
    for name, want in tensors.items():
        got = reader.get(name)
        assert got.dtype == want.dtype and got.shape == want.shape and got.flags.owndata
        np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))
    reader.close()
    reader = safetensors_io.SafetensorsReader(tmp_path)
    with open(path, "r+b") as f:  # the file shrinks after the header was checked
        f.truncate(path.stat().st_size - 8)
    with pytest.raises(safetensors_io.SafetensorsError, match=r"tensor 'b' is cut short"):
        reader.get("b")
    reader.close()


@pytest.mark.slow
def test_relayout_to_unrolled_serves_with_ring_caches(tmp_path):
    """Scan -> unrolled re-save: same logits, and decoding through the ring caches (window 6) generates what the
    stacked full-length caches generate, for prompts longer than the window and answers that keep varying."""
    from medclm_jax.model import gemma

    hf_dir, scan_dir, unrolled_dir = tmp_path / "hf", tmp_path / "scan", tmp_path / "unrolled"
    tiny.hf_decoding_model("gemma3", seed=6).save_pretrained(hf_dir)
    (hf_dir / "tokenizer.json").write_text('{"stand-in": true}')
    assert convert_command.main(["--from-hf", str(hf_dir), "--to", str(scan_dir), "--param-dtype", "float32",
                                 "--dtype", "float32"]) == 0
    assert convert_command.main(["--from", str(scan_dir), "--to", str(unrolled_dir), "--layout", "unrolled"]) == 0
    assert (unrolled_dir / "tokenizer.json").is_file()
    cfg_s, p_s = checkpoint.load_checkpoint(scan_dir)
    cfg_u, p_u = checkpoint.load_checkpoint(unrolled_dir)
    assert cfg_s.text.scan_layers and cfg_s.vision.scan_layers
    assert not cfg_u.text.scan_layers and not cfg_u.vision.scan_layers
    assert "layers_0" in p_u["decoder"] and "layer_0" in p_u["vision"]
    assert "ring" in gemma.init_cache(cfg_u.text, 1, 64)  # serving gets ring-buffer caches
    batch = tiny.batch(cfg_s)
    np.testing.assert_allclose(vlm.VLM(cfg_u).apply({"params": p_u}, batch),
                               vlm.VLM(cfg_s).apply({"params": p_s}, batch), rtol=1e-5, atol=1e-5)
    prompts = tiny.prompts(cfg_s, (2, 6, 4), seed=1)
    assert prompts["mask_input"].sum(axis=1).min() > cfg_u.text.sliding_window
    tokens = [np.asarray(vlm.generate(cfg, {"params": p}, prompts, max_new_tokens=12, eos_id=()).tokens)
              for cfg, p in ((cfg_s, p_s), (cfg_u, p_u))]
    assert all(len(set(row.tolist())) >= 4 for row in tokens[0]), tokens[0]  # not one repeated token
    np.testing.assert_array_equal(tokens[1], tokens[0])
    cfg_b, p_b = convert.relayout(cfg_u, p_u, scan_layers=True)  # and back: the very same arrays
    assert cfg_b == cfg_s
    for a, b in zip(jax.tree.leaves(p_b), jax.tree.leaves(p_s)):
        np.testing.assert_array_equal(a, np.asarray(b))
    with pytest.raises(SystemExit):  # --from DIR --to DIR needs the layout to write
        convert_command.main(["--from", str(scan_dir), "--to", str(tmp_path / "x")])

"""The model benchmark script runs end to end (tiny presets, a step or two) so it cannot rot unnoticed."""

import importlib.util
import json
import os

import numpy as np

from medclm_jax.model import presets, vlm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(ROOT, "benchmarks", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_make_batch_layouts():
    bench = _load("model")
    pali = bench.make_batch(presets.get_model_config("tiny"), 2, 10, 4)
    assert pali["mask_ar"][0].tolist() == [0] * 4 + [1] * 6 and pali["mask_loss"].sum() == 12
    cfg = presets.get_model_config("tiny_gemma3")
    g3 = bench.make_batch(cfg, 2, 16, 3)
    ph = vlm.image_placeholder_ids(cfg)
    assert g3["text"][0, 1:1 + len(ph)].tolist() == ph
    assert np.sum(g3["text"] == cfg.image_token_id) == 2 * cfg.num_image_tokens  # none by chance elsewhere
    assert g3["text"].shape == (2, 16 + len(ph))  # text_len counts text tokens; placeholders come on top
    assert g3["mask_ar"].all() and g3["mask_loss"][0].tolist() == [0] * (3 + len(ph)) + [1] * 13
    vlm.validate_batch(cfg, g3)


def test_model_benchmark_cpu_and_gpu_modes_run(tmp_path, capsys):
    bench = _load("model")
    out = tmp_path / "cpu.json"
    assert bench.main(["--preset", "tiny", "--no-hf", "--steps", "1", "--batch", "2", "--text-len", "8",
                       "--prompt-len", "3", "--new-tokens", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ours_train_tokens_per_s"] > 0 and result["ours_decode_tokens_per_s"] > 0
    # GPU mode's code path (sharded init, bf16, scan + remat, MFU) on the CPU, with Gemma 3's layout.
    out = tmp_path / "gpu.json"
    assert bench.main(["--gpu", "--no-hf", "--preset", "tiny_gemma3", "--steps", "1", "--batch", "8",
                       "--text-len", "16", "--prompt-len", "3", "--new-tokens", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["tokens_per_s"] > 0 and 0 < result["mfu"] < 1
    assert "MFU" in capsys.readouterr().out


def test_small_learns_runs_on_the_training_targets(capsys):
    """small_learns trains on `data.targets`' text and scores decodes as the metric does (last `Answer:`)."""
    bench = _load("small_learns")
    assert bench.main(["--preset", "tiny", "-n", "4", "--steps", "1", "--batch", "2", "--text-len", "64"]) == 0
    out = capsys.readouterr().out
    assert "tiny preset: 1 steps" in out and "greedy answer exact match" in out
    rec = {"image/encoded": [b"png"], "medium/question": [b"Where?"], "medium/cot": [b"At [0.1, 0.2, 0.3, 0.4]."],
           "medium/answer": [b"left lung"], "hard/question": [b"Any effusion?"], "hard/answer": [b"no"]}
    assert [(ex["prompt"], ex["target"], ex["answer"]) for ex in bench.examples([rec])] == [
        ("Where?", "Reasoning: At [0.1, 0.2, 0.3, 0.4]. Answer: left lung", "left lung"),
        ("Any effusion?", "Answer: no", "no")]

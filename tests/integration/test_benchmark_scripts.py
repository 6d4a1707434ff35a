"""The model benchmark script runs end to end (tiny presets, a step or two) so it cannot rot unnoticed."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medclm_jax.commands import demo
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


@pytest.mark.parametrize("preset", ["tiny", "tiny_gemma3"])
def test_hf_step_applies_the_lm_head_where_ours_does(preset):
    """Like for like: HF's timed step projects only the text positions onto the vocabulary (not PaliGemma's
    image prefix), the positions where ours computes logits, and gets our loss from the same weights."""
    pytest.importorskip("torch")
    bench = _load("model")
    cfg = presets.get_model_config(preset)
    hf = bench.hf_model_for(cfg)
    params = bench.params_from_hf(cfg, hf)
    batch = bench.make_batch(cfg, 2, 8, 3)
    seen = []
    hf.lm_head.register_forward_hook(lambda module, inputs, output: seen.append(tuple(inputs[0].shape)))
    _, info = bench.hf_train_step(hf, vlm.hf_inputs(cfg, batch), batch)
    text_positions = batch["text"].shape[1]
    assert seen == [(2, text_positions, cfg.text.width)]
    ours_logits = vlm.VLM(cfg).apply({"params": params}, {k: jnp.asarray(v) for k, v in batch.items()})
    assert ours_logits.shape[:2] == (2, text_positions)
    ours_loss = bench.loss_fn(vlm.VLM(cfg), params, {k: jnp.asarray(v) for k, v in batch.items()})
    np.testing.assert_allclose(float(ours_loss), info["loss"], rtol=1e-5)


def test_model_benchmark_cpu_and_gpu_modes_run(tmp_path, capsys):
    bench = _load("model")
    out = tmp_path / "cpu.json"
    assert bench.main(["--preset", "tiny", "--no-hf", "--steps", "1", "--batch", "2", "--text-len", "8",
                       "--prompt-len", "3", "--new-tokens", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ours_train_tokens_per_s"] > 0 and result["ours_decode_tokens_per_s"] > 0
    # GPU mode's code path (sharded init, bf16, scan + remat, MFU) on the CPU, with Gemma 3's layout.
    out = tmp_path / "gpu.json"
    assert bench.main(["--gpu", "--no-hf", "--all-devices", "--preset", "tiny_gemma3", "--steps", "1", "--batch",
                       "8", "--text-len", "16", "--prompt-len", "3", "--new-tokens", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["tokens_per_s"] > 0 and 0 < result["mfu"] < 1 and result["devices"] == 1
    assert result["sharded"]["devices"] == len(jax.devices()) and result["sharded"]["tokens_per_s"] > 0
    printed = capsys.readouterr().out
    assert "MFU" in printed and "XLA temp bytes" in printed and "ours FSDP over" in printed


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


def test_eval_benchmark_smallest_mode_runs_and_checks_the_tokens(tmp_path, capsys):
    """benchmarks/eval.py at its smallest: the cached and the cache-free greedy decoding agree, the table prints."""
    bench = _load("eval")
    out = tmp_path / "eval.md"
    assert bench.main(["--preset", "tiny", "--batches", "1", "--prompt-len", "4", "--new-tokens", "3", "--reps", "1",
                       "--markdown", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| 1 |" in printed and "the two sides wrote the same tokens" in printed
    assert out.read_text().startswith("# Evaluation throughput") and "load average" in out.read_text()


def test_curriculum_ablation_quick_mode_runs_caches_and_refuses_other_settings(tmp_path, capsys):
    """The ablation's smallest mode goes phantom -> build -> train -> eval -> table; a re-run reads the cached
    result instead of training again, and other settings in the same folder are refused."""
    bench = _load("curriculum")
    out = str(tmp_path / "ablation")
    assert bench.main(["--quick", "--arms", "hard_only", "--out", out]) == 0
    result = bench.cached_result(out, "hard_only", 0)
    assert result["n_examples"] == 6 and result["mix"][-1] == [0.0, 0.0, 1.0]  # the training log's mix: Hard only
    with open(os.path.join(out, "eval", "hard_only-s0", "metrics.json")) as f:  # scores: `medclm eval`'s own file
        evaluated = json.load(f)["metrics"]
    assert result["scores"]["overall"]["format/reasoning_answer"] == evaluated["format"]["reasoning_answer"]
    assert result["scores"]["hard"]["format/reasoning_answer"] == evaluated["by_stage"]["hard"]["format"][
        "reasoning_answer"]
    printed = capsys.readouterr().out
    assert "| hard_only |" in printed and "0.00/0.00/1.00" in printed
    assert bench.main(["--quick", "--arms", "hard_only", "--out", out]) == 0
    assert "[hard_only-s0] cached" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="other settings"):
        bench.main(["--quick", "--arms", "hard_only", "--out", out, "--model", "small"])
    # every arm with step constants is scaled to the run like the demo's; `reference` spans the authors' epochs
    assert bench.arm_sets("adaptive", 200)[2:] == demo.curriculum_for(200)
    assert bench.arm_sets("reference", 200)[-1] == "curriculum.steps_per_epoch=8"


def test_train_benchmark_quick_mode_runs_all_four_parts(tmp_path, capsys):
    """benchmarks/train.py --quick: the real train step beside fwd+bwd, the loop's input wait, FSDP bytes on 1-8
    devices (this process has 8), checkpoint saves; the FSDP bytes are checked against the state's own sizes."""
    bench = _load("train")
    out = tmp_path / "train.json"
    assert bench.main(["--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    (step,) = result["step"]
    assert set(step["times"]) == {"train step", "fwd+bwd (model.py)", "fwd+bwd (step's loss)"}
    assert all(t > 0 for t in step["times"].values()) and result["peak_gflops"] > 0
    (wait,) = result["input"]
    assert 0 <= wait["wait_share"] < 1 and wait["timed_steps"] == 3 and wait["logged_steps_per_s"]
    memory = {r["devices"]: r for r in result["memory"]}
    assert sorted(memory) == [1, 2, 4, 8]
    cfg = bench.loop.model_config(bench.train_config("tiny"))
    boxed = jax.eval_shape(lambda r: vlm.init_params(cfg, r)["params"], jax.random.key(0))
    n_params = sum(x.size for x in jax.tree.leaves(bench.shd.unbox(boxed)))
    assert memory[1]["params"] == 4 * n_params and memory[1]["opt_state"] >= 2 * memory[1]["params"]  # f32, Adam
    for n, r in memory.items():  # split evenly, the rest whole on every device
        assert r["params"] + r["opt_state"] == pytest.approx(r["expected_with_whole"], rel=1e-12)
        assert 1 <= r["ratio"] < 1.1 and (r["whole"] > 0) == (n > 1)
    (ckpt,) = result["checkpoint"]
    assert ckpt["bytes"] > memory[1]["params"] and ckpt["save_to_disk_s"] >= 0 and ckpt["step_alone_s"] > 0
    printed = capsys.readouterr().out
    assert all(f"\n{i}. " in printed for i in range(1, 5)) and "MFU" in printed and "wait / loop time" in printed

"""The trainer (medclm_jax/train/loop.py, `medclm train`) on a phantom build, the tiny preset and 8 fake CPU devices.

References: an uninterrupted run (module fixture) for every interrupted one (SIGTERM, SIGKILL, a corrupt newest
checkpoint): the same per-step losses and the same final parameters, bit for bit; the model checkpoint format
(`model.checkpoint.load_checkpoint`) for the exported model. The runs share XLA's persistent compilation cache
(`compile_cache`), so only the first one compiles.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from phantom_dataset import build_dataset, record_texts

from medclm_jax.commands import train as train_cmd
from medclm_jax.config_file import load_config
from medclm_jax.data import pipeline, views
from medclm_jax.data.source import RecordSource, load_dataset_info
from medclm_jax.model import checkpoint as model_ckpt
from medclm_jax.model import sharding as shd
from medclm_jax.model import tokenizer as T
from medclm_jax.model import vlm
from medclm_jax.train import curriculum, losses, loop, metrics, optim
from medclm_jax.train import state as state_lib
from medclm_jax.train import step as step_lib
from medclm_jax.train.checkpoint import TrainCheckpoints

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_CONFIG = os.path.join(REPO, "configs", "train.py") + ":model=tiny,mesh=cpu"
N = 16
# adaptive reaches Medium by step 4 and Hard by step ~8: the scheduler's feedback shapes the batches of the run
FAST = dict(min_easy_steps=0, max_easy_steps=4, medium_ramp_steps=2, max_medium_steps=4, plateau_window=2,
            hard_start=0.4, hard_max=0.5, medium_floor=0.2, easy_floor=0.1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """(data folder, tokenizer folder, compile cache folder)."""
    data = build_dataset(tmp_path_factory, "loop", 24)
    texts = record_texts(RecordSource(data, "train").iter_records())
    tok = str(tmp_path_factory.mktemp("loop_tok"))
    T.train_tokenizer(iter(texts), vocab_size=2048, out_dir=tok)
    return data, tok, str(tmp_path_factory.mktemp("loop_xla_cache"))


def overrides(env, **extra) -> list[str]:
    data, tok, cache = env
    sets = {"data.dir": data, "data.tokenizer": tok, "compile_cache": cache, "total_steps": N,
            "optim.total_steps": N, "optim.warmup_steps": 2, "log_every": 1, "eval_every": 0, "checkpoint_every": 0,
            "curriculum.update_every": 3, **{f"curriculum.adaptive.{k}": v for k, v in FAST.items()}, **extra}
    return [f"{k}={v}" for k, v in sets.items()]


def config(env, **extra):
    return load_config(TRAIN_CONFIG, overrides(env, **extra))


def train_losses(workdir: str) -> dict[int, float]:
    lines = [r for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["kind"] == "train"]
    steps = [r["step"] for r in lines]
    assert steps == sorted(set(steps)), f"train lines out of order or repeated: {steps}"
    return {r["step"]: r["loss"] for r in lines}


def final_params(workdir: str):
    return jax.device_get(model_ckpt.load_checkpoint(os.path.join(workdir, "final"))[1])


def assert_same_run(workdir: str, reference: str) -> None:
    assert train_losses(workdir) == train_losses(reference)  # every step's float32 loss, exactly
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir), final_params(reference))


def launch(env, workdir: str, **extra) -> subprocess.Popen:
    """`medclm train` in a child process (the 8 fake devices come with the environment)."""
    args = [sys.executable, "-m", "medclm_jax.cli", "train", "--config", TRAIN_CONFIG, "--workdir", workdir]
    for item in overrides(env, **extra):
        args += ["--set", item]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > end:
            out = proc.communicate(timeout=60)[0] if proc.poll() is not None else ""
            raise AssertionError(f"the run ended or timed out before the condition held:\n{out[-3000:]}")
        time.sleep(0.02)


def logged_steps(workdir: str) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    return sum(1 for _ in open(path)) if os.path.isfile(path) else 0


def saved_steps(workdir: str) -> list[int]:
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """An uninterrupted run of N steps (evaluating every 8)."""
    workdir = str(tmp_path_factory.mktemp("loop_reference"))
    result = loop.train_and_evaluate(config(env, eval_every=8), workdir)
    assert result == loop.RunResult(N, None, os.path.join(workdir, "checkpoints", str(N)),
                                    os.path.join(workdir, "final"))
    return workdir


def test_tiny_learns_the_phantom_records_through_the_curriculum_and_exports_a_model(env, reference):
    losses = train_losses(reference)
    assert sorted(losses) == list(range(1, N + 1))
    first, last = np.mean([losses[s] for s in range(1, 5)]), np.mean([losses[s] for s in range(N - 3, N + 1)])
    assert last < 0.85 * first, (first, last)
    records = metrics.read_jsonl(os.path.join(reference, "metrics.jsonl"))
    end = [r for r in records if r["kind"] == "train"][-1]
    assert end["curriculum/domains_in/hard"] > 0 and end["mix/hard"] > 0  # the scheduler moved on
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [8, 16] and evals[1]["eval/loss"] < evals[0]["eval/loss"]
    assert {"eval/loss/easy", "eval/loss/medium", "eval/loss/hard"} <= set(evals[0])
    cfg, params = model_ckpt.load_checkpoint(os.path.join(reference, "final"))
    assert cfg == loop.model_config(config(env)) and os.path.isfile(os.path.join(reference, "final",
                                                                                    T.TOKENIZER_JSON))
    ckpt_params = TrainCheckpoints(os.path.join(reference, "checkpoints")).restore(
        abstract_params=jax.eval_shape(lambda: params))["params"]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(ckpt_params))


def test_sigterm_saves_and_exits_0_and_the_resumed_run_equals_the_uninterrupted_one(env, reference, tmp_path):
    workdir = str(tmp_path / "run")
    proc = launch(env, workdir)
    wait_for(lambda: logged_steps(workdir) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, out[-3000:]
    (stopped,) = saved_steps(workdir)
    assert 3 < stopped < N, out[-3000:]
    assert f"stopped by SIGTERM after step {stopped}" in out and "Resume with: medclm train --config" in out
    assert not os.path.exists(os.path.join(workdir, "final"))

    result = loop.train_and_evaluate(config(env), workdir)
    assert result.step == N and result.stopped_by is None
    assert_same_run(workdir, reference)


@pytest.mark.slow
def test_killed_run_resumes_past_a_corrupt_newest_checkpoint_bit_exact(env, reference, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="medclm_jax")
    workdir = str(tmp_path / "run")
    proc = launch(env, workdir, checkpoint_every=3)
    wait_for(lambda: len(saved_steps(workdir)) >= 2, proc)
    proc.kill()
    proc.communicate(timeout=60)
    *_, before, newest = saved_steps(workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(newest), "params"))  # a write that never finished

    result = loop.train_and_evaluate(config(env, checkpoint_every=3), workdir)
    assert result.step == N
    assert f"checkpoint of step {newest} does not restore" in caplog.text and "moved the checkpoint" in caplog.text
    assert any(d.startswith(f"{newest}.unrestorable") for d in os.listdir(os.path.join(workdir, "checkpoints")))
    assert f"resumed from {os.path.join(workdir, 'checkpoints')}, step {before}" in caplog.text
    assert_same_run(workdir, reference)


def test_non_finite_loss_stops_naming_the_step_and_examples_and_saves_nothing(env, reference, tmp_path):
    cfg, params = model_ckpt.load_checkpoint(os.path.join(reference, "final"))
    params = jax.tree.map(np.array, jax.device_get(params))  # writable copies
    params["decoder"]["final_norm"]["scale"][:] = np.nan
    init = str(tmp_path / "nan_init")
    model_ckpt.save_checkpoint(init, cfg, params)
    workdir = str(tmp_path / "run")
    with pytest.raises(metrics.NonFiniteLoss, match=r"step 0: non-finite training loss.*record index.*\[\d+"):
        loop.train_and_evaluate(config(env, **{"model.init": init, "checkpoint_every": 1}), workdir)
    assert saved_steps(workdir) == []


def test_checkpoints_of_another_config_are_refused_and_left_in_place(env, reference, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(os.path.join(reference, "checkpoints"), os.path.join(workdir, "checkpoints"))
    accumulating = config(env, **{"optim.grad_accum_steps": 2})  # its optimizer state holds an accumulator
    with pytest.raises(ValueError, match=r"no kept checkpoint restores into this config's train state"):
        loop.train_and_evaluate(accumulating, workdir)
    assert saved_steps(workdir) == saved_steps(reference)
    assert not [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if "unrestorable" in d]


def test_compile_only_prints_bytes_per_device(env, capsys):
    args = ["--config", TRAIN_CONFIG, "--compile_only"]
    for item in overrides(env):
        args += ["--set", item]
    assert train_cmd.main(args) == 0
    out = capsys.readouterr().out
    assert "bytes per device" in out
    total = [line for line in out.splitlines() if line.strip().startswith("total")]
    assert total and int(total[0].split("(")[1].split()[0].replace(",", "")) > 0


def _free_port() -> int:
    import socket  # pylint: disable=import-outside-toplevel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_loopback_train_on_the_union_of_their_batches(env, tmp_path):
    """Two processes x 4 CPU devices (`jax.distributed`, gloo collectives) against one process x 8 devices fed the
    concatenation of the two processes' local batches (`TrainStream(process_index=p, process_count=2)`): the same
    per-step losses. (A uniform mix: with one process the stream itself would draw other examples.)"""
    steps = 4
    extra = {"curriculum.policy": "uniform", "total_steps": steps}
    workdir = str(tmp_path / "run")
    port = _free_port()
    procs = []
    for pid in range(2):
        child_env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                         JAX_PROCESS_ID=str(pid), XLA_FLAGS="--xla_force_host_platform_device_count=4")
        args = [sys.executable, "-m", "medclm_jax.cli", "train", "--config", TRAIN_CONFIG, "--workdir", workdir]
        for item in overrides(env, **extra):
            args += ["--set", item]
        procs.append(subprocess.Popen(args, cwd=REPO, env=child_env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    two = train_losses(workdir)
    assert sorted(two) == list(range(1, steps + 1))

    # One process, 8 devices, the two local batches of each step side by side.
    cfg = config(env, **extra)
    model_cfg = loop.model_config(cfg)
    data, tok_dir, _ = env
    tok = T.load_tokenizer(tok_dir)
    domains = list(views.domain_vocabulary(load_dataset_info(data)))
    pre = loop.preprocess(cfg, model_cfg, tok, domains)
    source = RecordSource(data, "train", on_error="skip")
    catalog = pipeline.catalog_for(source, domains, on_error="skip")
    ccfg = curriculum.CurriculumConfig.from_dict(cfg.curriculum)
    cstate = curriculum.init(ccfg, catalog.records(), domains=domains)
    streams = [pipeline.TrainStream(source, catalog, pre, ccfg, cstate, loop.input_options(cfg), process_index=p,
                                    process_count=2) for p in range(2)]
    mesh = shd.make_mesh(dict(cfg.mesh))
    ocfg = loop.optim_config(cfg)
    tx = optim.make_optimizer(ocfg)
    layout = step_lib.state_layout(model_cfg, tx, mesh)
    state = state_lib.init_sharded(lambda r: vlm.init_params(model_cfg, r)["params"], tx, jax.random.key(cfg.seed),
                                   mesh)
    train = step_lib.compile_step(step_lib.jit_train_step(model_cfg, tx, ocfg, losses.LossConfig.from_dict(cfg.loss),
                                                          len(domains), layout.shardings, mesh),
                                  layout.abstract, step_lib.abstract_batch(model_cfg, cfg.batch_size,
                                                                           cfg.data.max_len, mesh), mesh=mesh)
    one = {}
    for s in range(steps):
        parts = [st.next_local().arrays for st in streams]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in step_lib.DEVICE_KEYS}
        state, m = train(state, shd.shard_batch(batch, mesh))
        one[s + 1] = float(metrics.to_host(m)["loss"])
    for st in streams:
        st.close()
    np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=2e-5)


def test_init_from_a_converted_hf_paligemma_trains_and_exports_back_to_hf(env, tmp_path):
    """The pretrained path end to end on a tiny real-architecture PaliGemma: Hugging Face folder -> `medclm convert
    --from-hf` -> `medclm train` with model.init -> `medclm convert --to-hf` of the run's final export, which
    transformers loads with the trained weights."""
    torch = pytest.importorskip("torch")
    import transformers  # pylint: disable=import-outside-toplevel

    from medclm_jax.commands import convert as convert_cmd  # pylint: disable=import-outside-toplevel

    data, tok_dir, _ = env
    tok = T.load_tokenizer(tok_dir)
    text = dict(model_type="gemma", hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=1, head_dim=16, vocab_size=tok.vocab_size, bos_token_id=tok.bos_id,
                eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, vision_use_head=False)
    hf_cfg = transformers.PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=tok.image_id,
                                          projection_dim=64, vocab_size=tok.vocab_size, bos_token_id=tok.bos_id,
                                          eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    torch.manual_seed(0)
    hf_dir, ours, workdir, back = (str(tmp_path / n) for n in ("hf", "converted", "run", "back"))
    transformers.PaliGemmaForConditionalGeneration(hf_cfg).save_pretrained(hf_dir)
    for name in os.listdir(tok_dir):  # a released checkpoint ships its tokenizer beside the weights
        shutil.copy(os.path.join(tok_dir, name), hf_dir)
    assert convert_cmd.main(["--from-hf", hf_dir, "--to", ours]) == 0
    init_cfg, init_params = model_ckpt.load_checkpoint(ours)

    steps = 8
    cfg = config(env, **{"model.init": ours, "data.tokenizer": "", "total_steps": steps, "optim.total_steps": steps,
                         "optim.lr": 1e-3})
    assert loop.train_and_evaluate(cfg, workdir).step == steps
    losses = train_losses(workdir)
    # from ~ln(vocab) at HF's init; seen: 7.71 -> 7.34 over the 8 steps (a step's noise is ~0.02)
    assert np.mean([losses[s] for s in (steps - 1, steps)]) < np.mean([losses[1], losses[2]]) - 0.15, losses
    trained_cfg, trained = model_ckpt.load_checkpoint(os.path.join(workdir, "final"))
    assert trained_cfg.text == init_cfg.text and trained_cfg.image_token_id == tok.image_id
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)))),
                         trained, init_params)
    assert min(jax.tree.leaves(moved)) > 0  # every parameter trained (nothing is frozen by default)

    assert convert_cmd.main(["--from", os.path.join(workdir, "final"), "--to-hf", back]) == 0
    reloaded = transformers.PaliGemmaForConditionalGeneration.from_pretrained(back).eval()
    hf_embed = reloaded.get_input_embeddings().weight.detach().float().numpy()
    ours_embed = np.asarray(trained["decoder"]["embedder"]["embedding"], np.float32)
    np.testing.assert_array_equal(hf_embed, ours_embed)

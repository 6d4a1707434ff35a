"""What the trainer reports besides metrics.jsonl's losses: MFU, TensorBoard event files, the progress bar, the loss
curves PNG and greedy-decoded validation samples (medclm_jax/train/{mfu,tensorboard_log,progress,plots,samples}.py).

References: the hand formula of MFU from the logged tokens/s; TensorBoard's own reader (`EventAccumulator`) for the
event files, against metrics.jsonl; PIL for the PNG; the evaluation's parsers and IoU (`eval.run.parse_output`,
`eval.grounding`) for the samples. One short run (module fixture) with evaluations at steps 2 and 4.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil

import jax
import numpy as np
import pytest
from PIL import Image
from phantom_dataset import build_dataset, record_texts

from medclm_jax.config_file import load_config
from medclm_jax.data.source import RecordSource
from medclm_jax.eval import grounding
from medclm_jax.eval.html_report import STAGE_COLORS
from medclm_jax.eval.run import parse_output, record_task
from medclm_jax.model import flops
from medclm_jax.model import tokenizer as T
from medclm_jax.records.schema import STAGES
from medclm_jax.train import loop, metrics, mfu, progress, samples, tensorboard_log

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_CONFIG = os.path.join(REPO, "configs", "train.py") + ":model=tiny,mesh=cpu"
STEPS, PEAK = 4, 2.5e12
EVAL_STEPS = [2, 4]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """(data folder, tokenizer folder)."""
    data = build_dataset(tmp_path_factory, "reporting", 24)
    tok = str(tmp_path_factory.mktemp("reporting_tok"))
    T.train_tokenizer(iter(record_texts(RecordSource(data, "train").iter_records())), vocab_size=2048, out_dir=tok)
    return data, tok


def config(env, **extra):
    data, tok = env
    sets = {"data.dir": data, "data.tokenizer": tok, "total_steps": STEPS, "optim.total_steps": STEPS,
            "optim.warmup_steps": 1, "log_every": 1, "eval_every": 2, "data.eval_batches": 1, "checkpoint_every": 0,
            "eval_samples": 3, "eval_sample_tokens": 12, "peak_flops_per_device": PEAK, **extra}
    return load_config(TRAIN_CONFIG, [f"{k}={v}" for k, v in sets.items()])


class _Compiles(logging.Handler):
    """The names of the functions jax compiles (`jax.log_compiles` messages)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = re.match(r"Compiling (\S+)", record.getMessage())
        if m:
            self.names.append(m.group(1))


@pytest.fixture(scope="module")
def run(env, tmp_path_factory):
    """(workdir, names of the functions compiled during the run)."""
    workdir = str(tmp_path_factory.mktemp("reporting_run"))
    compiles = _Compiles()
    jax_log = logging.getLogger("jax")
    jax_log.addHandler(compiles)
    try:
        with jax.log_compiles(True):
            assert loop.train_and_evaluate(config(env), workdir).step == STEPS
    finally:
        jax_log.removeHandler(compiles)
    return workdir, compiles.names


def lines(workdir: str, kind: str) -> list[dict]:
    return [r for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["kind"] == kind]


# ------------------------------------------------------------------------------------------------------------ MFU


def test_mfu_is_the_logged_token_rate_times_model_flops_over_the_configured_peak_of_all_devices(env, run):
    workdir, _ = run
    cfg = config(env)
    text_len = cfg.data.max_len
    per_token = 3 * flops.model_flops(loop.model_config(cfg), text_len).forward / text_len  # forward + backward
    train = lines(workdir, "train")
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    for r in train:
        assert r["tokens_per_s"] > 0
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * per_token / (PEAK * 8), rel=1e-12)


@pytest.mark.parametrize("kind, peak", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5", 459e12), ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12), ("NVIDIA H100 80GB HBM3", 989.5e12), ("NVIDIA H100 PCIe", 756.5e12),
    ("NVIDIA H100 NVL", 835.5e12), ("NVIDIA H200", 989.5e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100-PCIE-40GB", 312e12), ("TPU v4 lite", None), ("cpu", None), ("NVIDIA GeForce RTX 4090", None)])
def test_chip_peaks_by_device_kind(kind, peak):
    found = mfu.chip_peak_flops(kind)
    assert (found and found[0]) == peak


def test_an_unknown_chip_without_a_configured_peak_gets_no_mfu_and_a_configured_one_wins(env):
    model_cfg = loop.model_config(config(env))
    meter, note = mfu.Mfu.for_run(model_cfg, 64, "cpu", 8)
    assert meter is None and "peak_flops_per_device" in note
    meter, _ = mfu.Mfu.for_run(model_cfg, 64, "TPU v4", 8, configured_peak=1e12)
    assert meter.peak == 1e12 and meter.devices == 8


# ---------------------------------------------------------------------------------------------------- TensorBoard


def tensorboard_scalars(directory: str) -> dict[str, list[tuple[int, float]]]:
    """The folder's scalars as TensorBoard's own reader loads them (the `tensorboard` package of the test extra)."""
    reader = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = reader.EventAccumulator(directory, size_guidance={"scalars": 0})  # 0 = keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def jsonl_scalars(records) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard should show: every numeric field of the train and eval lines, as float32, by step."""
    out: dict[str, list] = {}
    for r in sorted((r for r in records if r["kind"] in ("train", "eval")), key=lambda r: r["step"]):
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)):
                out.setdefault(k, []).append((r["step"], float(np.float32(v))))
    return out


def assert_same_scalars(got, want):
    assert sorted(got) == sorted(want)
    for tag in want:
        g, w = got[tag], want[tag]
        assert [s for s, _ in g] == [s for s, _ in w], tag
        np.testing.assert_array_equal([v for _, v in g], [v for _, v in w], err_msg=tag)  # NaN equals NaN


def test_tensorboard_event_file_read_back_by_tensorboard_equals_the_jsonl_scalars(run):
    workdir, _ = run
    folder = os.path.join(workdir, "tensorboard")
    (name,) = os.listdir(folder)
    assert re.fullmatch(r"events\.out\.tfevents\.\d{10}\..+", name)
    want = jsonl_scalars(metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl")))
    assert {"loss", "loss/easy", "mfu", "tokens_per_s", "eval/loss", "eval/loss/hard", "lr"} <= set(want)
    assert_same_scalars(tensorboard_scalars(folder), want)


def test_a_resumed_run_shows_each_step_once_with_the_values_of_the_resumed_run(tmp_path):
    """A run logs steps 1..10 (eval at 4 and 8) and dies; it resumes from the checkpoint of step 6 and logs 6..9.
    TensorBoard's view of the folder must be the metrics.jsonl that `JsonlLog.truncate_from` leaves, plus the new
    lines (the eval of step 4 kept, that of step 8 redone)."""
    log_file = metrics.JsonlLog(str(tmp_path / "metrics.jsonl"))
    folder = str(tmp_path / "tensorboard")
    first = tensorboard_log.TensorBoardLog(folder, 0)
    for record in ([{"kind": "train", "step": s, "loss": 10.0 / s} for s in range(1, 11)]
                   + [{"kind": "eval", "step": s, "eval/loss": 3.0 / s} for s in (4, 6, 8)]
                   + [{"kind": "samples", "step": s, "examples": []} for s in (4, 6, 8)]):
        log_file.write(record)
        first.write(record)
    first.close()

    log_file.truncate_from(6)
    assert [r["step"] for r in metrics.read_jsonl(log_file.path) if r["kind"] != "train"] == [4, 6, 4, 6]
    second = tensorboard_log.TensorBoardLog(folder, 6, replay=metrics.read_jsonl(log_file.path))
    for record in ([{"kind": "train", "step": s, "loss": 100.0 + s} for s in range(6, 10)]
                   + [{"kind": "eval", "step": 8, "eval/loss": 7.0}]):
        log_file.write(record)
        second.write(record)
    second.close()

    assert len(os.listdir(folder)) == 2 and sorted(os.listdir(folder))[-1] == os.path.basename(second.path)
    want = jsonl_scalars(metrics.read_jsonl(log_file.path))
    assert want["eval/loss"] == [(4, np.float32(0.75)), (6, np.float32(0.5)), (8, 7.0)]
    assert_same_scalars(tensorboard_scalars(folder), want)


def test_window_rates_count_only_the_steps_this_process_ran():
    step = {k: np.float32(1.0) for k in metrics.SCALARS} | {k: np.ones((1, 3)) for k in metrics.SUMS}
    window = metrics.Window()
    window.add(dict(step, examples=np.float32(8), tokens=np.float32(100)), timed=False)
    assert not {"steps_per_s", "examples_per_s", "tokens_per_s"} & set(window.summary(1, 1e-6, ["d"]))
    window.add(dict(step, examples=np.float32(6), tokens=np.float32(40), loss=np.float32(3.0)))
    record = window.summary(2, 2.0, ["d"])
    assert (record["steps_per_s"], record["examples_per_s"], record["tokens_per_s"]) == (0.5, 3.0, 20.0)
    assert (record["loss"], record["examples"]) == (2.0, 14.0)  # the metrics of both steps


def test_a_run_resumed_at_its_last_step_logs_that_step_again_without_a_rate(env, run, tmp_path):
    """The checkpoint of the last step holds that step's metrics (pending); a resumed run logs them, but the step ran
    in the earlier process, so the line has no steps/s and no MFU (it was 1,700 steps/s: a window with no time)."""
    workdir = str(tmp_path / "run")
    shutil.copytree(run[0], workdir)
    before = lines(workdir, "train")[-1]
    assert loop.train_and_evaluate(config(env), workdir).step == STEPS
    after = lines(workdir, "train")
    assert [r["step"] for r in after] == list(range(1, STEPS + 1))
    assert after[-1]["loss"] == before["loss"] and "steps_per_s" in before and "mfu" in before
    assert not {"steps_per_s", "examples_per_s", "tokens_per_s", "mfu"} & set(after[-1])


# ------------------------------------------------------------------------------------------------ loss curves PNG


def test_loss_curves_png_shows_the_curves_of_each_stage(run):
    workdir, _ = run
    with Image.open(os.path.join(workdir, "loss_curves.png")) as im:
        assert im.format == "PNG"
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.shape[0] >= 400 and rgb.shape[1] >= 800
    colors = {tuple(c) for c in rgb.reshape(-1, 3)}
    train = lines(workdir, "train")
    for stage in STAGES:  # every stage the run trained has its (train) curve in its colour
        if any(f"loss/{stage}" in r for r in train):
            hex_ = STAGE_COLORS[stage]
            assert tuple(int(hex_[i:i + 2], 16) for i in (1, 3, 5)) in colors, stage
    ink = (rgb.min(axis=2) < 200).mean()  # not blank, not a filled rectangle
    assert 0.005 < ink < 0.3, ink


# ---------------------------------------------------------------------------------------------------------- samples


def test_samples_lines_hold_the_generated_text_parsed_and_scored_as_medclm_eval_does(env, run):
    workdir, compiled = run
    data, _ = env
    found = lines(workdir, "samples")
    assert [r["step"] for r in found] == EVAL_STEPS
    task = record_task(data, "val", loop.model_config(config(env)).vision.image_size, "paligemma")
    refs = {(int(i.split("/")[1]), i.split("/")[2]): i for i in task.ids}
    val_records = len(task.ids) // len(STAGES)
    assert val_records >= 2
    for record in found:
        n = min(3, val_records)  # eval_samples: record k in stage k mod 3
        assert [e["stage"] for e in record["examples"]] == list(STAGES[:n])
        for k, e in enumerate(record["examples"]):
            assert set(e) == {"example_id", "stage", "question", "generated", "answer", "reference_answer", "box",
                              "reference_box", "iou"}
            assert e["example_id"] == k
            ref = task.make(task.ids.index(refs[(k, e["stage"])])).reference
            assert (e["question"], e["reference_answer"], e["reference_box"]) == (ref["question"], ref["answer"],
                                                                                ref["box"])
            parsed = parse_output(e["generated"], "auto", ref["image_size"])
            assert (e["answer"], e["box"]) == (parsed["answer"], parsed["box"])
            if ref["box"] is None:
                assert e["iou"] is None
            else:
                expect = grounding.box_iou(e["box"], ref["box"]) if e["box"] is not None else 0.0
                assert e["iou"] == pytest.approx(expect, abs=1e-5)
    # generation compiled once, at the first evaluation (the second reuses it)
    assert compiled.count("jit(_decode)") == 1 and compiled.count("jit(_prefill_inputs)") == 1, compiled


def test_a_sample_with_a_box_in_its_text_gets_that_box_and_its_iou(env):
    data, _ = env
    task = record_task(data, "val", loop.model_config(config(env)).vision.image_size, "paligemma")
    query = next(q for q in map(task.make, range(len(task.ids))) if q.reference["box"] is not None)
    ref = query.reference["box"]
    guess = [ref[0], ref[1], (ref[0] + ref[2]) / 2, ref[3]]  # the left half of the reference box: IoU 0.5
    text = f"Reasoning: a lesion at [{guess[0]:.6f}, {guess[1]:.6f}, {guess[2]:.6f}, {guess[3]:.6f}]. Answer: nodule"
    line = samples.example_line(query, text)
    assert line["box"] == pytest.approx(guess, abs=1e-4) and line["answer"] == "nodule"
    assert line["iou"] == pytest.approx(grounding.box_iou(line["box"], ref), abs=1e-9)
    assert line["iou"] == pytest.approx(0.5, abs=1e-3)
    assert samples.example_line(query, "Answer: nodule")["iou"] == 0.0  # no box: IoU 0, as `medclm score` counts
    assert samples.pick(30, 4) == [0, 4, 8, 9] and samples.pick(5, 4) == [0]


# ----------------------------------------------------------------------------------------------------- progress bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _drive(bar: progress.ProgressBar) -> None:
    for _ in range(3):
        bar.advance()
    bar.show({"loss": 1.25, "mfu": 0.5})
    bar.close()


@pytest.mark.parametrize("active", [True, False])
def test_progress_bar_writes_nothing_to_a_log_file_or_on_other_processes(active):
    out = io.StringIO() if active else _Terminal()
    bar = progress.ProgressBar(10, 2, active=active, file=out, mininterval=0)
    assert not bar.enabled
    _drive(bar)
    assert out.getvalue() == ""


def test_progress_bar_on_a_terminal_shows_step_of_total_and_the_loss():
    out = _Terminal()
    bar = progress.ProgressBar(10, 2, file=out, mininterval=0)
    assert bar.enabled
    _drive(bar)
    text = out.getvalue()
    assert "5/10" in text and "loss=1.2500" in text and "step/s" in text

"""`train_and_evaluate(config, workdir)`: the curriculum trainer, read top to bottom.

    medclm train --config configs/train.py:model=tiny,mesh=cpu,data=DIR --workdir WORKDIR

What one run does: processes and the mesh (`jax.distributed.initialize()` when launched as several processes);
the model config, tokenizer and data; the train state (this workdir's newest checkpoint, else the run named by
`resume`, else the weights of `model.init`, else random init, each straight into its shardings); the train step
compiled ahead of time (bytes per device logged); then the loop:

    step s:  batch s from the stream -> dispatch train step s -> absorb step s - 1's metrics (they are ready, step
             s runs meanwhile): check them, feed the curriculum scheduler, hand its state to the stream, log
             -> evaluate / checkpoint / stop at fixed steps

On disk, WORKDIR/: `checkpoints/<N>/` (rolling, `train.checkpoint`), `metrics.jsonl` (`train.metrics`: train
lines with MFU (`train.mfu`), eval lines, and greedy-decoded validation samples (`train.samples`) with each
evaluation), `tensorboard/` (the same scalars as event files, a new file per start: `train.tensorboard_log`),
`config.json`, `tokenizer/` (trained-from-scratch presets), `catalog-train.npz` (the input plan's scan),
`loss_curves.png` (`train.plots`, redrawn at the end of each start) and `final/` at the end: a model checkpoint
(`model.checkpoint`) that `medclm convert --from WORKDIR/final --to-hf DIR` exports. Process 0 shows a progress bar
on a terminal (`train.progress`). The train lines' rates (and MFU) count training time only: an evaluation's time
is taken out of the window it falls in.

Exact resume. A checkpoint of step N holds the train state after N steps, the input stream's state (per process)
and the scheduler's state, all as of the same point of the loop: step N - 1 dispatched, step N - 2's metrics
absorbed; and step N - 1's metrics themselves (fetched, checked and stored exactly as JSON) still to absorb. The
resumed loop absorbs them where the uninterrupted one would, so the scheduler sees the same updates at the same
steps and the stream plans the same batches: the run continues bit for bit (on a deterministic backend), whatever
the checkpoint interval or where a signal stopped it. Nothing broken is saved: the metrics of the state's last step
are checked before its checkpoint is written.

Stopping. SIGTERM or SIGINT (preemption, Ctrl-C) sets a flag; at the end of the step (with several processes: at
the next multiple of `stop_check_every`, agreed by all) the loop saves a checkpoint, waits for it and returns
`stopped_by`; the command prints how to resume and exits 0. A non-finite loss raises `metrics.NonFiniteLoss`,
naming the step and the examples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from medclm_jax.data import pipeline, prompts, views
from medclm_jax.data.assemble import Preprocess
from medclm_jax.data.source import RecordSource, load_dataset_info
from medclm_jax.model import checkpoint as model_ckpt
from medclm_jax.model import presets
from medclm_jax.model import sharding as shd
from medclm_jax.model import tokenizer as tokenizer_lib
from medclm_jax.model import vlm
from medclm_jax.train import curriculum, losses, metrics, optim, plots, progress, tensorboard_log
from medclm_jax.train import mfu as mfu_lib
from medclm_jax.train import samples as samples_lib
from medclm_jax.train import state as state_lib
from medclm_jax.train import step as step_lib
from medclm_jax.train.checkpoint import TrainCheckpoints

log = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class RunResult:
    """How a run ended: `step` steps done; `stopped_by` 'SIGTERM' / 'SIGINT' when a signal ended it early;
    `checkpoint` the folder of its last checkpoint; `final` the exported model checkpoint (None when stopped)."""

    step: int
    stopped_by: Optional[str]
    checkpoint: Optional[str]
    final: Optional[str]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> RunResult:
    """Trains (or continues) the run of `config` in `workdir`; see the module docstring."""
    # ---------------------------------------------------------------------------------- processes and mesh
    initialize_processes()
    if config.compile_cache:
        enable_compile_cache(config.compile_cache)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    lead = jax.process_index() == 0
    mesh = shd.make_mesh(dict(config.mesh))
    log.info("mesh %s over %d devices, %d processes", dict(mesh.shape), mesh.size, jax.process_count())

    # ---------------------------------------------------------------------------------- model, tokenizer, data
    model_cfg = model_config(config)
    info = load_dataset_info(config.data.dir)
    domains = list(views.domain_vocabulary(info))
    source = RecordSource(config.data.dir, "train", on_error=config.data.on_error)
    tok, tok_dir = tokenizer_for(config, model_cfg, source, workdir)
    pre = preprocess(config, model_cfg, tok, domains)
    catalog = pipeline.catalog_for(source, domains, cache=os.path.join(workdir, "catalog-train.npz"),
                                   on_error=config.data.on_error)
    ccfg = curriculum.CurriculumConfig.from_dict(config.curriculum)
    loss_cfg = losses.LossConfig.from_dict(config.loss)
    optim_cfg = optim_config(config)
    tx = optim.make_optimizer(optim_cfg)
    if lead:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=1))

    # ---------------------------------------------------------------------------------- the train state
    # This workdir's newest good checkpoint, else the run named by `resume`, else `model.init`, else random.
    layout = step_lib.state_layout(model_cfg, tx, mesh)
    ckpts = TrainCheckpoints(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep)
    state, saved, origin = restore_or_init(config, ckpts, layout, tx, model_cfg, mesh)
    start = int(jax.device_get(state.step))
    cstate = (curriculum.CurriculumState.from_json(saved["curriculum"]) if saved
              else curriculum.init(ccfg, catalog.records(), domains=domains))
    log.info("train state: %s, step %d; %s params (%s trainable)", origin, start,
             f"{_count(state.params):,}", f"{_count(state.params, optim_cfg):,}")

    # ---------------------------------------------------------------------------------- input streams
    options = input_options(config)
    stream = pipeline.TrainStream(source, catalog, pre, ccfg, cstate, options, mesh=mesh, start_step=start)
    pending = None
    if saved:
        if len(saved["processes"]) != jax.process_count():
            raise ValueError(f"the checkpoint was written by {len(saved['processes'])} processes, this run has "
                             f"{jax.process_count()}: its input streams' positions are per process; resume with "
                             "as many processes")
        mine = saved["processes"][jax.process_index()]
        stream.set_state(mine["input"])
        pending = metrics.Pending.from_json(mine["pending"]) if mine["pending"] else None
    val_stream = validation_stream(config, pre, options, mesh)

    # ---------------------------------------------------------------------------------- compiled steps
    batch_shape = step_lib.abstract_batch(model_cfg, config.batch_size, config.data.max_len, mesh)
    train_step = step_lib.compile_step(
        step_lib.jit_train_step(model_cfg, tx, optim_cfg, loss_cfg, len(domains), layout.shardings, mesh),
        layout.abstract, batch_shape, mesh=mesh)
    log.info("train step, bytes per device: %s", step_lib.memory_report(train_step))
    eval_step = None
    if val_stream is not None:
        eval_step = step_lib.compile_step(
            step_lib.jit_eval_step(model_cfg, loss_cfg, len(domains), layout.shardings.params, mesh),
            layout.abstract.params, batch_shape, mesh=mesh)
    samples = (samples_lib.ValSamples(config, model_cfg, pre, mesh) if eval_step is not None and config.eval_samples
               else None)
    meter, note = mfu_lib.Mfu.for_run(model_cfg, config.data.max_len, jax.devices()[0].device_kind,
                                      jax.device_count(), config.peak_flops_per_device)
    log.info(note)

    # ---------------------------------------------------------------------------------- the loop
    log_file = metrics.JsonlLog(os.path.join(workdir, "metrics.jsonl"), active=lead)
    log_file.truncate_from(start)
    kept = metrics.read_jsonl(log_file.path) if lead and os.path.isfile(log_file.path) else []
    board = tensorboard_log.TensorBoardLog(os.path.join(workdir, "tensorboard"), start, replay=kept, active=lead)
    window, window_start = metrics.Window(), time.perf_counter()
    row_offset = jax.process_index() * options.local_batch(jax.process_count())
    total, step, stopped_by, last_ckpt = int(config.total_steps), start, None, None
    bar = progress.ProgressBar(total, start, active=lead)

    def report(record: dict[str, Any]) -> None:
        log_file.write(record)
        board.write(record)

    def absorb(p: metrics.Pending) -> None:
        """Step p.index's metrics: checked, fed to the scheduler (whose state the stream plans with), logged."""
        nonlocal cstate, window, window_start
        host = p.host()
        metrics.check_finite(p.index, host, p.example_ids, row_offset)
        cstate = curriculum.update(ccfg, cstate, p.index, *metrics.curriculum_inputs(host))
        stream.set_curriculum(cstate)
        window.add(host, timed=p.index >= start)  # the checkpoint's pending step ran before this process
        if (p.index + 1) % config.log_every == 0 or p.index + 1 == total:
            now = time.perf_counter()
            record = window.summary(p.index + 1, now - window_start, domains)
            if meter is not None and "tokens_per_s" in record:
                record["mfu"] = meter(record["tokens_per_s"])
            record.update(curriculum.summary(ccfg, cstate, p.index + 1))
            report(record)
            bar.show(record)
            rate = f"{record['steps_per_s']:.2f} steps/s" if "steps_per_s" in record else "run before the resume"
            log.info("step %d: loss %.4f (ans %.4f, cot %.4f), lr %.3g, %s%s", record["step"], record["loss"],
                     record["ans"], record["cot"], record["lr"], rate,
                     f", MFU {record['mfu']:.2%}" if "mfu" in record else "")
            window, window_start = metrics.Window(), now

    def save() -> str:
        """A checkpoint of `step`: checks the pending metrics first (never save a broken state)."""
        if pending is not None:
            metrics.check_finite(pending.index, pending.host(), pending.example_ids, row_offset)
        mine = {"input": stream.get_state(), "pending": pending.to_json() if pending else None}
        ckpts.save_train_state(state, {"curriculum": cstate.to_json(), "processes": all_processes(mine)},
                               force=True)
        return os.path.join(ckpts.directory, str(step))

    signals = StopSignals(config.stop_check_every)
    try:
        while step < total:
            batch = next(stream)
            state, step_metrics = train_step(state, batch.arrays)
            if pending is not None:
                absorb(pending)
            pending = metrics.Pending(step, step_metrics, batch.host["example_id"])
            step += 1
            bar.advance()
            if eval_step is not None and config.eval_every and step % config.eval_every == 0:
                pending.host()  # the evaluation queues behind this step anyway; the window's clock stops here
                began = time.perf_counter()
                report(evaluate(eval_step, state.params, val_stream, config.data.eval_batches, domains, step))
                if samples is not None:
                    log_file.write(samples(state.params, step))
                window_start += time.perf_counter() - began  # the window's rates count training time only
            stopped_by = signals.requested(step)
            if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == total or stopped_by:
                last_ckpt = save()
            if stopped_by:
                break
        if stopped_by is None and pending is not None:  # the last step's metrics (already in its checkpoint)
            absorb(pending)
    finally:
        signals.restore()
        bar.close()
        board.close()
        stream.close()
        ckpts.close()  # waits for the asynchronous saves
    if lead and plots.write_loss_curves(log_file.path, os.path.join(workdir, "loss_curves.png")):
        log.info("loss curves: %s", os.path.join(workdir, "loss_curves.png"))

    # ---------------------------------------------------------------------------------- stopped or done
    if stopped_by:
        log.warning("stopped by %s after step %d; checkpoint %s", stopped_by, step, last_ckpt)
        return RunResult(step, stopped_by, last_ckpt, None)
    final = export_final(workdir, model_cfg, state.params, tok_dir)
    return RunResult(step, None, last_ckpt, final)


# ---------------------------------------------------------------------------------------------------------------
# Set-up: small functions of the config.


def initialize_processes() -> None:
    """`jax.distributed.initialize()` when launched as several processes: `JAX_COORDINATOR_ADDRESS` set (with
    `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` where the cluster is not auto-detected), or `MEDCLM_DISTRIBUTED=1`
    (a TPU pod or SLURM, whose parameters JAX detects itself)."""
    if jax.distributed.is_initialized():
        return
    if not (os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("MEDCLM_DISTRIBUTED") == "1"):
        return
    num, pid = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(num_processes=int(num) if num else None, process_id=int(pid) if pid else None)


def enable_compile_cache(directory: str) -> None:
    """XLA's persistent compilation cache in `directory`: a rerun or resume skips compiling the steps."""
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _with_overrides(cfg: vlm.VLMConfig, **kw: Any) -> vlm.VLMConfig:
    return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, **kw),
                               text=dataclasses.replace(cfg.text, **kw))


def model_config(config: ml_collections.ConfigDict) -> vlm.VLMConfig:
    """The preset (or, with `model.init`, the converted checkpoint's own config) with f32 master params and the
    config's compute dtype and remat policy."""
    overrides = {k: v for k, v in (("dtype", config.model.dtype), ("remat_policy", config.model.remat)) if v}
    if config.model.init:
        return _with_overrides(model_ckpt.load_config(config.model.init), param_dtype="float32", **overrides)
    return presets.get_model_config(config.model.name, param_dtype="float32", **overrides)


def optim_config(config: ml_collections.ConfigDict) -> optim.OptimConfig:
    """`config.optim`, its `total_steps` defaulting to the run's optimizer updates."""
    d = config.optim.to_dict()
    d["total_steps"] = d.get("total_steps") or max(1, int(config.total_steps) // int(d["grad_accum_steps"]))
    return optim.OptimConfig.from_dict(d)


def input_options(config: ml_collections.ConfigDict) -> pipeline.InputOptions:
    d = config.data
    return pipeline.InputOptions(batch_size=config.batch_size, seed=config.seed, workers=d.workers,
                                 threads=d.threads, buffer=d.buffer, plan_ahead=d.plan_ahead, on_error=d.on_error)


def tokenizer_for(config: ml_collections.ConfigDict, model_cfg: vlm.VLMConfig, source: RecordSource,
                  workdir: str) -> tuple[tokenizer_lib.Tokenizer, str]:
    """(tokenizer, its folder): `data.tokenizer`, else `model.init`'s, else (trained-from-scratch presets) the
    resumed run's or this workdir's `tokenizer/`, trained on the train split's text the first time."""
    folder = config.data.tokenizer or config.model.init
    if not folder:
        if config.model.name not in presets.TRAINED_FROM_SCRATCH:
            raise ValueError(f"model {config.model.name!r} is pretrained: set model.init (a `medclm convert "
                             "--from-hf` output, which holds its tokenizer) or data.tokenizer")
        theirs = os.path.join(config.resume, "tokenizer") if config.resume else ""
        folder = theirs if theirs and os.path.isdir(theirs) else os.path.join(workdir, "tokenizer")
        if not os.path.isfile(os.path.join(folder, tokenizer_lib.TOKENIZER_JSON)):
            if jax.process_index() == 0:
                texts = (value[0].decode() for record in source.iter_records() for key, value in record.items()
                         if key.endswith(("/question", "/cot", "/answer")))
                tokenizer_lib.train_tokenizer(texts, vocab_size=model_cfg.text.vocab_size, out_dir=folder)
                log.info("trained a tokenizer on the train split's text: %s", folder)
            _sync("tokenizer")
    return tokenizer_lib.load_tokenizer(folder), folder


def preprocess(config: ml_collections.ConfigDict, model_cfg: vlm.VLMConfig, tok: Any, domains: list) -> Preprocess:
    """What turns a record and a stage into a batch row (image size and resize family from the model)."""
    d = config.data
    settings = prompts.settings_for_model(model_cfg, tok, max_len=d.max_len, prompt_format=d.prompt_format or None,
                                          pretrained=config.model.name not in presets.TRAINED_FROM_SCRATCH)
    view = views.ViewSettings(model_cfg.vision.image_size, model_cfg.family, d.loc_tokens)
    return Preprocess(tok, view, settings, {name: i for i, name in enumerate(domains)})


def validation_stream(config: ml_collections.ConfigDict, pre: Preprocess, options: pipeline.InputOptions,
                      mesh: Any) -> Optional[pipeline.ValStream]:
    """The validation stream, or None without `data.val_split`, `eval_every` or such a split in the build."""
    split = config.data.val_split
    if not split or not config.eval_every:
        return None
    info = load_dataset_info(config.data.dir)
    if split not in info["counts"]["per_split_domain_stage"]:
        log.warning("no split %r in %s: no evaluation", split, config.data.dir)
        return None
    return pipeline.ValStream(RecordSource(config.data.dir, split, on_error=config.data.on_error), pre, options,
                              mesh=mesh)


def restore_or_init(config: ml_collections.ConfigDict, ckpts: TrainCheckpoints, layout: step_lib.Layout,
                    tx: Any, model_cfg: vlm.VLMConfig, mesh: Any) -> tuple[state_lib.TrainState, Optional[dict], str]:
    """(state, the checkpoint's JSON state or None, where it came from), in the order of the module docstring."""
    restored = ckpts.restore_newest(layout.abstract, layout.shardings)
    if restored:
        return (*restored, f"resumed from {ckpts.directory}")
    if config.resume:
        theirs = os.path.join(config.resume, "checkpoints")
        other = TrainCheckpoints(theirs if os.path.isdir(theirs) else config.resume, max_to_keep=config.keep)
        try:
            restored = other.restore_newest(layout.abstract, layout.shardings, move_aside=False)  # not ours
        finally:
            other.close()
        if restored is None:
            raise FileNotFoundError(f"resume={config.resume}: no checkpoint there restores")
        return (*restored, f"resumed from {other.directory}")
    rng = jax.random.key(config.seed)
    if config.model.init:
        params = model_ckpt.load_params(config.model.init, layout.abstract.params, layout.shardings.params)
        return state_lib.from_params(params, tx, rng, layout.shardings), None, f"weights of {config.model.init}"
    state = state_lib.init_sharded(lambda r: vlm.init_params(model_cfg, r)["params"], tx, rng, mesh)
    return state, None, f"random init (seed {config.seed})"


def evaluate(eval_step: Any, params: Any, val_stream: pipeline.ValStream, max_batches: int, domains: list,
             step: int) -> dict[str, Any]:
    """The validation loss by stage and (domain, stage) after `step` steps (an `eval` log line)."""
    sums: dict[str, np.ndarray] = {}
    with contextlib.closing(iter(val_stream)) as batches:
        for i, batch in enumerate(batches):
            if max_batches and i >= max_batches:
                break
            out = metrics.to_host(eval_step(params, batch.arrays))
            sums = {k: sums.get(k, 0.0) + v.astype(np.float64) for k, v in out.items()}
    record: dict[str, Any] = {"kind": "eval", "step": int(step), "eval/examples": float(sums["count"].sum())}
    count = sums["count"].sum()
    record["eval/loss"] = float(sums["sum_loss"].sum() / count) if count else float("nan")
    record.update(metrics.stage_table("eval/", sums, domains))
    log.info("eval after step %d: loss %.4f over %d examples", step, record["eval/loss"], int(count))
    return record


def export_final(workdir: str, model_cfg: vlm.VLMConfig, params: Any, tokenizer_dir: str) -> str:
    """WORKDIR/final: the trained params as a model checkpoint (with the tokenizer files), for `medclm convert
    --from WORKDIR/final --to-hf DIR` and for evaluation."""
    final = os.path.join(workdir, "final")
    model_ckpt.save_checkpoint(final, model_cfg, params, overwrite=True)
    if jax.process_index() == 0:
        model_ckpt.copy_tokenizer_files(tokenizer_dir, final)
    _sync("final")
    log.info("exported the trained model: %s", final)
    return final


# ---------------------------------------------------------------------------------------------------------------
# Processes and signals.


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

        multihost_utils.sync_global_devices(name)


def all_processes(obj: Any) -> list:
    """Every process's JSON-able `obj`, in process order (a collective with several processes)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    raw = json.dumps(obj).encode()
    size = int(np.max(multihost_utils.process_allgather(np.array([len(raw)], np.int64))))
    parts = multihost_utils.process_allgather(np.frombuffer(raw.ljust(size), np.uint8))
    return [json.loads(bytes(np.asarray(p)).decode()) for p in parts]


class StopSignals:
    """SIGTERM / SIGINT set a flag instead of killing the process (installed from the main thread only)."""

    def __init__(self, check_every: int):
        self.check_every, self.signum, self._old = max(1, int(check_every)), 0, {}
        import threading  # pylint: disable=import-outside-toplevel

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if not self.signum:
            log.warning("%s received: saving a checkpoint at the end of this step", signal.Signals(signum).name)
        self.signum = signum

    def requested(self, step: int) -> Optional[str]:
        """The signal's name when the run should stop after `step` (all processes agree), else None."""
        signum = self.signum
        if jax.process_count() > 1:
            if step % self.check_every:
                return None
            from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

            signum = int(np.max(multihost_utils.process_allgather(np.array([signum], np.int32))))
        return signal.Signals(signum).name if signum else None

    def restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}


def _count(params: Any, cfg: Optional[optim.OptimConfig] = None) -> int:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return sum(int(np.prod(x.shape)) for kp, x in leaves if cfg is None or not optim.is_frozen(cfg,
                                                                                               optim.param_path(kp)))


# ---------------------------------------------------------------------------------------------------------------
# Ahead-of-time compilation only.


def compile_only(config: ml_collections.ConfigDict, devices: Optional[list] = None) -> dict[str, int]:
    """Lowers and compiles the train step for the configured mesh (over `devices`, e.g. a TPU topology's
    compile-only devices; default all) from shapes alone, and returns its bytes per device
    (`step.memory_report`). Reads no data but `dataset_info.json` (for the number of domains) when `data.dir`
    is set, and the checkpoint's config when `model.init` is."""
    initialize_processes()
    if config.compile_cache:
        enable_compile_cache(config.compile_cache)
    mesh = shd.make_mesh(dict(config.mesh), devices=devices)
    model_cfg = model_config(config)
    domains = views.domain_vocabulary(load_dataset_info(config.data.dir)) if config.data.dir else {"any": 0}
    optim_cfg = optim_config(config)
    tx = optim.make_optimizer(optim_cfg)
    layout = step_lib.state_layout(model_cfg, tx, mesh)
    jitted = step_lib.jit_train_step(model_cfg, tx, optim_cfg, losses.LossConfig.from_dict(config.loss),
                                     len(domains), layout.shardings, mesh)
    compiled = step_lib.compile_step(jitted, layout.abstract,
                                     step_lib.abstract_batch(model_cfg, config.batch_size, config.data.max_len, mesh),
                                     mesh=mesh)
    return step_lib.memory_report(compiled)

"""The whole train step on a CPU: its overhead over forward+backward, input wait, FSDP bytes, checkpoint saves.

Four parts, each a table (``--parts`` picks some):

1. ``step``: the train step ``medclm train`` compiles (``train/step.py``'s jitted step, ``train/state.py``'s
   state, ``train/optim.py``'s AdamW, the config of ``configs/train.py``) beside a plain forward+backward of the
   same model and batch as ``benchmarks/model.py`` measures it (its ``make_batch``, ``loss_fn`` and
   ``ours_train_step``: ``value_and_grad`` of a token-mean cross-entropy, no optimizer), and a third row, the
   forward+backward of the step's own loss (``losses.span_loss``) without the optimizer, which splits the
   step's overhead into the loss's share and the optimizer's (update, clipping norm, metrics). The three are
   warmed up alike and timed interleaved (``step, fwd+bwd, fwd+bwd span, step, ...``; medians), as
   ``benchmarks/model.py`` does. MFU divides the model FLOPs (``model/flops.py``, per text token) by the best
   fp32 matmul rate measured in the same run (``benchmarks/model.py``'s ``matmul_peak`` at each preset's
   ``[batch x positions, width] x [width, mlp]`` product, XLA and torch; the best of all of them is the peak).
2. ``input``: ``train_and_evaluate`` itself (``train/loop.py``) for ``--loop-steps`` steps on a phantom build,
   with the stream's ``__next__`` timed (the loop records no input wait of its own): the share of the loop's
   time spent waiting for the next batch, after ``--loop-warmup`` steps; the loop's ``metrics.jsonl``
   ``steps_per_s`` is printed beside it as a cross-check.
3. ``memory``: params and optimizer-state bytes on device 0 (``addressable_shards``) under FSDP over 1, 2, 4 and 8
   CPU devices (meshes ``fsdp=N``; the state's shardings from ``step.state_layout``, which ``state.init_sharded``
   and restores use), against 1/N of the unsharded bytes. Arrays that cannot be
   split (no ``embed`` axis, or one the mesh does not divide) stay whole on every device: the gap. Runs in a
   child process with 8 fake CPU devices unless this process already has them.
4. ``checkpoint``: ``TrainCheckpoints.save_train_state`` (Orbax, async): the time ``save`` blocks the loop and
   the time until the step is on disk; then the train step's time while such a save is being written against
   the step alone (interleaved).

Parts 1, 2 and 4 run on one CPU device (parts 1 and 4 on a one-device mesh; part 2 on the loop's own mesh of
all devices, which is one unless XLA_FLAGS adds some). On a shared machine run it twice and keep both tables.

Usage::

    python benchmarks/train.py                            # tiny and small, all four parts
    python benchmarks/train.py --parts step,checkpoint --steps 9
    python benchmarks/train.py --quick                    # tiny, a few steps: seconds (the test's mode)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from medclm_jax.config_file import load_config  # noqa: E402
from medclm_jax.data import pipeline  # noqa: E402
from medclm_jax.model import sharding as shd  # noqa: E402
from medclm_jax.model import vlm  # noqa: E402
from medclm_jax.train import losses, loop, metrics, optim  # noqa: E402
from medclm_jax.train import state as state_lib  # noqa: E402
from medclm_jax.train import step as step_lib  # noqa: E402
from medclm_jax.train.checkpoint import TrainCheckpoints  # noqa: E402

TRAIN_CONFIG = os.path.join(ROOT, "configs", "train.py")
PARTS = ("step", "input", "memory", "checkpoint")
FAKE_DEVICES = 8
MACHINE_MATMUL = (1024, 512, 1024)  # beside the presets' own products: a size where a CPU's BLAS is near its peak


def _sibling(name: str) -> Any:
    """Another script of benchmarks/ as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_model = _sibling("model")
median_times, print_table, fmt = bench_model.time_interleaved, bench_model.print_table, bench_model.fmt


def train_config(preset: str, *overrides: str) -> Any:
    """``configs/train.py:model=<preset>,mesh=cpu`` with ``key=value`` overrides: what ``medclm train`` reads."""
    return load_config(f"{TRAIN_CONFIG}:model={preset},mesh=cpu", list(overrides))


class Setup:
    """One preset's train step as ``loop.train_and_evaluate`` builds it, on a one-device mesh, with a
    ``benchmarks/model.py`` batch completed to the step's contract (span, stage, domain, weight, box)."""

    def __init__(self, preset: str, batch_size: int, text_len: int, prompt_len: int):
        self.preset, self.batch_size, self.text_len = preset, batch_size, text_len
        self.config = train_config(preset, f"batch_size={batch_size}", f"data.max_len={text_len}",
                                   "optim.warmup_steps=0")
        self.cfg = loop.model_config(self.config)
        self.mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
        self.optim_cfg = loop.optim_config(self.config)
        self.loss_cfg = losses.LossConfig.from_dict(self.config.loss)
        self.tx = optim.make_optimizer(self.optim_cfg)
        layout = step_lib.state_layout(self.cfg, self.tx, self.mesh)
        t0 = time.perf_counter()
        self.step_fn = step_lib.compile_step(
            step_lib.jit_train_step(self.cfg, self.tx, self.optim_cfg, self.loss_cfg, 1, layout.shardings, self.mesh),
            layout.abstract, step_lib.abstract_batch(self.cfg, batch_size, text_len, self.mesh), mesh=self.mesh)
        self.compile_s = time.perf_counter() - t0
        self.state = state_lib.init_sharded(lambda r: vlm.init_params(self.cfg, r)["params"], self.tx,
                                            jax.random.key(0), self.mesh)
        host = bench_model.make_batch(self.cfg, batch_size, text_len, prompt_len)
        answer = np.zeros_like(host["mask_loss"])
        answer[:, -max(1, (text_len - prompt_len) // 4):] = 1  # the last quarter of the loss span: the answer
        host.update(span=np.where(host["mask_loss"] == 1, 1 + answer, 0).astype(np.int32),
                    stage=np.zeros(batch_size, np.int32), domain=np.zeros(batch_size, np.int32),
                    weight=np.ones(batch_size, np.float32), box=np.zeros((batch_size, 4), np.float32),
                    has_box=np.zeros(batch_size, np.int32))
        self.batch = shd.shard_batch({k: host[k] for k in step_lib.DEVICE_KEYS}, self.mesh)
        self.count, self.flops_per_token = bench_model.train_flops_per_text_token(self.cfg, text_len)

    def run_step(self) -> None:
        """One train step (the state is donated and replaced), blocking until it is done."""
        self.state, out = self.step_fn(self.state, self.batch)
        jax.block_until_ready((self.state, out))


# ------------------------------------------------------------------------------------------------------------
# 1. The train step against forward+backward.
# ------------------------------------------------------------------------------------------------------------

def step_part(s: Setup, steps: int) -> dict[str, Any]:
    """Median seconds of the train step, model.py's fwd+bwd and the step's loss's fwd+bwd, interleaved."""
    params = jax.tree.map(jnp.copy, s.state.params)  # the step donates its state; the others keep these
    model = vlm.VLM(s.cfg)
    fwd_bwd, info = bench_model.ours_train_step(model, params, s.batch)  # compiles, runs once
    grad_fn = jax.jit(lambda p, b: jax.value_and_grad(step_lib.loss_fn, has_aux=True)(p, b, model, s.loss_cfg, 1))

    def span_fwd_bwd() -> None:
        with shd.mesh_rules(s.mesh):  # traced as the step is
            jax.block_until_ready(grad_fn(params, s.batch))
    span_fwd_bwd()  # compiles
    span_fwd_bwd()  # first run, as ours_train_step's
    s.run_step()  # the step's first run (it was compiled ahead of time)
    fns = {"train step": s.run_step, "fwd+bwd (model.py)": fwd_bwd, "fwd+bwd (step's loss)": span_fwd_bwd}
    return {"times": median_times(fns, steps), "compile_s": {"train step": s.compile_s,
                                                             "fwd+bwd (model.py)": info["compile_s"]}}


def matmul_rate(m: int, k: int, n: int, steps: int, torch_too: bool) -> dict[str, Any]:
    """GFLOP/s of one fp32 ``[m, k] x [k, n]`` product (``benchmarks/model.py``'s ``matmul_peak``: XLA and torch;
    XLA alone without ``torch_too`` or when torch is not installed)."""
    try:
        if not torch_too:
            raise ImportError
        import torch  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        a, b = jnp.ones((m, k)), jnp.ones((k, n))
        mm = jax.jit(jnp.matmul)
        sec = bench_model.time_calls(lambda: [mm(a, b).block_until_ready() for _ in range(10)], max(steps, 5))
        return {"shape": f"[{m},{k}]x[{k},{n}]", "xla": 2 * m * k * n * 10 / sec / 1e9}
    return {"shape": f"[{m},{k}]x[{k},{n}]", **bench_model.matmul_peak(m, k, n, steps)}


def print_step_table(rows: list[dict[str, Any]], peak: float) -> None:
    out = []
    for r in rows:
        base = r["times"]["fwd+bwd (model.py)"]
        tokens = r["batch"] * r["text_len"]
        for name, sec in r["times"].items():
            out.append((r["preset"], name, fmt(sec, 4), fmt(1 / sec, 2), fmt(tokens / sec),
                        f"{100 * tokens / sec * r['flops_per_token'] / (peak * 1e9):.1f}%",
                        f"{sec / base:.3f}x ({100 * (sec / base - 1):+.1f}%)"))
    print_table(out, header=("preset", "what", "s/step (median)", "steps/s", "text tokens/s",
                             f"MFU (peak {peak:.1f} GFLOP/s)", "vs fwd+bwd (model.py)"))


# ------------------------------------------------------------------------------------------------------------
# 2. Input wait in the real loop.
# ------------------------------------------------------------------------------------------------------------

def input_part(preset: str, data: str, work: str, batch: int, steps: int, warmup: int) -> dict[str, Any]:
    """Runs ``loop.train_and_evaluate`` for ``steps`` steps with the stream's ``__next__`` timed."""
    calls: list[tuple[float, float]] = []

    class TimedStream(pipeline.TrainStream):
        def __next__(self) -> pipeline.DeviceBatch:
            t0 = time.perf_counter()
            out = super().__next__()
            calls.append((t0, time.perf_counter()))
            return out

    workdir = os.path.join(work, f"run-{preset}")
    config = train_config(preset, f"data.dir={data}", f"batch_size={batch}", f"total_steps={steps}",
                          f"optim.warmup_steps={min(2, steps)}", "eval_every=0", "checkpoint_every=0",
                          f"log_every={max(1, (steps - warmup) // 2)}", "data.on_error=raise")
    with mock.patch.object(pipeline, "TrainStream", TimedStream):
        loop.train_and_evaluate(config, workdir)
    start, end = np.array(calls).T
    iteration = np.diff(start)[warmup:]  # next batch i -> next batch i + 1: wait, dispatch, previous metrics
    wait = (end - start)[warmup:-1]
    logged = [r["steps_per_s"] for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
              if "steps_per_s" in r and r["step"] > warmup]
    return {"preset": preset, "batch": batch, "max_len": int(config.data.max_len), "timed_steps": len(iteration),
            "workers": int(config.data.workers), "wait_share": float(wait.sum() / iteration.sum()),
            "wait_median_s": float(np.median(wait)), "wait_max_s": float(wait.max()),
            "step_median_s": float(np.median(iteration)), "loop_steps_per_s": float(len(iteration) / iteration.sum()),
            "logged_steps_per_s": logged, "devices": jax.device_count()}


def print_input_table(rows: list[dict[str, Any]]) -> None:
    print_table([(r["preset"], f"{r['batch']} x {r['max_len']}", str(r["timed_steps"]), fmt(r["step_median_s"], 4),
                  fmt(r["wait_median_s"], 4), fmt(r["wait_max_s"], 4), f"{100 * r['wait_share']:.2f}%",
                  fmt(r["loop_steps_per_s"], 2), ", ".join(fmt(x, 2) for x in r["logged_steps_per_s"]) or "-")
                 for r in rows],
                header=("preset", "batch x max_len", "steps timed", "loop s/step (median)", "wait s (median)",
                        "wait s (max)", "wait / loop time", "loop steps/s", "metrics.jsonl steps/s"))


# ------------------------------------------------------------------------------------------------------------
# 3. FSDP bytes per device.
# ------------------------------------------------------------------------------------------------------------

def device_bytes(tree: Any, device: Any) -> tuple[int, int, list[tuple[str, int]]]:
    """(bytes of ``tree`` on ``device``, of them the bytes of arrays held whole on every device, those arrays'
    paths and sizes)."""
    total, whole, names = 0, 0, []
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        here = sum(s.data.nbytes for s in x.addressable_shards if s.device == device)
        total += here
        if x.sharding.is_fully_replicated and x.nbytes:
            whole += here
            names.append((jax.tree_util.keystr(path), int(x.nbytes)))
    return total, whole, names


def memory_part(preset: str, device_counts: list[int]) -> list[dict[str, Any]]:
    """Bytes on device 0 of a train state placed in the shardings ``medclm train`` gives it (``step.state_layout``,
    the shardings ``state.init_sharded`` and checkpoint restores use), for each FSDP mesh size. The arrays are
    real device buffers (zeros put into those shardings, so no init is compiled per mesh)."""
    config = train_config(preset, "optim.warmup_steps=0")
    cfg, tx = loop.model_config(config), optim.make_optimizer(loop.optim_config(config))
    rows = []
    for n in device_counts:
        mesh = shd.make_mesh({"data": 1, "fsdp": n, "tensor": 1}, devices=jax.devices()[:n])
        layout = step_lib.state_layout(cfg, tx, mesh)
        state = jax.tree.map(lambda x, sh: jax.device_put(np.zeros(x.shape, x.dtype), sh), layout.abstract,
                             layout.shardings)
        d0 = jax.devices()[0]
        (p, p_whole, p_names), (o, o_whole, o_names) = device_bytes(state.params, d0), device_bytes(state.opt_state, d0)
        split = n > 1  # on one device every array is trivially whole
        rows.append({"preset": preset, "devices": n, "params": p, "opt_state": o,
                     "whole": p_whole + o_whole if split else 0, "whole_arrays": len(p_names + o_names) if split else 0,
                     "largest_whole": sorted(p_names + o_names, key=lambda t: -t[1])[:3] if split else []})
        del state
    one = rows[0]["params"] + rows[0]["opt_state"]
    for r in rows:
        r["ideal"] = one / r["devices"]
        r["ratio"] = (r["params"] + r["opt_state"]) / r["ideal"]
        r["expected_with_whole"] = (one - r["whole"]) / r["devices"] + r["whole"]  # split evenly, the rest whole
    return rows


def print_memory_table(rows: list[dict[str, Any]]) -> None:
    mib = lambda b: f"{b / 2**20:,.3f}"  # noqa: E731
    print_table([(r["preset"], str(r["devices"]), mib(r["params"]), mib(r["opt_state"]),
                  mib(r["params"] + r["opt_state"]), mib(r["ideal"]), f"{r['ratio']:.3f}x",
                  f"{mib(r['whole'])} ({r['whole_arrays']} arrays)", mib(r["expected_with_whole"])) for r in rows],
                header=("preset", "fsdp devices", "params MiB (dev 0)", "opt state MiB (dev 0)", "total MiB",
                        "1/N of 1 device", "total / (1/N)", "held whole MiB", "(split)/N + whole"))
    for r in rows:
        if r["devices"] == max(x["devices"] for x in rows if x["preset"] == r["preset"]):
            print(f"{r['preset']}, {r['devices']} devices: largest arrays held whole: "
                  + "; ".join(f"{name} {size / 2**10:.1f} KiB" for name, size in r["largest_whole"]))


def memory_in_child(presets: list[str], device_counts: list[int]) -> list[dict[str, Any]]:
    """``memory_part`` in a child process with ``FAKE_DEVICES`` CPU devices (XLA fixes the count at start-up)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                                          f" --xla_force_host_platform_device_count={FAKE_DEVICES}").strip())
        cmd = [sys.executable, os.path.abspath(__file__), "--parts", "memory", "--presets", ",".join(presets),
               "--devices", ",".join(map(str, device_counts)), "--json", out.name, "--no-print"]
        subprocess.run(cmd, env=env, check=True)
        with open(out.name) as f:
            return json.load(f)["memory"]


# ------------------------------------------------------------------------------------------------------------
# 4. Checkpoint saves.
# ------------------------------------------------------------------------------------------------------------

def checkpoint_part(s: Setup, work: str, reps: int) -> dict[str, Any]:
    """Save times, and the step's time with a save being written (started just before it) against alone."""
    directory = os.path.join(work, f"ckpt-{s.preset}")
    blocking, on_disk, during, alone, left = [], [], [], [], []
    with TrainCheckpoints(directory, max_to_keep=3) as ckpts:
        s.run_step()
        for _ in range(reps):
            s.run_step()  # a new step number to save
            t0 = time.perf_counter()
            ckpts.save_train_state(s.state, {"bench": True}, force=True)
            t1 = time.perf_counter()
            s.run_step()
            t2 = time.perf_counter()
            ckpts.wait()
            t3 = time.perf_counter()
            s.run_step()
            t4 = time.perf_counter()
            blocking.append(t1 - t0)
            on_disk.append(t3 - t0 - (t2 - t1))  # the step's time is not the save's
            during.append(t2 - t1)
            left.append(t3 - t2)
            alone.append(t4 - t3)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(directory, str(
            ckpts.latest_step()))) for f in fs)
    med = lambda x: float(np.median(x))  # noqa: E731
    return {"preset": s.preset, "reps": reps, "save_blocking_s": med(blocking), "save_to_disk_s": med(on_disk),
            "step_during_save_s": med(during), "step_alone_s": med(alone), "bytes": size,
            "save_still_running_after_step": int(sum(x > 1e-3 for x in left))}


def print_checkpoint_table(rows: list[dict[str, Any]]) -> None:
    print_table([(r["preset"], f"{r['bytes'] / 2**20:,.2f}", fmt(r["save_blocking_s"], 4), fmt(r["save_to_disk_s"], 4),
                  fmt(r["step_alone_s"], 4), fmt(r["step_during_save_s"], 4),
                  f"{r['step_during_save_s'] / r['step_alone_s']:.2f}x",
                  f"{r['save_still_running_after_step']} of {r['reps']}") for r in rows],
                header=("preset", "checkpoint MiB", "save blocks s", "save until on disk s (step excluded)",
                        "step alone s", "step during save s", "during / alone", "save outlasted the step"))


# ------------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="tiny,small")
    p.add_argument("--parts", default=",".join(PARTS), help=f"some of {','.join(PARTS)}")
    p.add_argument("--batch", type=int, default=8, help="global batch (parts 1, 2, 4)")
    p.add_argument("--text-len", type=int, default=64, help="text tokens per row, parts 1 and 4 (model.py's)")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--steps", type=int, default=7, help="timed repetitions of parts 1 and 4 (medians)")
    p.add_argument("--loop-steps", type=int, default=16, help="part 2: steps of the training loop")
    p.add_argument("--loop-warmup", type=int, default=3, help="part 2: first steps left out of the figures")
    p.add_argument("-n", type=int, default=32, help="part 2: phantom images")
    p.add_argument("--devices", default="1,2,4,8", help="part 3: FSDP mesh sizes")
    p.add_argument("--quick", action="store_true", help="tiny only, few steps, short texts: the test's mode")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--no-print", action="store_true", help=argparse.SUPPRESS)  # the memory child's parent prints
    args = p.parse_args(argv)
    if args.quick:
        args.presets, args.text_len, args.prompt_len, args.steps = "tiny", 16, 4, 2
        args.loop_steps, args.loop_warmup, args.n = 5, 1, 16
    presets = [x for x in args.presets.split(",") if x]
    parts = [x for x in args.parts.split(",") if x]
    if set(parts) - set(PARTS):
        p.error(f"--parts: unknown {sorted(set(parts) - set(PARTS))}; choose from {PARTS}")
    counts = [int(x) for x in args.devices.split(",") if x]
    results: dict[str, Any] = {"presets": presets, "batch": args.batch, "text_len": args.text_len,
                               "devices": f"{jax.devices()[0].platform} x{jax.device_count()}", "cpus": os.cpu_count()}
    show = not args.no_print
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medclm-train-bench-") as work:
        setups = {name: Setup(name, args.batch, args.text_len, args.prompt_len) for name in presets
                  if {"step", "checkpoint"} & set(parts)}
        if "step" in parts:
            rows = [{"preset": name, "batch": args.batch, "text_len": args.text_len,
                     "flops_per_token": s.flops_per_token, **step_part(s, args.steps)} for name, s in setups.items()]
            shapes = {(s.batch_size * s.count.seq_len, s.cfg.text.width, s.cfg.text.mlp_dim) for s in setups.values()}
            rates = [matmul_rate(*shape, args.steps, not args.quick) for shape in sorted(shapes | {MACHINE_MATMUL})]
            peak = max(v for r in rates for k, v in r.items() if k != "shape")
            results.update(step=rows, matmul=rates, peak_gflops=peak)
            print(f"\n1. train step vs forward+backward: batch {args.batch}, text {args.text_len} (+ image prefix), "
                  f"1 CPU device, medians of {args.steps} interleaved calls after 1 untimed warm-up")
            print("fp32 matmul GFLOP/s: " + "; ".join(
                f"{r['shape']} " + ", ".join(f"{k} {v:.1f}" for k, v in r.items() if k != "shape") for r in rates)
                + f" -> MFU peak {peak:.1f} (the best)")
            print_step_table(rows, peak)
        if "input" in parts:
            data = _sibling("input").build_phantom(work, args.n)
            rows = [input_part(name, data, work, args.batch, args.loop_steps, args.loop_warmup) for name in presets]
            results["input"] = rows
            print(f"\n2. input wait in train_and_evaluate: phantom build of {args.n} images, {args.loop_steps} steps, "
                  f"the first {args.loop_warmup} left out; Grain workers {rows[0]['workers']}; "
                  f"{rows[0]['devices']} device(s)")
            print_input_table(rows)
        if "memory" in parts:
            if jax.device_count() >= max(counts):
                results["memory"] = [r for name in presets for r in memory_part(name, counts)]
            else:
                results["memory"] = memory_in_child(presets, counts)
            if show:
                print("\n3. params + optimizer state on device 0 under FSDP (mesh fsdp=N over CPU devices)")
                print_memory_table(results["memory"])
        if "checkpoint" in parts:
            reps = max(2, args.steps // 2)
            results["checkpoint"] = [checkpoint_part(s, work, reps) for s in setups.values()]
            print(f"\n4. checkpoint saves (TrainCheckpoints, Orbax async), batch {args.batch}, text {args.text_len}, "
                  f"medians of {reps}")
            print_checkpoint_table(results["checkpoint"])
    results["wall_s"] = time.perf_counter() - started
    if show:
        print(f"\n({results['wall_s']:.0f} s in all)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

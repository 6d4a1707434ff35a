"""Curriculum training: `medclm train --config configs/train.py:model=tiny,mesh=cpu,data=DIR --workdir DIR`.

The argument is comma-separated `key=value` pairs: `model` (a preset of `medclm_jax.model.presets`), `mesh` (a
preset of `MESHES` below: mesh shape, batch size, accumulation, remat), and any key of the config, by its short
alias (`ALIASES`: `data`, `init`, `resume`, `tokenizer`, `steps`, `batch`, `lr`, `policy`, ...) or its dotted
path. `--set key=value` overrides any key afterwards (`--set optim.lr=1e-4 --set curriculum.policy=fixed`); both go
through `medclm_jax.config_file` (types, `none`, unknown keys named with suggestions).

Examples:
    configs/train.py:model=tiny,mesh=cpu,data=/tmp/phantom_vqa                     # minutes on a laptop CPU
    configs/train.py:model=paligemma_3b_224,mesh=gpu_1x8,data=D,init=ckpt/pg224     # `medclm convert` output
    configs/train.py:model=medgemma_4b,mesh=tpu_v5p_128,data=gs://b/vqa,init=gs://b/medgemma,batch=512

Sections: `model` (preset, weights to start from, compute dtype, remat), `data` (build folder, tokenizer, text
length, prompt format, Grain options), `curriculum` (`train.curriculum.CurriculumConfig`), `loss`
(`train.losses.LossConfig`), `optim` (`train.optim.OptimConfig`; its `total_steps` defaults to the run's optimizer
updates), `mesh` (axis sizes; -1 takes the remaining devices), and the run's own keys. The curriculum, loss and
optim sections are written from their dataclasses' defaults, so those stay the one source of them.

`total_steps` counts micro-steps (one global batch of `batch_size` each, the `TrainState.step`); with
`optim.grad_accum_steps` k the optimizer makes total_steps // k updates on batches of k x batch_size examples.
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from medclm_jax import config_file
from medclm_jax.train import curriculum, losses, optim
from medclm_jax.model.presets import TRAINED_FROM_SCRATCH  # presets trained from random init on the data's tokenizer

ALIASES = {
    "data": "data.dir", "init": "model.init", "tokenizer": "data.tokenizer", "max_len": "data.max_len",
    "steps": "total_steps", "batch": "batch_size", "lr": "optim.lr", "accum": "optim.grad_accum_steps",
    "remat": "model.remat", "dtype": "model.dtype", "policy": "curriculum.policy", "seed": "seed",
    "resume": "resume",
}

# ------------------------------------------------------------------------------------------------- mesh presets
# Memory arithmetic (per parameter: f32 master 4 B + Adam's two f32 moments 8 B = 12 B of state, the f32 gradient
# 4 B while the step runs, the f32 accumulator 4 B more when grad_accum_steps > 1; optim.mu_dtype=bfloat16 saves
# 2 B). FSDP divides all of it by the `fsdp` (x `data` is NOT a divisor: data-parallel replicas hold copies).
#   PaliGemma 3B (paligemma_3b_224: 2.92e9 params, of which 0.53e9 the tied 257216 x 2048 embedding):
#     state 35.1 GB + gradient 11.7 GB = 46.8 GB (+ 11.7 GB accumulator)
#     activations per example at 224 px, max_len 256 (256 image + 256 text positions), remat 'minimal' (saves
#     each layer's matmul outputs in bf16): decoder 18 layers x 39.4k values x 2 B x 512 positions = 0.73 GB,
#     vision 27 x 10.1k x 2 B x 256 = 0.14 GB, f32 logits + their gradient 2 x 256 x 257216 x 4 B = 0.53 GB:
#     ~1.4 GB; remat 'full' keeps only layer inputs (~0.04 GB) and the logits: ~0.6 GB.
#   MedGemma 4B (medgemma_4b: 4.30e9 params, 0.67e9 embedding; 896 px = 4096 patches pooled to 256 tokens):
#     state 51.6 GB + gradient 17.2 GB = 68.8 GB (+ 17.2 GB accumulator)
#     activations per example (max_len 512, which holds the 258 image placeholders), remat 'minimal': vision
#     27 x 10.1k x 2 B x 4096 patches = 2.2 GB, decoder 34 x 29.7k x 2 B x 512 = 1.0 GB, logits 2 x 512 x 262208 x
#     4 B = 1.1 GB: ~4.3 GB; remat 'full': ~1.3 GB (the logits dominate).
#   Per device then (state + gradient over fsdp, + batch per device x activations):
#     gpu_1x8 (8 x H100 80 GB, fsdp 8): PaliGemma 5.9 GB + 16 x 1.4 = 28 GB; MedGemma 8.6 GB + 8 x 1.3 (full) =
#       19 GB (the attention of 4096 patches needs the cuDNN fused kernel, `attention='auto'`, to stay small).
#     tpu_v4_32 (16 chips x 32 GiB, fsdp 16): PaliGemma 2.9 GB + 8 x 1.4 = 14 GB; MedGemma 4.3 + 8 x 1.3 = 15 GB.
#     tpu_v5e_256 (256 chips x 16 GiB, data 16 x fsdp 16): PaliGemma 2.9 + 4 x 1.4 = 8.5 GB; MedGemma 4.3 + 2 x
#       1.3 = 6.9 GB (plus the accumulator 1.1 GB with accum 2).
#     tpu_v5p_128 (64 chips x 95 GiB, fsdp 64): PaliGemma 0.7 + 8 x 1.4 = 12 GB; MedGemma 1.1 + 8 x 4.3 = 36 GB.
# These are estimates; `medclm train ... --compile_only` prints XLA's own bytes per device for the configured
# mesh (`memory_analysis()` of the compiled step) before any data is read, and with `--topology` compiles for a TPU
# slice from a CPU box that has libtpu (`pip install "jax[tpu]"`). Measured that way (2026-12-06, jax 0.10.2):
#     paligemma_3b_224 on tpu_v5e_256 (--topology v5e:16x16): 11.67 GiB per chip of 16 (estimate 8.5 GB);
#     medgemma_4b on tpu_v5p_128 (--topology v5p:4x4x4): 68.13 GiB per chip of 95 (estimate 36 GB: XLA's
#     temporaries, 67.3 GiB, hold more of the 4096-patch vision activations than the remat estimate above). The batch sizes below are for the 3B/4B
# class with the remat they name; MedGemma on gpu_1x8 wants `--set batch_size=64,model.remat=full` (see above).
MESHES = {
    # name: mesh axes, global batch, micro-batches per update, remat ('' = the preset's own)
    "cpu": dict(mesh=dict(data=1, fsdp=-1, tensor=1), batch_size=8, accum=1, remat=""),
    "gpu_1x8": dict(mesh=dict(data=1, fsdp=-1, tensor=1), batch_size=128, accum=1, remat="minimal"),
    # several 8-GPU hosts: FSDP inside a host (NVLink), data parallel across hosts; batch for 2 hosts
    "gpu_multi": dict(mesh=dict(data=-1, fsdp=8, tensor=1), batch_size=256, accum=1, remat="minimal"),
    "tpu_v4_32": dict(mesh=dict(data=1, fsdp=-1, tensor=1), batch_size=128, accum=1, remat="minimal"),
    "tpu_v5e_256": dict(mesh=dict(data=-1, fsdp=16, tensor=1), batch_size=1024, accum=1, remat="minimal"),
    "tpu_v5p_128": dict(mesh=dict(data=1, fsdp=-1, tensor=1), batch_size=512, accum=1, remat="minimal"),
}


def _section(cls, **changes) -> ml_collections.ConfigDict:
    """A dataclass's fields and defaults as a config section (None -> a typed placeholder; nested dataclasses
    become nested sections), with `changes`."""
    section = ml_collections.ConfigDict()
    for f in dataclasses.fields(cls):
        value = changes.get(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
        if dataclasses.is_dataclass(value):
            section[f.name] = config_file.config_section(type(value))
        elif value is None:
            kind = {"total_steps": int, "steps_per_epoch": int}.get(f.name, str)
            section[f.name] = config_dict.placeholder(kind)
        else:
            section[f.name] = value
    return section


def get_config(arg=None):
    args = config_file.parse_arg(arg)
    model, mesh = args.pop("model", "tiny"), args.pop("mesh", "cpu")
    if mesh not in MESHES:
        raise config_file.ConfigFileError(f"mesh={mesh!r}: choose one of {sorted(MESHES)}")
    preset = MESHES[mesh]
    scratch = model in TRAINED_FROM_SCRATCH

    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        name=model,
        init="",  # '' = random init; else a `medclm convert --from-hf` output (its config.json builds the model)
        dtype="",  # compute dtype; '' = the preset's / the checkpoint's (bfloat16 for pretrained sizes)
        remat=preset["remat"],  # none | minimal | full; '' = the preset's
    ))
    config.resume = ""  # another run's workdir to continue from (after this workdir's own checkpoints)
    config.data = ml_collections.ConfigDict(dict(
        dir="",  # a `medclm-data build` output folder
        tokenizer="",  # '' = the init checkpoint's, or (tiny/small) one trained on the train split into WORKDIR
        max_len=192 if scratch else (512 if model.startswith("medgemma") else 256),  # T, text tokens per row
        prompt_format="",  # '' = the model family's (`data.prompts.FORMATS`)
        loc_tokens=False,  # boxes in the CoT as PaliGemma <locYYYY> tokens
        val_split="val",  # '' = no evaluation
        eval_batches=0,  # validation batches per evaluation; 0 = the whole split
        workers=0, threads=1, buffer=2, plan_ahead=1,  # Grain (`data.pipeline.InputOptions`)
        on_error="skip",  # a bad record becomes a counted weight-0 row ('raise' stops, naming shard and offset)
    ))
    config.curriculum = config_file.config_section(curriculum.CurriculumConfig)
    config.loss = config_file.config_section(losses.LossConfig)
    config.optim = _section(optim.OptimConfig, grad_accum_steps=preset["accum"],
                            **(dict(lr=1e-3, end_lr=1e-5, warmup_steps=20) if scratch else {}))
    config.mesh = ml_collections.ConfigDict(preset["mesh"])
    config.batch_size = preset["batch_size"]
    config.total_steps = 1000
    config.log_every = 10
    config.eval_every = 200  # 0 = never (also skipped without data.val_split)
    config.eval_samples = 3  # validation examples answered greedily at each evaluation (`train.samples`); 0 = none
    config.eval_sample_tokens = 96  # their max_new_tokens (the cost of the samples is one such generate call)
    # FLOP/s per device for the MFU of the train log lines (`train.mfu`): 0 = the bf16 dense peak of the detected
    # chip (TPU v4/v5e/v5p/v6e, H100/H200/A100); on other chips (CPU included) MFU is left out unless this is set.
    config.peak_flops_per_device = 0.0
    config.checkpoint_every = 200  # 0 = only at the end and on SIGTERM/SIGINT
    config.keep = 3  # rolling checkpoints kept
    config.seed = 0  # params init, data order and curriculum draws
    config.compile_cache = ""  # a folder for XLA's persistent compilation cache ('' = off)
    config.stop_check_every = 10  # with several processes: steps between agreeing on a stop signal

    for key, text in args.items():
        config_file.set_value(config, key, text, ALIASES)
    return config

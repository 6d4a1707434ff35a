#!/usr/bin/env bash
# The model benchmark's one prepared GPU run (a lent H200, or any CUDA box with jax[cuda], torch, transformers):
# paligemma_3b_224, bf16 compute, random init; ours against HF PyTorch (bf16 autocast) at batch 16, each on one
# GPU with the LM head at the text positions only (HF: logits_to_keep), then ours alone at batch 32 (remat
# "minimal": without remat, batch 32 asked for 96 GiB of temporaries and ran out of memory), and medgemma_4b
# (896 px: 4096 patches per image) at batch 8 against HF; then the GPU-only tests.
# On a host with several GPUs, add --all-devices to a run for a separate row of ours sharded over all of them.
# Logs and JSON go to $OUT (default /tmp/medclm-device); benchmarks/results/ keeps an H200 run's JSON.
#   bash benchmarks/device_model.sh
set -u
OUT=${OUT:-/tmp/medclm-device}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY -c "import jax, flax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', \
torch.__version__, 'transformers', transformers.__version__, jax.devices())"
run() {  # name, timeout, args...
  local name=$1 limit=$2; shift 2
  echo "=== $name: benchmarks/model.py --gpu $*"
  timeout "$limit" $PY benchmarks/model.py --gpu "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log" \
    | grep -vE '^(W|I)[0-9]{4} '
}
run paligemma_b16 330 --batch 16 --text-len 128
run paligemma_b32 240 --batch 32 --text-len 128 --no-hf
run medgemma_b8 300 --preset medgemma_4b --batch 8 --text-len 128
JAX_PLATFORMS=cuda timeout 120 $PY -m pytest -q -p no:cacheprovider tests/model/test_gpu.py 2>&1 | tail -3

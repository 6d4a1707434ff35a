#!/usr/bin/env bash
# Train on GPUs: one process per host, each driving all of its host's GPUs.
#
#   launch/gpu.sh --config C --workdir W [--set K=V ...]                       one GPU box
#   srun --ntasks-per-node=1 launch/gpu.sh --config C --workdir W              several hosts under SLURM
#   launch/gpu.sh --coordinator HOST:PORT --num-processes N --process-id I --config C --workdir W
#                                                                              several hosts, started by hand
#
# What the trainer reads (medclm_jax/train/loop.py, `initialize_processes`): with JAX_COORDINATOR_ADDRESS set it
# calls `jax.distributed.initialize(num_processes=$JAX_NUM_PROCESSES, process_id=$JAX_PROCESS_ID)`, and JAX reads
# JAX_COORDINATOR_ADDRESS and JAX_LOCAL_DEVICE_IDS itself. JAX_LOCAL_DEVICE_IDS is set to all of this host's GPUs
# because, when any of the four is unset under SLURM, JAX's own SLURM detection gives each process only the GPU
# numbered SLURM_LOCALID (one process per GPU), which with one process per host would leave all GPUs but one idle.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh --config CONFIG --workdir WORKDIR [--set KEY=VALUE ...] [options]

Runs `medclm train --config CONFIG --workdir WORKDIR [--set KEY=VALUE ...]` as this host's one process, using all
of its GPUs. Alone, on one host; under SLURM (srun, one task per node), as one of SLURM_NTASKS processes whose
coordinator is the job's first node; or with the three flags below, as one of N processes started by hand.

Required:
  --config CONFIG         e.g. configs/train.py:model=paligemma_3b_224,mesh=gpu_multi,data=DIR,init=ckpt/pg224
  --workdir WORKDIR       the run's folder; with several hosts, on a filesystem they all share
Options:
  --set KEY=VALUE         a config override passed to medclm train (repeatable)
  --coordinator HOST:PORT process 0's host and a free port on it (with --num-processes and --process-id)
  --num-processes N       how many processes (hosts) in all
  --process-id I          this process's index, 0 .. N-1 (0 runs on the coordinator's host)
  --port PORT             under SLURM: the coordinator's port (default: 12000 + SLURM_JOB_ID mod 4000)
  --local-devices IDS     this process's GPUs, e.g. 0,1,2,3 (default: all: CUDA_VISIBLE_DEVICES' count, else
                          nvidia-smi's)
  --medclm PATH           the medclm command (default: medclm on PATH, else this checkout's .venv/bin/medclm)
  --dry-run               print the environment and the command; run nothing
  -h, --help              this text
EOF
}

die() { echo "launch/gpu.sh: error: $*" >&2; exit 2; }
# shellcheck source=launch/quote.sh
source "$(dirname "${BASH_SOURCE[0]}")/quote.sh"

config="" workdir="" coordinator="" num="" pid="" port="" local_devices="" medclm="" dry_run=0
sets=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --config|--workdir|--set|--coordinator|--num-processes|--process-id|--port|--local-devices|--medclm)
      (($# >= 2)) || die "$1 needs a value"
      case "$1" in
        --config) config=$2 ;; --workdir) workdir=$2 ;; --coordinator) coordinator=$2 ;;
        --num-processes) num=$2 ;; --process-id) pid=$2 ;; --port) port=$2 ;;
        --local-devices) local_devices=$2 ;; --medclm) medclm=$2 ;;
        --set) [[ $2 == *=* ]] || die "--set $2: expected KEY=VALUE"; sets+=("$2") ;;
      esac
      shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n $config ]] || die "--config is required (see --help)"
[[ -n $workdir ]] || die "--workdir is required (see --help)"

# ------------------------------------------------------------------------------------------ the processes
if [[ -n $coordinator || -n $num || -n $pid ]]; then
  [[ -n $coordinator && -n $num && -n $pid ]] ||
    die "--coordinator, --num-processes and --process-id go together: give all three"
  origin="flags"
elif [[ ${SLURM_NTASKS:-1} != 1 ]]; then
  [[ -n ${SLURM_PROCID:-} ]] || die "SLURM_NTASKS=$SLURM_NTASKS but no SLURM_PROCID: start it with srun"
  nodelist=${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:-}}
  [[ -n $nodelist ]] || die "SLURM_NTASKS=$SLURM_NTASKS but neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST"
  command -v scontrol >/dev/null || die "scontrol (SLURM) is not on PATH: cannot expand $nodelist"
  mapfile -t hosts < <(scontrol show hostnames "$nodelist")
  ((${#hosts[@]})) || die "scontrol show hostnames $nodelist listed no host"
  ((SLURM_NTASKS == ${#hosts[@]})) ||
    die "SLURM_NTASKS=$SLURM_NTASKS over ${#hosts[@]} nodes: this launcher runs one process per node, using all" \
        "its GPUs; start it with srun --ntasks-per-node=1"
  coordinator="${hosts[0]}:${port:-$((12000 + ${SLURM_JOB_ID:-0} % 4000))}"
  num=$SLURM_NTASKS
  pid=$SLURM_PROCID
  origin="SLURM"
else
  origin=""
fi
if [[ -n $origin ]]; then
  [[ $coordinator =~ ^[^:]+:[0-9]+$ ]] || die "coordinator '$coordinator' (from $origin): expected HOST:PORT"
  [[ $num =~ ^[1-9][0-9]*$ ]] || die "number of processes '$num' (from $origin): expected a positive integer"
  if [[ ! $pid =~ ^[0-9]+$ ]] || ((pid >= num)); then
    die "process id '$pid' (from $origin): expected 0 .. $((num - 1))"
  fi
  if [[ -z $local_devices ]]; then
    if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
      IFS=, read -r -a visible <<<"$CUDA_VISIBLE_DEVICES"
      count=${#visible[@]}
    elif command -v nvidia-smi >/dev/null; then
      count=$(nvidia-smi --list-gpus | grep -c '^GPU')
    else
      die "cannot count this host's GPUs (no CUDA_VISIBLE_DEVICES, no nvidia-smi): pass --local-devices 0,1,..."
    fi
    ((count > 0)) || die "this host shows no GPU (CUDA_VISIBLE_DEVICES / nvidia-smi)"
    local_devices=$(seq -s, 0 $((count - 1)))
  fi
  [[ $local_devices =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--local-devices '$local_devices': expected e.g. 0,1,2,3"
fi

# ------------------------------------------------------------------------------------------ the command
if [[ -z $medclm ]]; then
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if command -v medclm >/dev/null; then
    medclm=$(command -v medclm)
  elif [[ -x $root/.venv/bin/medclm ]]; then
    medclm=$root/.venv/bin/medclm
  else
    die "no medclm on PATH nor in $root/.venv: install the project (pip install -e .) or pass --medclm PATH"
  fi
fi
cmd=("$medclm" train --config "$config" --workdir "$workdir")
for kv in ${sets[@]+"${sets[@]}"}; do cmd+=(--set "$kv"); done

env_vars=()
if [[ -n $origin ]]; then
  env_vars=("JAX_COORDINATOR_ADDRESS=$coordinator" "JAX_NUM_PROCESSES=$num" "JAX_PROCESS_ID=$pid"
            "JAX_LOCAL_DEVICE_IDS=$local_devices")
fi
for kv in ${env_vars[@]+"${env_vars[@]}"}; do
  echo "export $(quote "$kv")"
  export "${kv?}"
done
echo "+ $(quote "${cmd[@]}")"
((dry_run)) && exit 0
exec "${cmd[@]}"

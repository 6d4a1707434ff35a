#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice: create it, copy this checkout to every worker, install, run
# `medclm train` on every worker at once (one JAX process per host), stream the output, delete the TPU on exit.
#
# Usage (see --help):
#   launch/tpu_vm.sh --name NAME --zone ZONE --type v5litepod-256 \
#       --config 'configs/train.py:model=paligemma_3b_224,mesh=tpu_v5e_256,data=gs://B/vqa,init=gs://B/pg224' \
#       --workdir gs://B/runs/pg224 [--set key=value ...] [--project P] [--spot | --queued] [--keep] [--dry-run]
#
# Why it is built this way:
# - One program per host: `gcloud ... ssh --worker=all --command` starts the same command on every worker;
#   MEDCLM_DISTRIBUTED=1 makes the trainer call `jax.distributed.initialize()`, which reads the slice's
#   coordinator, process count and id from the TPU metadata (medclm_jax/train/loop.py, `initialize_processes`).
# - The trainer reads and writes POSIX paths (os.path, open, pread). A pod's hosts must share the workdir (every
#   host writes its shards of each checkpoint) and the data, so every gs://BUCKET/PATH in --workdir, --config and
#   --set is mounted on every worker with Cloud Storage FUSE at /gcs/BUCKET and passed as /gcs/BUCKET/PATH.
# - The TPU is deleted by an EXIT trap armed only once our create succeeded: a name clash never deletes a TPU
#   this script did not create. A preempted or Ctrl-C'd run has saved a checkpoint in the workdir (SIGTERM saves
#   and exits 0), so running the same command again resumes it on a new TPU.
# - Runtime versions per generation follow Google's "TPU software versions" page (cloud.google.com/tpu/docs/
#   runtimes): v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite, v4 tpu-ubuntu2204-base.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh --name NAME --zone ZONE --type TYPE --config CONFIG --workdir WORKDIR [options]

Creates a Cloud TPU (VM or queued resource), copies this checkout to every worker, installs Python >= 3.11,
jax[tpu] and the project there, runs `medclm train --config CONFIG --workdir WORKDIR [--set K=V ...]` on every
worker, streams its output, and deletes the TPU when it ends (also on error or Ctrl-C) unless --keep.

Required:
  --name NAME         the TPU's name (and the queued resource's, with --queued)
  --zone ZONE         e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-a (v5p), us-east5-b (v6e)
  --type TYPE         accelerator type: v4-N (e.g. v4-32), v5litepod-N (v5e, e.g. v5litepod-256), v5p-N,
                      v6e-N
  --config CONFIG     passed to medclm train, e.g. configs/train.py:model=...,mesh=tpu_v5e_256,data=gs://B/vqa
  --workdir WORKDIR   the run's folder on the workers. Use gs://BUCKET/PATH on a pod: every host writes its
                      shards of each checkpoint there and it outlives the TPU; a local path lives on each
                      worker's own disk and is deleted with the TPU.
Options:
  --set KEY=VALUE     a config override passed to medclm train (repeatable)
  --project PROJECT   the Google Cloud project (default: gcloud's configured project)
  --runtime VERSION   the TPU software version (default: the generation's, see above)
  --spot              Spot capacity (cheaper, preemptible: the run saves on SIGTERM; rerun to resume)
  --queued            request the TPU as a queued resource and wait until it is ACTIVE
  --keep              leave the TPU running at the end (delete it yourself: the command is printed)
  --dry-run           print every command it would run (gcloud and the packing of the code); run none
  -h, --help          this text

Every gs://BUCKET/PATH in --workdir, --config and --set is mounted on every worker with Cloud Storage FUSE
(gcsfuse) at /gcs/BUCKET and passed to the trainer as /gcs/BUCKET/PATH: the trainer reads POSIX paths. The TPU's
service account needs read/write access to those buckets. With several workers, gcloud's parallel ssh needs your
key loaded in an agent first: ssh-add ~/.ssh/google_compute_engine.
EOF
}

die() { echo "launch/tpu_vm.sh: error: $*" >&2; exit 2; }
# shellcheck source=launch/quote.sh
source "$(dirname "${BASH_SOURCE[0]}")/quote.sh"

name="" zone="" project="" type="" runtime="" config="" workdir=""
spot=0 queued=0 keep=0 dry_run=0 training=0 train_job=
sets=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name|--zone|--project|--type|--runtime|--config|--workdir|--set)
      (($# >= 2)) || die "$1 needs a value"
      case "$1" in
        --name) name=$2 ;; --zone) zone=$2 ;; --project) project=$2 ;; --type) type=$2 ;;
        --runtime) runtime=$2 ;; --config) config=$2 ;; --workdir) workdir=$2 ;;
        --set) [[ $2 == *=* ]] || die "--set $2: expected KEY=VALUE"; sets+=("$2") ;;
      esac
      shift 2 ;;
    --spot) spot=1; shift ;;
    --queued) queued=1; shift ;;
    --keep) keep=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

for flag in name zone type config workdir; do
  [[ -n ${!flag} ]] || die "--$flag is required (see --help)"
done

# The generation's default software version; the accelerator-type spelling is gcloud's.
case "$type" in
  v4-[0-9]*) default_runtime=tpu-ubuntu2204-base ;;
  v5litepod-[0-9]*) default_runtime=v2-alpha-tpuv5-lite ;;
  v5p-[0-9]*) default_runtime=v2-alpha-tpuv5 ;;
  v6e-[0-9]*) default_runtime=v2-alpha-tpuv6e ;;
  v5e-[0-9]*) die "--type $type: v5e's accelerator types are spelled v5litepod-N (e.g. v5litepod-${type#v5e-})" ;;
  *) die "--type $type: unknown TPU type; use v4-N, v5litepod-N (v5e), v5p-N or v6e-N" ;;
esac
[[ $type =~ ^v[0-9a-z]+-[0-9]+$ ]] || die "--type $type: the size after the dash must be a number, e.g. v4-32"
runtime=${runtime:-$default_runtime}

# gs://BUCKET/PATH -> /gcs/BUCKET/PATH on the workers; the buckets to mount there.
gcs_re='gs://([a-z0-9][a-z0-9._-]*)'
to_mounted() { sed -E "s#${gcs_re}#/gcs/\\1#g" <<<"$1"; }
buckets=()
for text in "$workdir" "$config" ${sets[@]+"${sets[@]}"}; do
  while read -r bucket; do
    [[ -n $bucket && " ${buckets[*]-} " != *" $bucket "* ]] && buckets+=("$bucket")
  done < <(grep -oE "$gcs_re" <<<"$text" | sed 's#^gs://##' || true)
done
if [[ $workdir != gs://* ]]; then
  echo "launch/tpu_vm.sh: warning: --workdir $workdir is on each worker's own disk: it is deleted with the TPU" \
       "and, on a multi-host slice, each host holds only its part of a checkpoint; use gs://BUCKET/PATH" >&2
fi

where=(--zone "$zone")
[[ -n $project ]] && where+=(--project "$project")
spot_flag=()
((spot)) && spot_flag=(--spot)

# Print a command as `+ args` (shell-quoted), and run it unless --dry-run.
run() {
  echo "+ $(quote "$@")"
  ((dry_run)) || "$@"
}

# The worker-side commands (their shell expands ~ and $ there). The trainer runs detached from the ssh session,
# its output in ~/medclm-train.log, which tail streams back: a dropped connection or a Ctrl-C here never kills it
# mid-step; stopping it is a SIGTERM (`remote_stop`, on an interrupt or error here), on which it saves a checkpoint and exits 0.
remote_train() {
  local args=(.venv/bin/medclm train --config "$(to_mounted "$config")" --workdir "$(to_mounted "$workdir")")
  local kv
  for kv in ${sets[@]+"${sets[@]}"}; do args+=(--set "$(to_mounted "$kv")"); done
  # shellcheck disable=SC2016  # expanded by the worker's shell
  echo 'cd ~/medclm && { MEDCLM_DISTRIBUTED=1 nohup '"$(quote "${args[@]}")"' > ~/medclm-train.log 2>&1 & }' \
       '&& pid=$! && echo $pid > ~/medclm-train.pid && tail -n +1 -f --pid=$pid ~/medclm-train.log; wait $pid'
}
# shellcheck disable=SC2016  # expanded by the worker's shell
remote_stop='pid=$(cat ~/medclm-train.pid 2>/dev/null) || exit 0; kill -TERM "$pid" 2>/dev/null || exit 0;'\
' while kill -0 "$pid" 2>/dev/null; do sleep 5; done'
remote_setup="mkdir -p ~/medclm && tar -xzf ~/medclm.tar.gz -C ~/medclm && bash ~/medclm/launch/tpu_worker_setup.sh"
((${#buckets[@]})) && remote_setup+=" $(quote "${buckets[@]}")"

delete_tpu() {
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
  fi
}
on_exit() {
  local status=$1
  if ((training && status != 0)); then
    echo "# stopping the trainers (SIGTERM: each saves a checkpoint and exits)" >&2
    if run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command "$remote_stop"; then
      wait "$train_job" 2>/dev/null || true  # the stream's last lines: where it saved, how to resume
    else
      kill "$train_job" 2>/dev/null || true
    fi
  fi
  if ((keep)); then
    echo "# --keep: $name is left running; delete it with:" >&2
    if ((queued)); then
      echo "#   gcloud compute tpus queued-resources delete $name ${where[*]} --force --quiet" >&2
    else
      echo "#   gcloud compute tpus tpu-vm delete $name ${where[*]} --quiet" >&2
    fi
  else
    delete_tpu || echo "launch/tpu_vm.sh: deleting $name failed: delete it by hand" >&2
  fi
  exit "$status"
}

# ------------------------------------------------------------------------------------------ pack this checkout
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if ((dry_run)); then
  tmp="${TMPDIR:-/tmp}/medclm-launch.XXXXXX"
else
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/medclm-launch.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
fi
tarball="$tmp/medclm.tar.gz"
echo "# pack: the checkout's tracked and not-ignored files (no .venv, runs/) -> $tarball"
if ((!dry_run)); then
  git -C "$root" rev-parse --git-dir >/dev/null 2>&1 || die "$root is not a git checkout: cannot list its files"
  # Deleted-but-tracked files are listed too; --ignore-failed-read skips them.
  git -C "$root" ls-files -z --cached --others --exclude-standard \
    | tar -C "$root" --null --ignore-failed-read -T - -czf "$tarball"
fi

# ------------------------------------------------------------------------------------------ create the TPU
if ((queued)); then
  run gcloud compute tpus queued-resources create "$name" "${where[@]}" --node-id "$name" \
    --accelerator-type "$type" --runtime-version "$runtime" ${spot_flag[@]+"${spot_flag[@]}"}
else
  run gcloud compute tpus tpu-vm create "$name" "${where[@]}" \
    --accelerator-type "$type" --version "$runtime" ${spot_flag[@]+"${spot_flag[@]}"}
fi
# Armed only now: a failed create (e.g. the name is taken) must not delete someone else's TPU.
if ((dry_run)); then trap 'on_exit $?' EXIT; else trap 'status=$?; rm -rf "$tmp"; on_exit $status' EXIT; fi
trap 'exit 130' INT
trap 'exit 143' TERM

if ((queued)); then
  describe=(gcloud compute tpus queued-resources describe "$name" "${where[@]}" --format 'value(state.state)')
  echo "# wait until the queued resource is ACTIVE, polling every 60 s:"
  echo "+ $(quote "${describe[@]}")"
  while ((!dry_run)); do
    state=$("${describe[@]}")
    case "$state" in
      ACTIVE) break ;;
      FAILED|SUSPENDED) die "queued resource $name is $state" ;;
    esac
    echo "# $name: $state" >&2
    sleep 60
  done
fi

# ------------------------------------------------------------------------------------------ code, setup, train
run gcloud compute tpus tpu-vm scp "$tarball" "$name:medclm.tar.gz" "${where[@]}" --worker=all
run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command "$remote_setup"
training=1
# In the background so that a SIGTERM / Ctrl-C reaches the traps at once (bash defers them until a foreground
# child ends): they stop the trainers, which save, and then delete the TPU.
run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command "$(remote_train)" &
train_job=$!
wait "$train_job"

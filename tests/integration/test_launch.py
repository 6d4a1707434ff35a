"""The launchers: `launch/tpu_vm.sh` and `launch/gpu.sh`, run as subprocesses.

A fake `gcloud` comes first on PATH in every test (the machine may have the real one), so a bug in `--dry-run`
can never reach Google Cloud: the dry-run tests assert it was never called, and the real-run tests let the
script call the fake, which records every call. `gpu.sh`'s environment is checked against the trainer's own
reader of it (`medclm_jax.train.loop.initialize_processes`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TPU_VM = ROOT / "launch" / "tpu_vm.sh"
GPU = ROOT / "launch" / "gpu.sh"

# Records each call as a JSON line; plays the parts of gcloud the launcher reads (see the real-run tests).
FAKE_GCLOUD = """#!/usr/bin/env python3
import json, os, shutil, sys, time
args = sys.argv[1:]
log = os.environ["FAKE_GCLOUD_DIR"]
with open(os.path.join(log, "calls.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\\n")
command = args[args.index("--command") + 1] if "--command" in args else ""
if "scp" in args:
    shutil.copy(args[args.index("scp") + 1], os.path.join(log, "shipped.tar.gz"))
elif "describe" in args:
    print("ACTIVE")
elif "medclm train" in command and os.environ.get("FAKE_TRAIN") == "until-stopped":
    open(os.path.join(log, "training"), "w").close()
    for _ in range(600):  # the trainer runs until stop_training's SIGTERM
        if os.path.exists(os.path.join(log, "stopped")):
            break
        time.sleep(0.1)
elif "kill -TERM" in command:
    open(os.path.join(log, "stopped"), "w").close()
"""


@pytest.fixture
def fake(tmp_path: Path) -> dict:
    """A clean environment (no SLURM_*, JAX_*, CUDA_* of the machine running the tests) with the fake gcloud."""
    bin_dir, log_dir = tmp_path / "bin", tmp_path / "gcloud"
    bin_dir.mkdir()
    log_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "FAKE_GCLOUD_DIR": str(log_dir), "LANG": "C.UTF-8"}
    return {"env": env, "bin": bin_dir, "log": log_dir, "tmp": tmp_path}


def launch(script: Path, *args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def printed(stdout: str) -> list[list[str]]:
    """The `+ command` lines a launcher printed, as argv lists."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def gcloud_calls(fake: dict) -> list[list[str]]:
    log = fake["log"] / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def remote_train_argv(ssh_command: str) -> list[str]:
    """The `medclm train ...` argv inside the worker-side command of the training ssh."""
    words = shlex.split(ssh_command)
    start = words.index(".venv/bin/medclm")
    return words[start:words.index(">", start)]


# --------------------------------------------------------------------------------------------- tpu_vm.sh
Z = ["--zone", "us-east5-a", "--project", "proj"]
TARBALL = "{tmp}/medclm-launch.XXXXXX/medclm.tar.gz"


@pytest.mark.parametrize("tpu_type, runtime", [
    ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-256", "v2-alpha-tpuv5-lite"),
    ("v5p-128", "v2-alpha-tpuv5"),
    ("v6e-64", "v2-alpha-tpuv6e"),
])
def test_tpu_dry_run_prints_each_gcloud_command_and_runs_none(fake, tpu_type, runtime):
    out = launch(TPU_VM, "--name", "run1", *Z, "--type", tpu_type, "--config", "configs/train.py:model=tiny",
                 "--workdir", "gs://bkt/runs/a", "--dry-run", env=fake["env"]).stdout
    cmds = printed(out)
    setup = "mkdir -p ~/medclm && tar -xzf ~/medclm.tar.gz -C ~/medclm && bash ~/medclm/launch/tpu_worker_setup.sh bkt"
    assert [c[:-1] if c[-2] == "--command" else c for c in cmds] == [
        ["gcloud", "compute", "tpus", "tpu-vm", "create", "run1", *Z, "--accelerator-type", tpu_type,
         "--version", runtime],
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", TARBALL.format(tmp=fake["tmp"]), "run1:medclm.tar.gz", *Z,
         "--worker=all"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "run1", *Z, "--worker=all", "--command"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "run1", *Z, "--worker=all", "--command"],
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "run1", *Z, "--quiet"],
    ]
    assert cmds[2][-1] == setup
    assert "MEDCLM_DISTRIBUTED=1" in shlex.split(cmds[3][-1])
    assert not gcloud_calls(fake)


def test_tpu_train_command_passes_config_and_sets_through_with_buckets_mounted(fake):
    config = "configs/train.py:model=paligemma_3b_224,mesh=tpu_v5e_256,data=gs://data-b/vqa,init=gs://w.b/pg224"
    out = launch(TPU_VM, "--name", "run1", *Z, "--type", "v5litepod-256", "--config", config,
                 "--workdir", "gs://runs-b/pg", "--set", "optim.lr=1e-4", "--set", "total_steps=50",
                 "--set", "note=it's a b", "--spot", "--dry-run", env=fake["env"]).stdout
    create, _, setup, train, _ = printed(out)
    assert create[-1] == "--spot"
    assert remote_train_argv(train[-1]) == [
        ".venv/bin/medclm", "train",
        "--config", "configs/train.py:model=paligemma_3b_224,mesh=tpu_v5e_256,data=/gcs/data-b/vqa,"
                    "init=/gcs/w.b/pg224",
        "--workdir", "/gcs/runs-b/pg",
        "--set", "optim.lr=1e-4", "--set", "total_steps=50", "--set", "note=it's a b"]
    assert shlex.split(setup[-1])[-3:] == ["runs-b", "data-b", "w.b"]  # each bucket mounted once


def test_tpu_queued_resource_with_keep_and_runtime_override(fake):
    proc = launch(TPU_VM, "--name", "q1", "--zone", "us-central2-b", "--type", "v4-8", "--config", "c",
                  "--workdir", "gs://b/r", "--queued", "--spot", "--keep", "--runtime", "tpu-vm-v4-base",
                  "--dry-run", env=fake["env"])
    cmds = printed(proc.stdout)
    where = ["--zone", "us-central2-b"]
    assert cmds[0] == ["gcloud", "compute", "tpus", "queued-resources", "create", "q1", *where, "--node-id", "q1",
                       "--accelerator-type", "v4-8", "--runtime-version", "tpu-vm-v4-base", "--spot"]
    assert cmds[1] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "q1", *where,
                       "--format", "value(state.state)"]
    assert [c[3:5] for c in cmds[2:]] == [["tpu-vm", "scp"], ["tpu-vm", "ssh"], ["tpu-vm", "ssh"]]  # no delete
    assert "gcloud compute tpus queued-resources delete q1 --zone us-central2-b --force --quiet" in proc.stderr
    assert not gcloud_calls(fake)


def test_tpu_queued_resource_is_deleted_with_force(fake):
    out = launch(TPU_VM, "--name", "q1", *Z, "--type", "v5p-8", "--config", "c", "--workdir", "gs://b/r",
                 "--queued", "--dry-run", env=fake["env"]).stdout
    assert printed(out)[-1] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "q1", *Z, "--force",
                                "--quiet"]


@pytest.mark.parametrize("args, message", [
    (["--name", "n", "--type", "v4-8", "--config", "c", "--workdir", "w"], "--zone is required"),
    (["--name", "n", "--zone", "z", "--type", "v3-8", "--config", "c", "--workdir", "w"], "unknown TPU type"),
    (["--name", "n", "--zone", "z", "--type", "v5e-16", "--config", "c", "--workdir", "w"], "v5litepod-16"),
    (["--name", "n", "--zone", "z", "--type", "v4-8", "--workdir", "w"], "--config is required"),
    (["--name", "n", "--zone", "z", "--type", "v4-8", "--config", "c", "--workdir", "w", "--set", "lr"],
     "expected KEY=VALUE"),
    (["--name", "n", "--zone", "z", "--type", "v4-8", "--config", "c", "--workdir", "w", "--bogus"],
     "unknown argument '--bogus'"),
])
def test_tpu_usage_errors_name_the_problem_and_run_nothing(fake, args, message):
    proc = launch(TPU_VM, *args, "--dry-run", env=fake["env"], check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not printed(proc.stdout) and not gcloud_calls(fake)


def test_tpu_help(fake):
    out = launch(TPU_VM, "--help", env=fake["env"]).stdout
    assert "--queued" in out and "gs://BUCKET/PATH" in out


def test_tpu_real_run_executes_what_dry_run_prints_and_ships_the_checkout(fake):
    args = ["--name", "run1", *Z, "--type", "v6e-16", "--config", "configs/train.py:model=tiny,data=gs://b/d",
            "--workdir", "gs://b/r", "--set", "seed=3", "--queued"]
    dry = printed(launch(TPU_VM, *args, "--dry-run", env=fake["env"]).stdout)
    launch(TPU_VM, *args, env=fake["env"])
    calls = gcloud_calls(fake)
    scp = next(i for i, c in enumerate(calls) if "scp" in c)
    shipped = calls[scp][4]
    assert calls[scp][4:] == [shipped, *dry[scp][6:]] and shipped.endswith("/medclm.tar.gz")
    assert [["gcloud", *c] for c in calls[:scp] + calls[scp + 1:]] == dry[:scp] + dry[scp + 1:]
    assert not os.path.exists(shipped)  # the local tarball is removed at exit
    with tarfile.open(fake["log"] / "shipped.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"pyproject.toml", "launch/tpu_worker_setup.sh", "launch/quote.sh", "medclm_jax/train/loop.py"} <= names
    assert not any(n.startswith((".venv/", ".git/", "runs/")) for n in names)


def test_tpu_sigterm_stops_the_trainers_then_deletes_the_tpu(fake):
    env = dict(fake["env"], FAKE_TRAIN="until-stopped")
    proc = subprocess.Popen(["bash", str(TPU_VM), "--name", "run1", *Z, "--type", "v4-16", "--config", "c",
                             "--workdir", "gs://b/r"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not (fake["log"] / "training").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    stop, delete = gcloud_calls(fake)[-2:]
    assert stop[:9] == ["compute", "tpus", "tpu-vm", "ssh", "run1", *Z] and "--worker=all" in stop
    assert "kill -TERM" in stop[-1]
    assert delete == ["compute", "tpus", "tpu-vm", "delete", "run1", *Z, "--quiet"]


def test_tpu_failed_create_deletes_nothing(fake):
    gcloud = fake["bin"] / "gcloud"
    gcloud.write_text(FAKE_GCLOUD + 'if "create" in args:\n    sys.exit(1)\n')
    proc = launch(TPU_VM, "--name", "taken", *Z, "--type", "v4-8", "--config", "c", "--workdir", "gs://b/r",
                  env=fake["env"], check=False)
    assert proc.returncode == 1
    assert [c[3] for c in gcloud_calls(fake)] == ["create"]  # the name may be someone else's TPU


# --------------------------------------------------------------------------------------------- gpu.sh
def fake_tool(fake: dict, name: str, body: str) -> None:
    path = fake["bin"] / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def exports(stdout: str) -> dict:
    return dict(shlex.split(line[len("export "):])[0].split("=", 1)
                for line in stdout.splitlines() if line.startswith("export "))


def test_gpu_single_host_exports_nothing_and_runs_train(fake):
    fake_tool(fake, "medclm", "exit 0\n")
    env = dict(fake["env"], SLURM_NTASKS="1", SLURM_PROCID="0")  # a one-task SLURM job is one host
    out = launch(GPU, "--config", "configs/train.py:model=tiny,mesh=gpu_1x8,data=D", "--workdir", "runs/x",
                 "--set", "optim.lr=1e-4", "--dry-run", env=env).stdout
    assert exports(out) == {}
    assert printed(out) == [[str(fake["bin"] / "medclm"), "train", "--config",
                             "configs/train.py:model=tiny,mesh=gpu_1x8,data=D", "--workdir", "runs/x",
                             "--set", "optim.lr=1e-4"]]


def test_gpu_explicit_flags(fake):
    env = dict(fake["env"], CUDA_VISIBLE_DEVICES="4,5,6,7")
    out = launch(GPU, "--coordinator", "10.0.0.1:1234", "--num-processes", "4", "--process-id", "3",
                 "--config", "c", "--workdir", "/shared/r", "--medclm", "/opt/medclm", "--dry-run", env=env).stdout
    assert exports(out) == {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
                            "JAX_PROCESS_ID": "3", "JAX_LOCAL_DEVICE_IDS": "0,1,2,3"}
    assert printed(out) == [["/opt/medclm", "train", "--config", "c", "--workdir", "/shared/r"]]


def test_gpu_slurm_environment(fake):
    fake_tool(fake, "scontrol", '[ "$1 $2 $3" = "show hostnames gpu[07-08,11]" ] || exit 3\n'
                                'printf "gpu07\\ngpu08\\ngpu11\\n"\n')
    fake_tool(fake, "nvidia-smi", '[ "$1" = "--list-gpus" ] || exit 3\n'
                                  'for i in 0 1 2 3 4 5 6 7; do echo "GPU $i: NVIDIA H100 (UUID: GPU-$i)"; done\n')
    env = dict(fake["env"], SLURM_JOB_ID="1000", SLURM_NTASKS="3", SLURM_PROCID="2", SLURM_LOCALID="0",
               SLURM_JOB_NODELIST="gpu[07-08,11]")
    out = launch(GPU, "--config", "c", "--workdir", "w", "--medclm", "medclm", "--dry-run", env=env).stdout
    assert exports(out) == {"JAX_COORDINATOR_ADDRESS": "gpu07:13000", "JAX_NUM_PROCESSES": "3",
                            "JAX_PROCESS_ID": "2", "JAX_LOCAL_DEVICE_IDS": "0,1,2,3,4,5,6,7"}
    out = launch(GPU, "--config", "c", "--workdir", "w", "--medclm", "medclm", "--port", "2222", "--dry-run",
                 env=env).stdout
    assert exports(out)["JAX_COORDINATOR_ADDRESS"] == "gpu07:2222"


@pytest.mark.parametrize("args, env, message", [
    (["--workdir", "w"], {}, "--config is required"),
    (["--config", "c", "--workdir", "w", "--coordinator", "h:1"], {}, "give all three"),
    (["--config", "c", "--workdir", "w", "--coordinator", "h", "--num-processes", "2", "--process-id", "0"],
     {}, "expected HOST:PORT"),
    (["--config", "c", "--workdir", "w", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
     {}, "expected 0 .. 1"),
    (["--config", "c", "--workdir", "w"], {"SLURM_NTASKS": "16", "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "n1"},
     "--ntasks-per-node=1"),
    (["--config", "c", "--workdir", "w", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "0"],
     {}, "pass --local-devices"),
])
def test_gpu_usage_errors(fake, args, env, message):
    if message == "pass --local-devices" and shutil.which("nvidia-smi", path=fake["env"]["PATH"]):
        pytest.skip("this machine has nvidia-smi: the GPUs are countable")
    fake_tool(fake, "scontrol", 'echo n1\n')
    proc = launch(GPU, *args, "--medclm", "medclm", "--dry-run", env=dict(fake["env"], **env), check=False)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_gpu_real_run_hands_the_trainer_its_environment(fake):
    """Without --dry-run the script execs medclm with the variables exported; the trainer's reader of them
    (`initialize_processes`) then asks JAX for exactly this process of this many."""
    dump = fake["tmp"] / "seen.json"
    fake_tool(fake, "medclm", f'exec {sys.executable} -c "import json, os, sys; json.dump(dict(argv=sys.argv[1:], '
                              f'env=dict(os.environ)), open(\'{dump}\', \'w\'))" "$@"\n')
    launch(GPU, "--coordinator", "h0:1234", "--num-processes", "2", "--process-id", "1", "--local-devices", "0,1",
           "--config", "c", "--workdir", "w", "--set", "seed=1", env=fake["env"])
    seen = json.loads(dump.read_text())
    assert seen["argv"] == ["train", "--config", "c", "--workdir", "w", "--set", "seed=1"]
    jax_env = {k: v for k, v in seen["env"].items() if k.startswith("JAX_")}
    assert jax_env == {"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1",
                       "JAX_LOCAL_DEVICE_IDS": "0,1"}


def test_gpu_environment_is_what_the_trainer_reads(fake, monkeypatch):
    from medclm_jax.train import loop  # pylint: disable=import-outside-toplevel

    out = launch(GPU, "--coordinator", "h0:1234", "--num-processes", "2", "--process-id", "1",
                 "--local-devices", "0,1", "--config", "c", "--workdir", "w", "--medclm", "m", "--dry-run",
                 env=fake["env"]).stdout
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "MEDCLM_DISTRIBUTED"):
        monkeypatch.delenv(key, raising=False)
    for key, value in exports(out).items():
        monkeypatch.setenv(key, value)
    calls = []
    monkeypatch.setattr(loop.jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(loop.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    loop.initialize_processes()
    assert calls == [{"num_processes": 2, "process_id": 1}]  # JAX reads the address and device ids itself


# --------------------------------------------------------------------------------------------- shellcheck
def test_launchers_are_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        if os.environ.get("MEDCLM_REQUIRE_TOOLS") == "1":
            pytest.fail("shellcheck is not installed and MEDCLM_REQUIRE_TOOLS=1")
        pytest.skip("shellcheck is not installed (set MEDCLM_REQUIRE_TOOLS=1 to make this a failure)")
    scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "launch").glob("*.sh"))
    assert {"launch/tpu_vm.sh", "launch/gpu.sh"} <= set(scripts)
    proc = subprocess.run([shellcheck, "-x", *scripts], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr

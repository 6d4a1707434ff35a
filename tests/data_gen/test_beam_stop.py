"""SIGTERM during a `--runner beam` build (Apache Beam's DirectRunner): the build stops with the same message and
status as the local runner's, promptly, and leaves no half-written shard behind."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from local_http import hung_llm, llm_build_sets, serve

from data_gen import phantom

pytest.importorskip("apache_beam")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "data", "phantom.py")


def test_sigterm_stops_a_beam_build_and_says_how_to_resume(tmp_path):
    raw = str(tmp_path / "dataset")
    phantom.write_phantom(raw, 3, seed=3)
    asked, release = threading.Event(), threading.Event()

    server = serve(hung_llm(release, asked))  # a conversion is in progress when SIGTERM comes
    base_url = server.__enter__()
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "data_gen.cli", "build", "--config", f"{CONFIG}:root={raw}", "--out", out,
           "--runner", "beam", "--no-progress", *llm_build_sets(base_url)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert asked.wait(120), f"the Beam build never reached the endpoint: {proc.communicate(timeout=5)}"
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        stopped_in = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        release.set()
        server.__exit__(None, None, None)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "run the same command again" in err and "Traceback" not in err, err
    assert stopped_in < 30  # not after the hung request's 600 s timeout
    names = os.listdir(out) if os.path.isdir(out) else []
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")], names
    # Every shard present is whole: its records and its index and summary were all written (none here, since
    # every conversion waits on the endpoint).
    for n in names:
        if n.endswith(".summary.json"):
            with open(os.path.join(out, n)) as f:
                json.load(f)
    assert not os.path.exists(os.path.join(out, "dataset_info.json"))

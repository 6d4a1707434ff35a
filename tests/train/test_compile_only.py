"""`medclm train --compile_only [--topology T]`: ahead-of-time compilation of the train step, bytes per device.

The TPU case needs the TPU compiler (libtpu) on this machine: CI has none, so there the topology's device list is
stood in by CPU devices (the plumbing), and the error without libtpu is checked; where libtpu is installed (e.g.
`pip install "jax[tpu]"` on a CPU box) the step really compiles for a v5e slice.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import pytest

from medclm_jax.commands import train as train_cmd
from medclm_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "configs", "train.py") + ":model=tiny,mesh=cpu"
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def _total(out: str) -> int:
    line = next(l for l in out.splitlines() if l.strip().startswith("total"))
    return int(line.split("(")[1].split()[0].replace(",", ""))


def test_topology_devices_build_the_mesh(monkeypatch, capsys):
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel

    class FakeTopology:  # what get_topology_desc returns: compile-only devices of the named slice
        devices = jax.devices()[:4]

    asked, meshes = [], []
    monkeypatch.setattr(topologies, "get_topology_desc",
                        lambda name, platform: asked.append((name, platform)) or FakeTopology())
    real_make_mesh = loop.shd.make_mesh
    monkeypatch.setattr(loop.shd, "make_mesh", lambda axes, devices=None: meshes.append(
        real_make_mesh(axes, devices=devices)) or meshes[-1])
    assert train_cmd.main(["--config", TINY, "--compile_only", "--topology", "v5e:2x2"]) == 0
    assert asked == [("v5e:2x2", "tpu")]
    assert meshes[0].devices.size == 4 and set(meshes[0].devices.flat) == set(jax.devices()[:4])
    assert _total(capsys.readouterr().out) > 0


@pytest.mark.skipif(HAS_LIBTPU, reason="libtpu is installed here: the topology is real")
def test_without_libtpu_the_topology_error_says_what_is_missing():
    with pytest.raises(SystemExit, match=r"cannot describe TPU topology 'v5e:2x2'.*libtpu"):
        train_cmd.main(["--config", TINY, "--compile_only", "--topology", "v5e:2x2"])


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs the TPU compiler (libtpu); CI has none")
def test_compiles_for_a_real_v5e_slice_from_this_machine(capsys):
    assert train_cmd.main(["--config", TINY, "--compile_only", "--topology", "v5e:2x2"]) == 0
    assert _total(capsys.readouterr().out) > 0

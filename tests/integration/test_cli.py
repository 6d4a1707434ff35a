"""The console scripts: help, dispatch, and `medclm-data phantom` -> `medclm-data build` -> `medclm demo`."""

import json
import os

import pytest

from data_gen import cli as data_cli
from medclm_jax import cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out
    assert data_cli.main(["--help"]) == 0
    assert "phantom" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err
    assert data_cli.main([]) == 2


def test_phantom_then_build_from_the_command_line(tmp_path, capsys):
    raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
    assert data_cli.main(["phantom", "--out", raw, "-n", "6", "--seed", "1"]) == 0
    config = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "data", "phantom.py")
    assert data_cli.main(["build", "--config", f"{config}:root={raw}", "--out", out, "--no-progress",
                          "--set", "image.max_side=128"]) == 0
    assert "records from" in capsys.readouterr().out
    info = json.load(open(os.path.join(out, "dataset_info.json")))
    assert info["config"]["image"]["max_side"] == 128
    assert info["counts"]["total"]["images_in"] == 6
    with pytest.raises(SystemExit):  # a bad override names the key
        data_cli.main(["build", "--config", f"{config}:root={raw}", "--out", out, "--set", "image.nope=1"])


def test_demo_runs_the_data_half(tmp_path, capsys):
    from medclm_jax import demo

    assert demo.main(["--workdir", str(tmp_path), "-n", "8", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "easy/cot" in out and "records from" in out

"""The console scripts: help, dispatch, every listed command's module and `--help`, and `medclm-data phantom` ->
`medclm-data build` -> `medclm demo`."""

import importlib
import json
import os
import re
import subprocess
import sys

import pytest

from data_gen import cli as data_cli
from medclm_jax import cli
from medclm_jax.records import decode_example, read_tfrecord


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out
    assert data_cli.main(["--help"]) == 0
    assert "phantom" in capsys.readouterr().out


# Every command either script lists, so a command added later is covered without touching this file.
LISTED = [(script, name, module) for script, commands in (("medclm_jax.cli", cli.COMMANDS),
                                                          ("data_gen.cli", data_cli.COMMANDS))
          for name, (module, _) in commands.items()]


@pytest.mark.parametrize("script,name,module", LISTED, ids=[f"{s}:{n}" for s, n, _ in LISTED])
def test_every_listed_command_module_imports_and_has_main(script, name, module):
    assert callable(importlib.import_module(module).main)


@pytest.mark.parametrize("script,name,module", LISTED, ids=[f"{s}:{n}" for s, n, _ in LISTED])
def test_every_listed_command_prints_its_help(script, name, module):
    # A fresh interpreter, as the console script runs it: the dispatcher's lazy import and argparse's --help exit.
    proc = subprocess.run([sys.executable, "-m", script, name, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    prog = "medclm" if script == "medclm_jax.cli" else "medclm-data"
    assert proc.stdout.startswith(f"usage: {prog} {name}"), proc.stdout[:500]


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
    # the override took effect on the stored images, not only in the echoed config (phantom images are 512 px)
    shard = sorted(f for f in os.listdir(out) if f.endswith(".tfrecord"))[0]
    stored = decode_example(next(iter(read_tfrecord(os.path.join(out, shard)))))
    assert max(stored["image/height"][0], stored["image/width"][0]) == 128
    assert info["counts"]["total"]["images_in"] == 6
    with pytest.raises(SystemExit):  # a bad override names the key
        data_cli.main(["build", "--config", f"{config}:root={raw}", "--out", out, "--set", "image.nope=1"])


def test_demo_runs_data_gen_training_and_evaluation(tmp_path, capsys):
    from medclm_jax.commands import demo

    assert demo.main(["--workdir", str(tmp_path), "-n", "12", "--workers", "1", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "easy/cot" in out and "records from" in out and "[4/4] medclm eval" in out
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))["metrics"]
    info = json.load(open(tmp_path / "dataset" / "dataset_info.json"))
    expected = min(6, 3 * info["counts"]["per_split"]["test"]["records"])  # --quick: the first 6 test examples
    assert metrics["counts"]["n"] == expected and metrics["counts"]["n_missing_predictions"] == 0
    assert set(metrics["by_stage"]) <= {"easy", "medium", "hard"} and metrics["by_stage"]
    assert os.path.isdir(tmp_path / "run" / "final")
    train_log = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert any(r.get("kind") == "train" for r in train_log)
    # The HTML report beside metrics.json: named in the output, its tables numbers in range, every example shown
    # with its image, the training curves drawn from run/metrics.jsonl.
    report = tmp_path / "eval" / "report.html"
    assert f"report (open it in a browser, it works offline): {report}" in out
    page = report.read_text(encoding="utf-8")
    tables = page.split('<h2 id="metrics">', 1)[1].split('<h2 id="training">', 1)[0]
    rows = [re.findall(r"<td>([^<]*)</td>", row) for row in tables.split("<tr>") if "<td>" in row]
    assert rows[0][:2] == ["all", str(expected)]
    assert {r[0] for r in rows} >= set(metrics["by_stage"]) | set(metrics["by_domain"])
    cells = [c for r in rows for c in r[2:]]
    assert cells and all(c == "–" or 0.0 <= float(c) <= 100.0 for c in cells)
    assert all(int(r[1]) > 0 for r in rows)
    assert page.count('<img src="data:image/jpeg;base64,') == expected  # 6 examples: two best, two worst, two drawn
    assert "<polyline" in page.split('<h2 id="training">', 1)[1].split('<h2 id="examples">', 1)[0]

    # Re-running reuses what is done: the phantom files, every shard, the trained run, every prediction.
    predictions = (tmp_path / "eval" / "predictions.jsonl").read_bytes()
    assert demo.main(["--workdir", str(tmp_path), "-n", "12", "--workers", "1", "--quick"]) == 0
    again = capsys.readouterr().out
    assert "(reused: 12 images, seed 0)" in again and "0 rebuilt because their inputs changed" in again
    assert "medclm train: done, 8 steps" in again
    assert re.search(rf"test split: {expected} of \d+ examples scored[^;]*; 0 generated now", again), again[-2000:]
    assert (tmp_path / "eval" / "predictions.jsonl").read_bytes() == predictions

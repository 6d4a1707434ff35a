"""`medclm convert` on a user's folders: the source is never destroyed, a folder that is not ours is never written
into, and `--overwrite` replaces only an earlier output of ours (and nothing next to it)."""

import json

import jax
import numpy as np
import pytest

from medclm_jax.commands import convert as convert_command
from medclm_jax.model import checkpoint, convert, presets, vlm
from medclm_jax.model import sharding as S


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """A tiny model checkpoint of ours, with a tokenizer file."""
    cfg = presets.get_model_config("tiny_gemma3", param_dtype="float32")
    # The values do not matter here: the shapes, traced without compiling the init, filled with zeros.
    shapes = S.unbox(jax.eval_shape(lambda: vlm.init_params(cfg, jax.random.key(0))))["params"]
    params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)
    hf = tmp_path_factory.mktemp("tok")
    (hf / "tokenizer.json").write_text('{"stand-in": true}')
    path = tmp_path_factory.mktemp("ckpt") / "ours"
    checkpoint.save_checkpoint(path, cfg, params, tokenizer_dir=hf)
    return path


@pytest.fixture
def hf_folder(tmp_path):
    """A user's Hugging Face folder (its content does not matter: every refusal comes before reading it)."""
    path = tmp_path / "hf"
    path.mkdir()
    (path / "config.json").write_text('{"architectures": ["PaliGemmaForConditionalGeneration"]}')
    (path / "model.safetensors").write_bytes(b"the user's weights")
    (path / "tokenizer.json").write_text("{}")
    return path


def test_from_hf_never_writes_over_its_source(hf_folder, capsys):
    before = _snapshot(hf_folder)
    for to in (hf_folder, hf_folder / "converted", hf_folder.parent):
        assert convert_command.main(["--from-hf", str(hf_folder), "--to", str(to), "--overwrite"]) == 1
        err = capsys.readouterr().err
        assert "input" in err and "choose a folder apart" in err and "Traceback" not in err
    assert _snapshot(hf_folder) == before


def test_relayout_never_writes_over_its_source(ours, capsys):
    before = _snapshot(ours)
    assert convert_command.main(["--from", str(ours), "--to", str(ours), "--layout", "unrolled", "--overwrite"]) == 1
    assert "the output is the input" in capsys.readouterr().err
    assert _snapshot(ours) == before and checkpoint.load_config(ours).family == "gemma3"


def test_a_folder_that_is_not_a_checkpoint_is_not_called_one_nor_replaced(ours, tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    cfg, params = checkpoint.load_checkpoint(ours)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not empty and is not a model checkpoint") as e:
            checkpoint.save_checkpoint(user, cfg, params, overwrite=overwrite)
        assert "already exists" not in str(e.value)
    assert _snapshot(user) == {"notes.txt": b"mine"}
    # a checkpoint with the user's file beside it: replacing it would delete the file, so it is refused
    mixed = tmp_path / "mixed"
    checkpoint.save_checkpoint(mixed, cfg, params)
    (mixed / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        checkpoint.save_checkpoint(mixed, cfg, params, overwrite=True)
    assert (mixed / "notes.txt").read_text() == "mine" and checkpoint.is_checkpoint(mixed)
    # an empty folder the user made is fine, and a checkpoint alone is replaced with overwrite
    (tmp_path / "empty").mkdir()
    checkpoint.save_checkpoint(tmp_path / "empty", cfg, params)
    checkpoint.save_checkpoint(tmp_path / "empty", cfg, params, overwrite=True)
    assert checkpoint.load_config(tmp_path / "empty") == cfg


def test_to_hf_writes_only_into_an_empty_folder_or_over_its_own_export(ours, tmp_path, capsys):
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text("the user's config")
    for extra in ([], ["--overwrite"]):
        assert convert_command.main(["--from", str(ours), "--to-hf", str(user), *extra]) == 1
        assert "holds no export of medclm convert" in capsys.readouterr().err
    assert _snapshot(user) == {"config.json": b"the user's config"}

    out = tmp_path / "export"
    assert convert_command.main(["--from", str(ours), "--to-hf", str(out)]) == 0
    manifest = json.loads((out / convert.EXPORT_MANIFEST).read_text())
    assert manifest["complete"] and set(manifest["files"]) == {"model.safetensors", "config.json", "tokenizer.json"}
    assert convert_command.main(["--from", str(ours), "--to-hf", str(out)]) == 1
    assert "earlier export; pass --overwrite" in capsys.readouterr().err
    (out / "README.md").write_text("the user's model card")
    # sharded this time: the single model.safetensors of the first export must not survive next to the shards
    assert convert_command.main(["--from", str(ours), "--to-hf", str(out), "--overwrite",
                                 "--max-shard-gb", "0.00005"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names
    assert (out / "README.md").read_text() == "the user's model card"

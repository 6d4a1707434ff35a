"""`medclm eval` (medclm_jax/eval/run.py, generate.py, commands/eval.py) on a phantom build and a tiny model.

The model is the tiny preset with random weights of a larger scale than its init (at init the tied embedding makes
a tiny decoder repeat the prompt's last token, which decodes to nothing; here its greedy text varies with the
prompt and the image). References are independent of the code under test: the records read back one by one, an
uninterrupted run for resumed ones, one-example generation for batched generation, `medclm score` for the metrics,
hand-computed IoU and answer scores for a line.
"""

from __future__ import annotations

import json
import os
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest
from phantom_dataset import build_dataset, record_texts
from PIL import Image

from medclm_jax import cli
from medclm_jax.commands import eval as eval_cmd
from medclm_jax.data.source import RecordSource
from medclm_jax.data.targets import normalize_text
from medclm_jax.eval import run
from medclm_jax.eval.generate import GenerateOptions, Generator
from medclm_jax.eval.score import flatten
from medclm_jax.model import checkpoint, presets, sharding, vlm
from medclm_jax.model import tokenizer as T
from medclm_jax.records import schema

FAST = ["--max-new-tokens", "10", "--no-progress"]


def tiny_checkpoint(out_dir, texts, tok_dir, seed=0):
    """The tiny preset with random weights drawn by numpy (normal, 1/sqrt(first dim) for matrices: nothing to
    compile), saved with a tokenizer trained on `texts`."""
    T.train_tokenizer(iter(texts), vocab_size=2048, out_dir=tok_dir)
    return random_checkpoint(out_dir, "tiny", tok_dir, seed)


def random_checkpoint(out_dir, preset, tok_dir, seed=0):
    """`preset` with random weights as in `tiny_checkpoint`, saved with the tokenizer in `tok_dir`."""
    cfg = presets.get_model_config(preset)
    abstract = nn.meta.unbox(jax.eval_shape(lambda: vlm.init_params(cfg, jax.random.key(0))))["params"]
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: (rng.standard_normal(a.shape) * (
        1 / np.sqrt(a.shape[0]) if len(a.shape) > 1 else 0.1)).astype(a.dtype), abstract)
    checkpoint.save_checkpoint(out_dir, cfg, params, tokenizer_dir=tok_dir)
    return str(out_dir)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return build_dataset(tmp_path_factory, "eval", 8)


@pytest.fixture(scope="module")
def records(build):
    source = RecordSource(build, "train")
    return [source.read(i) for i in range(len(source))]


@pytest.fixture(scope="module")
def ckpt(records, tmp_path_factory):
    texts = record_texts(records)
    return tiny_checkpoint(tmp_path_factory.mktemp("eval_ckpt") / "ckpt", texts, tmp_path_factory.mktemp("eval_tok"))


@pytest.fixture(scope="module")
def full_run(build, ckpt, tmp_path_factory):
    """An uninterrupted evaluation of the train split (33 examples: 11 records x 3 stages, 5 batches of 8)."""
    out = str(tmp_path_factory.mktemp("eval_full"))
    assert cli.main(["eval", "--checkpoint", ckpt, "--data", build, "--split", "train", "--out", out, *FAST]) == 0
    return out


def lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_every_record_in_every_stage_with_its_reference_and_scores(full_run, records, capsys):
    preds = lines(os.path.join(full_run, run.PREDICTIONS))
    assert [p["id"] for p in preds] == [f"train/{i}/{s}" for i in range(len(records)) for s in schema.STAGES]
    for p in preds:
        record = records[p["record"]]
        ref = p["reference"]
        assert ref["answer"] == normalize_text(schema.text(record, schema.answer_key(p["stage"])))
        assert ref["answer_type"] == schema.text(record, schema.answer_type_key(p["stage"]))
        assert ref["question"] == p["question"] == normalize_text(schema.text(record, schema.question_key(p["stage"])))
        assert ref["domain"] == p["domain"] == schema.text(record, schema.DOMAIN)
        box = np.asarray(record[schema.LESION_BOX], np.float32)
        assert (ref["box"] is None) == (box.size == 0)
        if ref["box"] is not None:
            np.testing.assert_allclose(ref["box"], box, atol=1e-6)
        assert p["image_id"] == schema.text(record, schema.IMAGE_ID)
        assert {"llava_med", "strict", "format"} <= set(p["scores"])
        assert p["answer"] == (p["prediction"].rsplit("Answer:", 1)[-1].strip() if "Answer:" in p["prediction"]
                               else p["prediction"].strip())
    assert len({p["prediction"] for p in preds}) > 10  # the model's text depends on the example
    assert any(p["box"] is not None for p in preds)  # a few <loc> runs: boxes parsed from the text


def test_metrics_json_has_every_breakdown_and_medclm_score_agrees(full_run, records, tmp_path, capsys):
    saved = json.load(open(os.path.join(full_run, run.METRICS)))
    m = saved["metrics"]
    assert m["counts"]["n"] == 3 * len(records) == saved["run"]["n_scored"]
    assert set(m["by_stage"]) == set(schema.STAGES)
    assert set(m["by_domain"]) == {schema.text(r, schema.DOMAIN) for r in records}
    assert set(m["by_answer_type"]) == {"open", "closed"}
    assert all(m["by_stage"][s]["n"] == len(records) for s in schema.STAGES)
    assert saved["run"]["generation"]["prompt_format"] == "trained"  # the checkpoint's tokenizer was trained here
    out = tmp_path / "score.json"
    assert cli.main(["score", "--pred", os.path.join(full_run, run.PREDICTIONS), "--ref",
                     os.path.join(full_run, run.REFERENCES), "--json", str(out)]) == 0
    assert json.loads(out.read_text()) == pytest.approx(flatten(m))


def test_batched_generation_equals_one_example_at_a_time(full_run, build, ckpt):
    gen = Generator.load(ckpt, GenerateOptions(max_new_tokens=10))
    task = run.record_task(build, "train", gen.image_size, gen.cfg.family)
    by_id = {p["id"]: p["prediction"] for p in lines(os.path.join(full_run, run.PREDICTIONS))}
    for j in (0, 4, 17, 32):  # rows 0 and 4 of batch 0, row 1 of batch 2, the last batch's only real row
        q = task.make(j)
        assert gen.answer(q.question, q.image) == by_id[q.id]


def test_predictions_sharded_over_eight_devices_equal_one_device(full_run, build, ckpt, tmp_path):
    """The CLI run shards each batch of 8 over the 8 (fake CPU) devices, one row per device; the same evaluation
    on a one-device mesh writes the same predictions file."""
    assert jax.device_count() == 8  # tests/conftest.py
    assert json.load(open(os.path.join(full_run, run.METRICS)))["run"]["devices"] == 8
    one = sharding.make_mesh(devices=jax.devices()[:1])
    gen = Generator.load(ckpt, GenerateOptions(max_new_tokens=10), one)
    assert gen.params["params"]["decoder"]["embedder"]["embedding"].sharding.mesh.size == 1
    out = str(tmp_path / "one_device")
    run.evaluate(run.record_task(build, "train", gen.image_size, gen.cfg.family), gen, out)
    assert open(os.path.join(out, run.PREDICTIONS)).read() == open(os.path.join(full_run, run.PREDICTIONS)).read()


def test_limit_then_interruption_then_rerun_gives_the_uninterrupted_file(full_run, build, ckpt, tmp_path,
                                                                         monkeypatch):
    out = str(tmp_path / "out")
    args = ["eval", "--checkpoint", ckpt, "--data", build, "--split", "train", "--out", out, *FAST]
    assert cli.main(args + ["--limit", "10"]) == 0  # batch 0 and two rows of batch 1
    assert [p["id"] for p in lines(os.path.join(out, run.PREDICTIONS))] == [
        p["id"] for p in lines(os.path.join(full_run, run.PREDICTIONS))][:10]
    assert json.load(open(os.path.join(out, run.METRICS)))["metrics"]["counts"]["n"] == 10

    calls = []
    real = Generator.generate

    def interrupted(self, rows, step=0):
        calls.append(step)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during batch 3's generation
        return real(self, rows, step)

    monkeypatch.setattr(Generator, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli.main(args)
    assert calls == [1, 2, 3]  # batch 0 was complete; batch 1 had two of its eight lines
    with open(os.path.join(out, run.PREDICTIONS), "a", encoding="utf-8") as f:
        f.write('{"id": "train/9/hard", "predic')  # a line cut by the interruption
    calls.clear()
    assert cli.main(args) == 0
    assert calls == [3, 4]  # only what was missing
    for name in (run.PREDICTIONS, run.REFERENCES):
        assert open(os.path.join(out, name)).read() == open(os.path.join(full_run, name)).read()
    assert (json.load(open(os.path.join(out, run.METRICS)))["metrics"]
            == json.load(open(os.path.join(full_run, run.METRICS)))["metrics"])
    calls.clear()
    assert cli.main(args) == 0 and calls == []  # complete: nothing generated, scored again


def test_other_settings_a_foreign_folder_or_a_bad_batch_size_are_refused(full_run, build, ckpt, tmp_path, capsys):
    args = ["eval", "--checkpoint", ckpt, "--data", build, "--split", "train", "--no-progress"]
    assert cli.main(args + ["--out", full_run, "--max-new-tokens", "5"]) == 2
    assert "max_new_tokens: 10 then, 5 now" in capsys.readouterr().err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    assert cli.main(args + ["--out", str(foreign)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli.main(args + ["--out", str(tmp_path / "b"), "--batch-size", "6"]) == 2
    assert "multiple of 8" in capsys.readouterr().err
    assert cli.main(args + ["--out", os.path.join(build, "eval")]) == 2  # inside the data folder
    assert "input" in capsys.readouterr().err
    again = str(tmp_path / "again")
    assert cli.main(args + ["--out", again, "--limit", "3", "--max-new-tokens", "10"]) == 0
    assert cli.main(args + ["--out", again, "--limit", "3", "--max-new-tokens", "10", "--seed", "1"]) == 2
    assert cli.main(args + ["--out", again, "--limit", "3", "--max-new-tokens", "10", "--seed", "1",
                            "--overwrite"]) == 0
    assert json.load(open(os.path.join(again, run.RUN)))["generation"]["seed"] == 1


def test_a_line_is_parsed_and_scored_as_by_hand():
    ref = {"id": "q", "question": "Is there a mass?", "answer": "yes", "answer_type": "closed",
           "box": [0.2, 0.2, 0.6, 0.6], "organ": "left lung", "stage": "medium", "domain": "mass_xray"}
    query = run.Query("q", ref["question"], np.zeros((2, 2, 3), np.float32), ref, {"stage": "medium"})
    line = run.prediction_line(query, "Reasoning: A mass in the left upper lobe at [0.4, 0.2, 0.8, 0.6]. "
                                      "Answer: yes")
    assert line["reasoning"] == "A mass in the left upper lobe at [0.4, 0.2, 0.8, 0.6]."
    assert line["answer"] == "yes" and line["box"] == [0.4, 0.2, 0.8, 0.6] and line["box_form"] == "canonical"
    s = line["scores"]
    assert s["grounding"]["iou"] == pytest.approx(0.08 / 0.24)  # overlap 0.2 x 0.4, union 0.16 + 0.16 - 0.08
    assert s["grounding"]["hit"] == 0.0
    assert s["llava_med"]["closed_accuracy"] == 1.0 and s["strict"]["closed_accuracy"] == 1.0
    assert s["organ"] == 1.0 and s["format"] == {"reasoning_answer": True, "answer": True}
    empty = run.prediction_line(query, None, "prompt_too_long")
    assert empty["prediction"] == "" and empty["error"] == "prompt_too_long"
    assert empty["scores"]["grounding"]["missing"] == 1.0


def _vqa_rad(root):
    folder = root / "VQA_RAD Image Folder"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, mode in enumerate(("L", "RGB", "L")):
        shape = (40 + 8 * k, 56) if mode == "L" else (48, 48, 3)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(folder / f"synpic{k}.png")
    rec = lambda qid, img, phrase, atype, answer, organ: {  # noqa: E731
        "qid": qid, "image_name": img, "image_organ": organ, "answer": answer, "answer_type": atype,
        "question_type": "PRES", "question": f"is there something {qid}?", "phrase_type": phrase}
    data = [rec(1, "synpic0.png", "freeform", "CLOSED", "yes", "CHEST"),
            rec(2, "synpic1.png", "test_freeform", "OPEN", "left lung", "CHEST"),
            rec(3, "synpic0.png", "test_para", "CLOSED", "no", "HEAD"),
            rec(4, "synpic2.png", "test_freeform", "OPEN", "liver", "ABD")]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(data))


def test_a_benchmark_is_evaluated_through_its_loader(ckpt, tmp_path, capsys):
    root = tmp_path / "VQA_RAD"
    _vqa_rad(root)
    out = str(tmp_path / "out")
    assert cli.main(["eval", "--checkpoint", ckpt, "--benchmark", "vqa_rad", "--root", str(root), "--out", out,
                     *FAST]) == 0
    printed = capsys.readouterr().out
    assert "1 of 3 test images also appear in train" in printed  # VQA-RAD's leak, reported
    preds = lines(os.path.join(out, run.PREDICTIONS))
    assert [p["id"] for p in preds] == ["vqa_rad/test/2", "vqa_rad/test/3", "vqa_rad/test/4"]
    assert [p["reference"]["answer"] for p in preds] == ["left lung", "no", "liver"]
    assert preds[0]["image"] == os.path.join("VQA_RAD Image Folder", "synpic1.png")  # relative: no local path
    m = json.load(open(os.path.join(out, run.METRICS)))["metrics"]
    assert m["by_answer_type"]["open"]["llava_med"]["n_open"] == 2 and set(m["by_organ"]) == {"chest", "head", "abd"}
    assert cli.main(["score", "--pred", os.path.join(out, run.PREDICTIONS), "--ref",
                     os.path.join(out, run.REFERENCES)]) == 0


def test_the_prompt_format_follows_the_checkpoint(ckpt, tmp_path):
    assert Generator.load(ckpt).prompt.format == "trained"  # its tokenizer was trained here
    other = tmp_path / "converted"
    shutil.copytree(ckpt, other)  # as if converted from a pretrained PaliGemma: a tokenizer config of theirs
    config = json.loads((other / T.TOKENIZER_CONFIG).read_text())
    del config["medclm"]
    (other / T.TOKENIZER_CONFIG).write_text(json.dumps(config))
    gen = Generator.load(str(other))
    assert gen.prompt.format == "paligemma"
    row = gen.prompt_row("Is there a mass?", np.zeros((32, 32, 3), np.float32))
    n = int(row["mask_input"].sum())
    assert gen.tok.decode(row["text"][:n].tolist()) == "answer en Is there a mass?\n"
    assert row["mask_ar"][:n].tolist() == [0] * n  # the prompt is the prefix, fully visible with the image
    assert Generator.load(str(other), GenerateOptions(prompt_format="trained")).prompt.format == "trained"


def test_command_options():
    assert eval_cmd.mesh_shape("data=2,tensor=4") == {"data": 2, "tensor": 4}
    with pytest.raises(ValueError, match="unknown axis 'model'"):
        eval_cmd.mesh_shape("model=2")
    assert eval_cmd.default_out("/runs/a/final", "test") == os.path.join("medclm-eval", "test")  # no checkpoints/
    assert run.benchmark_question("Which?", ("x", "y")) == "Which?\nA: x\nB: y"

"""`medclm eval --benchmark NAME --root DIR` on each public benchmark in its release layout on disk.

Each test writes a small release of its own (the file names, folders and fields `medclm_jax/eval/benchmarks/`
documents, with real PNG / JPEG images of several sizes and modes), evaluates a tiny random checkpoint on it with
the real generation, then scores the predictions file with `medclm score`. References are independent of the
code under test: the questions and answers the fixture wrote, each image file read and squashed with PIL by hand
for the model input, one-example generation for the predictions, and `medclm score` for metrics.json.
"""

from __future__ import annotations

import csv
import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from medclm_jax import cli
from medclm_jax.eval import run
from medclm_jax.eval.generate import GenerateOptions, Generator
from medclm_jax.eval.score import flatten
from test_eval_run import FAST, lines, tiny_checkpoint

CORPUS = ["Is there a mass in the left lung?", "Reasoning: a nodule at [0.25, 0.33, 0.58, 0.67].", "Answer: yes",
          "Which organ is abnormal?", "Answer: liver", "What modality is this?", "Answer: CT"] * 20


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("bench_ckpt") / "ckpt", CORPUS,
                           tmp_path_factory.mktemp("bench_tok"))


def image(path, seed: int, shape: tuple[int, ...]) -> None:
    """A random image file (PNG or JPEG by the suffix); shape (H, W) is grey, (H, W, 3) colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path)


# Each release writer returns {item id: (image path relative to the root, question as asked, answer, answer type)}
# for the test split, in file order.

def vqa_rad_release(root):
    """`VQA_RAD Dataset Public.json` + `VQA_RAD Image Folder/` (OSF release); phrase_type test_* is the test split."""
    image(root / "VQA_RAD Image Folder" / "synpic100.jpg", 1, (40, 56))
    image(root / "VQA_RAD Image Folder" / "synpic200.jpg", 2, (48, 48, 3))
    rec = lambda qid, img, phrase, atype, answer, organ: {  # noqa: E731
        "qid": qid, "image_name": img, "image_case_url": "https://medpix/x", "image_organ": organ,
        "answer": answer, "answer_type": atype, "question_type": "PRES", "question": f"Is finding {qid} present?",
        "question_rephrase": "NULL", "phrase_type": phrase, "qid_linked_id": f"0{qid}", "evaluation": "given"}
    data = [rec(1, "synpic100.jpg", "freeform", "CLOSED", "yes", "CHEST"),
            rec(2, "synpic200.jpg", "test_freeform", "OPEN", "left lung", "CHEST"),
            rec(3, "synpic100.jpg", "test_para", "CLOSED", "No", "HEAD")]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(data))
    folder = "VQA_RAD Image Folder"
    return {"vqa_rad/test/2": (f"{folder}/synpic200.jpg", "Is finding 2 present?", "left lung", "open"),
            "vqa_rad/test/3": (f"{folder}/synpic100.jpg", "Is finding 3 present?", "No", "closed")}


def slake_release(root):
    """Slake1.0: train.json / validate.json / test.json + imgs/xmlabN/source.jpg; English questions only."""
    image(root / "imgs" / "xmlab0" / "source.jpg", 3, (60, 44))
    image(root / "imgs" / "xmlab1" / "source.jpg", 4, (36, 36, 3))
    rec = lambda qid, img, lang, atype, modality, question, answer: {  # noqa: E731
        "img_id": int(img[5:]), "img_name": f"{img}/source.jpg", "question": question, "answer": answer,
        "q_lang": lang, "location": "Lung", "modality": modality, "answer_type": atype, "base_type": "vqa",
        "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": qid}
    (root / "train.json").write_text(json.dumps([rec(1, "xmlab0", "en", "OPEN", "CT", "What organ?", "Lung")]))
    (root / "validate.json").write_text(json.dumps([rec(2, "xmlab1", "en", "CLOSED", "MRI", "Is it MRI?", "Yes")]))
    (root / "test.json").write_text(json.dumps(
        [rec(11, "xmlab0", "en", "OPEN", "CT", "Which organ is abnormal?", "Lung"),
         rec(12, "xmlab0", "zh", "OPEN", "CT", "哪个器官异常?", "肺"),
         rec(13, "xmlab1", "en", "CLOSED", "X-Ray", "Is there a mass?", "No")], ensure_ascii=False))
    return {"slake/test/11": ("imgs/xmlab0/source.jpg", "Which organ is abnormal?", "Lung", "open"),
            "slake/test/13": ("imgs/xmlab1/source.jpg", "Is there a mass?", "No", "closed")}


def pathvqa_release(root):
    """The authors' pvqa/ folder: qas/<split>/<split>_qa.pkl + images/<split>/<image>.jpg."""
    qas = [{"image": "test_0000", "question": "Is this necrosis?", "answer": "yes"},
           {"image": "test_0001", "question": "What is present?", "answer": "granuloma"},
           {"image": "test_0000", "question": "Where is the lesion?", "answer": "liver"}]
    (root / "qas" / "test").mkdir(parents=True)
    (root / "qas" / "test" / "test_qa.pkl").write_bytes(pickle.dumps(qas))
    image(root / "images" / "test" / "test_0000.jpg", 5, (52, 40, 3))
    image(root / "images" / "test" / "test_0001.jpg", 6, (32, 64, 3))
    return {f"pathvqa/test/{i}": (f"images/test/{q['image']}.jpg", q["question"], q["answer"],
                                  "closed" if q["answer"] == "yes" else "open") for i, q in enumerate(qas)}


def pmc_vqa_release(root):
    """PMC-VQA version 1: test.csv (choices written `A:...`) + images/<Figure_path>; the options join the question."""
    image(root / "images" / "PMC1064097_F1.jpg", 7, (44, 60, 3))
    image(root / "images" / "PMC2000_F3.png", 8, (40, 40))
    header = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]
    rows = [["PMC1064097_F1.jpg", "What is the uptake pattern?", "Focal uptake pattern", "A:Diffuse uptake",
             " B:Focal uptake pattern", "C:No uptake", "D:Cannot determine", "B"],
            ["PMC2000_F3.png", "Which modality is shown?", "CT", "A:CT", "B:MRI", "C:PET", "D:US", "A"]]
    with open(root / "test.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return {"pmc_vqa/test/0": ("images/PMC1064097_F1.jpg", "What is the uptake pattern?\nA: Diffuse uptake\n"
                               "B: Focal uptake pattern\nC: No uptake\nD: Cannot determine", "Focal uptake pattern",
                               "closed"),
            "pmc_vqa/test/1": ("images/PMC2000_F3.png", "Which modality is shown?\nA: CT\nB: MRI\nC: PET\nD: US",
                               "CT", "closed")}


RELEASES = {"vqa_rad": vqa_rad_release, "slake": slake_release, "pathvqa": pathvqa_release,
            "pmc_vqa": pmc_vqa_release}


def by_hand(path, size=32, family="paligemma"):
    """The model input of an image file, by hand: PIL decode, grey or RGB, squashed with the filter of the family's
    Hugging Face image processor (PaliGemma bicubic, Gemma 3 bilinear), [0, 255] -> [-1, 1], grey repeated on
    three channels."""
    resample = {"paligemma": Image.Resampling.BICUBIC, "gemma3": Image.Resampling.BILINEAR}[family]
    with Image.open(path) as im:
        im = im.convert("L" if im.mode == "L" else "RGB")
        a = np.asarray(im.resize((size, size), resample), np.float32) / 127.5 - 1
    return np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_eval_on_the_release_layout_and_medclm_score_reads_the_predictions(name, ckpt, tmp_path, monkeypatch,
                                                                           capsys):
    root = tmp_path / name
    root.mkdir()
    expected = RELEASES[name](root)
    asked = {}
    real_row = Generator.prompt_row

    def spy(self, question, image, *, where=""):  # records what the model was given, then runs the real code
        asked[where] = (question, np.asarray(image))
        return real_row(self, question, image, where=where)

    monkeypatch.setattr(Generator, "prompt_row", spy)
    out = tmp_path / "out"
    assert cli.main(["eval", "--checkpoint", ckpt, "--benchmark", name, "--root", str(root), "--out", str(out),
                     *FAST]) == 0, capsys.readouterr().err
    assert f"{name} test: {len(expected)} of {len(expected)} examples scored" in capsys.readouterr().out

    preds = lines(out / run.PREDICTIONS)
    assert [p["id"] for p in preds] == list(expected)
    for p in preds:
        rel, question, answer, answer_type = expected[p["id"]]
        assert (p["dataset"], p["split"], p["image"]) == (name, "test", os.path.join(*rel.split("/")))
        assert p["question"] == question and asked[p["id"]][0] == question
        assert (p["reference"]["answer"], p["reference"]["answer_type"]) == (answer, answer_type)
        np.testing.assert_allclose(asked[p["id"]][1], by_hand(root / rel), atol=1e-6)
    assert any(p["prediction"] for p in preds)

    # The real generation: batched over the 8 devices, each line is what the model answers for it alone.
    monkeypatch.setattr(Generator, "prompt_row", real_row)
    gen = Generator.load(ckpt, GenerateOptions(max_new_tokens=10))
    first = preds[0]
    assert gen.answer(first["question"], by_hand(root / expected[first["id"]][0])) == first["prediction"]

    score_json = tmp_path / "score.json"
    assert cli.main(["score", "--pred", str(out / run.PREDICTIONS), "--ref", str(out / run.REFERENCES), "--json",
                     str(score_json)]) == 0
    metrics = json.loads((out / run.METRICS).read_text())["metrics"]
    assert metrics["counts"]["n"] == len(expected) and metrics["counts"]["n_missing_predictions"] == 0
    assert json.loads(score_json.read_text()) == pytest.approx(flatten(metrics))

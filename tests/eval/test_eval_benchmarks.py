"""Benchmark loaders on small fixture files written in exactly the public release layouts."""

import csv
import json
import logging
import pickle

import pytest

from medclm_jax.eval.benchmarks import (BenchmarkError, load_benchmark, load_pathvqa, load_pmc_vqa, load_slake,
                                        load_vqa_rad, reference_record)


def _img(path, payload: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)


# --- VQA-RAD ---------------------------------------------------------------------------------------------------

def _vqa_rad(root):
    folder = root / "VQA_RAD Image Folder"
    _img(folder / "synpic1.jpg", b"image-one")
    _img(folder / "synpic2.jpg", b"image-two")
    _img(folder / "synpic3.jpg", b"image-two")      # same bytes as synpic2 under another name
    _img(folder / "synpic4.jpg", b"image-four")
    rec = lambda qid, img, phrase, atype, answer, organ="CHEST": {  # noqa: E731
        "qid": qid, "image_name": img, "image_case_url": "https://medpix/x", "image_organ": organ,
        "answer": answer, "answer_type": atype, "question_type": "PRES", "question": f"q{qid}?",
        "question_rephrase": "NULL", "phrase_type": phrase, "qid_linked_id": f"0{qid}", "evaluation": "given"}
    data = [rec(1, "synpic1.jpg", "freeform", "CLOSED", "Yes"),
            rec(2, "synpic2.jpg", "para", "OPEN", "left lung", "ABD"),
            rec(3, "synpic1.jpg", "test_freeform", "CLOSED ", "No"),   # stray space, as in some releases
            rec(4, "synpic3.jpg", "test_para", "OPEN", 2, "HEAD"),      # numeric answer
            rec(5, "synpic4.jpg", "test_freeform", "OPEN", "pneumothorax")]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(data))


def test_vqa_rad_splits_types_and_overlap(tmp_path, caplog):
    _vqa_rad(tmp_path)
    with caplog.at_level(logging.WARNING):
        bench = load_vqa_rad(tmp_path)
    train, test = bench.split("train"), bench.split("test")
    assert [i.id for i in train] == ["vqa_rad/train/1", "vqa_rad/train/2"]
    assert [i.id for i in test] == ["vqa_rad/test/3", "vqa_rad/test/4", "vqa_rad/test/5"]
    assert [i.answer_type for i in bench.items] == ["closed", "open", "closed", "open", "open"]
    assert test[1].answer == "2" and test[1].organ == "head" and train[0].question_type == "PRES"
    assert test[0].image_path.endswith("VQA_RAD Image Folder/synpic1.jpg")
    # synpic1 (same name) and synpic3 (same bytes as train's synpic2) leak; synpic4 does not.
    ov = bench.overlap
    assert (ov.n_train_images, ov.n_test_images, ov.n_shared_images, ov.n_test_items_affected) == (2, 3, 2, 2)
    assert "2 of 3 test images also appear in train" in caplog.text
    assert load_vqa_rad(tmp_path, splits=("test",)).overlap is None


def test_vqa_rad_errors(tmp_path):
    with pytest.raises(BenchmarkError, match="VQA_RAD Dataset Public.json"):
        load_vqa_rad(tmp_path)
    _vqa_rad(tmp_path)
    (tmp_path / "VQA_RAD Image Folder" / "synpic4.jpg").unlink()
    with pytest.raises(BenchmarkError, match="1 image file"):
        load_vqa_rad(tmp_path)
    assert len(load_vqa_rad(tmp_path, require_images=False)) == 5
    data = json.loads((tmp_path / "VQA_RAD Dataset Public.json").read_text())
    data[0]["phrase_type"] = "dev"
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps(data))
    with pytest.raises(BenchmarkError, match=r"\[0\]: phrase_type 'dev'"):
        load_vqa_rad(tmp_path, require_images=False)


# --- SLAKE -----------------------------------------------------------------------------------------------------

def _slake(root):
    _img(root / "imgs" / "xmlab0" / "source.jpg", b"slake0")
    _img(root / "imgs" / "xmlab1" / "source.jpg", b"slake1")
    rec = lambda qid, img, lang, atype, modality, answer: {  # noqa: E731
        "img_id": int(img[5]), "img_name": f"{img}/source.jpg", "question": f"q{qid}", "answer": answer,
        "q_lang": lang, "location": "Lung", "modality": modality, "answer_type": atype, "base_type": "vqa",
        "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": qid}
    (root / "train.json").write_text(json.dumps([rec(1, "xmlab0", "en", "OPEN", "CT", "Lung"),
                                                 rec(2, "xmlab0", "zh", "OPEN", "CT", "肺")]))
    (root / "validate.json").write_text(json.dumps([rec(3, "xmlab1", "en", "CLOSED", "X-Ray", "Yes")]))
    (root / "test.json").write_text(json.dumps([rec(4, "xmlab1", "en", "CLOSED", "MRI", "No"),
                                                rec(5, "xmlab1", "zh", "CLOSED", "MRI", "否")]))


def test_slake_layout_language_and_fields(tmp_path):
    _slake(tmp_path)
    bench = load_slake(tmp_path)
    assert [i.id for i in bench.items] == ["slake/train/1", "slake/val/3", "slake/test/4"]
    val = bench.split("val")[0]
    assert (val.modality, val.organ, val.answer_type, val.question_type) == ("xray", "lung", "closed", "Organ")
    assert val.image_path.endswith("imgs/xmlab1/source.jpg")
    both = load_slake(tmp_path, splits=("test",), languages=("en", "zh"))
    assert [i.language for i in both.items] == ["en", "zh"]
    with pytest.raises(BenchmarkError, match="unknown split"):
        load_slake(tmp_path, splits=("validate",))


# --- PathVQA ---------------------------------------------------------------------------------------------------

def _pathvqa(root):
    qas = [{"image": "test_0000", "question": "Is this necrosis?", "answer": "yes"},
           {"image": "test_0001", "question": "What is present?", "answer": "granuloma"}]
    (root / "qas" / "test").mkdir(parents=True)
    (root / "qas" / "test" / "test_qa.pkl").write_bytes(pickle.dumps(qas))
    _img(root / "images" / "test" / "test_0000.jpg", b"p0")
    _img(root / "images" / "test" / "test_0001.jpg", b"p1")


def test_pathvqa_pickled_release(tmp_path):
    _pathvqa(tmp_path)
    bench = load_pathvqa(tmp_path, splits=("test",))
    assert [(i.id, i.answer_type, i.modality) for i in bench.items] == [
        ("pathvqa/test/0", "closed", "pathology"), ("pathvqa/test/1", "open", "pathology")]
    assert bench.items[1].image_path.endswith("images/test/test_0001.jpg")


def test_pathvqa_refuses_pickles_with_code(tmp_path):
    _pathvqa(tmp_path)
    import os
    (tmp_path / "qas" / "test" / "test_qa.pkl").write_bytes(pickle.dumps([{"image": os.getcwd}]))
    with pytest.raises(BenchmarkError, match="refusing to load"):
        load_pathvqa(tmp_path, splits=("test",))


def test_pathvqa_hugging_face_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 8
    table = pa.table({"image": [{"bytes": png, "path": None}, {"bytes": b"\xff\xd8jpeg", "path": None}],
                      "question": ["is it benign?", "what organ?"], "answer": ["no", "liver"]})
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "validation-00000-of-00001.parquet")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(BenchmarkError, match="images are embedded.*pass image_dir"):
        load_pathvqa(tmp_path, splits=("val",))
    with pytest.raises(BenchmarkError, match="inside the benchmark folder"):
        load_pathvqa(tmp_path, splits=("val",), image_dir=tmp_path / "data" / "x")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written into the input
    out = tmp_path.parent / (tmp_path.name + "_extracted")
    bench = load_pathvqa(tmp_path, splits=("val",), image_dir=out)
    assert [i.answer_type for i in bench.items] == ["closed", "open"]
    assert bench.items[0].image_path == str((out / "val" / "000000.png").resolve())
    with open(bench.items[1].image_path, "rb") as f:
        assert f.read() == b"\xff\xd8jpeg"


# --- PMC-VQA ---------------------------------------------------------------------------------------------------

def _write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_pmc_vqa_v1_and_v2(tmp_path):
    _img(tmp_path / "images" / "PMC1064097_F1.jpg", b"f1")
    _img(tmp_path / "images_2" / "PMC222_F2.jpg", b"f2")
    # Version 1 with the release's "Anwser" spelling and a leading space before one prefix.
    _write_csv(tmp_path / "train.csv",
               ["Figure_path", "Question", "Anwser", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"],
               [["PMC1064097_F1.jpg", "What is the uptake pattern in the breast?", "Focal uptake pattern",
                 "A:Diffuse uptake pattern", " B:Focal uptake pattern", "C:No uptake pattern",
                 "D:Cannot determine from the information given", "B"]])
    # Version 2 with a letter in the Answer column and no label column.
    _write_csv(tmp_path / "test_2.csv",
               ["index", "Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C", "Choice D",
                "Answer", "split"],
               [["0", "PMC222_F2.jpg", "cap", "Which modality?", "A:CT", "B:MRI", "C:PET", "D:US", "C", "test"]])
    v1 = load_pmc_vqa(tmp_path, splits=("train",))
    item = v1.items[0]
    assert item.answer == "Focal uptake pattern" and item.answer_type == "closed"
    assert item.choices == ("Diffuse uptake pattern", "Focal uptake pattern", "No uptake pattern",
                            "Cannot determine from the information given")
    v2 = load_pmc_vqa(tmp_path, splits=("test",), version=2, answer_type="open")
    assert (v2.items[0].answer, v2.items[0].answer_type) == ("PET", "open")
    assert v2.items[0].image_path.endswith("images_2/PMC222_F2.jpg")
    with pytest.raises(BenchmarkError, match="test_clean exists only in version 1"):
        load_pmc_vqa(tmp_path, splits=("test_clean",), version=2)


def test_pmc_vqa_bad_label_names_the_line(tmp_path):
    _write_csv(tmp_path / "test.csv", ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Answer_label"],
               [["x.jpg", "q", "a", "A:a", "B:b", "E"]])
    with pytest.raises(BenchmarkError, match=r"test.csv:2: answer label 'E'"):
        load_pmc_vqa(tmp_path, splits=("test",), require_images=False)


def test_registry_and_reference_records(tmp_path):
    _slake(tmp_path)
    bench = load_benchmark("slake", tmp_path, splits=("val",))
    assert reference_record(bench.items[0]) == {"id": "slake/val/3", "question": "q3", "answer": "Yes",
                                                "answer_type": "closed", "organ": "lung", "modality": "xray"}
    with pytest.raises(BenchmarkError, match="unknown benchmark"):
        load_benchmark("mimic", tmp_path)

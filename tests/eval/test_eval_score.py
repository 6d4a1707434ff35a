"""The scoring entry point and `medclm score`: our JSONL, LLaVA-Med's own files, breakdowns, and bad input.
Expected numbers are worked out by hand in the comments."""

import json

import pytest

from medclm_jax import cli
from medclm_jax.eval.records import ScoreInputError, read_predictions, read_references
from medclm_jax.eval.score import flatten, format_table, score, score_records

PREDS = [
    # open, LLaVA recall 0.75 (multiplicity), strict recall 0.5; box IoU 1; reasoning names a lung part.
    {"id": "q1", "prediction": "Reasoning: a nodule in the right upper lobe at [0.25, 0.33, 0.58, 0.67]. "
                               "Answer: lung lung lung"},
    # closed "no": the convention scores it correct, the strict rule does not; no box (missing); no heart named.
    {"id": "q2", "prediction": "Reasoning: the pleural space is clear. Answer: there is not any effusion"},
    # open "2": LLaVA recall 1 ("two" -> "2"); strict precision 0.5, recall 1. Hard form: answer only.
    {"id": 3, "prediction": "Answer: two lesions"},
]
REFS = [
    {"id": "q1", "question": "What is abnormal?", "answer": "left lung", "answer_type": "open",
     "box": [0.25, 0.33, 0.58, 0.67], "organ": "lung", "modality": "CT", "stage": "medium", "domain": "nodule_ct"},
    {"id": "q2", "answer": "no", "answer_type": "CLOSED", "box": [0.0, 0.0, 0.5, 1.0], "organ": "heart",
     "modality": "xray", "stage": "easy"},
    {"id": "3", "answer": "2", "answer_type": "open", "modality": "xray", "stage": "hard"},
]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_score_our_records_by_hand():
    m = score_records(PREDS, REFS)
    assert m["counts"] == {"n": 3, "n_open": 2, "n_closed": 1, "n_report": 0, "n_ignored": 0,
                           "n_missing_predictions": 0, "n_empty_predictions": 0}
    assert m["llava_med"]["open_recall"] == pytest.approx(87.5)
    assert m["llava_med"]["closed_accuracy"] == 100.0
    assert m["strict"]["closed_accuracy"] == 0.0
    assert m["strict"]["token_recall"] == pytest.approx(100 * (0.5 + 0 + 1) / 3)
    assert m["grounding"] == {"mean_iou": pytest.approx(50.0), "acc_at_0.5": 50.0, "n": 2, "n_missing": 1,
                              "n_malformed": 0}
    assert m["organ"] == {"agreement": 50.0, "n": 2}
    assert m["format"]["reasoning_answer"] == pytest.approx(200 / 3) and m["format"]["answer"] == 100.0
    assert m["by_answer_type"]["closed"]["llava_med"]["closed_accuracy"] == 100.0
    assert m["by_modality"]["ct"]["llava_med"]["open_recall"] == pytest.approx(75.0)
    assert m["by_modality"]["xray"]["n"] == 2
    assert m["by_stage"]["hard"]["format"]["reasoning_answer"] == 0.0
    assert set(m["by_domain"]) == {"nodule_ct"}
    flat = flatten(m)
    assert flat["llava_med/open_recall"] == pytest.approx(87.5)
    assert flat["by_modality/xray/llava_med/closed_accuracy"] == 100.0
    table = format_table(m)
    assert "open_recall" in table and "modality=xray" in table


def test_report_items_get_report_metrics_only():
    refs = [{"id": "r1", "answer": "the heart is normal in size", "answer_type": "report"},
            {"id": "r2", "answer": "small left pleural effusion", "answer_type": "report"}]
    preds = [{"id": "r1", "prediction": "Answer: The heart is normal."},
             {"id": "r2", "prediction": "Answer: Small left pleural effusion."}]
    m = score_records(preds, refs)
    assert "llava_med" not in m and m["counts"]["n_report"] == 2
    # BLEU-1 by hand: 4/4 + 4/4 unigrams matched, c = 8, r = 10 -> exp(1 - 10/8).
    assert m["report"]["bleu_1"] == pytest.approx(100 * 2.718281828459045 ** (1 - 10 / 8))
    assert m["report"]["n"] == 2


def test_llava_med_files_bit_for_bit_convention(tmp_path):
    test_json = [
        {"id": 1, "image": "synpic1.jpg", "answer_type": "CLOSED", "conversations": [
            {"from": "human", "value": "<image>\nIs there effusion?"}, {"from": "gpt", "value": "No"}]},
        {"id": "2", "image": "synpic2.jpg", "answer_type": "OPEN", "conversations": [
            {"from": "human", "value": "<image>\nWhere?"}, {"from": "gpt", "value": "Left lung"}]},
        {"id": 3, "image": "synpic3.jpg", "answer_type": "OPEN", "conversatons": [   # the typo key is accepted
            {"from": "human", "value": "<image>\nWhich organ?"}, {"from": "gpt", "value": "kidney"}]},
        {"id": 4, "image": "synpic4.jpg", "answer_type": "other", "conversations": [
            {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    ]
    ref = tmp_path / "test.json"
    ref.write_text(json.dumps(test_json, indent=1))
    pred = _write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": 1, "prompt": "Is there effusion?", "text": "There is not any effusion.", "answer_id": "a",
         "model_id": "llava-med", "metadata": {}},
        {"question_id": "2", "prompt": "Where?", "text": "lung lung lung", "answer_id": "b"},
        {"question_id": 3, "prompt": "Which organ?", "text": "The right kidney", "answer_id": "c"},
        {"question_id": 4, "prompt": "q", "text": "whatever", "answer_id": "d"},
    ])
    refs = read_references(ref)
    assert refs[0].question == "Is there effusion?" and refs[3].answer_type == "ignored"
    out = tmp_path / "out" / "metrics.json"
    assert cli.main(["score", "--pred", str(pred), "--ref", str(ref), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["llava_med/open_recall"] == pytest.approx(87.5)     # (0.75 + 1.0) / 2
    assert metrics["llava_med/closed_accuracy"] == 100.0               # "no" inside "not"
    assert metrics["strict/closed_accuracy"] == 0.0
    assert metrics["counts/n_ignored"] == 1
    assert "format/answer" not in metrics                              # not our format: not judged


def test_answer_is_taken_after_the_last_answer_tag_for_our_predictions():
    refs = [{"id": "a", "answer": "yes", "answer_type": "closed"}]
    m = score_records([{"id": "a", "prediction": "Reasoning: is there a nodule? no doubt. Answer: yes"}], refs)
    assert m["strict"]["closed_accuracy"] == 100.0    # the reasoning's "no" is not scored


def test_missing_extra_duplicate_and_empty_predictions():
    with pytest.raises(ScoreInputError, match=r"no prediction for 1 of 3 reference id\(s\) \(e.g. \['3'\]\)"):
        score_records(PREDS[:2], REFS)
    m = score_records(PREDS[:2], REFS, allow_missing=True)
    assert m["counts"]["n_missing_predictions"] == 1 and m["counts"]["n_empty_predictions"] == 1
    assert m["llava_med"]["open_recall"] == pytest.approx(37.5)       # (0.75 + 0) / 2
    with pytest.raises(ScoreInputError, match="not in references"):
        score_records(PREDS + [{"id": "q9", "prediction": "x"}], REFS)
    with pytest.raises(ScoreInputError, match="duplicated id"):
        score_records(PREDS + [PREDS[0]], REFS)
    empty = score_records([{"id": "q1", "prediction": ""}], REFS[:1])
    assert empty["counts"]["n_empty_predictions"] == 1 and empty["llava_med"]["open_recall"] == 0.0
    assert empty["grounding"]["n_missing"] == 1


@pytest.mark.parametrize("record,message", [
    ({"id": "x", "answer": "a"}, "missing field 'answer_type'"),
    ({"id": "x", "answer": "a", "answer_type": "yes/no"}, "answer_type"),
    ({"id": "x", "answer": "a", "answer_type": "open", "box": [0.5, 0.5, 0.2, 0.2]}, "not a normalized xyxy"),
    ({"id": "x", "answer": "a", "answer_type": "open", "image_size": [512]}, "image_size"),
    ({"answer": "a", "answer_type": "open"}, "missing field 'id'"),
])
def test_bad_reference_records(tmp_path, record, message):
    path = _write_jsonl(tmp_path / "ref.jsonl", [record])
    with pytest.raises(ScoreInputError, match=message) as e:
        read_references(path)
    assert "ref.jsonl:1" in str(e.value)


def test_bad_files_and_cli_exit_status(tmp_path, capsys):
    bad = tmp_path / "pred.jsonl"
    bad.write_text('{"id": "q1", "prediction": "a"}\n{not json}\n')
    with pytest.raises(ScoreInputError, match=r"pred.jsonl:2: invalid JSON"):
        read_predictions(bad)
    ref = _write_jsonl(tmp_path / "ref.jsonl", REFS)
    assert cli.main(["score", "--pred", str(bad), "--ref", str(ref)]) == 2
    assert "pred.jsonl:2" in capsys.readouterr().err
    assert cli.main(["score", "--pred", str(tmp_path / "nope.jsonl"), "--ref", str(ref)]) == 2
    with pytest.raises(ScoreInputError, match="missing field 'prediction'"):
        read_predictions(_write_jsonl(tmp_path / "p2.jsonl", [{"id": "q1", "text": "a"}]))


def test_cli_help_and_box_form(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["score", "--help"])
    assert e.value.code == 0 and "--box-form" in capsys.readouterr().out
    ref = _write_jsonl(tmp_path / "ref.jsonl", [
        {"id": "b", "answer": "nodule", "answer_type": "open", "box": [0.25, 0.5, 0.5, 1.0], "image_size": [512, 256]}])
    pred = _write_jsonl(tmp_path / "pred.jsonl", [{"id": "b", "prediction": "Answer: nodule [128, 128, 256, 256]"}])
    out = tmp_path / "m.json"
    assert cli.main(["score", "--pred", str(pred), "--ref", str(ref), "--box-form", "pixel", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["grounding/mean_iou"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="box_form"):
        score(read_predictions(pred), read_references(ref), box_form="xywh")


def test_scoring_does_not_import_jax():
    # `medclm score` must start fast and run where jax is absent: nothing under medclm_jax.eval pulls it in.
    import subprocess
    import sys

    code = ("import sys, medclm_jax.cli, medclm_jax.commands.score, medclm_jax.eval.benchmarks; "
            "bad = [m for m in ('jax', 'flax', 'torch', 'numpy') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_folder_or_an_unwritable_json_path_is_one_line(tmp_path, capsys):
    ref = _write_jsonl(tmp_path / "ref.jsonl", REFS)
    pred = _write_jsonl(tmp_path / "pred.jsonl", [{"id": r["id"], "prediction": r["answer"]} for r in REFS])
    assert cli.main(["score", "--pred", str(tmp_path), "--ref", str(ref)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: is a folder" in err and err.count("\n") == 1 and "Traceback" not in err
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    for out in (blocker / "metrics.json", tmp_path):  # under a file; a folder
        assert cli.main(["score", "--pred", str(pred), "--ref", str(ref), "--json", str(out)]) == 2
        captured = capsys.readouterr()
        assert f"--json {out}" in captured.err and captured.err.count("\n") == 1 and captured.out == ""

"""Training targets: hand-checked strings, and the metric's parser (`eval/cot.py`) reading every target back.

The round trips run on hand-written awkward text and on what data_gen really writes: the template synthesizer
over positive and negative seeds, and the records of a phantom build read back from the shards.
"""

import glob
import os

import pytest

from data_gen import phantom, synth
from data_gen.build import run_build
from data_gen.rationale import negative_rationale, seed_rationale
from data_gen.types import LinkResult, SynthInput
from medclm_jax.config_file import load_config
from medclm_jax.data import targets
from medclm_jax.eval import cot
from medclm_jax.records import RecordError, decode_example, read_tfrecord, schema

PHANTOM_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "data", "phantom.py")
BOX = "[0.21, 0.18, 0.33, 0.29]"


# ---- the format, by hand --------------------------------------------------------------------------------------
def test_golden_strings():
    assert targets.target_text("easy", f"This radiograph shows the right lung; at {BOX} there is a nodule.",
                               "nodule") == (
        f"Reasoning: This radiograph shows the right lung; at {BOX} there is a nodule. Answer: nodule")
    assert targets.target_text("medium", "The left lung base is dull.", "yes") == (
        "Reasoning: The left lung base is dull. Answer: yes")
    assert targets.target_text("hard", None, "pleural effusion") == "Answer: pleural effusion"
    assert targets.target_text("hard", "", "no") == "Answer: no"


def test_whitespace_is_collapsed_to_one_line():
    t = targets.make_target("easy", "  Step 1: the right lung.\n\n2. A nodule\tat the apex.  ", " \nnodule \n")
    assert t.text == "Reasoning: Step 1: the right lung. 2. A nodule at the apex. Answer: nodule"


def test_spans_cover_exactly_the_reasoning_and_the_answer():
    t = targets.make_target("medium", "A mass sits in the left upper zone.", "mass")
    assert t.text[slice(*t.reasoning)] == "A mass sits in the left upper zone."
    assert t.text[slice(*t.answer)] == "mass" and t.answer[1] == len(t.text)
    assert t.text[:t.reasoning[0]] == "Reasoning: "
    assert t.text[t.reasoning[1]:t.answer[0]] == " Answer: "
    h = targets.make_target("hard", None, "right lower lobe")
    assert h.reasoning is None and h.text[slice(*h.answer)] == "right lower lobe" and h.text[:h.answer[0]] == "Answer: "


def test_markers_are_the_parsers():
    assert (cot.REASONING_MARKER, cot.ANSWER_MARKER) == ("Reasoning:", "Answer:")
    assert targets.target_text("hard", None, "x").startswith(cot.ANSWER_MARKER)
    assert targets.target_text("easy", "y", "x").startswith(cot.REASONING_MARKER)


# ---- round trip through the metric's parser -------------------------------------------------------------------
AWKWARD_COTS = [
    f"Plain reasoning citing {BOX}.",
    "The final answer: it is a nodule, and ANSWER : repeated.",  # the parser takes the last marker, ours
    "Reasoning: starts with its own marker.",  # the parser strips one leading marker, ours
    "Line one.\nLine two,\r\n\tindented.",
    "Unicode: 12\u202fmm opacité; é, ü.",
    "Ends with the word answer",
]
AWKWARD_ANSWERS = ["nodule", "Yes.", "right upper zone of the right lung", "reasoning: not a marker here", "3"]


@pytest.mark.parametrize("stage", ["easy", "medium"])
@pytest.mark.parametrize("text", AWKWARD_COTS)
def test_reasoning_targets_round_trip(stage, text):
    for answer in AWKWARD_ANSWERS:
        t = targets.target_text(stage, text, answer)
        assert cot.split_reasoning_answer(t) == (" ".join(text.split()), answer)
        assert cot.extract_answer(t) == answer
        assert cot.format_adherence(t) == {"reasoning_answer": True, "answer": True}


@pytest.mark.parametrize("answer", AWKWARD_ANSWERS)
def test_hard_targets_round_trip(answer):
    t = targets.target_text("hard", None, answer)
    assert cot.split_reasoning_answer(t) == ("", answer)
    assert cot.extract_answer(t) == answer
    assert cot.format_adherence(t) == {"reasoning_answer": False, "answer": True}


# ---- what cannot be a target ------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["easy", "medium"])
@pytest.mark.parametrize("empty", ["", "   \n\t", None])
def test_empty_reasoning_is_a_bad_record_naming_its_key(stage, empty):
    with pytest.raises(RecordError, match=f"key {stage}/cot") as e:
        targets.make_target(stage, empty, "nodule", where="train-00000-of-00001.tfrecord record 3")
    assert e.value.reason == "empty_cot" and e.value.field == f"{stage}/cot"
    assert "train-00000-of-00001.tfrecord record 3" in str(e.value)


@pytest.mark.parametrize("stage", ["easy", "medium", "hard"])
def test_empty_answer_is_a_bad_record(stage):
    with pytest.raises(RecordError) as e:
        targets.make_target(stage, "Some reasoning." if stage != "hard" else None, " \n")
    assert (e.value.reason, e.value.field) == ("empty_answer", f"{stage}/answer")


@pytest.mark.parametrize("answer", ["Answer: nodule", "the answer: yes", "no, ANSWER : yes"])
def test_an_answer_holding_the_marker_is_refused(answer):
    # the metric would score only the text after its last marker
    assert cot.extract_answer(f"Answer: {answer}") != answer
    with pytest.raises(RecordError, match="contains 'Answer:'") as e:
        targets.make_target("medium", "Some reasoning.", answer)
    assert (e.value.reason, e.value.field) == ("marker_in_answer", "medium/answer")


def test_hard_takes_no_reasoning_and_stages_are_checked():
    with pytest.raises(ValueError, match="answer-only"):
        targets.make_target("hard", "There is a nodule.", "nodule")
    with pytest.raises(ValueError, match="not one of"):
        targets.make_target("Easy", "x", "y")
    with pytest.raises(ValueError, match="not one of"):
        targets.record_target({}, "extreme")


# ---- data_gen's real text ---------------------------------------------------------------------------------------
def _seeds():
    def link(organ, location):
        return LinkResult(organ=organ, score=0.9, method="containment", location=location)

    return [
        seed_rationale("nodule", link("right lung", "right upper zone"), "xray", (0.21, 0.18, 0.33, 0.29)),
        seed_rationale("pleural effusion", link("left lung", "left lower zone"), "xray", (0.55, 0.62, 0.9, 0.88)),
        seed_rationale("liver lesion", link("liver", "right lobe of liver"), "ct", (0.3, 0.4, 0.45, 0.52)),
        seed_rationale("mass", link("unknown", ""), "ct", (0.1, 0.1, 0.2, 0.3)),
        negative_rationale("xray", ["right lung", "left lung", "heart"]),
    ]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_template_synthesizer_views_round_trip(seed):
    syn = synth.get_synthesizer({"backend": "template", "seed": seed})
    vocab = ["nodule", "mass", "pleural effusion", "liver lesion", "no finding"]
    for i, rationale in enumerate(_seeds()):
        for k in range(4):
            qa = syn.synthesize(SynthInput(seed=rationale, image_lesions=[rationale], class_vocab=vocab,
                                           key=f"img{i}:{k}"))
            for stage in schema.STAGES:
                view = getattr(qa, stage)
                t = targets.make_target(stage, view.cot, view.answer)
                expected_reasoning = view.cot if stage in targets.REASONING_STAGES else ""
                assert cot.split_reasoning_answer(t.text) == (expected_reasoning, view.answer), t.text
                assert cot.extract_answer(t.text) == view.answer


def test_built_records_round_trip(tmp_path):
    raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
    phantom.write_phantom(raw, 6, seed=0)
    run_build(load_config(f"{PHANTOM_CONFIG}:root={raw}"), out, workers=1, progress=False)
    records = [decode_example(r) for path in sorted(glob.glob(os.path.join(out, "*.tfrecord")))
               for r in read_tfrecord(path)]
    assert len(records) >= 6
    for rec in records:
        for stage in schema.STAGES:
            t = targets.record_target(rec, stage)
            reasoning = schema.text(rec, schema.cot_key(stage)) if stage != "hard" else ""
            answer = schema.text(rec, schema.answer_key(stage))
            assert cot.split_reasoning_answer(t.text) == (reasoning, answer)
            assert t.text == (f"Reasoning: {reasoning} Answer: {answer}" if reasoning else f"Answer: {answer}")

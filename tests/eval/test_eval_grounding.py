"""Grounding (box parsing in every form, IoU on hand-made boxes) and the chain-of-thought checks (answer
extraction, format adherence, organ agreement)."""

import pytest

from medclm_jax.records.boxes import format_box, to_loc_tokens
from medclm_jax.eval import cot, grounding

BOX = (0.25, 0.33, 0.58, 0.67)


@pytest.mark.parametrize("text,form,size,expected,read_as", [
    ("Reasoning: the nodule at [0.25, 0.33, 0.58, 0.67].", "auto", None, BOX, "canonical"),
    ("box [0.2500, 0.3300, 0.5800, 0.6700]", "auto", None, BOX, "canonical"),
    # PaliGemma: y1 x1 y2 x2, bin / 1024 (338/1024 = 0.330078125, 593/1024 = 0.5791015625, ...).
    ("<loc0338><loc0256><loc0686><loc0593> nodule", "auto", None,
     (0.25, 0.330078125, 0.5791015625, 0.669921875), "loc"),
    ("at [25, 33, 58, 67]", "auto", None, BOX, "percent"),
    ("at [250, 330, 580, 670]", "auto", None, BOX, "permille"),
    ("<box>(250,330),(580,670)</box>", "auto", None, BOX, "permille"),
    ("(128, 168.96, 296.96, 343.04)", "auto", (512, 512), BOX, "pixel"),      # decimals > 1 -> pixels
    ("[128, 169, 297, 343]", "pixel", (512, 256), (0.25, 169 / 256, 297 / 512, 343 / 256), None),
    ("[128, 169, 297, 343]", "auto", (512, 512), (0.128, 0.169, 0.297, 0.343), "permille"),  # documented ambiguity
])
def test_parse_every_form(text, form, size, expected, read_as):
    if read_as is None:   # this case is out of range on purpose (y > 1 after dividing by 256)
        parsed = grounding.parse_box(text, form, size)
        assert not parsed.ok and "outside" in parsed.error
        return
    parsed = grounding.parse_box(text, form, size)
    assert parsed.ok and parsed.form == read_as
    assert parsed.box == pytest.approx(expected, abs=1e-12)


def test_round_trip_with_our_writers():
    # What data_gen writes must parse back to the box (within the writers' rounding).
    assert grounding.parse_box(format_box(BOX)).box == pytest.approx(BOX, abs=0.005)
    assert grounding.parse_box(to_loc_tokens(BOX), "loc").box == pytest.approx(BOX, abs=1 / 1024)


@pytest.mark.parametrize("text,form,size,error", [
    ("[0.5, 0.5, 0.4, 0.6]", "auto", None, "degenerate"),
    ("<loc1100><loc0000><loc0500><loc0500>", "auto", None, "bin"),
    ("[1.5, 0.2, 0.3, 0.4]", "canonical", None, "outside"),
    ("[128, 170, 297, 343]", "pixel", None, "image size"),
    ("[25.5, 33, 58, 67]", "percent", None, "integers"),
])
def test_malformed_boxes_are_rejected_with_a_reason(text, form, size, error):
    parsed = grounding.parse_box(text, form, size)
    assert not parsed.ok and error in parsed.error and parsed.form != "none"


def test_missing_box_and_bad_form():
    assert grounding.parse_box("no box here, Answer: nodule") == grounding.ParsedBox(None, "none", "no box found")
    with pytest.raises(ValueError, match="unknown box form"):
        grounding.parse_box("[0.1, 0.1, 0.2, 0.2]", "xywh")


def test_answer_box_wins_over_reasoning_box():
    text = "Reasoning: compare [0.1, 0.1, 0.2, 0.2]. Answer: the lesion is at [0.5, 0.5, 0.7, 0.7]"
    assert grounding.parse_box(text).box == (0.5, 0.5, 0.7, 0.7)
    assert grounding.parse_box("Reasoning: at [0.1, 0.1, 0.2, 0.2]. Answer: nodule").box == (0.1, 0.1, 0.2, 0.2)
    assert len(grounding.find_boxes(text)) == 2


def test_iou_on_hand_made_boxes():
    assert grounding.box_iou((0, 0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75)) == pytest.approx(0.0625 / 0.4375)
    assert grounding.box_iou(BOX, BOX) == pytest.approx(1.0)
    assert grounding.box_iou((0, 0, 0.1, 0.1), (0.5, 0.5, 0.6, 0.6)) == 0.0
    assert grounding.box_iou((0, 0, 0.5, 1.0), (0, 0, 1.0, 1.0)) == pytest.approx(0.5)   # exactly at threshold


def test_grounding_summary_counts_missing_and_malformed_as_zero():
    ref = (0.0, 0.0, 0.5, 1.0)
    per = [grounding.question_scores("Answer: [0.0, 0.0, 0.5, 1.0]", ref),   # IoU 1
           grounding.question_scores("Answer: [0.0, 0.0, 1.0, 1.0]", ref),   # IoU 0.5 -> hit
           grounding.question_scores("Answer: nodule", ref),                 # missing
           grounding.question_scores("Answer: [0.9, 0.9, 0.1, 0.1]", ref)]   # malformed
    out = grounding.summarize(per)
    assert out == {"mean_iou": pytest.approx(37.5), "acc_at_0.5": 50.0, "n": 4, "n_missing": 1, "n_malformed": 1}


# --- chain of thought -----------------------------------------------------------------------------------------

def test_answer_extraction_uses_the_last_answer_tag():
    assert cot.extract_answer("Reasoning: x. Answer: no. Wait, answer: yes") == "yes"
    assert cot.extract_answer("  plain text  ") == "plain text"
    assert cot.split_reasoning_answer("Reasoning: nodule at [0.1, 0.1, 0.2, 0.2]. Answer: nodule") == (
        "nodule at [0.1, 0.1, 0.2, 0.2].", "nodule")
    assert cot.split_reasoning_answer("no tags") == ("no tags", None)


@pytest.mark.parametrize("text,full,answer", [
    ("Reasoning: the box shows a nodule. Answer: nodule", True, True),
    ("reasoning:the box.\nanswer:\nnodule", True, True),
    ("Answer: nodule", False, True),
    ("Reasoning: the box shows a nodule.", False, False),
    ("Reasoning: Answer: nodule", False, True),          # empty reasoning
    ("Reasoning: a nodule. Answer:   ", False, False),    # empty answer
    ("Answer: x Reasoning: y", False, True),              # Reasoning must come first
])
def test_format_adherence(text, full, answer):
    assert cot.format_adherence(text) == {"reasoning_answer": full, "answer": answer}


@pytest.mark.parametrize("reasoning,organ,expected", [
    ("A nodule in the right upper lobe.", "lung_upper_lobe_left", True),       # a part names the organ
    ("Opacity in the left lung.", "right upper zone lung", True),              # laterality not checked
    ("A hypodense lesion in the liver.", "lung", False),
    ("A hepatic lesion near the dome.", "left lobe of liver", True),
    ("Renal cyst at the upper pole.", "kidney_right", True),
    ("A mass in the thymus.", "thymus", True),                                 # outside the table: own word
    ("A mass in the mediastinum.", "thymus", False),
    ("anything", "unknown", None),
    ("anything", "", None),
])
def test_organ_agreement(reasoning, organ, expected):
    assert cot.names_organ(reasoning, organ) is expected

"""VQA metrics: the LLaVA-Med v1.0 convention (golden cases from the issue, each quirk by hand) and the strict
variants beside it. Expected values are computed by hand from the released scripts' rules (module docstrings)."""

import pytest

from medclm_jax.eval import llava_med, vqa_strict


# --- LLaVA-Med convention: the golden cases ----------------------------------------------------------

@pytest.mark.parametrize("prediction,answer,expected", [
    ("lung lung lung", "left lung", 0.75),   # tp counts the prediction's multiplicity: 3 / (3 + 1)
    ("kidney", "right kidney", 0.5),         # 1 / (1 + 1)
    ("two lesions", "2", 1.0),               # number word -> digit
    ("xray", "x-ray", 0.0),                  # "-" becomes a space: "x ray" shares no token with "xray"
])
def test_open_recall_golden(prediction, answer, expected):
    assert llava_med.open_recall(prediction, answer) == pytest.approx(expected)


def test_closed_rule_scores_not_as_no_while_strict_does_not():
    pred = "there is not any effusion"
    assert llava_med.closed_hit(pred, "no") == 1.0     # "no" is a substring of "not"
    assert vqa_strict.closed_correct(pred, "no") == 0.0  # no whole word "no"


# --- LLaVA-Med normalization quirks, one by one ---------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("x-ray", "x ray"),                        # punctuation not beside a space -> space
    ("x-ray - ap", "xray ap"),                 # "-" beside a space somewhere -> every "-" deleted
    ("1,000 (approx) cells-wide", "1000 approx cellswide"),  # digit,digit anywhere -> all punctuation deleted
    ("3. .5 a.b", "3 .5 ab"),                  # period removed unless followed by a digit (look-ahead typo)
    ("the two lesions, one large", "2 lesions 1 large"),  # articles dropped, number words mapped
    ("none", "0"),
    ("dont", "don't"),                         # contraction table
    ("Im", "im"),                              # capitalised keys never fire after lower-casing
    ("what: 50% * 2", "what: 50% * 2"),        # ':' '%' '*' are not in the punctuation list
])
def test_normalize_word_quirks(text, expected):
    assert llava_med.normalize_word(text) == expected


def test_normalize_word_removes_at_most_32_periods():
    # `pattern.sub("", s, re.UNICODE)` passes re.UNICODE (== 32) as the replacement count.
    assert llava_med.normalize_word("." * 40 + "x") == "." * 8 + "x"


def test_closed_rule_substring_quirks():
    assert llava_med.closed_hit("eyes are clear yes", "yes") == 1.0
    assert llava_med.closed_hit("eyes look fine", "yes") == 1.0       # "yes" found inside "eyes"
    assert llava_med.closed_hit("abnormal", "no") == 1.0              # "no" found inside "abnormal"
    assert llava_med.closed_hit("Yes.", "no") == 0.0
    assert llava_med.closed_hit("maybe", "maybe") == 0.0              # fails the yes/no pre-check
    assert llava_med.closed_hit("left", "left") == 0.0                # same: non-yes/no closed answers need "no"
    assert llava_med.closed_hit("no, the left one", "left") == 1.0
    assert llava_med.closed_hit("yes", "the") == 1.0                  # answer normalizes to "": always a substring


def test_released_table_columns():
    f1, p, r = llava_med.token_prf("lung lung lung", "left lung")
    assert (p, r) == (1.0, 0.75) and f1 == pytest.approx(2 * 0.75 / 1.75)
    assert llava_med.token_prf("", "lung") == (0.0, 0.0, 0.0)
    assert llava_med.token_prf("heart", "lung") == (0.0, 0.0, 0.0)
    # "exact match" of the released table: distinct answer words found / prediction tokens.
    assert llava_med.exact_match("lung lung", "lung") == 0.5
    assert llava_med.exact_match("", "lung") == 0.0


def test_summarize_macro_averages_by_answer_type():
    scores = [llava_med.question_scores("lung lung lung", "left lung", "OPEN"),   # 0.75
              llava_med.question_scores("kidney", "right kidney", "open"),        # 0.5
              llava_med.question_scores("no", "no", "CLOSED"),                    # 1
              llava_med.question_scores("yes", "no", "CLOSED"),                   # 0
              llava_med.question_scores("anything", "x", "other")]                # ignored
    assert scores[-1] == {}
    out = llava_med.summarize(scores)
    assert out["open_recall"] == pytest.approx(62.5)
    assert out["closed_accuracy"] == pytest.approx(50.0)
    assert (out["n_open"], out["n_closed"]) == (2, 2)
    assert llava_med.summarize([scores[0]])["closed_accuracy"] is None


def test_score_requires_aligned_lists():
    with pytest.raises(ValueError, match="pair them by question id"):
        llava_med.score(["a"], ["a", "b"], ["open"])


# --- strict variants --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("The two 3.5-cm nodules, (right).", "2 3.5cm nodules right"),
    ("X-ray", "xray"),
    ("T1/T2 don't", "t1 t2 don t"),
    ("none", "none"),
    ("Twenty", "20"),
])
def test_strict_normalize(text, expected):
    assert vqa_strict.normalize(text) == expected


def test_strict_token_metrics_are_type_level():
    p, r, f1 = vqa_strict.token_prf("lung lung lung", "left lung")
    assert (p, r) == (1.0, 0.5) and f1 == pytest.approx(2 / 3)
    assert vqa_strict.token_prf("", "lung") == (0.0, 0.0, 0.0)
    assert vqa_strict.token_prf("xray", "x-ray") == (1.0, 1.0, 1.0)
    assert vqa_strict.token_prf("-", "?") == (1.0, 1.0, 1.0)   # both empty after normalization


def test_strict_exact_match():
    assert vqa_strict.exact_match("The Left Lung.", "left lung") == 1.0
    assert vqa_strict.exact_match("left lung lung", "left lung") == 0.0


@pytest.mark.parametrize("prediction,answer,expected", [
    ("No, there is no effusion.", "no", 1.0),
    ("there is not any effusion", "no", 0.0),
    ("yes and no", "no", 0.0),           # commits to both
    ("eyes are normal", "yes", 0.0),     # no whole word "yes"
    ("Yes.", "yes", 1.0),
    ("the lesion is in the left lung", "Left", 1.0),
    ("leftover fluid", "left", 0.0),
    ("CT scan", "MRI", 0.0),
])
def test_strict_closed(prediction, answer, expected):
    assert vqa_strict.closed_correct(prediction, answer) == expected


def test_strict_summarize():
    per = [vqa_strict.question_scores("no", "no", "closed"), vqa_strict.question_scores("left lung", "lung", "open")]
    out = vqa_strict.summarize(per)
    assert out["closed_accuracy"] == 100.0 and out["n"] == 2
    assert out["token_recall"] == 100.0 and out["token_precision"] == pytest.approx(75.0)
    assert out["exact_match"] == 50.0


# mutation-testing gaps (mutmut survivors, see benchmarks/results/mutation.md) ---------------------------------

def test_punctuation_beside_a_space_on_one_side_only_is_deleted_everywhere():
    # "- " alone (no " -") and " -" alone each switch "-" to deletion for the whole string (quirk 1).
    assert llava_med.normalize_word("ab-cd ef- gh") == "abcd ef gh"
    assert llava_med.normalize_word("ab-cd ef -gh") == "abcd ef gh"
    assert llava_med.normalize_word("ab-cd ef-gh") == "ab cd ef gh"   # neither: a space


def test_f1_is_the_harmonic_mean_when_precision_is_below_one():
    f1, p, r = llava_med.token_prf("lung heart", "lung")
    assert (p, r) == (0.5, 1.0) and f1 == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_case_folding_is_lower_not_upper():
    # "ß".upper() == "SS" but "ß".lower() == "ß": lower-casing keeps "straße" and "strasse" apart, as released.
    assert llava_med.token_prf("straße", "strasse") == (0.0, 0.0, 0.0)
    assert llava_med.open_recall("straße", "strasse") == 0.0
    assert llava_med.open_recall("strasse", "straße") == 0.0
    assert llava_med.closed_hit("no straße", "strasse") == 0.0
    assert llava_med.closed_hit("no strasse", "straße") == 0.0
    assert llava_med.question_scores("straße", "strasse", "OPEN")["open_recall"] == 0.0
    assert llava_med.question_scores("strasse", "straße", "OPEN")["open_recall"] == 0.0


def test_question_scores_and_summarize_fill_every_column():
    per = [llava_med.question_scores("lung lung lung", "left lung", "OPEN"),  # p 1,   r 0.75, em 1/3
           llava_med.question_scores("lung heart", "lung", "OPEN"),           # p 0.5, r 1,    em 1/2
           llava_med.question_scores("no", "no", "CLOSED")]
    assert set(per[0]) == {"open_recall", "f1", "precision", "exact_match"}
    assert per[1] == pytest.approx({"open_recall": 1.0, "f1": 2 / 3, "precision": 0.5, "exact_match": 0.5})
    out = llava_med.summarize(per)
    assert out == pytest.approx({
        "open_recall": 87.5, "closed_accuracy": 100.0,
        "f1": 100.0 * (2 * 0.75 / 1.75 + 2 / 3) / 2, "precision": 75.0, "exact_match": 100.0 * (1 / 3 + 1 / 2) / 2,
        "n_open": 2, "n_closed": 1})


def test_summarize_counts_a_missing_column_as_zero():
    out = llava_med.summarize([{"open_recall": 1.0}])
    assert (out["open_recall"], out["f1"], out["precision"], out["exact_match"]) == (100.0, 0.0, 0.0, 0.0)


def test_score_on_aligned_lists_is_summarize_of_question_scores():
    preds, answers, types = ["lung heart", "no", "x"], ["lung", "no", "x"], ["OPEN", "CLOSED", "other"]
    expected = llava_med.summarize(llava_med.question_scores(p, a, t) for p, a, t in zip(preds, answers, types))
    assert llava_med.score(preds, answers, types) == expected
    assert expected["n_open"] == 1 and expected["closed_accuracy"] == 100.0

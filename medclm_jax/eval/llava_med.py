"""The LLaVA-Med v1.0 VQA convention ("open recall" / "closed accuracy"), reproduced bit for bit, quirks included.

Why reproduce quirks: published numbers on VQA-RAD, SLAKE and PathVQA (LLaVA-Med 64.39 / 81.98 on VQA-RAD, ...)
were computed with the v1.0 scripts (`llava/eval/run_eval.py`, `eval_metrics/glossary.py`,
`eval_metrics/evaluate_metrics.py`, `eval_metrics/utils.py`). A number is only comparable to them if every
step behaves the same, including the steps that are arguably wrong. The strict variants in `vqa_strict.py` are
the numbers to trust; these are the numbers to put next to published ones.

The pipeline for one question (all of it reproduced here, in this order):

1. Both strings are lower-cased, then passed through `normalize_word` (below). The open-ended scorer then
   normalizes both strings a *second* time (the released `calculate_f1score` calls `normalize_word` again on
   already-normalized text); the second pass is almost always a no-op (see quirk 6) but is reproduced.
2. OPEN questions: per-question token **recall** from `calculate_f1score(prediction, answer)`; the reported
   "open" number is its mean over OPEN questions, x100.
3. CLOSED questions: hit = 1 if the substring `"yes"` or `"no"` occurs in the normalized prediction **and** the
   normalized answer occurs as a substring of the normalized prediction; else 0. Mean over CLOSED questions, x100.
   (This is the Dec-2023 fixed script; before the fix a prediction holding "yes"/"no" but not the answer appended
   nothing, so it was silently dropped from the denominator.)

Quirks, each reproduced on purpose:

1. **Punctuation.** For each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` in turn: if that character occurs
   next to a space in the *original* string (``"p "`` or ``" p"``), or if the original string holds a
   digit-comma-digit anywhere, every occurrence is deleted; otherwise every occurrence becomes a space. So
   ``"x-ray"`` -> ``"x ray"`` but ``"x-ray - ap"`` -> ``"xray  ap"``, and a single ``"1,000"`` anywhere makes all
   punctuation in the string vanish. Periods, colons, apostrophes, ``* # % & | ~ ^ $`` are not in the list.
2. **Periods.** The pattern ``(?!<=\\d)(\\.)(?!\\d)`` was meant as "a period not beside a digit" but ``(?!<=\\d)`` is
   a *look-ahead* for the two characters ``<=`` followed by a digit, which can never match at a period, so the rule
   is "delete a period not followed by a digit" (``"3."`` loses its period, ``".5"`` keeps it).
3. **At most 32 periods.** The script calls ``pattern.sub("", text, re.UNICODE)``; the third positional argument of
   `re.Pattern.sub` is `count`, and ``re.UNICODE == 32``: only the first 32 such periods are removed.
4. **Number words and articles.** After splitting on whitespace: ``none zero one ... ten`` -> ``0 0 1 ... 10``
   (whole tokens only: ``"one."`` maps once its period is gone, ``"ones"`` never does), then the tokens
   ``a an the`` are dropped.
5. **Contractions.** Tokens are mapped through the VQA contraction table (``dont`` -> ``don't``, ...). Keys that
   contain capitals (``Im``, ``Ive``, ``Id've``) can never match lower-cased text.
6. **Commas last.** Commas surviving quirk 1 (none can) are deleted at the very end. Because of quirk 3, running
   `normalize_word` twice differs from once only for strings with more than 32 deletable periods.
7. **Open recall counts the prediction's multiplicity.** tp adds the *prediction's* count of every shared word,
   fn the reference's count of every missed word: "lung lung lung" vs "left lung" has tp = 3, fn = 1, recall 0.75.
   recall = 0 when tp = 0 or either side has no tokens.
8. **Closed rule is substring-based throughout.** "no" is found inside "not", "nodule", "abnormal", "normal";
   "yes" inside "eyes". So "there is not any effusion" passes the yes/no pre-check and scores answer "no" correct.
   An answer that normalizes to the empty string is a substring of everything.
9. **Answer types.** Only ``answer_type`` exactly ``"OPEN"`` / ``"CLOSED"`` count; other values are ignored; a
   reference without ``answer_type`` is treated as CLOSED (the fixed script's default).
10. **Empty groups.** The released script prints 0.0 for a group with no questions; `summarize` returns None so an
    absent group is not mistaken for a score of zero.

`exact_match` and the token F1 / precision are the other columns of the same script's table (same pipeline).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

# --- normalize_word ------------------------------------------------------------------------------------------

# VQA's contraction table as shipped in LLaVA-Med's glossary (mis-spelling -> spelling). Kept complete, including
# the entries that can never fire on lower-cased text, so the behaviour matches entry for entry.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# Order matters only for the output of quirk 1 (each character is handled independently), kept as released.
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# Released as "(?!<=\d)(\.)(?!\d)": the first group is a look-ahead, never a look-behind (quirk 2).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(\,)(\d)")
_PERIOD_COUNT = 32  # re.UNICODE passed positionally as `count` (quirk 3)


def normalize_word(text: str) -> str:
    """LLaVA-Med's `normalize_word`, quirks 1-6 of the module docstring. Does not lower-case by itself (the
    caller does), but token mapping happens after an internal `.lower()`, as released."""
    original = text
    out = text
    strip_all = _DIGIT_COMMA_DIGIT.search(original) is not None
    for p in _PUNCT:
        if (p + " " in original or " " + p in original) or strip_all:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out, count=_PERIOD_COUNT)
    words = []
    for word in out.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(word)
    words = [_CONTRACTIONS.get(w, w) for w in words]
    return " ".join(words).replace(",", "")


# --- per-question scores -------------------------------------------------------------------------------------


def _unigrams(text: str) -> Counter:
    # eval_metrics.utils.split_sentence(text, 1): lower-case, whitespace split, counts.
    return Counter(text.lower().strip().split())


def token_prf(prediction: str, answer: str) -> tuple[float, float, float]:
    """`calculate_f1score(prediction, answer)` -> (f1, precision, recall); both inputs normalized again inside.

    tp sums the prediction's counts of shared words (quirk 7); fp the prediction's counts of other words; fn the
    answer's counts of missed words. All three are 0 when either side is empty or tp == 0.
    """
    cand = _unigrams(normalize_word(prediction))
    ref = _unigrams(normalize_word(answer))
    if not cand or not ref:
        return 0.0, 0.0, 0.0
    tp = sum(c for w, c in cand.items() if w in ref)
    fp = sum(c for w, c in cand.items() if w not in ref)
    fn = sum(c for w, c in ref.items() if w not in cand)
    if tp == 0:
        return 0.0, 0.0, 0.0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall), precision, recall


def exact_match(prediction: str, answer: str) -> float:
    """`calculate_exactmatch`: number of *distinct* answer words present in the prediction divided by the
    prediction's token count (despite its name, not an exact match; 0 for an empty prediction)."""
    cand = _unigrams(normalize_word(prediction))
    ref = _unigrams(normalize_word(answer))
    total = sum(cand.values())
    return sum(1 for w in ref if w in cand) / total if total else 0.0


def open_recall(prediction: str, answer: str) -> float:
    """The per-question "open" score in [0, 1]: lower-case, normalize, then `token_prf`'s recall.

    >>> open_recall("lung lung lung", "left lung")
    0.75
    """
    return token_prf(normalize_word(prediction.lower()), normalize_word(answer.lower()))[2]


def closed_hit(prediction: str, answer: str) -> float:
    """The per-question "closed" score (0 or 1): yes/no substring pre-check, then answer-as-substring (quirk 8).

    >>> closed_hit("there is not any effusion", "no")
    1.0
    """
    pred, gt = normalize_word(prediction.lower()), normalize_word(answer.lower())
    return 1.0 if ("yes" in pred or "no" in pred) and gt in pred else 0.0


def question_scores(prediction: str, answer: str, answer_type: str) -> dict[str, float]:
    """All per-question numbers of the released table for one question; {} for a type the script ignores.

    Args:
      prediction: the generated answer text (already cut after `Answer:` by the caller where that applies).
      answer: the reference answer.
      answer_type: "OPEN" or "CLOSED" (case-insensitive here; the caller decides the defaulting of quirk 9).
    """
    kind = answer_type.strip().upper()
    if kind == "OPEN":
        pred, gt = normalize_word(prediction.lower()), normalize_word(answer.lower())
        f1, precision, recall = token_prf(pred, gt)
        return {"open_recall": recall, "f1": f1, "precision": precision, "exact_match": exact_match(pred, gt)}
    if kind == "CLOSED":
        return {"closed_accuracy": closed_hit(prediction, answer)}
    return {}


def summarize(per_question: Iterable[dict[str, float]]) -> dict[str, float | int | None]:
    """Macro-average per-question scores over OPEN and over CLOSED questions, in percent (x100).

    Returns `open_recall`, `closed_accuracy`, `f1`, `precision`, `exact_match` (None where the group is empty,
    quirk 10) and the counts `n_open`, `n_closed`.
    """
    sums: dict[str, float] = {}
    n_open = n_closed = 0
    for s in per_question:
        if "open_recall" in s:
            n_open += 1
        elif "closed_accuracy" in s:
            n_closed += 1
        for k, v in s.items():
            sums[k] = sums.get(k, 0.0) + v

    def mean(key: str, n: int) -> float | None:
        return 100.0 * sums.get(key, 0.0) / n if n else None

    return {
        "open_recall": mean("open_recall", n_open),
        "closed_accuracy": mean("closed_accuracy", n_closed),
        "f1": mean("f1", n_open),
        "precision": mean("precision", n_open),
        "exact_match": mean("exact_match", n_open),
        "n_open": n_open,
        "n_closed": n_closed,
    }


def score(predictions: Sequence[str], answers: Sequence[str], answer_types: Sequence[str]) -> dict:
    """Convenience: `summarize` over aligned lists (same length; the caller pairs by id)."""
    if not (len(predictions) == len(answers) == len(answer_types)):
        raise ValueError(
            f"predictions, answers and answer_types must align: got {len(predictions)}, {len(answers)}, "
            f"{len(answer_types)}; pair them by question id first"
        )
    return summarize(question_scores(p, a, t) for p, a, t in zip(predictions, answers, answer_types))

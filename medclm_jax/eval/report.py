"""Report-generation metrics: BLEU-1..4 (corpus and sentence), ROUGE-L and CIDEr-D, pure Python.

Why our own code: the field's reference implementation (coco-caption / `pycocoevalcap`) tokenizes with the Java
PTB tokenizer, and METEOR/SPICE need Java too; we need offline, Java-free metrics. The formulas below follow
coco-caption (the convention radiology-report papers such as R2Gen report) and are checked in tests against
`pycocoevalcap`'s Python scorers, `sacrebleu` and `rouge-score` on the same tokens, and against hand computation.

Tokenization (`tokenize`), stated because every number depends on it: NFKC, lower-case; tokens are runs of
letters/digits, joined across one inner hyphen, apostrophe, period or slash (`x-ray`, `3.5`, `don't`, `t1/t2`
stay one token); all other punctuation is dropped. This approximates coco-caption's PTB tokenization plus
punctuation removal for English clinical text (PTB would split `don't` into `do n't`). Every metric also accepts
pre-tokenized input so other tokenizations can be used: a hypothesis is a `str` or a token list; the references
of one hypothesis are a `str` (one raw reference) or a list of references, each a `str` or a token list.

Definitions (all scores in [0, 1] here; `score.py` reports x100):
- **BLEU-n, corpus** (Papineni et al. 2002): clipped n-gram counts summed over the corpus, geometric mean of the
  1..n precisions with uniform weights, brevity penalty `exp(1 - r/c)` when c < r, with r the sum over sentences of
  the reference length closest to the hypothesis length (ties -> the shorter). Identical to coco-caption's
  `Bleu(4)` except that coco-caption adds 1e-15 / 1e-9 to every ratio, so where no n-gram matches it reports
  ~1e-4 instead of 0 for BLEU-4; we report 0.
- **BLEU-n, sentence**: the same per sentence, then averaged over sentences. `smoothing="none"` (0 when any
  precision is 0) or `"exp"` (NIST/Chen & Cherry method 3, sacrebleu's sentence default: the k-th zero precision
  becomes 1 / (2^k * total); orders the hypothesis is too short to have are left out).
- **ROUGE-L** (Lin 2004) as coco-caption: LCS over tokens; with several references, the largest precision and
  the largest recall are combined as `(1 + b^2) P R / (R + b^2 P)`, beta = 1.2; the mean over sentences.
  `beta=1.0` gives the F1 of Google's `rouge-score` package (single reference).
- **CIDEr-D** (Vedantam et al. 2015) as coco-caption's `Cider`: TF-IDF vectors of 1..4-grams with document
  frequency over the references of the *scored corpus* (so the score of one report depends on the others, and a
  one-report corpus scores 0), candidate counts clipped by the reference's (`min(h, r) * r`), cosine per n, times
  a Gaussian length penalty `exp(-delta^2 / (2 * 6^2))`, mean over n and references, x10. Quirk kept: "length" is
  the number of *bigrams* (coco-caption counts the n-gram order 2), which changes delta only for sentences of
  fewer than two tokens.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from typing import Sequence, Union

Text = Union[str, Sequence[str]]

_TOKEN = re.compile(r"[^\W_]+(?:[-'./][^\W_]+)*")


def tokenize(text: str) -> list[str]:
    """Report tokenization (module docstring): lower-case letter/digit runs, inner `- ' . /` kept."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def _toks(t: Text) -> list[str]:
    return tokenize(t) if isinstance(t, str) else list(t)


def _refs(refs: Union[Text, Sequence[Text]]) -> list[list[str]]:
    """The references of one hypothesis -> list of token lists.

    A `str` is one raw reference; anything else is a sequence of references, each a raw `str` or a token list.
    (So one pre-tokenized reference is written `[["left", "lung"]]`.)
    """
    if isinstance(refs, str):
        return [tokenize(refs)]
    return [_toks(r) for r in refs]


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _closest_ref_len(hyp_len: int, ref_lens: Sequence[int]) -> int:
    return min(ref_lens, key=lambda r: (abs(r - hyp_len), r))


def _bleu_stats(hyp: list[str], refs: list[list[str]], max_n: int) -> tuple[list[int], list[int], int, int]:
    """(clipped matches per order, hypothesis n-grams per order, hyp length, closest ref length)."""
    correct, total = [0] * max_n, [0] * max_n
    for n in range(1, max_n + 1):
        h = _ngrams(hyp, n)
        best: Counter = Counter()
        for r in refs:
            best |= _ngrams(r, n)  # max count over references
        correct[n - 1] = sum(min(c, best[g]) for g, c in h.items())
        total[n - 1] = max(0, len(hyp) - n + 1)
    return correct, total, len(hyp), _closest_ref_len(len(hyp), [len(r) for r in refs])


def _brevity_penalty(hyp_len: int, ref_len: int) -> float:
    if hyp_len >= ref_len:
        return 1.0
    return math.exp(1.0 - ref_len / hyp_len) if hyp_len > 0 else 0.0


def corpus_bleu(hyps: Sequence[Text], refs: Sequence[Union[Text, Sequence[Text]]], max_n: int = 4) -> float:
    """Corpus BLEU-`max_n` in [0, 1] (module docstring). `refs[i]` is one reference or a list of references."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference sets")
    correct, total, c, r = [0] * max_n, [0] * max_n, 0, 0
    for h, rs in zip(hyps, refs):
        k, t, hl, rl = _bleu_stats(_toks(h), _refs(rs), max_n)
        correct = [a + b for a, b in zip(correct, k)]
        total = [a + b for a, b in zip(total, t)]
        c, r = c + hl, r + rl
    if any(k == 0 for k in correct) or any(t == 0 for t in total):
        return 0.0
    log_p = sum(math.log(k / t) for k, t in zip(correct, total)) / max_n
    return _brevity_penalty(c, r) * math.exp(log_p)


def sentence_bleu(hyp: Text, refs: Union[Text, Sequence[Text]], max_n: int = 4, smoothing: str = "exp") -> float:
    """Sentence BLEU-`max_n` in [0, 1]; `smoothing` "none" or "exp" (module docstring)."""
    if smoothing not in ("none", "exp"):
        raise ValueError(f"smoothing must be 'none' or 'exp', got {smoothing!r}")
    correct, total, c, r = _bleu_stats(_toks(hyp), _refs(refs), max_n)
    if smoothing == "none":
        if any(k == 0 for k in correct):
            return 0.0
        return _brevity_penalty(c, r) * math.exp(sum(math.log(k / t) for k, t in zip(correct, total)) / max_n)
    if not any(correct):
        return 0.0
    logs, zeros = [], 0
    for k, t in zip(correct, total):
        if t == 0:  # effective order: the hypothesis has no n-grams of this order
            break
        if k == 0:
            zeros += 1
            logs.append(math.log(1.0 / (2**zeros * t)))
        else:
            logs.append(math.log(k / t))
    return _brevity_penalty(c, r) * math.exp(sum(logs) / len(logs))


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(hyp: Text, refs: Union[Text, Sequence[Text]], beta: float = 1.2) -> float:
    """Sentence ROUGE-L in [0, 1] (coco-caption's rule for several references; module docstring)."""
    h = _toks(hyp)
    rs = _refs(refs)
    if not h or not any(rs):
        return 0.0
    lcs = [_lcs(r, h) for r in rs]
    p = max(l / len(h) for l in lcs)
    rec = max(l / len(r) for l, r in zip(lcs, rs) if r)
    if p == 0 or rec == 0:
        return 0.0
    return (1 + beta**2) * p * rec / (rec + beta**2 * p)


def corpus_rouge_l(hyps: Sequence[Text], refs: Sequence[Union[Text, Sequence[Text]]], beta: float = 1.2) -> float:
    """Mean sentence ROUGE-L over the corpus."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference sets")
    return sum(rouge_l(h, r, beta) for h, r in zip(hyps, refs)) / len(hyps) if hyps else 0.0


def cider_d(hyps: Sequence[Text], refs: Sequence[Union[Text, Sequence[Text]]], n: int = 4,
            sigma: float = 6.0) -> tuple[float, list[float]]:
    """Corpus CIDEr-D (coco-caption `Cider`, module docstring) -> (mean, per-hypothesis scores), unscaled by 100."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference sets")
    if not hyps:
        return 0.0, []

    def counts(tokens: list[str]) -> Counter:
        out: Counter = Counter()
        for k in range(1, n + 1):
            out.update(_ngrams(tokens, k))
        return out

    hyp_counts = [counts(_toks(h)) for h in hyps]
    ref_counts = [[counts(r) for r in _refs(rs)] for rs in refs]
    df: Counter = Counter()
    for rc in ref_counts:
        df.update({g for c in rc for g in c})
    log_n_docs = math.log(float(len(hyps)))

    def vec(c: Counter):
        v = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for g, tf in c.items():
            k = len(g) - 1
            w = tf * (log_n_docs - math.log(max(1.0, df[g])))
            v[k][g] = w
            norm[k] += w * w
            if k == 1:  # coco-caption's length: the bigram count (quirk, module docstring)
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for hc, rcs in zip(hyp_counts, ref_counts):
        vh, nh, lh = vec(hc)
        total = [0.0] * n
        for rc in rcs:
            vr, nr, lr = vec(rc)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                total[k] += val * penalty
        scores.append(10.0 * (sum(total) / n) / len(rcs))
    return sum(scores) / len(scores), scores


def report_scores(hyps: Sequence[str], refs: Sequence[Union[str, Sequence[str]]]) -> dict[str, float]:
    """Every report metric on raw strings with `tokenize`, in [0, 1]: `bleu_1`..`bleu_4` (corpus),
    `sentence_bleu_1`..`sentence_bleu_4` (mean, "exp" smoothing), `rouge_l` (beta 1.2), `cider_d`."""
    h = [tokenize(x) for x in hyps]
    r = [_refs(x) for x in refs]
    out = {f"bleu_{k}": corpus_bleu(h, r, k) for k in range(1, 5)}
    for k in range(1, 5):
        out[f"sentence_bleu_{k}"] = sum(sentence_bleu(a, b, k) for a, b in zip(h, r)) / len(h) if h else 0.0
    out["rouge_l"] = corpus_rouge_l(h, r)
    out["cider_d"] = cider_d(h, r)[0]
    return out

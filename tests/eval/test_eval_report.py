"""Report metrics: hand-computed BLEU / ROUGE-L / CIDEr-D on a three-sentence corpus, then agreement with the
reference implementations (pycocoevalcap's Python scorers, sacrebleu, rouge-score) on the same tokens."""

import math
import random

import pytest

from medclm_jax.eval import report

HYPS = ["the heart is normal", "small left effusion", "no nodule"]
REFS = ["the heart is normal in size", "small left pleural effusion", "no nodule"]
H = [h.split() for h in HYPS]
R = [[r.split()] for r in REFS]   # one tokenized reference per hypothesis


def test_tokenize_is_stated_and_simple():
    assert report.tokenize("The X-ray shows a 3.5 cm nodule; don't miss it.") == [
        "the", "x-ray", "shows", "a", "3.5", "cm", "nodule", "don't", "miss", "it"]
    assert report.tokenize("T1/T2 (axial), 2 cm.") == ["t1/t2", "axial", "2", "cm"]


def test_corpus_bleu_by_hand():
    # matches/total: 1-grams 9/9; 2-grams (3+1+1)/(3+2+1) = 5/6; 3-grams (2+0)/(2+1) = 2/3; 4-grams 1/1.
    # c = 9, r = 6 + 4 + 2 = 12 -> BP = exp(1 - 12/9).
    bp = math.exp(1 - 12 / 9)
    expected = [bp, bp * (5 / 6) ** 0.5, bp * (5 / 9) ** (1 / 3), bp * (5 / 9) ** 0.25]
    got = [report.corpus_bleu(H, R, n) for n in (1, 2, 3, 4)]
    assert got == pytest.approx(expected, rel=1e-12)


def test_sentence_bleu_by_hand():
    assert report.sentence_bleu(H[0], R[0], smoothing="none") == pytest.approx(math.exp(1 - 6 / 4))
    assert report.sentence_bleu(H[1], R[1], smoothing="none") == 0.0   # no matching 3-gram
    # "exp": the first zero precision (3-grams, 0/1) becomes 1/(2*1); no 4-grams -> effective order 3.
    assert report.sentence_bleu(H[1], R[1], smoothing="exp") == pytest.approx(
        math.exp(1 - 4 / 3) * (1 * 0.5 * 0.5) ** (1 / 3))
    assert report.sentence_bleu(["x"], [["y"]]) == 0.0


def test_rouge_l_by_hand():
    b2 = 1.2 ** 2
    f1 = (1 + b2) * 1 * (4 / 6) / (4 / 6 + b2 * 1)      # LCS 4: P = 4/4, R = 4/6
    f2 = (1 + b2) * 1 * (3 / 4) / (3 / 4 + b2 * 1)      # LCS 3: P = 3/3, R = 3/4
    assert report.corpus_rouge_l(H, R) == pytest.approx((f1 + f2 + 1) / 3, rel=1e-12)
    assert report.rouge_l(H[0], R[0], beta=1.0) == pytest.approx(0.8)
    assert report.rouge_l([], R[0]) == 0.0


def test_cider_d_by_hand():
    # No n-gram is shared between references, so every df is 1 (or 0 -> 1) and every tf-idf weight is log(3):
    # the cosine per order is matches / sqrt(hyp n-grams * ref n-grams). Length = bigram count (quirk).
    s1 = (4 / math.sqrt(4 * 6) + 3 / math.sqrt(3 * 5) + 2 / math.sqrt(2 * 4) + 1 / math.sqrt(1 * 3)) / 4
    s1 *= 10 * math.exp(-(3 - 5) ** 2 / (2 * 36))
    s2 = (3 / math.sqrt(3 * 4) + 1 / math.sqrt(2 * 3) + 0 + 0) / 4 * 10 * math.exp(-(2 - 3) ** 2 / 72)
    s3 = (1 + 1 + 0 + 0) / 4 * 10
    mean, per = report.cider_d(H, R)
    assert per == pytest.approx([s1, s2, s3], rel=1e-12)
    assert mean == pytest.approx((s1 + s2 + s3) / 3, rel=1e-12)
    assert report.cider_d(H[:1], R[:1])[0] == 0.0   # one-document corpus: idf = log(1) - log(1) = 0


def test_report_scores_tokenizes_raw_strings():
    raw_h = ["The heart is normal.", "Small left effusion!", "No nodule."]
    out = report.report_scores(raw_h, ["The heart is normal in size.", "Small left pleural effusion.", "No nodule."])
    assert out["bleu_4"] == pytest.approx(report.corpus_bleu(H, R, 4))
    assert out["cider_d"] == pytest.approx(report.cider_d(H, R)[0])
    assert set(out) == {f"bleu_{k}" for k in range(1, 5)} | {f"sentence_bleu_{k}" for k in range(1, 5)} | {
        "rouge_l", "cider_d"}


def _random_corpus(seed, n_refs=3):
    rng = random.Random(seed)
    vocab = "the lung left right nodule opacity effusion is in there no of heart normal size small".split()
    n = rng.randint(4, 8)
    # A small vocabulary so every n-gram order has matches (coco-caption's epsilons only matter at zero).
    hyps = [" ".join(rng.choices(vocab[:4], k=rng.randint(5, 14))) for _ in range(n)]
    refs = [[" ".join(rng.choices(vocab[:4], k=rng.randint(5, 14))) for _ in range(rng.randint(1, n_refs))]
            for _ in range(n)]
    return hyps, refs


@pytest.mark.parametrize("seed", range(5))
def test_matches_pycocoevalcap(seed):
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    hyps, refs = _random_corpus(seed)
    gts, res = dict(enumerate(refs)), {i: [h] for i, h in enumerate(hyps)}
    coco_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    ours = [report.corpus_bleu([h.split() for h in hyps], [[r.split() for r in rs] for rs in refs], n)
            for n in (1, 2, 3, 4)]
    # coco-caption adds 1e-15 / 1e-9 to each ratio; identical otherwise.
    assert min(ours) > 0.01
    assert ours == pytest.approx(coco_bleu, rel=1e-4)
    coco_cider, coco_per = Cider().compute_score(gts, res)
    mean, per = report.cider_d([h.split() for h in hyps], [[r.split() for r in rs] for rs in refs])
    assert mean == pytest.approx(coco_cider, rel=1e-9) and per == pytest.approx(list(coco_per), rel=1e-9)
    coco_rouge, _ = Rouge().compute_score(gts, res)
    assert report.corpus_rouge_l(hyps, refs) == pytest.approx(coco_rouge, rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_matches_sacrebleu(seed):
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps, refs = _random_corpus(seed)
    first = [rs[0] for rs in refs]
    for n in (1, 2, 3, 4):
        ref_score = sacrebleu.metrics.BLEU(tokenize="none", max_ngram_order=n, smooth_method="none")
        expected = ref_score.corpus_score(hyps, [first]).score / 100
        assert report.corpus_bleu(hyps, [[r.split()] for r in first], n) == pytest.approx(expected, rel=1e-9)
    for h, rs in zip(hyps, refs):
        expected = sacrebleu.sentence_bleu(h, rs, tokenize="none").score / 100  # smooth "exp", effective order
        assert report.sentence_bleu(h.split(), [r.split() for r in rs]) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_matches_rouge_score(seed):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    hyps, refs = _random_corpus(seed)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for h, rs in zip(hyps, refs):
        expected = scorer.score(rs[0], h)["rougeL"].fmeasure
        assert report.rouge_l(h.split(), [rs[0].split()], beta=1.0) == pytest.approx(expected, rel=1e-12)

"""The generated chain of thought: answer extraction, format adherence, and organ agreement.

Our targets are `Reasoning: <cot> Answer: <answer>` (Easy/Medium) and `Answer: <answer>` (Hard), written by
`medclm_jax.data.targets` (docs/design.md, "Curriculum"). The two markers are defined here, once, and the writer
imports them, so this parser is the target writer's exact inverse; they live on this side so that `medclm score`
imports nothing but the standard library.

The VQA metrics score the text after the *last* `Answer:` (a model that restates the question's "Answer:" early
is judged on its final answer); the reasoning is everything before it, minus a leading `Reasoning:`. Markers match
in any case and with spaces before the colon (`answer :`).
"""

from __future__ import annotations

import re

REASONING_MARKER = "Reasoning:"
ANSWER_MARKER = "Answer:"


def _tag(marker: str) -> str:
    """`Answer:` -> a pattern for `answer:`, `ANSWER :`, ... (matched with IGNORECASE)."""
    return re.escape(marker.rstrip(":")) + r"\s*:"


ANSWER_TAG = re.compile(_tag(ANSWER_MARKER), re.IGNORECASE)
_REASONING_TAG = re.compile(r"^\s*" + _tag(REASONING_MARKER), re.IGNORECASE)
# `Reasoning:` then some non-space text, later `Answer:` then some non-space text.
_FULL_FORMAT = re.compile(rf"^\s*{_tag(REASONING_MARKER)}\s*\S.*?{_tag(ANSWER_MARKER)}\s*\S",
                          re.IGNORECASE | re.DOTALL)


def split_reasoning_answer(text: str) -> tuple[str, str | None]:
    """`text` -> (reasoning, answer). answer is the stripped text after the last `Answer:` (case-insensitive), or
    None when there is no `Answer:`; reasoning is the text before it without a leading `Reasoning:` (the whole text
    when there is no `Answer:`)."""
    last = None
    for last in ANSWER_TAG.finditer(text):
        pass
    if last is None:
        return _REASONING_TAG.sub("", text, count=1).strip(), None
    reasoning = _REASONING_TAG.sub("", text[: last.start()], count=1).strip()
    return reasoning, text[last.end():].strip()


def extract_answer(text: str) -> str:
    """The answer the VQA metrics score: text after the last `Answer:` if present, else the whole text, stripped."""
    answer = split_reasoning_answer(text)[1]
    return text.strip() if answer is None else answer


def format_adherence(text: str) -> dict[str, bool]:
    """Whether `text` follows our target forms.

    Returns:
      `reasoning_answer`: starts with `Reasoning:` followed by non-empty reasoning, then a later `Answer:` with a
        non-empty answer (the Easy/Medium form).
      `answer`: some `Answer:` with a non-empty answer after the last one (enough for the Hard form).
    """
    answer = split_reasoning_answer(text)[1]
    return {"reasoning_answer": bool(_FULL_FORMAT.search(text)) and bool(answer), "answer": bool(answer)}


# --- organ agreement -----------------------------------------------------------------------------------------

# Host organ -> words that name it or one of its parts in a radiology sentence. Keys are matched as whole words
# inside the reference organ label (TotalSegmentator snake_case, CXAS phrases, our `lesion/organ` text), so
# "lung_upper_lobe_left", "right upper zone lung" and "left lung" all resolve to "lung".
ORGAN_TERMS: dict[str, tuple[str, ...]] = {
    "lung": ("lung", "lungs", "pulmonary", "lobe", "lobes", "lobar", "lingula", "lingular", "hilum", "hilar",
             "apex", "apical", "zone", "perihilar", "parenchyma", "bronchus", "bronchi", "bronchial"),
    "liver": ("liver", "hepatic", "caudate", "couinaud", "segment"),
    "kidney": ("kidney", "kidneys", "renal", "pole", "cortex", "cortical", "pelvis", "calyx", "calyces"),
    "heart": ("heart", "cardiac", "cardio", "ventricle", "ventricular", "atrium", "atrial", "myocardium",
              "myocardial", "pericardium", "pericardial"),
    "brain": ("brain", "cerebral", "cerebrum", "cerebellum", "cerebellar", "hemisphere", "frontal", "parietal",
              "temporal", "occipital", "thalamus", "brainstem", "ventricle", "ventricles", "intracranial"),
    "spleen": ("spleen", "splenic"),
    "pancreas": ("pancreas", "pancreatic"),
    "stomach": ("stomach", "gastric"),
    "gallbladder": ("gallbladder",),
    "bladder": ("bladder", "vesical"),
    "adrenal": ("adrenal",),
    "esophagus": ("esophagus", "esophageal", "oesophagus"),
    "trachea": ("trachea", "tracheal"),
    "aorta": ("aorta", "aortic"),
    "colon": ("colon", "colonic", "bowel", "cecum", "sigmoid", "rectum", "rectal"),
    "bowel": ("bowel", "intestine", "intestinal", "duodenum", "jejunum", "ileum", "colon"),
    "pleura": ("pleura", "pleural"),
    "mediastinum": ("mediastinum", "mediastinal"),
    "diaphragm": ("diaphragm", "diaphragmatic", "hemidiaphragm"),
    "rib": ("rib", "ribs", "costal"),
    "clavicle": ("clavicle", "clavicular"),
    "vertebra": ("vertebra", "vertebrae", "vertebral", "spine", "spinal"),
    "spine": ("spine", "spinal", "vertebra", "vertebrae", "vertebral"),
    "breast": ("breast", "mammary"),
    "thyroid": ("thyroid",),
    "prostate": ("prostate", "prostatic"),
    "uterus": ("uterus", "uterine", "endometrium"),
    "ovary": ("ovary", "ovarian", "adnexa", "adnexal"),
}
# Synonyms a reference label may use for a key above.
_ORGAN_ALIASES = {"lungs": "lung", "hepatic": "liver", "renal": "kidney", "kidneys": "kidney", "cardiac": "heart",
                  "cerebral": "brain", "oesophagus": "esophagus", "vertebrae": "vertebra", "ribs": "rib",
                  "intestine": "bowel", "colorectal": "colon", "gall": "gallbladder"}
# Words in a label that locate rather than name the organ.
_LOCATORS = frozenset("left right upper lower middle mid superior inferior anterior posterior medial lateral "
                      "of the and zone lobe segment part portion".split())
_UNSCORED = frozenset({"", "unknown", "none", "n/a", "na"})


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower().replace("_", " "))


def organ_terms(organ: str) -> tuple[str, ...] | None:
    """Words that count as naming `organ` or one of its parts; None when the label is unscorable (empty,
    `unknown`). An organ outside `ORGAN_TERMS` falls back to its own content words (all must appear)."""
    words = _words(organ)
    if " ".join(words) in _UNSCORED:
        return None
    for w in words:
        key = _ORGAN_ALIASES.get(w, w)
        if key in ORGAN_TERMS:
            return ORGAN_TERMS[key]
    content = tuple(w for w in words if w not in _LOCATORS)
    return (" ".join(content),) if content else None


def names_organ(reasoning: str, organ: str) -> bool | None:
    """Does `reasoning` name the host `organ` or one of its parts (whole words, case-insensitive)?

    Laterality is not checked ("left lung" is named by "right lower lobe"): this measures whether the reasoning
    localizes to the right organ system, grounding IoU measures where. None when `organ` is unscorable.
    """
    terms = organ_terms(organ)
    if terms is None:
        return None
    text = " " + " ".join(_words(reasoning)) + " "
    return any(f" {t} " in text for t in terms)

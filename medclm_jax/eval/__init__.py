"""Evaluation: the field's VQA, report and grounding metrics, benchmark loaders, and `medclm score`.

The metrics are pure Python (no jax import), so `medclm score` starts fast and training/validation can import them.

- `llava_med`: the LLaVA-Med v1.0 convention (open recall, closed accuracy), bit for bit, quirks documented.
- `vqa_strict`: strict variants (type-level token P/R/F1, exact match, whole-word yes/no closed accuracy).
- `report`: BLEU-1..4 (corpus, sentence), ROUGE-L, CIDEr-D for report generation.
- `grounding`: box parsing in every form we emit or meet, IoU, accuracy at IoU >= 0.5, mean IoU.
- `cot`: answer extraction, format adherence, organ agreement of the reasoning.
- `benchmarks`: VQA-RAD, SLAKE, PathVQA, PMC-VQA loaders in their public release layouts.
- `records`, `score`: prediction/reference files, the scoring entry point (the command line is
  `medclm_jax/commands/score.py`).
- `run`, `generate` (jax): `medclm eval`; `html_report` (numpy, PIL): its self-contained report.html.
"""

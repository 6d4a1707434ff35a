"""`medclm eval`'s report.html: one self-contained page a reader opens offline to see what a checkpoint does.

    html_report.write_report(out_dir / "report.html", metrics_doc, scored_lines)     # `eval/run.py` calls it

What is on the page, all from the evaluation's own files (nothing is recomputed, so it cannot disagree with them):
  - metric tables overall, by stage, answer type, domain, modality and organ: metrics.json's numbers (the LLaVA-Med
    convention, the strict variants, grounding, organ agreement, format adherence), a column shown when a row has it;
  - the training run's curves when the checkpoint is a run's final/ beside its `metrics.jsonl` (`train/metrics.py`):
    the train loss overall and per stage, the validation loss per stage, and the stage mix, as inline SVG;
  - examples: the best, the worst and a seeded random draw by `example_score`, each with its image (from the record
    of our build, or the benchmark's file), the reference box and the predicted box drawn (`records/overlay.py`),
    the question, the predicted and the reference reasoning and answer, and the example's scores.

Self-contained: no script, no external URL; images are JPEG data: URIs downscaled to `max_side` pixels (4:4:4
chroma, so the box colours stay exact), which bounds the file at about 40 KB per example shown. Every text is
HTML-escaped. An image that cannot be read (the build moved) is named on the page, not fatal: the report comes
after the evaluation's files are written and must not lose them.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import logging
import math
import os
import random
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from medclm_jax.data.images import decode_png
from medclm_jax.data.source import RecordSource
from medclm_jax.eval.score import BREAKDOWNS
from medclm_jax.records import schema
from medclm_jax.records.errors import RecordError
from medclm_jax.records.overlay import BOX_COLOR, draw_box

log = logging.getLogger(__name__)

REFERENCE_COLOR = BOX_COLOR  # red, as the Easy view and `medclm predict` draw the lesion box
PREDICTED_COLOR = (255, 200, 0)  # amber: distinct from red and from grey-scale anatomy
STAGE_COLORS = {"all": "#222222", "easy": "#2e8b57", "medium": "#e07b00", "hard": "#7b3fb0"}
# (section, key, column header) of the metric tables, in percent as in metrics.json.
COLUMNS = (("llava_med", "open_recall", "open recall"), ("llava_med", "closed_accuracy", "closed acc."),
           ("strict", "token_f1", "strict F1"), ("strict", "closed_accuracy", "strict closed acc."),
           ("grounding", "mean_iou", "mean IoU"), ("grounding", "acc_at_0.5", "acc@0.5"),
           ("organ", "agreement", "organ agreement"), ("format", "reasoning_answer", "format R+A"),
           ("report", "rouge_l", "ROUGE-L"), ("report", "bleu_4", "BLEU-4"))

ImageLoader = Callable[[Mapping[str, Any]], tuple[np.ndarray, str]]


# ---------------------------------------------------------------------------------------------------------------
# Choosing the examples.


def example_score(line: Mapping[str, Any]) -> Optional[float]:
    """One number in [0, 1] per example to rank them: the mean of its answer score (LLaVA-Med open recall or closed
    accuracy) and, when the reference has a box, its IoU. None when the example has neither (a report question)."""
    scores = line.get("scores") or {}
    parts = [v for k, v in (scores.get("llava_med") or {}).items() if k in ("open_recall", "closed_accuracy")]
    if "grounding" in scores:
        parts.append(scores["grounding"]["iou"])
    return float(np.mean(parts)) if parts else None


def pick_examples(lines: Sequence[Mapping[str, Any]], k: int = 4, seed: int = 0) -> dict[str, list[dict]]:
    """`best`, `worst` (by `example_score`, ties in task order) and `random` (seeded), k each and disjoint; with
    fewer than 3k examples, a third of them each (at least one best)."""
    k = max(1, min(k, len(lines) // 3))
    ranked = [i for i in range(len(lines)) if example_score(lines[i]) is not None]
    ranked.sort(key=lambda i: -example_score(lines[i]))  # stable: ties keep task order
    best = ranked[:k]
    worst = [i for i in sorted(ranked, key=lambda i: example_score(lines[i])) if i not in best][:k]
    rest = [i for i in range(len(lines)) if i not in best and i not in worst]
    drawn = sorted(random.Random(seed).sample(rest, min(k, len(rest))))
    return {"best": [dict(lines[i]) for i in best], "worst": [dict(lines[i]) for i in worst],
            "random": [dict(lines[i]) for i in drawn]}


# ---------------------------------------------------------------------------------------------------------------
# Images.


@contextlib.contextmanager
def task_images(task: Mapping[str, Any]) -> Iterator[Optional[ImageLoader]]:
    """line -> (uint8 pixels, the reference reasoning) for the task of metrics.json's `run.task`: the record of our
    build (its CoT is the reference reasoning; Hard has none), or the benchmark's image file (no reasoning). None
    for a task of another kind. The build's shards are closed on leaving."""
    if task.get("kind") not in ("records", "benchmark"):
        yield None
        return
    sources: dict[str, RecordSource] = {}

    def load(line: Mapping[str, Any]) -> tuple[np.ndarray, str]:
        if task.get("kind") == "records":
            split = line["split"]
            if split not in sources:
                sources[split] = RecordSource(task["data"], split)
            record = sources[split].read(int(line["record"]))
            stage = line.get("stage")
            reasoning = schema.text(record, schema.cot_key(stage)) if stage in ("easy", "medium") else ""
            return decode_png(record[schema.IMAGE_ENCODED][0], where=f"record {line['record']}"), reasoning
        from medclm_jax.eval.run import read_image_file  # pylint: disable=import-outside-toplevel

        return read_image_file(os.path.join(task["root"], line["image"])), ""

    try:
        yield load
    finally:
        for source in sources.values():
            source.close()


def picture(pixels: np.ndarray, reference_box: Optional[Sequence[float]], predicted_box: Optional[Sequence[float]],
            max_side: int = 384, quality: int = 85) -> bytes:
    """JPEG bytes of `pixels` (uint8[H, W(, 3)]) scaled so its long side is at most `max_side`, with the boxes
    (normalized xyxy) drawn after the resize, so their outline keeps `overlay`'s width at the page's size."""
    im = Image.fromarray(pixels).convert("RGB")
    scale = max_side / max(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    rgb = np.asarray(im, np.uint8)
    for box, color in ((reference_box, REFERENCE_COLOR), (predicted_box, PREDICTED_COLOR)):
        if box is not None:
            rgb = draw_box(rgb, box, color)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Training curves.


def training_log_path(checkpoint: Optional[str]) -> Optional[str]:
    """RUN/metrics.jsonl when `checkpoint` is a training run's RUN/final and the log is there, else None."""
    if not checkpoint or os.path.basename(os.path.normpath(checkpoint)) != "final":
        return None
    path = os.path.join(os.path.dirname(os.path.normpath(checkpoint)), "metrics.jsonl")
    return path if os.path.isfile(path) else None


def read_training_log(path: str) -> list[dict[str, Any]]:
    """The JSON objects of a run's metrics.jsonl; a line that is not one (a run writing it now) is skipped."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)):
                out.append(rec)
    return out


def _series(log_lines: Sequence[Mapping[str, Any]], kind: str, key: str) -> list[tuple[float, float]]:
    return [(float(r["step"]), float(r[key])) for r in log_lines if r.get("kind") == kind
            and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    raw = (hi - lo) / n or 1.0
    base = 10 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    first = math.floor(lo / step + 1e-9) * step
    return [first + i * step for i in range(int(math.ceil((hi - first) / step - 1e-9)) + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2 and 5 times the powers of ten that cover [lo, hi] (lo > 0), first below lo and last above hi."""
    ticks = [m * 10.0 ** p for p in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5)]
    below = [t for t in ticks if t <= lo * (1 + 1e-9)]
    above = [t for t in ticks if t >= hi * (1 - 1e-9)]
    return [t for t in ticks if below[-1] <= t <= above[0]]


def chart_axes(series: Sequence[tuple[str, str, bool, Sequence[tuple[float, float]]]],
               plot: tuple[float, float, float, float]) -> tuple[list[float], list[float], bool, Any]:
    """(x ticks, y ticks, log y, px) of non-empty (label, colour, dashed, [(step, value)]) series drawn in the
    `plot` rectangle (left, top, right, bottom, in pixels): `px(step, value)` is the point's pixel. The y axis is
    logarithmic when the values are positive and span more than a factor 20, else linear from 0 (or the minimum
    when negative). Shared by the SVG charts here and the PNG of `train/plots.py`."""
    left, top, right, bottom = plot
    xs = [x for s in series for x, _ in s[3]]
    ys = [y for s in series for _, y in s[3]]
    x_ticks = nice_ticks(min(xs), max(xs)) if max(xs) > min(xs) else [min(xs) - 1, min(xs), min(xs) + 1]
    log_y = min(ys) > 0 and max(ys) / min(ys) > 20
    y_ticks = log_ticks(min(ys), max(ys)) if log_y else nice_ticks(min(0.0, min(ys)), max(ys) or 1.0)
    f = math.log10 if log_y else float
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], f(y_ticks[0]), f(y_ticks[-1])

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (right - left), bottom - (f(y) - y0) / (y1 - y0) * (bottom - top))

    return x_ticks, y_ticks, log_y, px


def line_chart(series: Sequence[tuple[str, str, bool, Sequence[tuple[float, float]]]], title: str,
               width: int = 640, height: int = 260) -> str:
    """Inline SVG of (label, colour, dashed, [(step, value)]) series on shared axes; points are marked, so a run
    of one logged step still shows. The y axis is logarithmic when the values are positive and span more than a
    factor 20 (a loss falling from its initial value), else linear from 0 (or the minimum when negative)."""
    series = [s for s in series if s[3]]
    if not series:
        return ""
    left, right, top, bottom = 56, 150, 24, 34
    x_ticks, y_ticks, log_y, px = chart_axes(series, (left, top, width - right, height - bottom))
    x0 = x_ticks[0]
    e = html.escape
    parts = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{e(title)}"><text x="{left}" y="15" class="ct">{e(title)}'
             f'{" (log scale)" if log_y else ""}</text>']
    for y in y_ticks:
        _, yy = px(x0, y)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{yy:.1f}" y2="{yy:.1f}" class="grid"/>'
                     f'<text x="{left - 4}" y="{yy + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    for x in x_ticks:
        xx, _ = px(x, y_ticks[0])
        parts.append(f'<text x="{xx:.1f}" y="{height - bottom + 16}" text-anchor="middle">{x:.6g}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 4}" text-anchor="middle">step</text>')
    for n, (label, color, dashed, points) in enumerate(series):
        xy = [px(x, y) for x, y in points]
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        parts.append(f'<polyline points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in xy)}" fill="none" '
                     f'stroke="{color}" stroke-width="1.6"{dash}/>')
        parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.2" fill="{color}"/>' for a, b in xy]
        ly = top + 14 * n + 6
        parts.append(f'<line x1="{width - right + 10}" x2="{width - right + 30}" y1="{ly}" y2="{ly}" '
                     f'stroke="{color}" stroke-width="2"{dash}/><text x="{width - right + 34}" y="{ly + 4}">'
                     f'{e(label)}</text>')
    return "".join(parts) + "</svg>"


def loss_series(log_lines: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, bool, list[tuple[float, float]]]]:
    """(label, colour, dashed, [(step, value)]) of the loss curves of a run's log: train overall and per stage
    (solid), validation overall and per stage (dashed). Also drawn as a PNG by `train/plots.py`."""
    loss = [("train loss", STAGE_COLORS["all"], False, _series(log_lines, "train", "loss"))]
    loss += [(f"train {s}", STAGE_COLORS[s], False, _series(log_lines, "train", f"loss/{s}")) for s in schema.STAGES]
    loss += [("val loss", STAGE_COLORS["all"], True, _series(log_lines, "eval", "eval/loss"))]
    loss += [(f"val {s}", STAGE_COLORS[s], True, _series(log_lines, "eval", f"eval/loss/{s}")) for s in schema.STAGES]
    return loss


def training_charts(log_lines: Sequence[Mapping[str, Any]]) -> str:
    """The loss by stage (train solid, validation dashed) and the stage mix per logged window."""
    mix = [(s, STAGE_COLORS[s], False, _series(log_lines, "train", f"mix/{s}")) for s in schema.STAGES]
    return (line_chart(loss_series(log_lines), "loss (token-mean cross-entropy)")
            + line_chart(mix, "stage mix (share of examples)"))


# ---------------------------------------------------------------------------------------------------------------
# The page.


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def _number(v: Any) -> Any:
    """A per-question 0/1 flag stored as an int reads as a score (1.00), a bool as yes/no."""
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def metric_table(rows: Sequence[tuple[str, int, Mapping[str, Any]]], first: str) -> str:
    """An HTML table of (label, n, metrics section dict) rows; a column is kept when some row has its number."""
    cols = [c for c in COLUMNS if any((sec.get(c[0]) or {}).get(c[1]) is not None for _, _, sec in rows)]
    head = "".join(f"<th>{html.escape(c[2])}</th>" for c in cols)
    body = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{n}</td>"
        + "".join(f"<td>{_fmt((sec.get(a) or {}).get(b))}</td>" for a, b, _ in cols) + "</tr>"
        for label, n, sec in rows)
    return f"<table><thead><tr><th>{html.escape(first)}</th><th>n</th>{head}</tr></thead><tbody>{body}</tbody></table>"


def metric_tables(metrics: Mapping[str, Any]) -> str:
    """Overall, then by stage (Easy, Medium, Hard order), answer type and each other breakdown present."""
    counts = metrics.get("counts", {})
    out = ['<h3 id="overall">overall</h3>', metric_table([("all", counts.get("n", 0), metrics)], "examples")]
    by_type = metrics.get("by_answer_type") or {}
    groups = [("stage", metrics.get("by_stage") or {}),
              ("answer type", {k: {"n": counts.get(f"n_{k}", 0), **v} for k, v in by_type.items()}),
              *((f, metrics.get(f"by_{f}") or {}) for f in BREAKDOWNS if f != "stage")]
    for name, group in groups:
        if not group:
            continue
        order = sorted(group, key=lambda g: (schema.STAGES.index(g) if g in schema.STAGES else 3, g))
        out.append(f'<h3 id="by-{name.replace(" ", "-")}">by {html.escape(name)}</h3>')
        out.append(metric_table([(g, group[g].get("n", 0), group[g]) for g in order], name))
    return "".join(out)


def _box_text(box: Optional[Sequence[float]]) -> str:
    return "none" if box is None else "[" + ", ".join(f"{v:.2f}" for v in box) + "]"


def example_card(line: Mapping[str, Any], load: Optional[ImageLoader], max_side: int) -> str:
    """One example: image with boxes, texts (escaped), and every per-question number of its `scores`."""
    e, ref = html.escape, line.get("reference") or {}
    reasoning_ref, img = "", ""
    if load is not None:
        try:
            pixels, reasoning_ref = load(line)
            jpeg = picture(pixels, ref.get("box"), line.get("box"), max_side)
            img = f'<img src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}" alt="{e(str(line["id"]))}">'
        except (RecordError, OSError, ValueError, KeyError, IndexError) as err:
            log.warning("report: no image for %s (%s)", line.get("id"), err)
            img = f'<p class="missing">image not available: {e(str(err))}</p>'
    score = example_score(line)
    scores = "".join(f"<tr><td>{e(sec)}</td><td>" + " · ".join(f"{e(k)} <b>{_fmt(_number(v))}</b>" for k, v in
                                                           d.items()) + "</td></tr>"
                     for sec, d in (line.get("scores") or {}).items())
    meta = " · ".join(e(str(x)) for x in (line.get("stage"), line.get("domain"), ref.get("answer_type"),
                                          ref.get("organ")) if x)
    error = f'<p class="missing">not generated: {e(line["error"])}</p>' if line.get("error") else ""
    return (f'<div class="card"><div class="pic">{img}</div><div class="txt">'
            f'<p class="id">{e(str(line["id"]))} · {meta} · example score '
            f'<b class="score">{_fmt(score)}</b></p>{error}'
            f'<p><b>question</b> {e(str(line.get("question", "")))}</p>'
            f'<table class="qa"><tr><th></th><th>predicted</th><th>reference</th></tr>'
            f'<tr><td>reasoning</td><td>{e(line.get("reasoning") or "")}</td><td>{e(reasoning_ref)}</td></tr>'
            f'<tr><td>answer</td><td class="pred-answer">{e(line.get("answer") or "")}</td>'
            f'<td class="ref-answer">{e(str(ref.get("answer", "")))}</td></tr>'
            f'<tr><td>box</td><td>{_box_text(line.get("box"))}</td><td>{_box_text(ref.get("box"))}</td></tr>'
            f'<tr><td>generated</td><td colspan="2">{e(line.get("prediction") or "")}</td></tr></table>'
            f'<table class="scores">{scores}</table></div></div>')


_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:6px 0 14px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
td:first-child,th:first-child{text-align:left}.qa td,.qa th{text-align:left;vertical-align:top}
.card{display:flex;gap:16px;border-top:1px solid #ddd;padding:12px 0}.pic{flex:0 0 auto}.txt{flex:1}
.id{color:#555}.missing{color:#a00}.key{display:inline-block;width:14px;height:4px;margin:0 4px 3px 10px}
.scores td{font-size:12px;padding:1px 6px;text-align:left}.chart text{font-size:11px;fill:#333}.chart .ct{font-size:13px}
.chart .grid{stroke:#e5e5e5}nav a{margin-right:12px}"""


def render(metrics_doc: Mapping[str, Any], lines: Sequence[Mapping[str, Any]], *, load: Optional[ImageLoader] = None,
           training_log: Optional[Sequence[Mapping[str, Any]]] = None, k: int = 4, seed: int = 0,
           max_side: int = 384) -> str:
    """The page (module docstring) for metrics.json's content `metrics_doc` and the scored prediction `lines`."""
    e, run = html.escape, metrics_doc.get("run") or {}
    generation = run.get("generation") or {}
    title = f"medclm eval: {run.get('name', 'evaluation')}"
    facts = [("checkpoint", generation.get("checkpoint")), ("examples scored", run.get("n_scored")),
             ("of", run.get("n_total")), ("prompt format", generation.get("prompt_format")),
             ("max new tokens", generation.get("max_new_tokens")), ("box form", run.get("box_form"))]
    facts_html = " · ".join(f"{e(k_)} <b>{e(str(v))}</b>" for k_, v in facts if v is not None)
    charts = training_charts(training_log) if training_log else ""
    curves = charts or "<p>no training log beside the checkpoint (RUN/metrics.jsonl for RUN/final)</p>"
    picked = pick_examples(lines, k, seed)
    sections = "".join(
        f'<h3 id="{name}">{name} ({len(picked[name])})</h3>'
        + ("".join(example_card(line, load, max_side) for line in picked[name]) or "<p>none left</p>")
        for name in ("best", "worst", "random") if name in picked)
    legend = (f'<span class="key" style="background:rgb{REFERENCE_COLOR}"></span>reference box'
              f'<span class="key" style="background:rgb{PREDICTED_COLOR}"></span>predicted box')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>'
            f'<h1>{e(title)}</h1><p>{facts_html}</p>'
            f'<nav><a href="#metrics">metrics</a><a href="#training">training</a><a href="#examples">examples</a></nav>'
            f'<h2 id="metrics">metrics</h2><p>percentages, as in metrics.json; – = no question of that kind</p>'
            f'{metric_tables(metrics_doc.get("metrics") or {})}'
            f'<h2 id="training">training curves</h2>{curves}'
            f'<h2 id="examples">examples</h2><p>ranked by the example score: the mean of the answer score (LLaVA-Med '
            f'open recall or closed accuracy) and the IoU of the box where the reference has one; random drawn with '
            f'seed {seed}; the scores of one example are in [0, 1]. {legend}</p>{sections}</body></html>\n')


def write_report(path: str, metrics_doc: Mapping[str, Any], lines: Sequence[Mapping[str, Any]], **kwargs) -> str:
    """Writes `render(...)` to `path` (through a temporary file, so a reader never sees half a page), with the
    images of metrics.json's task and the training log beside its checkpoint; returns `path`."""
    run = metrics_doc.get("run") or {}
    log_path = training_log_path((run.get("generation") or {}).get("checkpoint"))
    with task_images(run.get("task") or {}) as load:
        page = render(metrics_doc, lines, load=load, training_log=read_training_log(log_path) if log_path else None,
                      **kwargs)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, path)
    return path

"""WORKDIR/loss_curves.png at the end of a run: the train loss overall and per stage, the validation loss per stage.

    write_loss_curves(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "loss_curves.png"))

The curves are the ones `medclm eval`'s report.html draws as SVG, taken from the same function
(`eval.html_report.loss_series` over `read_training_log`), so the two cannot disagree; the axes follow the same
rule (`nice_ticks`; a logarithmic y axis when the losses are positive and span more than a factor 20). Drawn with
PIL, already a dependency, instead of adding matplotlib for one chart: axes with ticks and grid, one colour per
stage (train solid, validation dashed, points marked so a single logged step still shows), a legend beside it.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

from medclm_jax.eval.html_report import chart_axes, loss_series, read_training_log

WIDTH, HEIGHT = 960, 540
LEFT, RIGHT, TOP, BOTTOM = 78, 170, 46, 58  # margins: tick labels left, legend right, title top, x label bottom
GRID, AXIS, TEXT = (225, 225, 225), (90, 90, 90), (30, 30, 30)
Series = tuple[str, str, bool, Sequence[tuple[float, float]]]


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled TrueType font (a bitmap font without FreeType)


def _dashed(draw: ImageDraw.ImageDraw, points: Sequence[tuple[float, float]], color: str, width: int,
            dash: float = 7.0, gap: float = 5.0) -> None:
    """A polyline drawn as dashes whose pattern runs on across its vertices."""
    phase = 0.0  # distance into the current dash + gap period
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        length = math.hypot(x1 - x0, y1 - y0)
        t = 0.0
        while t < length:
            step = min((dash - phase) if phase < dash else (dash + gap - phase), length - t)
            if phase < dash:
                a, b = t / length, (t + step) / length
                draw.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))],
                          fill=color, width=width)
            t += step
            phase = (phase + step) % (dash + gap)


def draw_chart(series: Sequence[Series], title: str) -> Optional[Image.Image]:
    """An RGB image of the (label, colour, dashed, [(step, value)]) series on shared axes; None when all are
    empty."""
    series = [s for s in series if s[3]]
    if not series:
        return None
    x_ticks, y_ticks, log_y, px = chart_axes(series, (LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM))
    x0 = x_ticks[0]

    im = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(im)
    small, big = _font(13), _font(16)
    draw.text((LEFT, 14), title + (" (log scale)" if log_y else ""), fill=TEXT, font=big)
    for y in y_ticks:
        _, yy = px(x0, y)
        draw.line([(LEFT, yy), (WIDTH - RIGHT, yy)], fill=GRID, width=1)
        draw.text((LEFT - 6, yy), f"{y:.3g}", fill=TEXT, font=small, anchor="rm")
    for x in x_ticks:
        xx, _ = px(x, y_ticks[0])
        draw.line([(xx, HEIGHT - BOTTOM), (xx, HEIGHT - BOTTOM + 5)], fill=AXIS, width=1)
        draw.text((xx, HEIGHT - BOTTOM + 8), f"{x:.6g}", fill=TEXT, font=small, anchor="mt")
    draw.line([(LEFT, TOP), (LEFT, HEIGHT - BOTTOM), (WIDTH - RIGHT, HEIGHT - BOTTOM)], fill=AXIS, width=1)
    draw.text(((LEFT + WIDTH - RIGHT) / 2, HEIGHT - 10), "step", fill=TEXT, font=small, anchor="mb")
    for n, (label, color, dashed, points) in enumerate(series):
        xy = [px(x, y) for x, y in points]
        if dashed:
            _dashed(draw, xy, color, 2)
        elif len(xy) > 1:
            draw.line(xy, fill=color, width=2, joint="curve")
        for a, b in xy:
            draw.ellipse([a - 2.5, b - 2.5, a + 2.5, b + 2.5], fill=color)
        ly = TOP + 20 * n + 8
        lx = WIDTH - RIGHT + 14
        if dashed:
            _dashed(draw, [(lx, ly), (lx + 26, ly)], color, 3, dash=6, gap=4)
        else:
            draw.line([(lx, ly), (lx + 26, ly)], fill=color, width=3)
        draw.text((lx + 32, ly), label, fill=TEXT, font=small, anchor="lm")
    return im


def write_loss_curves(log_path: str, out_path: str) -> Optional[str]:
    """Draws the loss curves of the run log at `log_path` into the PNG `out_path` (replaced: the trainer writes it
    at the end of each run); returns its path, or None when the log holds no loss yet."""
    im = draw_chart(loss_series(read_training_log(log_path)), "loss (token-mean cross-entropy) by stage")
    if im is None:
        return None
    tmp = out_path + ".tmp"
    im.save(tmp, format="PNG")
    os.replace(tmp, out_path)
    return out_path

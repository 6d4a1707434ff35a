"""report.html (medclm_jax/eval/html_report.py): the numbers of metrics.json, the examples, offline, escaped.

A handmade evaluation: six prediction lines made by `eval/run.prediction_line` (so their scores are the real ones)
for questions whose scores are known by hand, three stages, two domains, open and closed answers, boxes right,
half right and missing. The tables are read back with `html.parser`; the page is also opened in a real browser
(Debian's chromium through playwright), with the images of records of a phantom build.
"""

from __future__ import annotations

import base64
import html.parser
import io
import json
import os

import numpy as np
import pytest
from phantom_dataset import build_dataset
from PIL import Image

from medclm_jax.data.source import RecordSource
from medclm_jax.eval import html_report, run
from medclm_jax.eval import score as score_lib
from medclm_jax.eval.records import Prediction, reference_from_record
from medclm_jax.records import schema

BOX_A, BOX_B = [0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.6]
SCRIPT = "<script>alert(1)</script>"
# (stage, domain, answer type, reference answer, reference box, generated text, example score by hand)
CASES = [
    ("easy", "nodule_xray", "open", "nodule", BOX_A, "Reasoning: a lesion at [0.1, 0.1, 0.5, 0.5]. Answer: nodule",
     1.0),  # recall 1, IoU 1
    ("easy", "mass_ct", "open", "liver mass", BOX_B, "Reasoning: a lesion at [0.2, 0.2, 0.4, 0.6]. Answer: liver",
     0.5),  # recall 1/2, IoU 0.08 / 0.16
    ("medium", "nodule_xray", "closed", "yes", BOX_A, "Answer: no", 0.0),  # wrong, no box
    ("medium", "mass_ct", "closed", "no", BOX_B, "Reasoning: see [0.2, 0.2, 0.6, 0.5]. Answer: no",
     0.875),  # right, IoU 0.12 / 0.16
    ("hard", "nodule_xray", "open", "pleural effusion right", None, "Answer: effusion", 1 / 3),  # recall 1/3
    ("hard", "mass_ct", "closed", "yes", None, f"Answer: no {SCRIPT}", 0.0),  # wrong
]
QUESTION_6 = f"Is there a mass? {SCRIPT} <img src=http://example.com/x.png>"


def make_lines(cases=CASES, split="train", records=None):
    """prediction_line for each case; the question of the last one carries markup."""
    lines = []
    for i, (stage, domain, kind, answer, box, text, _) in enumerate(cases):
        index = i if records is None else records[i]
        question = QUESTION_6 if i == 5 else f"question {i} about the {stage} view?"
        ref = {"id": f"{split}/{index}/{stage}", "question": question, "answer": answer, "answer_type": kind,
               "box": box, "organ": None, "modality": domain.split("_")[-1], "stage": stage, "domain": domain,
               "image_size": [512, 512]}
        info = {"stage": stage, "domain": domain, "image_id": f"img{index}", "record": index, "split": split}
        lines.append(run.prediction_line(run.Query(ref["id"], question, np.zeros(1), ref, info), text))
    return lines


def metrics_doc(lines, task=None, checkpoint=None):
    refs = [reference_from_record(line["reference"]) for line in lines]
    metrics = score_lib.score([Prediction(line["id"], line["prediction"]) for line in lines], refs)
    return {"run": {"name": "train split", "n_scored": len(lines), "n_total": len(lines), "task": task or {},
                    "generation": {"checkpoint": checkpoint}}, "metrics": metrics}


class Page(html.parser.HTMLParser):
    """The page's tables (by the id of the heading before them), tags, and every URL-valued attribute."""

    def __init__(self, text):
        super().__init__()
        self.tables, self.tags, self.urls = {}, [], []
        self._heading, self._cell, self._row, self._in_h3 = None, None, None, False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href", "xlink:href", "action", "poster", "srcset")]
        if tag == "h3":
            self._heading = a.get("id")
        elif tag == "table" and self._heading and self._heading not in self.tables:
            self.tables[self._heading] = []
        elif tag == "tr" and self._heading in self.tables:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._heading].append(self._row)
            self._row = None
        elif tag == "table":
            self._heading = None if self._heading in self.tables else self._heading

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def table(self, heading):
        """{row label: {column: cell}}."""
        head, *rows = self.tables[heading]
        return {r[0]: dict(zip(head, r)) for r in rows}


def test_the_tables_hold_the_hand_computed_numbers_of_metrics_json():
    lines = make_lines()
    doc = metrics_doc(lines)
    page = Page(html_report.render(doc, lines))
    stage = page.table("by-stage")
    assert list(stage) == ["easy", "medium", "hard"]  # the curriculum's order, not the alphabet's
    # easy: recall (1 + 1/2) / 2; IoU (1 + 1/2) / 2, both >= 0.5.  medium: closed (0 + 1) / 2, IoU (0 + 3/4) / 2.
    assert (stage["easy"]["n"], stage["easy"]["open recall"], stage["easy"]["mean IoU"], stage["easy"]["acc@0.5"]) \
        == ("2", "75.00", "75.00", "100.00")
    assert (stage["medium"]["closed acc."], stage["medium"]["mean IoU"], stage["medium"]["acc@0.5"]) \
        == ("50.00", "37.50", "50.00")
    assert (stage["hard"]["open recall"], stage["hard"]["closed acc."], stage["hard"]["mean IoU"]) \
        == ("33.33", "0.00", "–")  # Hard has no box here
    domain = page.table("by-domain")
    assert domain["mass_ct"]["open recall"] == "50.00" and domain["nodule_xray"]["open recall"] == "66.67"
    kinds = page.table("by-answer-type")
    assert (kinds["open"]["n"], kinds["closed"]["n"], kinds["closed"]["closed acc."]) == ("3", "3", "33.33")
    overall = page.table("overall")["all"]
    assert overall["n"] == "6" and overall["mean IoU"] == "56.25"  # (1 + 1/2 + 0 + 3/4) / 4
    # Every cell is metrics.json's number as it is stored.
    m = doc["metrics"]
    for label, row in stage.items():
        assert row["strict F1"] == f"{m['by_stage'][label]['strict']['token_f1']:.2f}"
    assert overall["format R+A"] == f"{m['format']['reasoning_answer']:.2f}"
    assert "organ agreement" not in overall  # no reference names an organ: the column is left out


def test_best_worst_and_random_examples_by_the_example_score():
    lines = make_lines()
    assert [html_report.example_score(line) for line in lines] == pytest.approx([c[-1] for c in CASES])
    picked = html_report.pick_examples(lines, k=4, seed=0)
    ids = {k: [line["id"] for line in v] for k, v in picked.items()}
    assert ids["best"] == ["train/0/easy", "train/3/medium"]  # 1.0, 0.875 (6 examples: two per section)
    assert ids["worst"] == ["train/2/medium", "train/5/hard"]  # 0.0, 0.0: ties in task order
    assert ids["random"] == ["train/1/easy", "train/4/hard"]  # what is left
    many = make_lines(CASES * 4)
    picked = html_report.pick_examples(many, k=4, seed=1)
    scores = {k: [html_report.example_score(line) for line in v] for k, v in picked.items()}
    assert scores["best"] == sorted(scores["best"], reverse=True) and min(scores["best"]) >= 0.875
    assert scores["worst"] == [0.0] * 4
    drawn = [line["id"] for line in picked["random"]]
    assert len(drawn) == 4 and not set(drawn) & {line["id"] for v in ("best", "worst") for line in picked[v]}
    assert drawn == [line["id"] for line in html_report.pick_examples(many, k=4, seed=1)["random"]]
    text = html_report.render(metrics_doc(lines), lines)
    shown = [text.index(f">{i} ·") for k in ("best", "worst", "random") for i in ids[k]]
    assert shown == sorted(shown) and text.index('id="best"') < shown[0]  # on the page in that order


def test_text_is_escaped_and_nothing_points_outside_the_page(tmp_path):
    lines = make_lines()
    text = html_report.render(metrics_doc(lines), lines)
    assert SCRIPT not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = Page(text)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert all(u.startswith(("data:", "#")) for u in page.urls), page.urls
    assert text.count("://") == 1 and "&lt;img src=http://example.com/x.png&gt;" in text  # the question's, as text


def decode(uri):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"), np.int32)


def record_size(record):
    return int(record[schema.IMAGE_WIDTH][0]), int(record[schema.IMAGE_HEIGHT][0])


def test_images_come_from_the_records_with_both_boxes_drawn(built, tmp_path):
    lines = make_lines(records=[0, 1, 2, 3, 4, 5])
    task = {"kind": "records", "data": built, "split": "train"}
    with html_report.task_images(task) as load:
        text = html_report.render(metrics_doc(lines, task), lines, load=load, max_side=200)
    uris = [u for u in Page(text).urls if u.startswith("data:")]
    assert len(uris) == 6 and all(u.startswith("data:image/jpeg;base64,") for u in uris)
    with RecordSource(built, "train") as source:
        record = source.read(0)
    first = lines[0]  # shown first (the best); reference box == predicted box: drawn last, the predicted colour
    im = decode(uris[0])
    h, w = im.shape[:2]
    assert max(h, w) == 200 and (w, h) == tuple(round(200 * v / max(record_size(record))) for v in record_size(
        record))  # scaled down, aspect kept
    x, y = int(BOX_A[0] * w), int((BOX_A[1] + BOX_A[3]) / 2 * h)  # on the box's left edge (2 px wide at 200 px)
    assert np.abs(im[y, x] - html_report.PREDICTED_COLOR).max() < 40
    assert np.abs(im[y, x + 6] - html_report.PREDICTED_COLOR).max() > 60  # inside the box: the image
    second = decode(uris[1])  # the second best, example 3: its predicted box ends at y = 0.5, the reference's at 0.6
    h, w = second.shape[:2]
    x = int(np.ceil(BOX_B[2] * w)) - 1  # on the right edge, where only the reference box runs at y = 0.55
    assert np.abs(second[int(0.55 * h), x] - html_report.REFERENCE_COLOR).max() < 40
    # The reference reasoning is the record's CoT, escaped.
    cot = schema.text(record, schema.cot_key(first["stage"]))
    assert html_report.html.escape(cot) in text
    # An image that cannot be read is named on the page, not fatal.
    gone = {"kind": "records", "data": str(tmp_path / "moved"), "split": "train"}
    with html_report.task_images(gone) as load:
        text = html_report.render(metrics_doc(lines, gone), lines, load=load)
    assert text.count("image not available") == 6 and "data:image" not in text


def test_training_curves_come_from_the_runs_log(tmp_path):
    assert html_report.training_log_path(str(tmp_path / "ckpt")) is None
    run_dir = tmp_path / "run"
    (run_dir / "final").mkdir(parents=True)
    assert html_report.training_log_path(str(run_dir / "final")) is None  # no log
    log = [{"kind": "train", "step": s, "loss": 50.0 / s, "loss/easy": 40.0 / s, "mix/easy": 1 - s / 40,
            "mix/medium": s / 40} for s in (10, 20, 30)]
    log += [{"kind": "train", "step": 40, "loss": 0.1, "loss/easy": 0.1, "loss/hard": 0.2},
            {"kind": "eval", "step": 40, "eval/loss": 0.3, "eval/loss/hard": 0.4}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log) + '{"kind": "tr')
    path = html_report.training_log_path(str(run_dir / "final"))
    assert path == str(run_dir / "metrics.jsonl") and len(html_report.read_training_log(path)) == 5  # cut line out
    svg = html_report.training_charts(html_report.read_training_log(path))
    assert svg.count("<svg") == 2 and "(log scale)" in svg  # the loss spans a factor 50
    for label, points in (("train loss", 4), ("train easy", 4), ("train hard", 1), ("val loss", 1),
                          ("val hard", 1), ("easy", 3), ("medium", 3)):
        assert f">{label}</text>" in svg
    assert ">train medium</text>" not in svg and ">hard</text>" not in svg  # series without a value: no legend
    first = svg.split("<polyline ", 1)[1]
    ys = [float(p.split(",")[1]) for p in first.split('points="', 1)[1].split('"', 1)[0].split()]
    assert ys == sorted(ys)  # a falling loss is drawn going down the page (SVG y grows downwards)
    lines = make_lines()
    doc = metrics_doc(lines, checkpoint=str(run_dir / "final"))
    out = html_report.write_report(str(tmp_path / "report.html"), doc, lines)
    assert (tmp_path / "report.html").read_text().count("<svg") == 2 and out.endswith("report.html")
    assert not os.path.exists(out + ".tmp")


def test_tick_values_are_round_and_cover_the_data():
    assert html_report.nice_ticks(10, 200) == [0, 50, 100, 150, 200]
    assert html_report.nice_ticks(0, 0.97) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert html_report.log_ticks(0.05, 6.7) == [0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
    assert html_report.log_ticks(0.3, 0.4) == [0.2, 0.5]


# ---------------------------------------------------------------------------------------------------------------
# In a browser.


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_dataset(tmp_path_factory, "report", 6)


def _browser():
    """playwright's sync API and chromium's path, or skip (fail with MEDCLM_REQUIRE_TOOLS=1) when missing."""
    required = os.environ.get("MEDCLM_REQUIRE_TOOLS") == "1"
    try:
        from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel
    except ImportError:
        if required:
            pytest.fail("playwright is not installed (pip install playwright; MEDCLM_REQUIRE_TOOLS=1)")
        pytest.skip("playwright is not installed")
    if not os.access("/usr/bin/chromium", os.X_OK):
        if required:
            pytest.fail("/usr/bin/chromium is missing (apt-get install chromium; MEDCLM_REQUIRE_TOOLS=1)")
        pytest.skip("/usr/bin/chromium is missing")
    return sync_playwright


def test_the_report_opens_offline_in_a_browser_with_its_images_and_boxes(built, tmp_path):
    sync_playwright = _browser()
    run_dir = tmp_path / "run"
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(
        {"kind": "train", "step": s, "loss": 6.0 / s, "loss/easy": 5.0 / s, "mix/easy": 0.5}) + "\n" for s in (1, 2, 3)))
    lines = make_lines(records=[0, 1, 2, 3, 4, 5])
    task = {"kind": "records", "data": built, "split": "train"}
    path = html_report.write_report(str(tmp_path / "report.html"), metrics_doc(lines, task, str(run_dir / "final")),
                                    lines)
    shot = tmp_path / "shot.png"
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in (
                "error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto("file://" + os.path.abspath(path), wait_until="load")
            sizes = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
                                  "i.naturalHeight])")
            svgs = page.evaluate("document.querySelectorAll('svg polyline').length")
            page.locator("#examples").scroll_into_view_if_needed()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert all(u.startswith(("file://", "data:")) for u in requests), requests
    assert len(sizes) == 6 and all(done and max(w, h) == 384 for done, w, h in sizes)
    assert svgs >= 3  # train loss, train easy, the easy mix
    pixels = np.asarray(Image.open(shot).convert("RGB"), np.int32)
    assert pixels.std() > 20  # not a blank page
    red = np.all(np.abs(pixels - html_report.REFERENCE_COLOR) < 40, axis=-1)
    amber = np.all(np.abs(pixels - html_report.PREDICTED_COLOR) < 40, axis=-1)
    assert red.sum() > 200 and amber.sum() > 200  # the boxes are on screen, in their colours

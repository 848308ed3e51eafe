"""report.html: self-contained, every section present, and it works in a real headless Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from browser import chromium, run_chromium
from vlmtune.data.prompts import PromptTemplate
from vlmtune.evaluation.evaluate import prediction_row
from vlmtune.evaluation.metrics import baseline_metrics, compute_metrics
from vlmtune.evaluation.report import (
    ReportData,
    find_training_log,
    read_training_log,
    render_report,
    write_report,
)
from vlmtune.utils.jsonl import JsonlError

# (reference title, category, price, generated text); APE: 0.1, 0.5, unread, 0.0, 2.0, 0.3
SAMPLES = [
    ("Wool Scarf", "scarves", 100.0, "Product: Wool Scarf, Category: scarves, Full Price: 110"),
    ("Tote Bag", "bags", 200.0, "Product: Bag, Category: scarves, Full Price: 300"),
    ("Trench Coat", "coats", 1000.0, "a coat on a hanger"),
    ("Polo Shirt", "shirts", 50.0, "Product: Polo Shirt, Category: shirts, Full Price: 50"),
    (
        "Cashmere Scarf",
        "scarves",
        400.0,
        "Product: Cashmere Scarf, Category: SCARVES, Full Price: 1200",
    ),
    ("Belt Bag", "bags", 1000.0, "Product: Belt Bag, Category: hats, Full Price: 700"),
]
EXPECTED_DESC = [5, 2, 6, 1, 4, 3]  # data-index by price error, descending; unread last
TRAIN = [
    {"title": "Wool Scarf", "category": "scarves", "price": 150.0},
    {"title": "Tote", "category": "bags", "price": 250.0},
]


def _rows(tmp_path: Path) -> list[dict]:
    template = PromptTemplate()
    rows = []
    for i, (title, cat, price, text) in enumerate(SAMPLES):
        image = tmp_path / f"img{i}.png"
        Image.new("RGB", (90 + 10 * i, 120), (40 * i, 120, 200 - 30 * i)).save(image)
        ref = {"title": title, "category": cat, "price": price}
        rows.append(prediction_row(f"P{i}", image, ref, text, template.parse(text), template))
    return rows


@pytest.fixture()
def report_data(tmp_path: Path) -> ReportData:
    rows = _rows(tmp_path)
    base_rows = [
        dict(
            r,
            generated="nothing",
            parsed={"title": None, "category": None, "price": None, "errors": {}},
        )
        for r in rows
    ]
    for r in base_rows:
        r["correct"] = dict(
            r["correct"],
            title_exact=False,
            title_read=False,
            category_correct=False,
            category_read=False,
        )
        r["correct"].update(price_read=False, price_within_10pct=False, price_ape=1.0)
    refs = [r["reference"] for r in rows]
    parsed = [PromptTemplate().parse(r["generated"]) for r in rows]
    log = [{"step": s, "loss": 3.0 / s} for s in (1, 2, 3, 4)] + [
        {
            "step": s,
            "eval_loss": loss,
            "eval_parse_rate": rate,
            "eval_n": 6,
            "eval_skipped_images": 0,
        }
        for s, loss, rate in ((2, 1.3, 0.25), (4, 1.1, 0.5))
    ]
    return ReportData(
        metrics=compute_metrics(refs, parsed),
        predictions=rows,
        baselines=baseline_metrics(TRAIN, refs),
        base_metrics=compute_metrics(refs, [PromptTemplate().parse("nothing")] * len(refs)),
        base_predictions=base_rows,
        training_log=log,
        info={"model": "runs/tiny", "split": "test"},
    )


def test_report_is_self_contained(report_data: ReportData):
    page = render_report(report_data)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//)""", page)
    assert "<link" not in page and "<script src" not in page and "@import" not in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == len(SAMPLES)
    assert all(src.startswith("data:image/jpeg;base64,") for src in images)


def test_report_holds_every_section(report_data: ReportData):
    page = render_report(report_data)
    for element_id in (
        "metrics-table",
        "samples",
        "price-scatter",
        "confusion-matrix",
        "curves",
        "definitions",
    ):
        assert f'id="{element_id}"' in page
    assert page.count('<circle class="pt') == 5  # one point per readable price
    assert page.count('class="cm-cell') == 4 * 6  # 4 reference categories x (4 + other + unread)
    assert "Base model" in page and "Baseline: Mean price" in page
    assert "Price MAPE" in page and "an unread price counts as 100 % error" in page
    assert page.count('<svg class="curve"') == 2  # loss/eval_loss, eval_parse_rate
    rows = dict(re.findall(r'<tr class="sample" data-index="(\d+)"(.*?)</tr>', page, re.S))
    right, wrong = rows["1"], rows["2"]  # Wool Scarf all right; "Bag" in scarves: both wrong
    assert re.search(r'field ok"[^>]*><b>Product:</b> Wool Scarf', right)
    assert re.search(r'field ok"[^>]*><b>Category:</b> scarves', right)
    assert re.search(r'field bad"[^>]*><b>Product:</b> Bag', wrong)
    assert re.search(r'field bad"[^>]*><b>Category:</b> scarves', wrong)


def test_report_escapes_generated_text(tmp_path: Path, report_data: ReportData):
    report_data.predictions[0]["generated"] = "<script>alert(1)</script>"
    page = render_report(report_data)
    assert (
        "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    )


def test_report_escapes_a_title_and_facts_holding_markup(report_data: ReportData):
    report_data.info["model"] = "runs/<script>alert('model')</script>"
    report_data.info["data"] = 'd" onmouseover="alert(2)'
    page = render_report(report_data)
    assert "<script>alert" not in page and page.count("<script>") == 1  # only the page's own
    assert (
        "<title>vlmtune evaluation: runs/&lt;script&gt;alert(&#39;model&#39;)&lt;/script&gt;"
        in page
    )
    assert "<dd>runs/&lt;script&gt;" in page and "<dd>d&#34; onmouseover=&#34;alert(2)</dd>" in page


def test_constant_curves_are_named_not_drawn(report_data: ReportData):
    page = render_report(report_data)
    names = re.findall(r'<svg class="curve" data-name="([^"]+)"', page)
    assert names == ["loss", "eval_parse_rate"]  # eval_n (always 6) and skipped images (0) are not
    note = re.search(r'<p class="note" id="constant-curves">(.*?)</p>', page, re.S).group(1)
    assert "eval_n = 6" in note and "eval_skipped_images = 0" in note


def test_a_single_evaluation_is_named_not_drawn_as_a_one_point_chart(report_data: ReportData):
    report_data.training_log = [
        {"step": 1, "loss": 2.0},
        {"step": 2, "loss": 1.0},
        {"step": 2, "eval_loss": 1.2, "eval_parse_rate": 0.5},
    ]
    page = render_report(report_data)
    assert re.findall(r'<svg class="curve" data-name="([^"]+)"', page) == ["loss"]
    assert page.count('<polyline class="line') == 2  # the eval loss sits beside the train loss
    assert "eval_parse_rate = 0.5" in page


def test_the_loss_axis_starts_at_zero_so_heights_are_proportional_to_the_loss(
    report_data: ReportData,
):
    page = render_report(report_data)
    svg = re.search(r'<svg class="curve" data-name="loss".*?</svg>', page, re.S).group(0)
    assert re.search(r'class="tick y-low"[^>]*>0</text>', svg)
    height = int(re.search(r'height="(\d+)"', svg).group(1))
    pad = int(re.search(r'<rect class="frame" x="(\d+)"', svg).group(1))
    train_line = re.search(r'<polyline class="line s0" points="([^"]+)"', svg).group(1)
    ys = [float(point.split(",")[1]) for point in train_line.split()]
    above_axis = [height - pad - y for y in ys]  # loss 3.0, 1.5, 1.0, 0.75
    # a fitted axis (lowest loss at the bottom) would draw 0.75 as 0 and 3.0 as all of the range
    assert above_axis[3] / above_axis[0] == pytest.approx(0.75 / 3.0, abs=0.01)
    assert above_axis[1] / above_axis[0] == pytest.approx(0.5, abs=0.01)


def test_training_log_is_found_from_run_or_model_folder(tmp_path: Path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    log = run / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n\n{"step": 2, "loss": 1.0}\n{"step": 3, "lo')
    assert find_training_log(run) == log
    assert find_training_log(run / "model") == log
    assert find_training_log(tmp_path / "elsewhere") is None
    assert [e["loss"] for e in read_training_log(log)] == [2.0, 1.0]  # the torn tail dropped
    log.write_text('{"step": 1, "loss": 2.0}\nnot json\n{"step": 2, "loss": 1.0}\n')
    with pytest.raises(JsonlError, match="line 2"):
        read_training_log(log)


@pytest.mark.slow
def test_report_renders_and_sorts_in_headless_chromium(tmp_path: Path, report_data: ReportData):
    exe = chromium()
    if exe is None:
        pytest.skip(
            "chromium is not installed (apt-get install chromium; `make browser`): browser test not run"
        )
    page = write_report(tmp_path / "report.html", report_data)
    dom = run_chromium(exe, tmp_path / "profile", "--dump-dom", f"{page.as_uri()}#sort=price-desc")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'data-sorted="price-desc"' in html and 'aria-sort="descending"' in html
    order = [int(i) for i in re.findall(r'<tr class="sample" data-index="(\d+)"', html)]
    assert order == EXPECTED_DESC
    assert len(re.findall(r'<circle class="pt', html)) == 5
    assert len(re.findall(r'class="cm-cell', html)) == 24
    shot = tmp_path / "report.png"
    result = run_chromium(
        exe, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri()
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        colors = image.convert("RGB").getcolors(maxcolors=1 << 24)
    assert len(colors) > 50  # a rendered page, not a blank canvas
    painted = {rgb for _, rgb in colors}
    # right fields on green, wrong ones on red, as the browser paints them
    assert (0xDC, 0xF2, 0xE0) in painted and (0xF9, 0xDE, 0xDE) in painted
    json.dumps(report_data.metrics)  # metrics stay JSON-serialisable

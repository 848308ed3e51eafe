"""The data card: its numbers, the page prepare writes (rendered in headless Chromium), and ``vlmtune inspect``."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from duplicate_catalog import LOOK_IDS, SPLIT, TWIN_IDS, planted_catalog
from PIL import Image

from browser import chromium, run_chromium
from vlmtune.cli.main import main
from vlmtune.data.card import CARD, render_card, summarise
from vlmtune.data.catalog import CatalogColumns
from vlmtune.data.prepare import PrepareArgs, prepare_dataset
from vlmtune.models.image_tokens import image_token_counter
from vlmtune.models.phi3v import Phi3VImageProcessor

NUM_CROPS = 4


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The planted catalog, prepared once with the reference processor's token counter."""
    root = tmp_path_factory.mktemp("card")
    catalog = planted_catalog(root / "cat")
    args = PrepareArgs(
        source=str(catalog), out=root / "out", split=SPLIT, progress=False, num_crops=NUM_CROPS
    )
    prepare_dataset(args, image_tokens=image_token_counter(NUM_CROPS))
    return root / "out"


def _frame() -> pd.DataFrame:
    """bags: 6 train rows, one priced 10x the others, one at 0; hats: 2 train rows; <coats>: test only."""
    rows = [("bags", "train", 100.0)] * 4 + [("bags", "train", 1000.0), ("bags", "train", 0.0)]
    rows += [("hats", "train", 50.0), ("hats", "train", 60.0), ("hats", "val", 55.0)]
    rows += [("<coats>", "test", 900.0)]  # markup in a category name must come out escaped
    return pd.DataFrame(
        {
            "product_code": [f"p{i}" for i in range(len(rows))],
            "title": ["Tote"] * len(rows),
            "category3_code": [c for c, _, _ in rows],
            "full_price": [p for _, _, p in rows],
            "split": [s for _, s, _ in rows],
            "image_width": [672] * 5 + [400] * (len(rows) - 5),
            "image_height": [336] * 5 + [800] * (len(rows) - 5),
            "local_image_path": ["images/x.jpg"] * len(rows),
        }
    )


def test_summary_flags_categories_and_outliers_and_counts_image_tokens(tmp_path):
    counter = image_token_counter(NUM_CROPS)
    summary = summarise(tmp_path, _frame(), CatalogColumns(), rare_min=3, image_tokens=counter)
    flags = {c["name"]: c["flags"] for c in summary.categories}
    assert flags["<coats>"] == ["absent from train"]
    assert flags["hats"] == ["rare: 2 train rows (< 3)"] and flags["bags"] == []
    assert {(o["id"], o["why"].split(" ")[0]) for o in summary.outliers} == {
        ("p4", "10x"),
        ("p5", "zero"),
    }
    processor = Phi3VImageProcessor(num_crops=NUM_CROPS)
    assert summary.tokens[0] == processor.num_tokens_for_size(672, 336) != summary.tokens[-1]
    assert summary.token_totals["test"] == processor.num_tokens_for_size(400, 800)
    page = render_card(tmp_path, summary)
    assert "&lt;coats&gt;" in page and "<coats>" not in page


def test_prepare_writes_a_self_contained_card_with_the_planted_groups(prepared):
    page = (prepared / CARD).read_text(encoding="utf-8")
    groups = re.findall(r'<div class="group" data-group="\d+">', page)
    assert len(groups) == 2
    thumbs = re.findall(r'<img class="thumb" src="data:image/jpeg;base64,[A-Za-z0-9+/=]+"', page)
    assert len(thumbs) == len(LOOK_IDS) + len(TWIN_IDS)
    assert all(pid in page for pid in LOOK_IDS + TWIN_IDS)
    assert not re.search(r'(src|href)="(?!data:)', page)  # no external asset
    assert 'data-plot="tokens"' in page and f"num_crops={NUM_CROPS}" in page
    assert '<span id="bad-price">2</span>' in page  # the 0 and -5 prices, dropped at load


@pytest.mark.slow
def test_data_card_renders_with_its_plots_in_headless_chromium(prepared, tmp_path):
    exe = chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium): browser test not run")
    page = (prepared / CARD).as_uri()
    dom = run_chromium(exe, tmp_path / "profile", "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    plots = re.findall(r'<svg class="plot histogram" data-plot="(\w+)"', html)
    assert plots == ["titles", "widths", "heights", "aspects", "tokens"]
    categories = len(re.findall(r'<tr class="category', html))
    assert categories > 5 and len(re.findall(r'<g class="box-row">', html)) == categories
    assert len(re.findall(r'<rect class="bar"', html)) > 20
    shot = tmp_path / "card.png"
    result = run_chromium(
        exe, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1200,2600", page
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        painted = {rgb for _, rgb in image.convert("RGB").getcolors(maxcolors=1 << 24)}
    # the histogram bars and the price boxes, as the browser paints them
    assert (0x4A, 0x78, 0xC2) in painted and (0xCF, 0xE0, 0xF7) in painted
    assert (0xFD, 0xF1, 0xD8) in painted  # a flagged (rare) category's row


def test_inspect_prints_the_summary_and_writes_nothing(prepared, capsys):
    before = sorted(p.name for p in prepared.iterdir())
    assert main(["inspect", str(prepared), "--num-crops", str(NUM_CROPS)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"duplicate groups \(rows\)\s*│\s*2 \(6\)", out)
    assert re.search(r"conflicting groups\s*│\s*1", out)
    assert all(pid in out for pid in TWIN_IDS)
    assert "rare:" in out and f"num_crops={NUM_CROPS}" in out
    assert re.search(r"dropped for a zero, negative or unreadable price\s*│\s*2", out)
    assert sorted(p.name for p in prepared.iterdir()) == before

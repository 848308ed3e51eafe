"""The listing schema travels with the model: train writes it into every saved model folder,
merge keeps it, eval and predict read it for constrained decoding (or take it from a dataset)."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from vlmtune.cli.main import main
from vlmtune.data.prepared import load_prepared
from vlmtune.inference.listing_schema import SCHEMA_FILE, load_schema, schema_from_dataset
from vlmtune.training.merge import merge_adapter
from vlmtune.training.train import train


class _Headers(HTMLParser):
    """Text of the metrics table's column headers."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[str] = []
        self._in = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._in = tag == "th" and ("scope", "col") in attrs

    def handle_data(self, data: str) -> None:
        if self._in:
            self.headers.append(data)
            self._in = False


def _predict(argv: list[str]) -> list[dict[str, str]]:
    assert main(["predict", *argv]) == 0
    out = Path(argv[argv.index("--out") + 1])
    with open(out, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_schema_is_saved_by_train_kept_by_merge_and_used_by_eval_and_predict(
    tiny_inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    run, data = tmp_path / "run", str(tiny_inputs.data)
    train(tiny_inputs.config(run, max_steps=2, save_steps=2))
    expected = schema_from_dataset(load_prepared(tiny_inputs.data, "train"))
    assert len(expected.categories) > 1
    for folder in (run / "model", run / "checkpoint-2", merge_adapter(run, tmp_path / "merged")):
        assert load_schema(folder) == expected, folder

    out = tmp_path / "eval"
    argv = ["eval", "-m", str(run), "-d", data, "--limit", "3", "--out", str(out)]
    assert main([*argv, "--constrained", "--compare-constrained"]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["decoding"] == "constrained" and doc["model"] == doc["constrained"]
    assert doc["constrained"]["parse_rate"] == 1.0 >= doc["unconstrained"]["parse_rate"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert {row["parsed"]["category"] for row in rows} <= set(expected.categories)
    headers = _Headers()
    headers.feed((out / "report.html").read_text())
    assert headers.headers[1:3] == ["Model (constrained)", "Model (unconstrained)"]

    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (90, 120), (150, 60, 30)).save(photo)
    listing = _predict(["-m", str(tmp_path / "merged"), str(photo), "--out", str(tmp_path / "a.csv"), "--constrained"])  # fmt: skip
    assert listing[0]["category3_code"] in expected.categories and listing[0]["full_price"]

    untrained = ["-m", str(tiny_inputs.checkpoint), str(photo), "--constrained"]
    capsys.readouterr()
    assert main(["predict", *untrained, "--out", str(tmp_path / "b.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and SCHEMA_FILE in err and "--schema-from DATA" in err
    listing = _predict([*untrained, "--out", str(tmp_path / "b.csv"), "--schema-from", data])
    assert listing[0]["category3_code"] in expected.categories

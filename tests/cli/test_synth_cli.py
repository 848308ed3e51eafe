"""``vlmtune synth`` and ``vlmtune serve-images`` from the command line."""

from __future__ import annotations

import csv
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from vlmtune.cli.main import main
from vlmtune.data.synthetic import DBQ_COLUMNS


def test_synth_writes_catalog_images_and_preview(tmp_path: Path) -> None:
    out, sheet = tmp_path / "cat", tmp_path / "sheet.png"
    code = main(["synth", "--out", str(out), "--n", "24", "--image-size", "112x140", "--seed", "4",
                 "--preview", str(sheet), "--base-url", "http://127.0.0.1:8000/"])  # fmt: skip
    assert code == 0
    with open(out / "catalog.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 24 and list(rows[0]) == list(DBQ_COLUMNS)
    assert all(
        r["imageurl"] in ("N.A.",) or r["imageurl"].startswith("http://127.0.0.1:8000/images/")
        for r in rows
    )
    assert sheet.is_file() and (out / "synth_report.json").is_file()


def test_synth_accepts_overrides_and_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "synth.yaml"
    config.write_text(f"out: {tmp_path / 'cfg'}\nn: 9\nimage_size: 112x140\n")
    assert main(["synth", "--config", str(config), "broken_frac=0", "seed=7"]) == 0
    with open(tmp_path / "cfg" / "catalog.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 9 and all(r["imageurl"] != "N.A." for r in rows)


def test_synth_bad_arguments_give_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["synth", "--out", str(tmp_path), "--image-size", "huge"]) == 2
    assert "image_size" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path), "--broken-frac", "2"]) == 2
    assert "broken_frac" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path), "nn=3"]) == 2
    assert "unknown key 'nn'" in capsys.readouterr().err
    assert main(["synth", "--n", "3"]) != 0
    assert "--out" in capsys.readouterr().err
    assert not (tmp_path / "catalog.csv").exists(), "nothing is written when the arguments are bad"


@pytest.mark.slow  # a real `vlmtune` process: pays the import of every registered verb
def test_serve_images_command_serves_a_folder(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hi")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlmtune.cli.main", "serve-images", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "hello.txt", timeout=5) as resp:
            assert resp.read() == b"hi"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_serve_images_rejects_a_missing_folder(tmp_path: Path, capsys) -> None:
    assert main(["serve-images", str(tmp_path / "nope")]) != 0
    assert "is not a folder" in capsys.readouterr().err

"""``train`` warns, and its preflight figures say, when val or test hold categories training lacks."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import pandas as pd

from vlmtune.training.preflight import unseen_categories
from vlmtune.training.train import train


def test_train_warns_when_test_holds_a_category_absent_from_train(tiny_inputs, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(tiny_inputs.data, data)
    assert "UNSEEN_HATS" not in json.dumps(unseen_categories(data))
    manifest = pd.read_parquet(data / "dataset.parquet")
    row = manifest.index[manifest["split"] == "test"][0]
    manifest.loc[row, "category3_code"] = "UNSEEN_HATS"
    manifest.to_parquet(data / "dataset.parquet", index=False)
    config = tiny_inputs.config(tmp_path / "run", max_steps=1, save_steps=1)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, path=data))
    with caplog.at_level(logging.WARNING, logger="vlmtune"):
        train(config)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert "UNSEEN_HATS" in summary["categories_absent_from_train"]["test"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("test split" in m and "UNSEEN_HATS" in m and "absent" in m for m in warned)

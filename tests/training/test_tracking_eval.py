"""Evaluation during training (loss + generation metrics), the best checkpoint, and the trackers."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from vlmtune.data.prepared import load_prepared
from vlmtune.data.prompts import PromptTemplate
from vlmtune.evaluation.evaluate import make_generation_eval
from vlmtune.inference.args import GenerationArgs
from vlmtune.training.callbacks import read_metrics
from vlmtune.training.tracking import tracking_environment, wandb_mode
from vlmtune.training.train import train
from vlmtune.utils.config import ConfigError


def _wandb_records(path: Path) -> list[Any]:
    """The records of an offline W&B run file, parsed with W&B's own protobuf ``Record``.

    The file is W&B's record log (wandb 0.31 has no Python reader left): a 7-byte header
    (``:W&B``, magic, version), then LevelDB-log blocks of 32 KiB holding records cut
    into chunks, each behind a 7-byte header (CRC32, length, chunk type: 1 full, 2 first,
    3 middle, 4 last); a block's tail shorter than a header is padding.
    """
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, header = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, chunks, pos = [], b"", header
    while pos + header <= len(data):
        if block - pos % block < header:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        chunks += data[pos + header : pos + header + length]
        pos += header + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def _generation_eval(tiny_inputs):
    dataset = load_prepared(tiny_inputs.data, "val")
    return make_generation_eval(
        dataset, PromptTemplate(), GenerationArgs(max_new_tokens=6, batch_size=4), limit=4
    )


def test_generation_metrics_are_logged_as_eval_metrics(tiny_inputs, tmp_path):
    run = tmp_path / "run"
    config = tiny_inputs.config(
        run, max_steps=2, eval_steps=2, save_steps=2, metric_for_best="eval_price_mape"
    )
    result = train(config, _generation_eval(tiny_inputs))
    evals = [e for e in read_metrics(run / "metrics.jsonl") if "eval_loss" in e]
    assert len(evals) == 1 and evals[0]["step"] == 2
    assert {"eval_price_mape", "eval_category_accuracy", "eval_title_token_f1"} <= evals[0].keys()
    assert result.summary["best_metric"] == evals[0]["eval_price_mape"]
    with pytest.raises(ConfigError, match="generation metric"):
        train(config)  # the same metric without a generation evaluation


def test_best_checkpoint_is_kept_and_becomes_the_final_model(tiny_inputs, tmp_path, count_models):
    run = tmp_path / "run"
    # greater_is_better on the loss makes the first evaluation the best one, so best != last
    config = tiny_inputs.config(
        run, mode="full", max_steps=6, eval_steps=2, save_steps=2, save_total_limit=2,
        metric_for_best="eval_loss", greater_is_better=True, learning_rate=3e-3,
    )  # fmt: skip
    result = train(config)
    assert len(count_models) == 1, "the best weights load into the trained model: no second model"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-6"]
    assert result.summary["best_checkpoint"].endswith("checkpoint-2")
    final, best = (
        load_file(str(run / "model" / "model.safetensors")),
        load_file(str(run / "checkpoint-2" / "model.safetensors")),
    )
    last = load_file(str(run / "checkpoint-6" / "model.safetensors"))
    assert all((final[k] == best[k]).all() for k in final)
    assert any(not (final[k] == last[k]).all() for k in final)


def test_wandb_goes_offline_without_an_api_key_and_logs_the_table(
    tiny_inputs, tmp_path, monkeypatch
):
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    assert wandb_mode() == "offline"
    assert (
        wandb_mode({"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}) == "offline"
    )
    run = tmp_path / "run"
    config = tiny_inputs.config(
        run, max_steps=2, eval_steps=2, save_steps=2, report_to="wandb", run_name="t"
    )
    train(config, _generation_eval(tiny_inputs))
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    tables = list(offline[0].glob("files/media/table/eval/predictions*.table.json"))
    assert tables, "the eval predictions table is logged"
    table = json.loads(tables[0].read_text())
    columns = table["columns"]
    assert len(columns) == len(set(columns)), f"duplicate columns: {columns}"
    assert {"image", "image_path", "generated"} <= set(columns)
    # The photos travel with the run (the table's media in its run_table artifact), named by
    # their file, and the final model is a "model" artifact: read from the run's record log.
    records = _wandb_records(next(offline[0].glob("run-*.wandb")))
    artifacts = {a.type: a for a in (r.artifact for r in records if r.HasField("artifact"))}
    photo = Path(table["data"][0][columns.index("image_path")])
    media = [entry.path for entry in artifacts["run_table"].manifest.contents]
    assert any(p.startswith("media/images/") and p.endswith(photo.name) for p in media), media
    assert artifacts["model"].name == "t-model"
    assert "adapter_model.safetensors" in {e.path for e in artifacts["model"].manifest.contents}
    assert "WANDB_MODE" not in os.environ, "the tracker environment is restored after the run"

    # W&B reads its environment once per session: a second run in this process must still
    # write into its own folder, not into the first run's.
    second = tmp_path / "second"
    train(tiny_inputs.config(second, max_steps=1, report_to="wandb", run_name="t2"))
    assert len(list((second / "wandb").glob("offline-run-*"))) == 1
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1


def test_tensorboard_writes_event_files(tiny_inputs, tmp_path):
    run = tmp_path / "run"
    train(tiny_inputs.config(run, max_steps=2, report_to="tensorboard"))
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))


def test_mlflow_logs_into_a_file_store_in_the_run_folder(tiny_inputs, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow-skinny is a dev extra: pip install -e .[dev]")
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(key, raising=False)
    run = tmp_path / "run"
    train(tiny_inputs.config(run, max_steps=2, report_to="mlflow", wandb_project="catalog"))
    [loss] = list((run / "mlruns").glob("*/*/metrics/loss"))
    assert len(loss.read_text().split("\n")) >= 2, "one loss line per logged step"
    [experiment] = [p for p in (run / "mlruns").glob("*/meta.yaml") if "catalog" in p.read_text()]
    assert experiment.parent == loss.parents[2]
    assert "MLFLOW_TRACKING_URI" not in os.environ, "the tracker environment is restored"


def test_tracking_environment_is_scoped(tmp_path):
    env = {"KEEP": "1"}
    with tracking_environment("mlflow", tmp_path, "proj", env) as updates:
        assert (
            env["MLFLOW_TRACKING_URI"].startswith("file:")
            and env["MLFLOW_EXPERIMENT_NAME"] == "proj"
        )
        assert updates.keys() == {
            "MLFLOW_TRACKING_URI",
            "MLFLOW_EXPERIMENT_NAME",
            "MLFLOW_ALLOW_FILE_STORE",
        }
    assert env == {"KEEP": "1"}

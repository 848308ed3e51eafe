"""``vlmtune train`` and ``vlmtune merge`` from the command line, on the shipped recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiny_model import tiny_overrides
from vlmtune.cli.main import main
from vlmtune.cli.train import generation_eval_for
from vlmtune.inference.loading import load_model_and_processor
from vlmtune.training.args import TrainConfig
from vlmtune.training.callbacks import read_metrics
from vlmtune.utils.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = [
    "train.max_steps=2", "train.per_device_batch_size=4", "train.eval_steps=2", "train.save_steps=2",
    "train.report_to=none", "train.dataloader_workers=0", "data.eval_limit=4", "model.num_crops=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-train")
    assert (
        main(
            [
                "synth",
                "--out",
                str(root / "synth"),
                "n=24",
                "image_size=112x140",
                "broken_frac=0",
                "workers=1",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "prepare",
                "--source",
                str(root / "synth" / "catalog.csv"),
                "--out",
                str(root / "data"),
                "--no-progress",
            ]
        )
        == 0
    )
    sizes = tiny_overrides()
    assert (
        main(["init-model", "--data", str(root / "data"), "--out", str(root / "ckpt"), *sizes]) == 0
    )
    return root / "ckpt", root / "data"


def _train(inputs, out: Path, recipe: str, *extra: str) -> int:
    ckpt, data = inputs
    args = [
        "--config",
        str(CONFIGS / recipe),
        "--model",
        str(ckpt),
        "--data",
        str(data),
        "--out",
        str(out),
    ]
    return main(["train", *args, *TINY, *extra])


def test_lora_recipe_trains_with_generation_metrics_then_merges(inputs, tmp_path, capsys):
    run = tmp_path / "lora"
    assert _train(inputs, run, "lora.yaml") == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["model_dir"] == str(run / "model") and printed["global_step"] == 2
    assert (run / "model" / "adapter_config.json").is_file()
    evals = [e for e in read_metrics(run / "metrics.jsonl") if "eval_loss" in e]
    assert "eval_price_mape" in evals[-1], (
        "the recipe's metric_for_best comes from the generation evaluation"
    )
    assert (run / "config.yaml").read_text().count("gradient_checkpointing: true") == 1
    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_full_demo_recipe_and_resume_auto(inputs, tmp_path, capsys):
    run = tmp_path / "full"
    assert _train(inputs, run, "demo.yaml") == 0
    assert (run / "model" / "model.safetensors").is_file() and (
        run / "model" / "tokenizer.json"
    ).is_file()
    assert _train(inputs, run, "demo.yaml", "--resume", "auto", "train.max_steps=4") == 0
    assert json.loads((run / "train_summary.json").read_text())["global_step"] == 4
    assert [e["step"] for e in read_metrics(run / "metrics.jsonl") if "eval_loss" in e] == [2, 4]
    # a resume in another mode is refused in one line before any work; config.yaml is kept
    config = (run / "config.yaml").read_bytes()
    capsys.readouterr()
    assert _train(inputs, run, "demo.yaml", "--resume", "auto", "--mode", "lora") == 2
    err = capsys.readouterr().err
    [err] = [line for line in err.splitlines() if line.startswith("vlmtune")]  # logs aside
    assert "train.mode" in err, err
    assert "trained with full, this command asks for lora" in err and "--mode full" in err
    assert (run / "config.yaml").read_bytes() == config


def test_configuration_errors_exit_2_with_the_key(inputs, tmp_path, capsys):
    assert _train(inputs, tmp_path / "x", "demo.yaml", "train.learnin_rate=1") == 2
    assert "train.learnin_rate" in capsys.readouterr().err
    assert (
        main(["train", "--config", str(CONFIGS / "demo.yaml"), "--out", str(tmp_path / "y")]) == 2
    )
    assert "model.path (--model)" in capsys.readouterr().err
    assert _train(inputs, tmp_path / "z", "qlora.yaml") == 2
    assert "bitsandbytes" in capsys.readouterr().err


def test_the_training_evaluation_generates_as_configured(inputs):
    ckpt, data = inputs
    model, processor = load_model_and_processor(ckpt)

    def generated(max_new_tokens: int) -> list[str]:
        overrides = [f"train.eval_max_new_tokens={max_new_tokens}", "data.eval_limit=3"]
        config = load_config(
            TrainConfig,
            CONFIGS / "demo.yaml",
            [*overrides, "train.eval_generation_batch_size=2"],
            values={"model.path": ckpt, "data.path": data, "train.output_dir": "unused"},
        )
        metrics, rows = generation_eval_for(config)(model, processor)
        assert metrics["n"] == len(rows) >= 1
        return [row["generated"] for row in rows]

    short, long = generated(2), generated(12)
    assert all(len(a) < len(b) for a, b in zip(short, long, strict=True)), (short, long)
    with pytest.raises(ConfigError, match="eval_max_new_tokens"):
        load_config(TrainConfig, None, ["train.eval_max_new_tokens=0"])

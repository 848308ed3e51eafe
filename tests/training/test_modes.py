"""Training modes, LoRA targets per component, recipes and the fail-fast checks before step 1."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import get_type_hints

import pytest
import torch

from vlmtune.training.args import LoraArgs, TrainArgs, TrainConfig
from vlmtune.training.build import (
    build_datasets,
    build_model,
    load_processor,
    parameter_counts,
    weights_dtype,
)
from vlmtune.training.preflight import PreflightError, check_backends, preflight_summary
from vlmtune.training.train import train, training_arguments
from vlmtune.utils.config import FLAG, ConfigError, field_docs, load_config
from vlmtune.utils.devices import resolve_dtype

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _counts(
    tiny_inputs, mode: str, lora: LoraArgs | None = None, **train: object
) -> dict[str, int]:
    config = tiny_inputs.config(Path("unused"), mode=mode, **train)
    return parameter_counts(build_model(config.model, config.train, lora or LoraArgs()))


def test_full_and_frozen_modes_train_the_right_components(tiny_inputs):
    full = _counts(tiny_inputs, "full")
    assert full["trainable"] == full["total"] and min(full["vision_tower"], full["projector"]) > 0
    frozen = _counts(tiny_inputs, "frozen_vision")
    assert frozen["vision_tower"] == 0 and frozen["projector"] == full["projector"]
    assert frozen["language_model"] == full["language_model"]
    lm_only = _counts(tiny_inputs, "full", freeze_vision=True, freeze_projector=True)
    assert (
        lm_only["vision_tower"] == lm_only["projector"] == 0
        and lm_only["language_model"] == full["language_model"]
    )


def test_lora_targets_are_chosen_per_component(tiny_inputs):
    lm = _counts(tiny_inputs, "lora")
    assert lm["lora"] > 0 and lm["vision_tower"] == lm["projector"] == lm["language_model"] == 0
    config = tiny_inputs.config(Path("unused"), mode="lora")
    wide = LoraArgs(
        vision_tower=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"], projector=["all"]
    )
    model = build_model(config.model, config.train, wide)
    adapted = {n for n, p in model.named_parameters() if "lora_" in n and p.requires_grad}
    assert any("img_processor" in n and ".q_proj." in n for n in adapted)
    assert any("img_projection" in n for n in adapted)
    assert any(".qkv_proj." in n for n in adapted) and any(".gate_up_proj." in n for n in adapted)
    counts = parameter_counts(model)
    assert counts["lora"] > lm["lora"] and counts["lora_language_model"] == lm["lora"]
    assert counts["lora_vision_tower"] > 0 and counts["lora_projector"] > 0
    assert (
        counts["lora"]
        == counts["lora_vision_tower"] + counts["lora_projector"] + counts["lora_language_model"]
    )
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_an_unknown_lora_target_is_named(tiny_inputs):
    with pytest.raises(
        ConfigError, match=r"lora.vision_tower: 'qkv_proj' is not a Linear layer.*q_proj"
    ):
        _counts(tiny_inputs, "lora", LoraArgs(vision_tower=["qkv_proj"]))
    with pytest.raises(ConfigError, match="no target module"):
        _counts(tiny_inputs, "lora", LoraArgs(language_model=[]))


def test_qlora_deepspeed_and_mlflow_fail_clearly_on_this_machine(
    tiny_inputs, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow were not installed
    for train_args, message in (
        ({"mode": "qlora"}, "qlora needs the bitsandbytes package and a CUDA GPU"),
        ({"deepspeed": CONFIGS / "deepspeed_zero2.json"}, "needs the deepspeed package"),
        ({"report_to": "mlflow"}, "needs the 'mlflow' package"),
    ):
        with pytest.raises(ConfigError, match=message):
            check_backends(tiny_inputs.config(tmp_path, **train_args))


def test_fsdp_launch_without_gpu_and_cpu_precision(tiny_inputs, tmp_path, monkeypatch):
    assert resolve_dtype("auto") == torch.float32  # no GPU here: fp32
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="FSDP .*needs CUDA GPUs"):
        check_backends(tiny_inputs.config(tmp_path))


def test_updated_weights_stay_float32_under_16_bit_compute(tiny_inputs, tmp_path):
    def loaded(mode: str, **train: object) -> set[torch.dtype]:
        config = tiny_inputs.config(tmp_path, mode=mode, **train)
        config.model.dtype = "bfloat16"
        model = build_model(config.model, config.train, config.lora)
        assert training_arguments(config, tmp_path, model).bf16, "bf16 autocast"
        return {p.dtype for n, p in model.named_parameters() if "lora_" not in n}

    assert loaded("full") == loaded("frozen_vision") == {torch.float32}
    assert loaded("lora") == {torch.bfloat16}, "frozen LoRA base weights stay 16-bit"
    config = tiny_inputs.config(tmp_path, mode="full", deepspeed=CONFIGS / "deepspeed_zero2.json")
    config.model.dtype = "bfloat16"
    assert weights_dtype(config.model, config.train) == torch.bfloat16, "ZeRO keeps fp32 masters"


def test_preflight_fails_fast_when_nothing_would_train(tiny_inputs, tmp_path):
    config = tiny_inputs.config(tmp_path, mode="full")
    model = build_model(config.model, config.train, config.lora)
    processor = load_processor(config.model)
    datasets = build_datasets(config.data, processor, with_eval=False)
    args = training_arguments(config, tmp_path, model)
    summary = preflight_summary(model, datasets, config, args)
    assert summary["parameters"]["trainable"] > 0 and summary["samples_checked"]["label_tokens"] > 0
    for param in model.parameters():
        param.requires_grad_(False)
    with pytest.raises(PreflightError, match="no trainable parameter"):
        preflight_summary(model, datasets, config, args)


def test_over_long_rows_are_left_out_and_counted(tiny_inputs, tmp_path):
    config = tiny_inputs.config(tmp_path / "run", max_steps=1)
    processor = load_processor(config.model)
    full = build_datasets(config.data, processor, with_eval=False)
    lengths = sorted(full.train.lengths())
    config.data.max_length = lengths[len(lengths) // 2]
    cut = build_datasets(config.data, processor, with_eval=False)
    assert 0 < len(cut.train) < len(full.train)
    assert cut.left_out_counts() == {"too_long": len(full.train) - len(cut.train)}
    assert max(cut.train.lengths()) <= config.data.max_length
    config.data.max_length = 16
    with pytest.raises(ConfigError, match="no training rows left"):
        train(config)


@pytest.mark.parametrize(
    "recipe", sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name != "fsdp.yaml")
)
def test_recipes_map_onto_train_config(recipe, tmp_path):
    config = load_config(
        TrainConfig,
        CONFIGS / recipe,
        ["model.path=m", "data.path=d", f"train.output_dir={tmp_path}"],
    )
    config.require_paths()
    assert config.train.mode in ("lora", "full", "frozen_vision", "qlora")
    assert recipe != "frozen_vision.yaml" or config.train.freeze_vision


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["lora.yaml", "full.yaml", "frozen_vision.yaml"])
def test_gpu_recipes_run_on_the_tiny_model(recipe, tiny_inputs, tmp_path):
    run = tmp_path / "run"
    overrides = [
        f"model.path={tiny_inputs.checkpoint}",
        f"data.path={tiny_inputs.data}",
        f"train.output_dir={run}",
        "train.max_steps=2",
        "train.per_device_batch_size=2",
        "train.grad_accum=2",
        "train.eval_steps=2",
        "train.save_steps=2",
        "train.metric_for_best=eval_loss",
        "train.report_to=none",
        "train.dataloader_workers=0",
        "data.eval_limit=4",
    ]
    result = train(load_config(TrainConfig, CONFIGS / recipe, overrides))
    assert result.summary["global_step"] == 2 and (run / "checkpoint-2").is_dir()
    assert result.model_dir is not None and any(result.model_dir.glob("*.safetensors"))


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="train.learning_rate"):
        load_config(TrainConfig, None, ["train.learning_rate=fast"])
    with pytest.raises(
        ConfigError, match="save_steps=50 must be a multiple of train.eval_steps=30"
    ):
        load_config(
            TrainConfig,
            None,
            ["train.metric_for_best=eval_loss", "train.eval_steps=30", "train.save_steps=50"],
        )
    with pytest.raises(ConfigError, match="missing required setting"):
        TrainConfig().require_paths()
    with pytest.raises(ConfigError, match="eval_price_mape.*generation_eval is off"):
        load_config(
            TrainConfig,
            None,
            ["train.metric_for_best=eval_price_mape", "train.generation_eval=false"],
        )
    assert TrainArgs(metric_for_best="eval_price_mape").best_is_greater() is False
    assert TrainArgs(metric_for_best="eval_category_accuracy").best_is_greater() is True


def test_the_train_verbs_options_are_declared_once_on_the_config():
    """Each option of `vlmtune train` is a flag() field (YAML key, dotted override and flag in one
    place) with the docstring that becomes its help."""
    flags = {}
    for section in dataclasses.fields(TrainConfig):
        cls = get_type_hints(TrainConfig)[section.name]
        for item in dataclasses.fields(cls):
            if FLAG in item.metadata:
                flags[f"{section.name}.{item.name}"] = item.metadata[FLAG]["names"]
                assert field_docs(cls).get(item.name), f"{section.name}.{item.name} has no help"
    assert flags == {
        "model.path": ("--model", "-m"),
        "data.path": ("--data", "-d"),
        "train.output_dir": ("--out", "-o"),
        "train.mode": ("--mode",),
        "train.resume": ("--resume",),
        "train.overwrite": ("--overwrite",),
        "train.generation_eval": ("--generation-eval/--no-generation-eval",),
    }
    defaults = TrainConfig()
    assert defaults.train.generation_eval is True and defaults.train.overwrite is False

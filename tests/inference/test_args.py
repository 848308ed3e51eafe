"""The inference block shared by eval and predict: its YAML shape and the flags each option has."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import get_type_hints

import pytest

from vlmtune.evaluation.args import EvalArgs, PredictArgs
from vlmtune.inference.args import GenerationArgs, InferenceArgs
from vlmtune.utils.config import FLAG, ConfigError, config_to_dict, field_docs, load_config

EVAL_YAML = """
inference:
  model: runs/lora
  device: cpu
  dtype: bfloat16
  generation:
    batch_size: 4
    max_new_tokens: 48
  prompt:
    style: seed
data: data/burberry
split: val
base_model: base
overwrite: true
"""


def _flags(cls: type, prefix: str = "") -> dict[str, str]:
    """``{flag name: dotted key}`` of every flag() field under ``cls``; positionals as ``<ARG>``."""
    found: dict[str, str] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            found |= _flags(hints[f.name], key + ".")
        spec = f.metadata.get(FLAG)
        if spec is not None:
            assert field_docs(cls).get(f.name), f"{key} has no docstring to show as its help"
            for name in spec["names"] or ("<ARG>",):
                found[name] = key
    return found


def test_the_documented_yaml_shape_loads(tmp_path: Path):
    config = tmp_path / "eval.yaml"
    config.write_text(EVAL_YAML)
    args = load_config(EvalArgs, config, ["inference.generation.batch_size=2"])
    assert args.model == Path("runs/lora") and args.inference.dtype == "bfloat16"
    assert args.inference.generation == GenerationArgs(batch_size=2, max_new_tokens=48)
    assert args.inference.prompt.style == "seed" and args.split == "val" and args.overwrite
    assert config_to_dict(args)["inference"]["generation"]["batch_size"] == 2
    predict = load_config(PredictArgs, None, ["inference.model=m", "inputs=[a.jpg, photos]"])
    assert predict.model == Path("m") and predict.inputs == [Path("a.jpg"), Path("photos")]


def test_eval_and_predict_keep_todays_flags_each_declared_once():
    inference = {
        "--model": "inference.model",
        "-m": "inference.model",
        "--device": "inference.device",
        "--batch-size": "inference.generation.batch_size",
        "--max-new-tokens": "inference.generation.max_new_tokens",
        "--constrained/--no-constrained": "inference.generation.constrained",
        "--schema-from": "inference.schema_from",
    }
    assert _flags(EvalArgs) == inference | {
        "--data": "data",
        "-d": "data",
        "--split": "split",
        "--limit": "limit",
        "--base-model": "base_model",
        "--out": "out",
        "-o": "out",
        "--overwrite": "overwrite",
        "--compare-constrained": "compare_constrained",
    }
    assert _flags(PredictArgs) == inference | {
        "<ARG>": "inputs",
        "--out": "out",
        "-o": "out",
        "--overwrite": "overwrite",
    }


def test_a_missing_model_names_the_key_and_the_flag():
    with pytest.raises(ConfigError, match=r"inference\.model: required .*--model"):
        load_config(EvalArgs, None, ["data=d"])
    with pytest.raises(ValueError, match="model: must not be empty"):
        InferenceArgs(model="  ")
    assert InferenceArgs().model is None  # the block alone may omit it (a verb decides)

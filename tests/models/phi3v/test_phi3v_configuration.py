"""Phi3VConfig: the official config.json, both rope forms, the vision config, geometry errors."""

from __future__ import annotations

import json
import logging

import pytest

from vlmtune.models.phi3v import Phi3VConfig, tiny_phi3v_config
from vlmtune.models.phi3v.configuration_phi3v import CLIP_VIT_L14_336, OFFICIAL_CLIP_NAME


def _official(golden) -> dict:
    return json.loads((golden / "checkpoint" / "config.json").read_text())


def test_reads_golden_config(golden):
    config = Phi3VConfig.from_pretrained(golden / "checkpoint")
    assert config.model_type == "phi3_v" and config.hidden_size == 64 and config.vocab_size == 32064
    rope = config.rope_parameters
    assert rope["rope_type"] == "longrope" and len(rope["long_factor"]) == 8
    assert rope["original_max_position_embeddings"] == 4096
    vision = config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.intermediate_size) == (1024, 2, 64)
    assert (vision.image_size, vision.patch_size, vision.hidden_act) == (336, 14, "quick_gelu")
    assert (
        config.crop_size == 336
        and config.tokens_per_crop == 144
        and config.num_vision_layers_used() == 1
    )
    assert config.text_config.hidden_size == 64 and config.text_config.model_type == "phi3"


@pytest.mark.parametrize("form", ["official", "transformers5", "longrope", "rope_parameters"])
def test_rope_scaling_forms(golden, form):
    data = _official(golden)
    factors = {k: data["rope_scaling"][k] for k in ("short_factor", "long_factor")}
    data["rope_scaling"] = {
        "official": {"type": "su", **factors},
        "transformers5": {"type": "su", "rope_type": "su", "rope_theta": 10000.0, **factors},
        "longrope": {"rope_type": "longrope", **factors},
        "rope_parameters": None,
    }[form]
    if form == "rope_parameters":  # what a plain transformers-5 save_pretrained would write
        data["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0, **factors}
    config = Phi3VConfig(**data)
    assert config.rope_parameters["rope_type"] == "longrope"
    assert config.rope_parameters["short_factor"] == factors["short_factor"]


def test_saves_the_official_layout(tmp_path, golden):
    Phi3VConfig.from_pretrained(golden / "checkpoint").save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    original = _official(golden)
    assert saved["rope_scaling"] == {
        k: original["rope_scaling"][k] for k in ("type", "short_factor", "long_factor")
    }
    assert "rope_parameters" not in saved
    for key in (
        "model_type",
        "embd_layer",
        "img_processor",
        "hidden_size",
        "num_hidden_layers",
        "vocab_size",
        "original_max_position_embeddings",
        "max_position_embeddings",
        "rope_theta",
        "architectures",
        "torch_dtype",
        "use_cache",
    ):
        assert saved[key] == original[key], key
    assert "auto_map" not in saved, "the folder holds none of the remote-code files auto_map names"
    again = Phi3VConfig.from_pretrained(tmp_path)
    assert (
        again.rope_parameters == Phi3VConfig.from_pretrained(golden / "checkpoint").rope_parameters
    )


def test_auto_map_names_only_the_remote_code_the_folder_holds(tmp_path, golden):
    config = Phi3VConfig.from_pretrained(golden / "checkpoint")
    (tmp_path / "configuration_phi3_v.py").write_text("# the base model's remote code\n")
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"] == {"AutoConfig": "configuration_phi3_v.Phi3VConfig"}
    (tmp_path / "modeling_phi3_v.py").write_text("# the base model's remote code\n")
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"] == _official(golden)["auto_map"]


def test_saved_config_is_for_inference_whatever_training_set_in_memory(tmp_path):
    config = tiny_phi3v_config(use_cache=False, pad_token_id=0)
    config.save_pretrained(tmp_path, dtype="bfloat16")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["use_cache"] is True and config.use_cache is False
    assert saved["architectures"] == ["Phi3VForCausalLM"] and saved["torch_dtype"] == "bfloat16"
    assert "dtype" not in saved and "id2label" not in saved, "only fields the hub's file has"
    assert saved["pad_token_id"] == config.pad_token_id, "a field off its default is kept"
    tiny_phi3v_config().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "float32"


@pytest.mark.parametrize("source", ["tiny", "golden"])
def test_longrope_configs_load_without_the_rope_parameters_warning(tmp_path, golden, source):
    """transformers warns (once per process) about original_max_position_embeddings without a
    LongRoPE factor; the factor it would derive is set, so neither config triggers it."""
    from transformers.utils import logging as hf_logging

    if source == "tiny":
        tiny_phi3v_config().save_pretrained(tmp_path)
        folder = tmp_path
    else:
        folder = golden / "checkpoint"
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    hf_logger = hf_logging.get_logger("transformers")
    hf_logger.addHandler(handler)
    try:
        logging_once = hf_logging.get_logger("transformers.modeling_rope_utils").warning_once
        logging_once.cache_clear()  # an earlier load in this process must not hide the warning
        config = Phi3VConfig.from_pretrained(folder)
    finally:
        hf_logger.removeHandler(handler)
    assert not [m for m in messages if "rope" in m.lower()], messages
    rope = config.rope_parameters
    assert rope["factor"] == config.max_position_embeddings / 4096 == 32.0


def test_clip_large_values_from_the_model_name_alone():
    config = Phi3VConfig(
        img_processor={
            "model_name": OFFICIAL_CLIP_NAME,
            "image_dim_out": 1024,
            "num_img_tokens": 144,
        }
    )
    vision = config.vision_config
    for key, value in CLIP_VIT_L14_336.items():
        assert getattr(vision, key) == value, key


def test_explicit_vision_config_is_honoured():
    config = tiny_phi3v_config(crop_size=112, patch_size=14, vision_hidden_size=48, vision_heads=4)
    assert config.vision_config.image_size == 112 and config.vision_config.hidden_size == 48
    assert config.tokens_per_crop == 16 and config.patch_grid == 8


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"crop_size": 42}, "even integer grid"),
        ({"crop_size": 50}, "even integer grid"),
    ],
)
def test_geometry_that_cannot_merge_2x2_is_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_phi3v_config(**overrides)


def test_other_bad_settings_are_refused():
    base = tiny_phi3v_config().img_processor
    with pytest.raises(ValueError, match="num_img_tokens"):
        tiny_phi3v_config(img_processor={**base, "num_img_tokens": 5})
    with pytest.raises(ValueError, match="image_dim_out"):
        tiny_phi3v_config(img_processor={**base, "image_dim_out": 64})
    with pytest.raises(ValueError, match="vision_config"):
        tiny_phi3v_config(img_processor={k: v for k, v in base.items() if k != "vision_config"})
    with pytest.raises(ValueError, match="projection_cls"):
        tiny_phi3v_config(embd_layer={"projection_cls": "linear"})

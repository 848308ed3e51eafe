"""A full fine-tune's model folder is shaped like the hub's, as a merge output is: the base
checkpoint's own remote-code files copied over (vLLM reads them) and named by ``auto_map``;
an adapter run's model folder gets none."""

from __future__ import annotations

import json

import pytest

from vlmtune.models.phi3v import missing_remote_code
from vlmtune.training.train import train

REMOTE_CODE = ("configuration_phi3_v.py", "processing_phi3_v.py", "image_processing_phi3_v.py")


@pytest.mark.slow
def test_full_model_folder_carries_the_bases_remote_code(tiny_inputs, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    for path in tiny_inputs.checkpoint.iterdir():
        (base / path.name).symlink_to(path)
    for name in REMOTE_CODE:
        (base / name).write_text(f"# {name}: the base checkpoint's own remote code\n")
    runs = {}
    for mode in ("full", "lora"):
        config = tiny_inputs.config(tmp_path / mode, mode=mode, max_steps=1, save_steps=1)
        config.model.path = base
        runs[mode] = train(config).model_dir
    full = runs["full"]
    for name in REMOTE_CODE:
        assert (full / name).read_text() == (base / name).read_text(), name
    assert missing_remote_code(full) == []
    config = json.loads((full / "config.json").read_text(encoding="utf-8"))
    assert config["auto_map"]["AutoConfig"] == "configuration_phi3_v.Phi3VConfig"
    assert config["architectures"] == ["Phi3VForCausalLM"] and config["use_cache"] is True
    assert not list(runs["lora"].glob("*.py")), "an adapter folder holds no remote code"

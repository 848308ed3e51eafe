"""``vlmtune merge``: a LoRA run becomes an official-layout checkpoint with identical logits."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from vlmtune.cli.main import main
from vlmtune.data.collator import VisionSFTCollator
from vlmtune.data.dataset import VisionSFTDataset
from vlmtune.data.prepared import load_prepared
from vlmtune.data.prompts import PromptTemplate
from vlmtune.models.phi3v import Phi3VForCausalLM, Phi3VProcessor
from vlmtune.training.args import LoraArgs
from vlmtune.training.merge import merge_adapter
from vlmtune.training.train import train
from vlmtune.utils.config import ConfigError


@pytest.fixture(scope="module")
def lora_run(tiny_inputs, tmp_path_factory):
    run = tmp_path_factory.mktemp("lora-run")
    config = tiny_inputs.config(run, max_steps=3, learning_rate=5e-3)
    config.lora = LoraArgs(vision_tower=["q_proj", "fc2"], projector=["all"], dropout=0.0)
    train(config)
    return run


def _batch(tiny_inputs, processor):
    ds = VisionSFTDataset(load_prepared(tiny_inputs.data, "val"), processor, PromptTemplate(), 4096)
    batch = VisionSFTCollator(processor.tokenizer.pad_token_id)([ds[i] for i in range(3)])
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}


def test_merged_checkpoint_gives_the_adapted_models_logits(tiny_inputs, lora_run, tmp_path):
    out = merge_adapter(lora_run, tmp_path / "merged")
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "adapter_config.json").exists()
    base = Phi3VForCausalLM.from_pretrained(tiny_inputs.checkpoint)
    adapted = PeftModel.from_pretrained(base, lora_run / "model").eval()
    merged = Phi3VForCausalLM.from_pretrained(out).eval()
    inputs = _batch(tiny_inputs, Phi3VProcessor.from_pretrained(out))
    with torch.no_grad():
        expected, got = adapted(**inputs).logits, merged(**inputs).logits
        plain = Phi3VForCausalLM.from_pretrained(tiny_inputs.checkpoint).eval()(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (plain - expected).abs().max() > 1e-3, (
        "the adapter changed the model (so the check is meaningful)"
    )


def test_merge_cli_and_errors(tiny_inputs, lora_run, tmp_path):
    assert main(["merge", str(lora_run), "--out", str(tmp_path / "m"), "--dtype", "bfloat16"]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    assert (
        Phi3VForCausalLM.from_pretrained(tmp_path / "m", torch_dtype="auto").dtype == torch.bfloat16
    )
    with pytest.raises(ConfigError, match="holds no LoRA adapter"):
        merge_adapter(tiny_inputs.checkpoint, tmp_path / "x")
    assert main(["merge", str(tiny_inputs.checkpoint), "--out", str(tmp_path / "y")]) == 2

"""Loading for inference from a checkpoint, an adapter or a run folder."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from vlmtune.inference.loading import (
    ModelFolderError,
    check_model,
    load_model_and_processor,
    resolve_model_dir,
)
from vlmtune.models.phi3v import Phi3VForCausalLM, build_tiny_phi3v, tiny_phi3v_config
from vlmtune.utils.errors import UserError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from vlmtune.models.families.phi3v import train_tokenizer
    from vlmtune.models.phi3v import Phi3VImageProcessor, Phi3VProcessor

    folder = tmp_path_factory.mktemp("ckpt")
    tok = train_tokenizer(
        ["Product: Tote, Category: BAGS, Full Price: 450<|end|>"] * 20, vocab_size=300
    )
    model = build_tiny_phi3v(
        tiny_phi3v_config(vocab_size=320, pad_token_id=3, eos_token_id=3), seed=0
    )
    model.save_pretrained(folder)
    Phi3VProcessor(
        image_processor=Phi3VImageProcessor(num_crops=1, crop_size=56), tokenizer=tok
    ).save_pretrained(folder)
    return folder


def _logits(model):
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_checkpoint_and_run_folder(checkpoint, tmp_path):
    model, processor = load_model_and_processor(checkpoint)
    assert not model.training and processor.tokenizer is not None
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    for f in checkpoint.iterdir():
        (run / "model" / f.name).write_bytes(f.read_bytes())
    location = resolve_model_dir(run)
    assert (
        location.run_dir == run
        and location.model_dir == run / "model"
        and location.base_dir is None
    )
    again, _ = load_model_and_processor(run)
    torch.testing.assert_close(_logits(model), _logits(again), rtol=0, atol=0)


def test_adapter_is_merged_into_its_base(checkpoint, tmp_path):
    base = Phi3VForCausalLM.from_pretrained(checkpoint)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["qkv_proj", "o_proj"])
    )
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a non-zero adapter, so merging changes the logits
    expected = _logits(peft_model.eval())
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(checkpoint)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        (adapter / name).write_bytes((checkpoint / name).read_bytes())
    merged, _ = load_model_and_processor(adapter)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_logits(Phi3VForCausalLM.from_pretrained(checkpoint)), expected)


def test_unknown_folder_and_missing_base_are_clear_errors(tmp_path):
    with pytest.raises(ModelFolderError, match="neither a model checkpoint"):
        resolve_model_dir(tmp_path)
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "/nowhere"})
    )
    with pytest.raises(ModelFolderError, match="names base model '/nowhere'"):
        resolve_model_dir(tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"base_model_name_or_path": ')
    with pytest.raises(ModelFolderError, match="adapter_config.json' is not readable JSON"):
        resolve_model_dir(tmp_path)


def test_check_model_names_the_option_in_one_line_user_error(checkpoint, tmp_path):
    assert check_model(checkpoint).model_dir == checkpoint
    with pytest.raises(UserError) as err:
        check_model(tmp_path / "bse-model", "--base-model")
    message = str(err.value)
    assert message.startswith("--base-model ") and "bse-model' does not exist" in message
    assert "\n" not in message

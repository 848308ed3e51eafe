"""check_model_folder: a model folder is checked whole, without loading weights, before any work."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from vlmtune.models.folder import (
    CorruptWeightsError,
    FolderConfigError,
    MissingWeightsError,
    ModelFolderError,
    PickleWeightsError,
    check_model_folder,
)
from vlmtune.models.phi3v import build_tiny_phi3v, official_key_table
from vlmtune.utils.errors import UserError


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_phi3v(vocab_size=128, pad_token_id=0, eos_token_id=2)


@pytest.fixture()
def checkpoint(tmp_path, tiny):
    tiny.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _fails(path, error, *fragments):
    with pytest.raises(error) as caught:
        check_model_folder(path)
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and isinstance(caught.value, ModelFolderError)
    assert "\n" not in message, "one line"
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_a_real_tiny_checkpoint_passes(checkpoint, tiny):
    found = check_model_folder(checkpoint)
    assert found.kind == "checkpoint" and found.model_type == "phi3_v"
    assert found.weight_files == (checkpoint / "model.safetensors",)
    assert found.tensor_names == set(official_key_table(tiny.config))


def test_a_sharded_checkpoint_passes_and_a_missing_shard_is_named(tmp_path, tiny):
    tiny.save_pretrained(tmp_path, max_shard_size="200KB")
    found = check_model_folder(tmp_path)
    assert len(found.weight_files) > 1 and found.tensor_names == set(
        official_key_table(tiny.config)
    )
    shard = found.weight_files[-1]
    shard.unlink()
    _fails(tmp_path, MissingWeightsError, shard.name, "model.safetensors.index.json")


def test_a_shard_of_another_checkpoint_is_caught(tmp_path, tiny):
    tiny.save_pretrained(tmp_path, max_shard_size="200KB")
    first = check_model_folder(tmp_path).weight_files[0]
    save_file({"unrelated": torch.zeros(2)}, str(first))
    _fails(tmp_path, CorruptWeightsError, first.name, "lacks", "do not belong together")


def test_a_folder_without_weights_is_refused(checkpoint):
    (checkpoint / "model.safetensors").unlink()
    _fails(checkpoint, MissingWeightsError, "has no weights", "model.safetensors is missing")


@pytest.mark.parametrize("keep", [100, 5, 0])
def test_a_truncated_file_is_caught_by_its_size(checkpoint, keep):
    path = checkpoint / "model.safetensors"
    data = path.read_bytes()
    cut = len(data) - 1000 if keep == 100 else keep
    path.write_bytes(data[:cut])
    message = _fails(checkpoint, CorruptWeightsError, "model.safetensors", str(checkpoint))
    if keep == 100:  # the header is whole: the exact sizes are known
        assert f"is truncated ({cut} of {len(data)} bytes); re-copy or re-download it" in message
    else:
        assert "truncated" in message


def test_extra_bytes_after_the_data_are_caught(checkpoint):
    with (checkpoint / "model.safetensors").open("ab") as handle:
        handle.write(b"\0" * 10)
    _fails(checkpoint, CorruptWeightsError, "10 bytes after its data")


def test_a_damaged_header_is_caught(checkpoint):
    path = checkpoint / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:12] = b"\xff\xfe{{"
    path.write_bytes(bytes(data))
    _fails(checkpoint, CorruptWeightsError, "damaged header")


def test_pickle_only_folders_are_refused(checkpoint):
    (checkpoint / "model.safetensors").unlink()
    (checkpoint / "pytorch_model.bin").write_bytes(b"never unpickled")
    _fails(checkpoint, PickleWeightsError, "pytorch_model.bin", "never loads pickle")


def test_config_problems_name_the_file(checkpoint, tmp_path):
    (checkpoint / "config.json").write_text('{"model_type": "phi3_v",\n  oops}')
    _fails(checkpoint, FolderConfigError, "config.json", "not valid JSON", "line 2")
    (checkpoint / "config.json").write_text('{"hidden_size": 8}')
    _fails(checkpoint, FolderConfigError, "has no model_type")
    (checkpoint / "config.json").unlink()
    _fails(checkpoint, FolderConfigError, "config.json is missing")
    _fails(tmp_path / "nowhere", FolderConfigError, "does not exist")
    run = tmp_path / "run"
    shutil.copytree(checkpoint, run / "model")
    _fails(run, FolderConfigError, "did you mean", str(run / "model"))


def test_adapter_folders(tmp_path, tiny):
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(tiny, peft.LoraConfig(r=2, target_modules=["qkv_proj"]))
    wrapped.save_pretrained(tmp_path)
    found = check_model_folder(tmp_path)
    assert found.kind == "adapter" and found.model_type is None
    assert found.tensor_names and all("lora_" in name for name in found.tensor_names)
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])
    _fails(tmp_path, CorruptWeightsError, "adapter_model.safetensors", "truncated")
    weights.unlink()
    _fails(tmp_path, MissingWeightsError, "adapter_model.safetensors is missing")
    (tmp_path / "adapter_model.bin").write_bytes(b"never unpickled")
    _fails(tmp_path, PickleWeightsError, "adapter_model.bin")
    (tmp_path / "adapter_config.json").write_text("[1, 2]")
    _fails(tmp_path, FolderConfigError, "adapter_config.json", "not a JSON object")

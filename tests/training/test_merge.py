"""``vlmtune merge``: a LoRA run becomes a checkpoint shaped like the hub's, with identical logits,
written only where the output policy allows."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open

from vlmtune.cli.main import main
from vlmtune.data.collator import VisionSFTCollator
from vlmtune.data.dataset import VisionSFTDataset
from vlmtune.data.prepared import load_prepared
from vlmtune.data.prompts import PromptTemplate
from vlmtune.models.phi3v import Phi3VForCausalLM, Phi3VProcessor
from vlmtune.models.phi3v.hub_files import REMOTE_CODE_FILES
from vlmtune.training.args import LoraArgs
from vlmtune.training.merge import MergeArgs, merge, merge_adapter
from vlmtune.training.train import train
from vlmtune.utils.config import ConfigError, config_from_dict
from vlmtune.utils.outputs import MARKER, OutputError

REPO = Path(__file__).resolve().parents[2]
OFFICIAL_PY = (
    "configuration_phi3_v.py",
    "modeling_phi3_v.py",
    "image_embedding_phi3_v.py",
    "image_processing_phi3_v.py",
    "processing_phi3_v.py",
)


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


def test_merge_args_are_checked():
    args = config_from_dict(MergeArgs, {"run": "r", "out": "o", "max_shard_size": "1.5GiB"})
    assert args.dtype == "auto" and args.overwrite is False
    with pytest.raises(ConfigError, match="dtype='fp8'"):
        MergeArgs(run=Path("r"), out=Path("o"), dtype="fp8")
    with pytest.raises(ConfigError, match="max_shard_size='lots'"):
        MergeArgs(run=Path("r"), out=Path("o"), max_shard_size="lots")


def _snapshot(*folders: Path) -> dict[str, bytes]:
    return {
        str(path): path.read_bytes()
        for folder in folders
        for path in sorted(Path(folder).rglob("*"))
        if path.is_file()
    }


def test_merge_never_writes_over_the_run_its_adapter_or_its_base(
    tiny_inputs, lora_run, monkeypatch
):
    def never(*args, **kwargs):
        raise AssertionError("the output is checked before anything is loaded")

    monkeypatch.setattr("vlmtune.training.merge.load_model_and_processor", never)
    before = _snapshot(lora_run, tiny_inputs.checkpoint)
    for out, what in (
        (lora_run, "the run being merged"),
        (lora_run / "model", "its adapter"),
        (tiny_inputs.checkpoint, "its base model"),
        (tiny_inputs.checkpoint.parent, "its base model"),
    ):
        for overwrite in (False, True):
            with pytest.raises(OutputError, match=what):
                merge(MergeArgs(run=lora_run, out=out, overwrite=overwrite))
    assert _snapshot(lora_run, tiny_inputs.checkpoint) == before


def test_merge_replaces_only_its_own_output_unless_told(lora_run, tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"):
        merge(MergeArgs(run=lora_run, out=foreign))
    assert _snapshot(foreign) == {str(foreign / "notes.txt"): b"mine"}
    result = merge(MergeArgs(run=lora_run, out=foreign, overwrite=True))
    assert not (foreign / "notes.txt").exists() and (foreign / MARKER).is_file()
    assert result.path == foreign and (foreign / "model.safetensors").is_file()
    again = merge(MergeArgs(run=lora_run, out=foreign))  # its own earlier output: no flag needed
    assert again.missing_for_vllm == REMOTE_CODE_FILES, "the tiny base has no remote code"
    assert shlex.split(again.vllm_command)[:3] == ["vllm", "serve", str(foreign.resolve())]


# --------------------------------------------------------------------------- the hub's shape


@pytest.fixture(scope="module")
def golden() -> Path:
    folder = Path(os.environ.get("VLMTUNE_GOLDEN_DIR") or REPO.parent / "shared/golden/phi3v")
    if not (folder / "README.md").is_file():
        reason = "Phi-3-V golden files not found (VLMTUNE_GOLDEN_DIR or ../shared/golden/phi3v)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return folder


@pytest.fixture(scope="module")
def golden_merge(golden, tmp_path_factory):
    """A LoRA adapter on the golden checkpoint (the real tokenizer and processor files), whose
    folder also holds remote-code files as the hub's does, merged into 10 MB shards."""
    root = tmp_path_factory.mktemp("golden-merge")
    base = root / "base"
    base.mkdir()
    for path in (golden / "checkpoint").iterdir():
        (base / path.name).symlink_to(path)
    for name in OFFICIAL_PY:
        (base / name).write_text(f"# {name}: the base checkpoint's own remote code\n")
    lora = LoraConfig(r=2, target_modules=["qkv_proj", "fc1"], init_lora_weights=False)
    adapted = get_peft_model(Phi3VForCausalLM.from_pretrained(base), lora)
    adapter = root / "adapter"
    adapted.save_pretrained(adapter)  # records the folder the base was loaded from
    Phi3VProcessor.from_pretrained(base).save_pretrained(adapter)
    result = merge(MergeArgs(run=adapter, out=root / "merged", max_shard_size="10MB"))
    return result, base


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# Where a merged folder's config.json may differ from the hub's, and why.
CONFIG_DIFFERENCES = {
    "_attn_implementation": "a runtime choice, not written (the hub's flash_attention_2 needs "
    "flash-attn; each loader picks its own)",
    "transformers_version": "the version that wrote the file",
    "pad_token_id": "always written (the golden checkpoint's config has it; the hub's leaves "
    "its 32000 default implicit)",
    "_name_or_path": "the folder the base model was loaded from (transformers records it so)",
}
# Sizes: the golden checkpoint is the hub's config with these shrunk, so they are compared with it.
SIZES = (
    "hidden_size", "intermediate_size", "num_attention_heads",
    "num_hidden_layers", "num_key_value_heads", "img_processor", "rope_scaling",
)  # fmt: skip


def test_merged_config_is_the_hubs_key_by_key(golden_merge, golden):
    result, _ = golden_merge
    merged = _json(result.path / "config.json")
    hub = _json(golden / "hub" / "config.json")
    small = _json(golden / "checkpoint" / "config.json")
    small["rope_scaling"] = {
        k: small["rope_scaling"][k] for k in ("type", "short_factor", "long_factor")
    }
    assert set(merged) ^ set(hub) <= set(CONFIG_DIFFERENCES), set(merged) ^ set(hub)
    for key in sorted(set(merged) | set(hub)):
        if key in CONFIG_DIFFERENCES:
            continue
        expected = small[key] if key in SIZES else hub[key]
        assert merged[key] == expected, key
    assert merged["architectures"] == ["Phi3VForCausalLM"] and merged["use_cache"] is True
    assert merged["torch_dtype"] == "bfloat16" and merged["auto_map"] == hub["auto_map"]
    assert merged["pad_token_id"] == small["pad_token_id"] == 32000
    assert merged["_name_or_path"] == str(golden_merge[1])


def test_merged_generation_tokenizer_and_processor_files_are_the_hubs(golden_merge, golden):
    result, base = golden_merge
    generation = _json(result.path / "generation_config.json")
    assert set(generation) <= {"_from_model_config", "bos_token_id", "eos_token_id", "pad_token_id",
                               "transformers_version"}  # fmt: skip
    assert 32007 in generation["eos_token_id"], "<|end|> closes every assistant turn"
    assert 32000 in generation["eos_token_id"] and generation["pad_token_id"] == 32000
    for name in ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        assert _json(result.path / name) == _json(golden / "checkpoint" / name), name
    hub_processor = _json(golden / "hub" / "preprocessor_config.json")
    assert _json(result.path / "preprocessor_config.json") == hub_processor
    for name in OFFICIAL_PY:
        assert (result.path / name).read_bytes() == (base / name).read_bytes(), name
    assert result.missing_for_vllm == ()
    assert shlex.split(result.vllm_command)[:4] == [
        "vllm", "serve", str(result.path.resolve()), "--trust-remote-code"
    ]  # fmt: skip


def test_merged_weights_have_the_hubs_names_with_the_tiny_sizes(golden_merge, golden):
    result, base = golden_merge
    config = _json(result.path / "config.json")
    vision_layers = config["img_processor"]["vision_config"]["num_hidden_layers"]

    def kept(name: str) -> bool:
        layer = re.search(r"\.layers\.(\d+)\.", name)
        limit = vision_layers if "img_processor" in name else config["num_hidden_layers"]
        return layer is None or int(layer.group(1)) < limit

    hub_names = _json(golden / "hub" / "model.safetensors.index.json")["weight_map"]
    index = _json(result.path / "model.safetensors.index.json")
    assert set(index["weight_map"]) == {name for name in hub_names if kept(name)}
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all(
        re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", s) for s in shards
    )
    assert not (result.path / "model.safetensors").exists()
    total = 0
    with safe_open(base / "model.safetensors", "pt") as original:
        for shard in shards:
            with safe_open(result.path / shard, "pt") as handle:
                for name in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                    assert index["weight_map"][name] == shard
                    tensor = handle.get_tensor(name)
                    assert tensor.dtype == torch.bfloat16
                    assert list(tensor.shape) == original.get_slice(name).get_shape(), name
                    total += tensor.numel() * tensor.element_size()
    assert index["metadata"]["total_size"] == total

"""init-model: a small Phi-3-V saved in the official layout with a catalog-trained tokenizer,
refusing impossible sizes, unusable data and outputs it may not replace before any work."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from tiny_model import tiny_sizes
from vlmtune.data.prompts import PromptTemplate
from vlmtune.models.phi3v import Phi3VForCausalLM, Phi3VProcessor
from vlmtune.training.init_model import PHI3_SPECIAL_TOKENS, InitModelArgs, init_model
from vlmtune.utils.config import ConfigError, config_from_dict, field_docs
from vlmtune.utils.errors import UserError
from vlmtune.utils.outputs import MARKER, OutputError, write_marker

SMALL = tiny_sizes(num_hidden_layers=1)


def test_checkpoint_has_the_official_layout(tiny_inputs):
    folder = tiny_inputs.checkpoint
    names = {p.name for p in folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    } <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "phi3_v"
    assert config["rope_scaling"]["type"] in {"su", "longrope"}
    assert config["img_processor"]["vision_config"]["image_size"] == 56
    with safe_open(folder / "model.safetensors", "pt") as handle:
        keys = set(handle.keys())
    assert (
        "model.vision_embed_tokens.img_processor.vision_model.embeddings.patch_embedding.weight"
        in keys
    )
    assert "model.vision_embed_tokens.glb_GN" in keys and "lm_head.weight" in keys
    assert not any(k.startswith("model.vision_embed_tokens.wte") for k in keys)


def test_tokenizer_carries_phi3_tokens_and_round_trips_listings(tiny_inputs):
    processor = Phi3VProcessor.from_pretrained(tiny_inputs.checkpoint)
    tok = processor.tokenizer
    for token in PHI3_SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(token) != tok.unk_token_id or token == "<unk>", token
    assert tok.bos_token == "<s>" and tok.eos_token == "<|endoftext|>"
    prompt = PromptTemplate().prompt(tok)
    assert prompt == "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"
    listing = "Product: Check Cashmere Scarf, Category: SCARVES, Full Price: 1,290"
    ids = tok(listing + "<|end|>", add_special_tokens=False).input_ids
    assert ids[-1] == tok.convert_tokens_to_ids("<|end|>")
    assert len(ids) < len(listing) // 2, "the BPE trained on the catalog should compress listings"
    assert tok.decode(ids, skip_special_tokens=True) == listing
    assert tok("x").input_ids[0] == tok.bos_token_id


def test_model_loads_back_and_generation_config_stops_at_end(tiny_inputs):
    model = Phi3VForCausalLM.from_pretrained(tiny_inputs.checkpoint)
    tok = Phi3VProcessor.from_pretrained(tiny_inputs.checkpoint).tokenizer
    assert model.config.vocab_size % 64 == 0 and model.config.vocab_size >= len(tok)
    eos = model.generation_config.eos_token_id
    assert tok.convert_tokens_to_ids("<|end|>") in eos and tok.eos_token_id in eos


def test_same_seed_same_weights_other_seed_differs(tiny_inputs, tmp_path):
    def build(seed, name):
        return init_model(
            InitModelArgs(data=tiny_inputs.data, out=tmp_path / name, seed=seed, **SMALL)
        )

    a, b, c = build(0, "a"), build(0, "b"), build(1, "c")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    wa = Phi3VForCausalLM.from_pretrained(a).lm_head.weight
    wc = Phi3VForCausalLM.from_pretrained(c).lm_head.weight
    assert not torch.equal(wa, wc)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"hidden_size": 30, "num_attention_heads": 4},
            "hidden_size=30 is not divisible by num_attention_heads=4",
        ),
        ({"hidden_size": -6}, "hidden_size=-6: must be a positive whole number"),
        ({"num_hidden_layers": 0}, "num_hidden_layers=0: must be a positive"),
        ({"vision_heads": 0}, "vision_heads=0: must be a positive"),
        ({"num_crops": -1}, "num_crops=-1: must be a positive"),
        ({"hidden_size": 36, "num_attention_heads": 4}, "odd head size"),
        ({"vision_hidden_size": 30, "vision_heads": 4}, "vision_hidden_size=30 is not divisible"),
        ({"crop_size": 42}, "crop_size=42 / patch_size=14 must be an even whole number"),
        ({"crop_size": 100}, "crop_size=100 / patch_size=14"),
        ({"vocab_size": 100}, "vocab_size=100 is below the 256 byte symbols plus 8 special tokens"),
        ({"vision_layers": 1}, "vision_layers=1: at least 2"),
    ],
)
def test_bad_sizes_are_refused_naming_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as caught:
        InitModelArgs(data=tmp_path, out=tmp_path / "m", **override)
    assert isinstance(caught.value, UserError) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match=next(iter(override))):  # the same through YAML keys
        config_from_dict(InitModelArgs, {"data": str(tmp_path), "out": "m", **override})


def test_every_option_is_documented_and_the_user_options_are_flags():
    docs = field_docs(InitModelArgs)
    fields = InitModelArgs.__dataclass_fields__
    assert set(docs) == set(fields), set(fields) - set(docs)
    flags = {name: f.metadata.get("vlmtune.flag", {}).get("names") for name, f in fields.items()}
    assert flags["data"] == ("--data",) and flags["out"] == ("--out",)
    assert flags["seed"] == ("--seed",) and flags["overwrite"] == ("--overwrite",)
    assert flags["hidden_size"] is None, "sizes are YAML keys and overrides, not flags"


def test_unusable_data_is_refused_before_any_work(tiny_inputs, tmp_path):
    out = tmp_path / "m"
    with pytest.raises(ConfigError, match="does not exist"):
        init_model(InitModelArgs(data=tmp_path / "missing", out=out, **SMALL))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is an empty folder"):
        init_model(InitModelArgs(data=tmp_path / "empty", out=out, **SMALL))
    catalog = next((tiny_inputs.data.parent / "synth").glob("*.csv"))
    header_only = tmp_path / "header.csv"
    header_only.write_text(catalog.read_text().splitlines()[0] + "\n")
    with pytest.raises(ConfigError, match=r"has no rows \(only a header"):
        init_model(InitModelArgs(data=header_only, out=out, **SMALL))
    assert not out.exists()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_output_policy_keeps_what_is_not_init_models_own(tiny_inputs, tmp_path):
    trained = tmp_path / "trained"
    (trained / "model").mkdir(parents=True)
    (trained / "model" / "model.safetensors").write_bytes(b"trained weights")
    write_marker(trained, "train")
    before = _snapshot(trained)
    with pytest.raises(OutputError, match="vlmtune train"):
        init_model(InitModelArgs(data=tiny_inputs.data, out=trained, **SMALL))
    assert _snapshot(trained) == before
    data_before = _snapshot(tiny_inputs.data)
    for out in (tiny_inputs.data, tiny_inputs.data.parent):
        with pytest.raises(OutputError, match="the dataset"):
            init_model(InitModelArgs(data=tiny_inputs.data, out=out, overwrite=True, **SMALL))
    assert _snapshot(tiny_inputs.data) == data_before
    out = tmp_path / "model"
    init_model(InitModelArgs(data=tiny_inputs.data, out=out, **SMALL))
    first = _snapshot(out)
    init_model(InitModelArgs(data=tiny_inputs.data, out=out, **SMALL))  # its own: replaced
    assert {k: v for k, v in _snapshot(out).items() if MARKER not in k} == {
        k: v for k, v in first.items() if MARKER not in k
    }
    with pytest.raises(OutputError, match="seed=0"):  # another model of another seed
        init_model(InitModelArgs(data=tiny_inputs.data, out=out, seed=1, **SMALL))
    init_model(InitModelArgs(data=tiny_inputs.data, out=out, seed=1, overwrite=True, **SMALL))
    assert _snapshot(out) != first
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name], "no staging left behind"


def test_every_written_file_gets_the_usual_mode(tiny_inputs, tmp_path):
    previous = os.umask(0o022)
    try:
        out = init_model(InitModelArgs(data=tiny_inputs.data, out=tmp_path / "m", **SMALL))
    finally:
        os.umask(previous)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {"0o644"}, modes


def test_the_checkpoint_is_shaped_like_the_hubs(tiny_inputs):
    folder = tiny_inputs.checkpoint
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Phi3VForCausalLM"] and config["torch_dtype"] == "float32"
    assert "auto_map" not in config, "no remote-code files are written next to it"
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (folder / "special_tokens_map.json").is_file()
    generation = json.loads((folder / "generation_config.json").read_text())
    tok = Phi3VProcessor.from_pretrained(folder).tokenizer
    assert tok.convert_tokens_to_ids("<|end|>") in generation["eos_token_id"]


def test_patch_size_reaches_the_processor_and_the_model_agrees(tiny_inputs, tmp_path):
    folder = init_model(
        InitModelArgs(
            data=tiny_inputs.data,
            out=tmp_path / "p7",
            # 8x8 patches -> 4x4 = 16 tokens per crop (patch 14 would give 4)
            **tiny_sizes(num_hidden_layers=1, patch_size=7),
        )
    )
    processor = Phi3VProcessor.from_pretrained(folder)
    assert processor.image_processor.tokens_per_crop == 16
    model = Phi3VForCausalLM.from_pretrained(folder).eval()
    image = next((tiny_inputs.data / "images").iterdir())
    batch = processor(text="<|user|>\n<|image_1|>\nlist<|end|>", images=[Image.open(image)])
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "num_img_tokens"}).logits
    assert logits.shape[:2] == batch["input_ids"].shape

"""A saved folder shaped like the hub's: file modes, end tokens, remote code, tokenizer files, vLLM."""

from __future__ import annotations

import json
import os
import shlex

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from vlmtune.models.phi3v import (
    Phi3VImageProcessor,
    Phi3VProcessor,
    missing_remote_code,
    save_model_folder,
    vllm_serve_command,
)
from vlmtune.models.phi3v.hub_files import REMOTE_CODE_FILES
from vlmtune.models.phi3v.processing_phi3v import load_tokenizer

OFFICIAL_PY = (
    "configuration_phi3_v.py",
    "modeling_phi3_v.py",
    "image_embedding_phi3_v.py",
    "image_processing_phi3_v.py",
    "processing_phi3_v.py",
)


@pytest.fixture()
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture(scope="module")
def golden_processor(golden):
    return Phi3VProcessor.from_pretrained(golden / "checkpoint")


def _json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_every_saved_file_gets_the_usual_mode(tmp_path, tiny_model, golden_processor, umask_022):
    save_model_folder(tiny_model, golden_processor, tmp_path)
    tiny_model.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.startswith("model-0000") for p in files)
    assert (tmp_path / "model.safetensors").is_file()
    modes = {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes


def test_generation_config_ends_at_end_of_turn_and_the_model_is_untouched(
    tmp_path, tiny_model, golden_processor
):
    tokenizer = golden_processor.tokenizer
    before = tiny_model.generation_config.to_dict()
    save_model_folder(tiny_model, golden_processor, tmp_path)
    saved = _json(tmp_path / "generation_config.json")
    end, text_end = (tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|endoftext|>"))
    assert saved["eos_token_id"] == [tiny_model.config.eos_token_id, end, text_end]
    assert not {"output_attentions", "output_hidden_states", "use_cache"} & set(saved)
    assert tiny_model.generation_config.to_dict() == before


def test_remote_code_is_copied_from_the_base_and_auto_map_follows_the_files(
    tmp_path, tiny_model, golden_processor, golden
):
    base = tmp_path / "base"
    base.mkdir()
    for name in OFFICIAL_PY:
        (base / name).write_text(f"# {name}: the base checkpoint's own remote code\n")
    plain = save_model_folder(tiny_model, golden_processor, tmp_path / "plain")
    assert not list(plain.glob("*.py")), "vlmtune writes no code files of its own"
    assert "auto_map" not in _json(plain / "config.json")
    assert "auto_map" not in _json(plain / "preprocessor_config.json")
    assert missing_remote_code(plain) == list(REMOTE_CODE_FILES)
    served = save_model_folder(
        tiny_model, golden_processor, tmp_path / "out", remote_code_from=base
    )
    for name in OFFICIAL_PY:
        assert (served / name).read_bytes() == (base / name).read_bytes()
    assert missing_remote_code(served) == []
    hub = golden / "hub"
    assert _json(served / "config.json")["auto_map"] == _json(hub / "config.json")["auto_map"]
    preprocessor = _json(served / "preprocessor_config.json")
    assert preprocessor["auto_map"] == _json(hub / "preprocessor_config.json")["auto_map"]


def test_the_golden_tokenizer_is_written_back_as_the_hub_has_it(tmp_path, golden_processor, golden):
    golden_processor.save_pretrained(tmp_path)
    for name in ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        assert _json(tmp_path / name) == _json(golden / "checkpoint" / name), name
    assert not (tmp_path / "chat_template.jinja").exists()
    again = load_tokenizer(tmp_path)
    text = "<|user|>\n<|image_1|>\nWhat is shown?<|end|>\n<|assistant|>\nProduct: A, Category: B"
    assert again(text).input_ids == golden_processor.tokenizer(text).input_ids


def test_a_tokenizer_built_in_memory_is_saved_in_the_classic_form(tmp_path):
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<unk>", "<s>", "<|endoftext|>", "<|end|>", "<|user|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(["Product: Check Scarf, Category: SCARVES"] * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|end|>", "<|user|>"],
        chat_template="{% for m in messages %}{{ m['content'] }}<|end|>{% endfor %}",
    )
    (tmp_path / "chat_template.jinja").write_text("stale")
    Phi3VProcessor(Phi3VImageProcessor(crop_size=56), tokenizer).save_pretrained(tmp_path)
    config = _json(tmp_path / "tokenizer_config.json")
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert not {"backend", "extra_special_tokens", "is_local"} & set(config)
    assert config["additional_special_tokens"] == ["<|end|>", "<|user|>"]
    assert config["chat_template"] == tokenizer.chat_template
    assert not (tmp_path / "chat_template.jinja").exists()
    tokenizer_json = _json(tmp_path / "tokenizer.json")
    added = {str(t["id"]): t["content"] for t in tokenizer_json["added_tokens"]}
    assert {k: v["content"] for k, v in config["added_tokens_decoder"].items()} == added
    merges = tokenizer_json["model"]["merges"]
    assert merges and all(isinstance(m, str) and m.count(" ") == 1 for m in merges), (
        "tokenizers before 0.20 (transformers 4.4x) read merges as 'a b' strings only"
    )
    special_map = _json(tmp_path / "special_tokens_map.json")
    assert special_map["eos_token"]["content"] == "<|endoftext|>"
    assert special_map["additional_special_tokens"] == ["<|end|>", "<|user|>"]
    again = load_tokenizer(tmp_path)
    text = "Product: Check Scarf, Category: SCARVES<|end|>"
    assert again(text).input_ids == tokenizer(text).input_ids


def test_the_vllm_command_serves_the_folder_by_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my merged").mkdir()
    words = shlex.split(vllm_serve_command("my merged"))
    assert words[:3] == ["vllm", "serve", str(tmp_path / "my merged")]
    assert "--trust-remote-code" in words
    assert json.loads(words[words.index("--limit-mm-per-prompt") + 1]) == {"image": 1}
    assert int(words[words.index("--max-model-len") + 1]) == 4096


def test_source_files_are_kept_only_while_the_tokenizer_is_unchanged(tmp_path, golden_processor):
    source = tmp_path / "source"
    golden_processor.save_pretrained(source)
    (source / "tokenizer.model").write_bytes(b"sentencepiece model of the source")
    (source / "added_tokens.json").write_text('{"<|end|>": 32007}')
    loaded = Phi3VProcessor.from_pretrained(source)
    loaded.save_pretrained(tmp_path / "same")
    for name in ("tokenizer.model", "added_tokens.json", "tokenizer.json"):
        assert (tmp_path / "same" / name).read_bytes() == (source / name).read_bytes(), name
    loaded.tokenizer.add_tokens(["<|listing|>"])
    loaded.save_pretrained(tmp_path / "changed")
    assert not (tmp_path / "changed" / "tokenizer.model").exists(), (
        "it would describe another vocabulary"
    )
    added = _json(tmp_path / "changed" / "tokenizer.json")["added_tokens"]
    assert added[-1]["content"] == "<|listing|>"
    decoder = _json(tmp_path / "changed" / "tokenizer_config.json")["added_tokens_decoder"]
    assert decoder[str(added[-1]["id"])]["content"] == "<|listing|>"

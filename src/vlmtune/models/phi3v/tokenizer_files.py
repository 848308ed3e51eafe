"""Tokenizer files that transformers 4.4x and 5 both read: the classic form the hub's files have.

transformers 5 saves a tokenizer in a form only it reads: ``tokenizer_class: TokenizersBackend``,
the extra special tokens as ``extra_special_tokens``, the chat template in a separate
``chat_template.jinja``, no ``added_tokens_decoder`` and no ``special_tokens_map.json``; for
Phi-3's Llama tokenizer it also rebuilds the ``tokenizer.json`` pipeline (normalizer, unknown
token) and writes BPE merges as pairs, which tokenizers before 0.20 cannot parse. A checkpoint
meant for other runtimes (transformers 4.4x with the official remote code, vLLM) needs the form of
``microsoft/Phi-3-vision-128k-instruct``:

- ``tokenizer.json``: the source folder's own when the tokenizer is unchanged, else the
  tokenizer's; merges as ``"a b"`` strings;
- ``tokenizer_config.json``: a classic tokenizer class (``LlamaTokenizer``,
  ``PreTrainedTokenizerFast``), ``additional_special_tokens``, special tokens as strings, the chat
  template inline, ``added_tokens_decoder`` as in ``tokenizer.json``;
- ``special_tokens_map.json``: the special tokens with their flags;
- the source's ``tokenizer.model`` and ``added_tokens.json``, when it has them and the tokenizer is
  unchanged (SentencePiece-based runtimes read those).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from vlmtune.utils.io import atomic_path, atomic_write_json, atomic_write_text

__all__ = ["TOKENIZER_FILES", "save_tokenizer_files"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_KEPT_FROM_SOURCE = ("tokenizer.model", "added_tokens.json")
_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token")
_FLAGS = ("content", "lstrip", "normalized", "rstrip", "single_word")
# Keys transformers 5 writes that the classic form does not have (or has under another name).
_NOT_CLASSIC = frozenset(
    {
        "backend",
        "extra_special_tokens",
        "is_local",
        "local_files_only",
        "name_or_path",
        "vocab_file",
    }
)
# Class names only transformers 5 knows, and the classic class that reads the same tokenizer.json.
_CLASSIC_CLASS = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def save_tokenizer_files(
    tokenizer: PreTrainedTokenizerBase, folder: str | Path, source: str | Path | None = None
) -> None:
    """Write :data:`TOKENIZER_FILES` for ``tokenizer`` into ``folder`` in the classic form.

    ``source``: the folder the tokenizer was loaded from; its ``tokenizer.json`` (when the
    tokenizer still has the same vocabulary and added tokens) and its classic
    ``tokenizer_config.json`` keys are kept.
    """
    folder = Path(folder)
    source = Path(source) if source is not None else None
    tokenizer_json, unchanged = _tokenizer_json(tokenizer, source)
    tokenizer_json = _classic_merges(tokenizer_json)
    added = {
        str(token["id"]): {key: token[key] for key in (*_FLAGS, "special")}
        for token in sorted(tokenizer_json.get("added_tokens", []), key=lambda t: t["id"])
    }
    config = _classic_config(tokenizer, _read_json(source, "tokenizer_config.json"), added)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        folder / "tokenizer.json", json.dumps(tokenizer_json, ensure_ascii=False, indent=2) + "\n"
    )
    atomic_write_json(folder / "tokenizer_config.json", config)
    atomic_write_json(folder / "special_tokens_map.json", _special_tokens_map(config, added))
    for name in _KEPT_FROM_SOURCE if unchanged else ():
        if (source / name).is_file() and (source / name).resolve() != (folder / name).resolve():
            with atomic_path(folder / name) as tmp:
                shutil.copyfile(source / name, tmp)
    # transformers 5 would prefer a stale template file over the inline one just written
    (folder / "chat_template.jinja").unlink(missing_ok=True)


def _tokenizer_json(
    tokenizer: PreTrainedTokenizerBase, source: Path | None
) -> tuple[dict[str, Any], bool]:
    """(the source's ``tokenizer.json``, True) when ``tokenizer`` has its vocabulary and added
    tokens (transformers 5 rebuilds Llama's pipeline on load), else (the tokenizer's own, False)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no tokenizers backend; vlmtune saves fast "
            "tokenizers (tokenizer.json) only"
        )
    current = json.loads(backend.to_str())
    original = _read_json(source, "tokenizer.json")
    if original and _same_tokens(original, current):
        return original, True
    return current, False


def _same_tokens(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def tokens(data: dict[str, Any]) -> tuple[int, list[tuple[int, str]]]:
        added = sorted((t["id"], t["content"]) for t in data.get("added_tokens", []))
        return len(data.get("model", {}).get("vocab", {})), added

    return tokens(a) == tokens(b)


def _classic_merges(data: dict[str, Any]) -> dict[str, Any]:
    """BPE merges as ``"a b"`` strings (tokenizers < 0.20 read only those) when no part holds a
    space (byte-level and SentencePiece vocabularies never do)."""
    model = data.get("model") or {}
    merges = model.get("merges")
    if not merges or not all(isinstance(m, list) for m in merges):
        return data
    if any(" " in part for pair in merges for part in pair):
        return data
    return {**data, "model": {**model, "merges": [" ".join(pair) for pair in merges]}}


def _classic_config(
    tokenizer: PreTrainedTokenizerBase,
    source: dict[str, Any] | None,
    added: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    source = source or {}
    config = {k: v for k, v in source.items() if k not in _NOT_CLASSIC and v is not None}
    extra = source.get("additional_special_tokens") or source.get("extra_special_tokens")
    extra = extra or getattr(tokenizer, "extra_special_tokens", None) or []
    for name in _SPECIAL:
        value = getattr(tokenizer, name, None)
        if value is not None:
            config[name] = str(value)
    name = source.get("tokenizer_class") or type(tokenizer).__name__
    template = tokenizer.chat_template
    config.update(
        {
            "added_tokens_decoder": added,
            "additional_special_tokens": list(extra.values() if isinstance(extra, dict) else extra),
            "clean_up_tokenization_spaces": bool(tokenizer.clean_up_tokenization_spaces),
            "model_max_length": int(tokenizer.model_max_length),
            "padding_side": tokenizer.padding_side,
            "tokenizer_class": _CLASSIC_CLASS.get(name, name),
        }
    )
    if template is not None:
        config["chat_template"] = template
    return dict(sorted(config.items()))


def _special_tokens_map(config: dict[str, Any], added: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The hub's ``special_tokens_map.json``: each special token with its flags, the extra ones
    by name."""
    flags = {token["content"]: {k: token[k] for k in _FLAGS} for token in added.values()}
    data: dict[str, Any] = {"additional_special_tokens": config["additional_special_tokens"]}
    for name in _SPECIAL:
        if name in config:
            data[name] = flags.get(config[name], config[name])
    return dict(sorted(data.items()))


def _read_json(folder: Path | None, name: str) -> dict[str, Any] | None:
    if folder is None or not (folder / name).is_file():
        return None
    data = json.loads((folder / name).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else None

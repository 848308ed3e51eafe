"""A Phi-3-V folder shaped like the hub's: the files beside weights and config, and how to serve it.

The hub's checkpoints (``microsoft/Phi-3-vision-128k-instruct``, ``Phi-3.5-vision-instruct``) hold,
beside ``config.json`` and the safetensors: ``generation_config.json`` (whose end tokens include
``<|end|>``, which closes every assistant turn), the tokenizer files, ``preprocessor_config.json``
and Microsoft's remote code (``configuration_phi3_v.py``, ``modeling_phi3_v.py``,
``image_embedding_phi3_v.py``, ``image_processing_phi3_v.py``, ``processing_phi3_v.py``).

vLLM runs Phi-3-V with its own model code but reads the configuration class (``model_type:
phi3_v`` is not in transformers) and the processor (``calc_num_image_tokens_from_image_size``)
from that remote code, so it needs ``--trust-remote-code`` and the ``*.py`` files in the folder.
vlmtune never writes such files itself (nor runs them): :func:`copy_remote_code` copies the base
checkpoint's own, and ``auto_map`` is written only for files that are there.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import GenerationConfig

from vlmtune.models.folder import copy_remote_code
from vlmtune.utils.io import atomic_write_json

if TYPE_CHECKING:
    from vlmtune.models.phi3v.modeling_phi3v import Phi3VForCausalLM
    from vlmtune.models.phi3v.processing_phi3v import Phi3VProcessor

__all__ = [
    "END_TOKENS",
    "REMOTE_CODE_FILES",
    "load_generation_config",
    "missing_remote_code",
    "save_generation_config",
    "save_model_folder",
    "vllm_serve_command",
    "with_end_tokens",
]

#: Tokens that end generation: the end of an assistant turn and the tokenizer's end of text.
END_TOKENS = ("<|end|>", "<|endoftext|>")

#: The remote-code files vLLM reads for Phi-3-V (the configuration class, the processor and its
#: image processor); ``modeling_phi3_v.py``/``image_embedding_phi3_v.py`` serve transformers 4.
REMOTE_CODE_FILES = (
    "configuration_phi3_v.py",
    "processing_phi3_v.py",
    "image_processing_phi3_v.py",
)

# Generation-config fields transformers 5 copies from the model config at their neutral value;
# the hub's files hold only the token ids.
_ECHOED = {"output_attentions": False, "output_hidden_states": False, "use_cache": True}


def save_model_folder(
    model: Phi3VForCausalLM,
    processor: Phi3VProcessor,
    folder: str | Path,
    *,
    remote_code_from: str | Path | None = None,
    max_shard_size: int | str = "5GB",
) -> Path:
    """Write a complete hub-shaped checkpoint folder: remote code copied from
    ``remote_code_from`` (when it has any), weights + ``config.json``, ``generation_config.json``
    with the end tokens of ``processor``'s tokenizer, tokenizer and preprocessor files.

    Neither ``model`` nor its configs are changed. Returns the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if remote_code_from is not None:
        copy_remote_code(remote_code_from, folder)
    generation = with_end_tokens(model.generation_config, processor.tokenizer)
    model.save_pretrained(folder, max_shard_size=max_shard_size, generation_config=generation)
    processor.save_pretrained(folder)
    return folder


def with_end_tokens(generation_config: GenerationConfig, tokenizer) -> GenerationConfig:
    """A copy of ``generation_config`` whose ``eos_token_id`` also holds the ids of
    :data:`END_TOKENS` that ``tokenizer`` knows (existing ids first, in their order)."""
    config = GenerationConfig.from_dict(generation_config.to_dict())
    eos = config.eos_token_id
    ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    for token in END_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is not None and token_id != tokenizer.unk_token_id and token_id not in ids:
            ids.append(token_id)
    config.eos_token_id = ids[0] if len(ids) == 1 else ids
    return config


def save_generation_config(generation_config: GenerationConfig, folder: str | Path) -> Path:
    """Write ``generation_config.json`` with the fields that differ from transformers' defaults,
    as the hub's files have them (transformers 4 and 5 read it)."""
    data = generation_config.to_diff_dict()
    for key, neutral in _ECHOED.items():
        if data.get(key) == neutral:
            data.pop(key)
    return atomic_write_json(Path(folder) / "generation_config.json", dict(sorted(data.items())))


def load_generation_config(folder: str | Path) -> GenerationConfig | None:
    """``generation_config.json`` of ``folder`` (None when it has none)."""
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return None
    return GenerationConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))


def missing_remote_code(folder: str | Path) -> list[str]:
    """The :data:`REMOTE_CODE_FILES` that ``folder`` lacks (vLLM cannot load it without them)."""
    return [name for name in REMOTE_CODE_FILES if not (Path(folder) / name).is_file()]


def vllm_serve_command(folder: str | Path, max_model_len: int = 4096) -> str:
    """The ``vllm serve`` command line for the checkpoint ``folder`` (absolute, shell-quoted).

    ``--trust-remote-code``: vLLM reads Phi-3-V's configuration class and processor from the
    folder's remote code (see :func:`missing_remote_code`). ``--max-model-len``: the config's
    131,072 positions would reserve KV cache for contexts a listing never needs.
    ``--limit-mm-per-prompt``: one photo per request, as vlmtune prompts.
    """
    path = Path(folder).expanduser().resolve()
    return shlex.join(
        [
            "vllm",
            "serve",
            str(path),
            "--trust-remote-code",
            "--max-model-len",
            str(max_model_len),
            "--limit-mm-per-prompt",
            '{"image": 1}',
        ]
    )

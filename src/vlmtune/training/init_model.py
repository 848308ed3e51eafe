"""``vlmtune init-model``: a small Phi-3-V, saved exactly like a downloaded checkpoint.

The demo and the tests cannot download Phi-3-vision-128k-instruct, so they start
from a small model built with the same classes and saved in the same official
layout (``config.json``, safetensors with the official key names, tokenizer
files, ``preprocessor_config.json``). Every later command then treats it exactly
like the real checkpoint.

Its tokenizer is a byte-level BPE trained (Hugging Face ``tokenizers``) on the
catalog's own text (titles, categories, prices and the prompt), with Phi-3's
special and chat tokens and chat template, so that a listing is a few dozen
tokens and the vocabulary stays compact (the embedding table would otherwise
dominate a model this small).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from vlmtune.data.catalog import CatalogColumns, CatalogError, load_catalog
from vlmtune.data.prepared import PreparedDatasetError, load_prepared
from vlmtune.data.prompts import PromptArgs, PromptTemplate, record_from_row
from vlmtune.models.phi3v import (
    Phi3VConfig,
    Phi3VImageProcessor,
    Phi3VProcessor,
    build_tiny_phi3v,
    save_model_folder,
    tiny_phi3v_config,
)
from vlmtune.utils.config import ConfigError, config_to_dict, flag
from vlmtune.utils.logging import get_logger
from vlmtune.utils.outputs import claim_output_dir, replace_dir
from vlmtune.utils.seeding import seed_everything

__all__ = [
    "InitModelArgs",
    "PHI3_SPECIAL_TOKENS",
    "PHI3_CHAT_TEMPLATE",
    "init_model",
    "train_tokenizer",
]

logger = get_logger(__name__)

# Phi-3's special and chat tokens; <unk>, <s>, </s> take ids 0, 1, 2 as in the real vocabulary.
PHI3_SPECIAL_TOKENS = [
    "<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>", "<|user|>",
]  # fmt: skip
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
    "{{- '<|assistant|>\n' -}}{% endif %}"
)


@dataclass
class InitModelArgs:
    """Where the small Phi-3-V's tokenizer text comes from, where it goes, and its sizes."""

    data: Path = flag("--data")
    """A prepared dataset folder or a catalog file; its text trains the tokenizer."""
    out: Path = flag("--out")
    """Folder to write the checkpoint to (official Phi-3-V layout); replaced atomically."""
    seed: int = flag("--seed", default=0)
    """Seed of the random weights and of the tokenizer trainer."""
    overwrite: bool = flag("--overwrite", default=False)
    """Replace ``out`` even when it holds something else than an earlier init-model output of the
    same inputs (never the dataset itself)."""
    vocab_size: int = 1024
    """BPE vocabulary size, special tokens included (padded to a multiple of 64 in the model)."""
    hidden_size: int = 192
    """Width of the decoder (3072 in the real model)."""
    num_hidden_layers: int = 4
    """Decoder layers (32 in the real model)."""
    num_attention_heads: int = 6
    """Decoder attention heads; they divide ``hidden_size`` into an even head size."""
    intermediate_size: int = 512
    """Width of the decoder's MLP (8192 in the real model)."""
    vision_hidden_size: int = 64
    """Width of the CLIP tower (1024 in the real model)."""
    vision_layers: int = 2
    """CLIP layers (24 in the real model); at least 2, as features come from the second-to-last."""
    vision_heads: int = 4
    """CLIP attention heads; they divide ``vision_hidden_size``."""
    vision_intermediate_size: int = 256
    """Width of the CLIP MLP (4096 in the real model)."""
    crop_size: int = 112
    """Side of one image crop in pixels (336 in the real model)."""
    patch_size: int = 14
    """Side of one CLIP patch in pixels; ``crop_size / patch_size`` must be even (2x2 merge)."""
    num_crops: int = 1
    """Crops per image in the saved image processor (the real checkpoints use 16, fine-tuning often 4)."""
    prompt: PromptArgs | None = None
    """How rows become prompts and answers (their text trains the tokenizer)."""

    def __post_init__(self) -> None:
        for key in _SIZES:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}={value!r}: must be a positive whole number")
        _check_heads(
            "hidden_size", self.hidden_size, "num_attention_heads", self.num_attention_heads
        )
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ConfigError(
                f"hidden_size={self.hidden_size} / num_attention_heads={self.num_attention_heads} "
                "gives an odd head size; rotary embeddings rotate pairs: make it even"
            )
        _check_heads(
            "vision_hidden_size", self.vision_hidden_size, "vision_heads", self.vision_heads
        )
        minimum = 256 + len(PHI3_SPECIAL_TOKENS)
        if self.vocab_size < minimum:
            raise ConfigError(
                f"vocab_size={self.vocab_size} is below the 256 byte symbols plus "
                f"{len(PHI3_SPECIAL_TOKENS)} special tokens; use at least {minimum}"
            )
        if self.crop_size % self.patch_size or (self.crop_size // self.patch_size) % 2:
            raise ConfigError(
                f"crop_size={self.crop_size} / patch_size={self.patch_size} must be an even whole "
                "number (patch features are merged 2x2)"
            )
        if self.vision_layers < 2:
            raise ConfigError(
                f"vision_layers={self.vision_layers}: at least 2 (image features come from the "
                "second-to-last CLIP layer)"
            )


_SIZES = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "vision_hidden_size", "vision_layers", "vision_heads", "vision_intermediate_size",
    "crop_size", "patch_size", "num_crops",
)  # fmt: skip


def _check_heads(size_key: str, size: int, heads_key: str, heads: int) -> None:
    if size % heads:
        raise ConfigError(f"{size_key}={size} is not divisible by {heads_key}={heads}")


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, seed: int = 0
) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts`` with Phi-3's special tokens, BOS added like Phi-3's tokenizer."""
    del seed  # the BPE trainer is deterministic for a given corpus order
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=PHI3_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|system|>", "<|end|>", "<|user|>", "<|assistant|>"],
        chat_template=PHI3_CHAT_TEMPLATE,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )


def init_model(args: InitModelArgs) -> Path:
    """Build the small Phi-3-V with random weights and save checkpoint + processor to ``args.out``.

    Checked before any work: ``args.data`` exists and holds rows, and ``args.out`` may be written
    (the output policy of :mod:`vlmtune.utils.outputs`); the folder is then built beside ``out``
    and swapped in, so a model is never half-replaced.
    """
    data, out = Path(args.data), Path(args.out)
    _check_data(data)
    identity = {k: v for k, v in config_to_dict(args).items() if k not in ("out", "overwrite")}
    identity["data"] = str(data.expanduser().resolve())
    claim_output_dir(
        out, "init-model", inputs={"the dataset": data}, overwrite=args.overwrite, identity=identity
    )
    rows, columns = _rows(data)
    seed_everything(args.seed)
    template = PromptTemplate(args.prompt)
    tokenizer = train_tokenizer(_corpus(rows, columns, template), args.vocab_size, args.seed)
    model = build_tiny_phi3v(_model_config(args, tokenizer), seed=args.seed)
    end, text_end = (tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|endoftext|>"))
    model.generation_config.eos_token_id = [end, text_end]
    model.generation_config.pad_token_id = text_end
    image_processor = Phi3VImageProcessor(
        num_crops=args.num_crops, crop_size=args.crop_size, patch_size=args.patch_size
    )
    processor = Phi3VProcessor(image_processor=image_processor, tokenizer=tokenizer)
    with replace_dir(out, "init-model", identity) as staging:
        save_model_folder(model, processor, staging)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "init-model: %s parameters, vocabulary %d, saved to %s",
        f"{n_params:,}",
        len(tokenizer),
        out,
    )
    return out


def _model_config(args: InitModelArgs, tokenizer: PreTrainedTokenizerFast) -> Phi3VConfig:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "<|endoftext|>")}
    return tiny_phi3v_config(
        vocab_size=_round_up(len(tokenizer), 64),
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        intermediate_size=args.intermediate_size,
        vision_hidden_size=args.vision_hidden_size,
        vision_layers=args.vision_layers,
        vision_heads=args.vision_heads,
        vision_intermediate_size=args.vision_intermediate_size,
        crop_size=args.crop_size,
        patch_size=args.patch_size,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def _check_data(data: Path) -> None:
    """``--data`` names something that can hold rows (one line, before any work)."""
    fix = (
        "give a prepared dataset folder (`vlmtune prepare`) or a catalog file (CSV, Parquet, JSONL)"
    )
    if data.is_dir() and not any(data.iterdir()):
        raise ConfigError(f"--data {str(data)!r} is an empty folder; {fix}")
    looks_like_hub_name = re.fullmatch(r"[\w.-]+/[\w.-]+", str(data)) is not None
    if not data.exists() and not looks_like_hub_name:
        raise ConfigError(f"--data {str(data)!r} does not exist; {fix}")


def _corpus(rows: list[dict], columns: CatalogColumns, template: PromptTemplate) -> Iterator[str]:
    """Text the tokenizer learns from: the prompt, then every row's answer, title and category."""
    yield template.prompt()
    for row in rows:
        record = record_from_row(row, columns)
        yield template.answer(record) + "<|end|>"


def _rows(data: Path) -> tuple[list[dict], CatalogColumns]:
    try:
        if (data / "dataset.parquet").is_file():
            prepared = load_prepared(data)
            rows, columns = prepared.frame.to_dict("records"), prepared.columns
        else:
            catalog = load_catalog(data)
            rows, columns = catalog.rows.to_dict("records"), catalog.columns
    except (CatalogError, PreparedDatasetError) as err:
        raise ConfigError(f"--data: {err}") from None
    if not rows:
        raise ConfigError(
            f"--data {str(data)!r} holds no usable rows; the tokenizer learns from them: give a "
            "catalog or prepared dataset with products"
        )
    return rows, columns


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple

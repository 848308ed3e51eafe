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

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from vlmtune.data.catalog import CatalogColumns, load_catalog
from vlmtune.data.prepared import load_prepared
from vlmtune.data.prompts import PromptArgs, PromptTemplate, record_from_row
from vlmtune.models.phi3v import (
    Phi3VImageProcessor,
    Phi3VProcessor,
    build_tiny_phi3v,
    tiny_phi3v_config,
)
from vlmtune.utils.logging import get_logger
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
    """Sizes of the small Phi-3-V and where its tokenizer's text comes from."""

    data: Path
    """A prepared dataset folder or a catalog file; its text trains the tokenizer."""
    out: Path
    """Folder to write the checkpoint to (official Phi-3-V layout)."""
    seed: int = 0
    """Seed of the random weights and of the tokenizer trainer."""
    vocab_size: int = 1024
    """BPE vocabulary size, special tokens included (padded to a multiple of 64 in the model)."""
    hidden_size: int = 192
    num_hidden_layers: int = 4
    num_attention_heads: int = 6
    intermediate_size: int = 512
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate_size: int = 256
    crop_size: int = 112
    """Side of one image crop in pixels (336 in the real model)."""
    patch_size: int = 14
    num_crops: int = 1
    """Crops per image in the saved image processor (the real checkpoints use 16, fine-tuning often 4)."""
    prompt: PromptArgs | None = None

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.vocab_size < 300:
            raise ValueError(
                f"vocab_size {self.vocab_size} is below the 256 byte symbols plus special tokens"
            )
        if (self.crop_size // self.patch_size) % 2 or self.crop_size % self.patch_size:
            raise ValueError(
                f"crop_size {self.crop_size} / patch_size {self.patch_size} must be an even whole number "
                "(patch features are merged 2x2)"
            )


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
    """Build the small Phi-3-V with random weights and save checkpoint + processor to ``args.out``."""
    seed_everything(args.seed)
    template = PromptTemplate(args.prompt)
    tokenizer = train_tokenizer(_corpus(args.data, template), args.vocab_size, args.seed)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "<|endoftext|>", "<|end|>")}
    config = tiny_phi3v_config(
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
    model = build_tiny_phi3v(config, seed=args.seed)
    model.generation_config.eos_token_id = [ids["<|end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    image_processor = Phi3VImageProcessor(
        num_crops=args.num_crops, crop_size=args.crop_size, patch_size=args.patch_size
    )
    processor = Phi3VProcessor(image_processor=image_processor, tokenizer=tokenizer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "init-model: %s parameters, vocabulary %d, saved to %s",
        f"{n_params:,}",
        len(tokenizer),
        out,
    )
    return out


def _corpus(data: Path, template: PromptTemplate) -> Iterator[str]:
    """Text the tokenizer learns from: the prompt, then every row's answer, title and category."""
    rows, columns = _rows(Path(data))
    yield template.prompt()
    for row in rows:
        record = record_from_row(row, columns)
        yield template.answer(record) + "<|end|>"


def _rows(data: Path) -> tuple[list[dict], CatalogColumns]:
    if (data / "dataset.parquet").is_file():
        prepared = load_prepared(data)
        return prepared.frame.to_dict("records"), prepared.columns
    catalog = load_catalog(data)
    return catalog.rows.to_dict("records"), catalog.columns


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple

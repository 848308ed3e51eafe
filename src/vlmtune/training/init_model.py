"""``vlmtune init-model``: a small model of a family, saved exactly like a downloaded checkpoint.

The demo and the tests cannot download Phi-3-vision-128k-instruct or Qwen2.5-VL, so they start
from a small model built with the same classes and saved in the same layout (Phi-3-V: the
official one, ``config.json``, safetensors with the official key names, tokenizer files,
``preprocessor_config.json``; transformers' families: their ``save_pretrained`` folders). Every
later command then treats it exactly like the real checkpoint.

Its tokenizer is a byte-level BPE trained (Hugging Face ``tokenizers``) on the catalog's own
text (titles, categories, prices and the prompt), with the family's special and chat tokens and
chat template, so that a listing is a few dozen tokens and the vocabulary stays compact (the
embedding table would otherwise dominate a model this small). What is family-specific is the
family's :meth:`~vlmtune.models.families.ModelFamily.build_tiny`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlmtune.data.catalog import CatalogColumns, CatalogError, load_catalog
from vlmtune.data.prepared import PreparedDatasetError, load_prepared
from vlmtune.data.prompts import PromptArgs, PromptTemplate, record_from_row
from vlmtune.models.families import family_named
from vlmtune.utils.config import ConfigError, config_to_dict, flag
from vlmtune.utils.logging import get_logger
from vlmtune.utils.outputs import claim_output_dir, replace_dir
from vlmtune.utils.seeding import seed_everything

__all__ = ["InitModelArgs", "init_model"]

logger = get_logger(__name__)


@dataclass
class InitModelArgs:
    """Which family, where the small model's tokenizer text comes from, where it goes, and its sizes."""

    data: Path = flag("--data")
    """A prepared dataset folder or a catalog file; its text trains the tokenizer."""
    out: Path = flag("--out")
    """Folder to write the checkpoint to (the family's checkpoint layout); replaced atomically."""
    family: str = flag("--family", default="phi3v")
    """Model family to build (phi3v, qwen2_5_vl, smolvlm, gemma3)."""
    tiny: bool = flag("--tiny/--no-tiny", default=True)
    """A small random model of the sizes below, the only kind init-model builds: a real model's
    weights come from its published checkpoint (``hf download REPO --local-dir DIR``), which every
    command takes as ``--model DIR``."""
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
    """Side of one image crop in pixels (336 in the real model). Qwen-VL's tiny processor keeps
    up to 2 x crop_size^2 pixels of a photo and Gemma 3's image side is about sqrt(2) x this one
    (168 px for 112): about the pixels of Phi-3-V's crop and global view. SmolVLM's tile is this
    side (a photo at most one tile long is its global view alone)."""
    patch_size: int = 14
    """Side of one CLIP patch in pixels; ``crop_size / patch_size`` must be even (2x2 merge)."""
    num_crops: int = 1
    """Crops per image in the saved image processor (the real checkpoints use 16, fine-tuning often 4)."""
    prompt: PromptArgs | None = None
    """How rows become prompts and answers (their text trains the tokenizer)."""

    def __post_init__(self) -> None:
        family = family_named(self.family)  # an unknown name stops here, listing the supported ones
        if not self.tiny:
            raise ConfigError(
                "--no-tiny: init-model builds only small random models (for offline runs and "
                "tests); download the real checkpoint instead (hf download REPO --local-dir DIR) "
                "and pass --model DIR to train"
            )
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
        minimum = 256 + len(family.special_tokens)
        if self.vocab_size < minimum:
            raise ConfigError(
                f"vocab_size={self.vocab_size} is below the 256 byte symbols plus "
                f"{len(family.special_tokens)} special tokens of {family.name}; use at least {minimum}"
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


def init_model(args: InitModelArgs) -> Path:
    """Build the small model of ``args.family`` with random weights; save checkpoint + processor to ``args.out``.

    Checked before any work: ``args.data`` exists and holds rows, and ``args.out`` may be written
    (the output policy of :mod:`vlmtune.utils.outputs`); the folder is then built beside ``out``
    and swapped in, so a model is never half-replaced.
    """
    data, out = Path(args.data), Path(args.out)
    _check_data(data)
    identity = {
        k: v for k, v in config_to_dict(args).items() if k not in ("out", "overwrite", "tiny")
    }
    identity["data"] = str(data.expanduser().resolve())
    claim_output_dir(
        out, "init-model", inputs={"the dataset": data}, overwrite=args.overwrite, identity=identity
    )
    rows, columns = _rows(data)
    seed_everything(args.seed)
    family = family_named(args.family)
    texts = _corpus(rows, columns, PromptTemplate(args.prompt))
    model, processor = family.build_tiny(texts, _sizes(args), args.seed)
    with replace_dir(out, "init-model", identity) as staging:
        family.save(model, processor, staging)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "init-model: %s %s parameters, vocabulary %d, saved to %s",
        family.name,
        f"{n_params:,}",
        len(processor.tokenizer),
        out,
    )
    return out


def _sizes(args: InitModelArgs) -> dict[str, int]:
    return {key: getattr(args, key) for key in _SIZES}


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

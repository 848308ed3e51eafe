"""Byte-level BPE tokenizers trained on a catalog's text, for the tiny models of every family.

A tiny model's vocabulary is trained on the catalog (Hugging Face ``tokenizers``) so that a
listing is a few dozen tokens and the embedding table stays small; the family adds its special
tokens, chat template and post-processing around it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = ["chat_tokenizer", "train_byte_bpe"]


def train_byte_bpe(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str],
    unk_token: str | None = None,
) -> Tokenizer:
    """A byte-level BPE of ``vocab_size`` tokens trained on ``texts``; ``special_tokens`` take the
    first ids, in order. The trainer is deterministic for a given corpus order."""
    tok = Tokenizer(models.BPE(unk_token=unk_token) if unk_token else models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def chat_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str],
    chat_template: str,
    *,
    unk_token: str | None = None,
    post_processor: Callable[[Tokenizer], Any] | None = None,
    **roles: Any,
) -> PreTrainedTokenizerFast:
    """A family's tokenizer for a tiny model: :func:`train_byte_bpe` on ``texts`` with
    ``special_tokens``, the family's ``chat_template``, the ``post_processor`` built from the trained
    tokenizer (e.g. Phi-3's BOS template) and
    ``roles`` (``bos_token``, ``eos_token``, ``pad_token``, ``additional_special_tokens``, ...).
    Pads on the right, as training does; decodes without touching spaces."""
    tok = train_byte_bpe(texts, vocab_size, special_tokens, unk_token=unk_token)
    if post_processor is not None:
        tok.post_processor = post_processor(tok)
    if unk_token is not None:
        roles["unk_token"] = unk_token
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        chat_template=chat_template,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
        **roles,
    )

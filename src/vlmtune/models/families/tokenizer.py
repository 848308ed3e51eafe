"""Byte-level BPE tokenizers trained on a catalog's text, for the tiny models of every family.

A tiny model's vocabulary is trained on the catalog (Hugging Face ``tokenizers``) so that a
listing is a few dozen tokens and the embedding table stays small; the family adds its special
tokens, chat template and post-processing around it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = ["train_byte_bpe"]


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

"""Listing-constrained decoding: every generated answer matches :func:`listing_regex`, then ends.

The regex of a model's :class:`~vlmtune.inference.listing_schema.ListingSchema` is compiled by
llguidance (the structured-generation engine behind vLLM's ``guidance`` backend and
Guidance) against the model's own tokenizer; :class:`ListingLogitsProcessor` is a transformers
``LogitsProcessor`` that keeps one llguidance matcher per row of a batch, feeds it the row's
last token at each step and sets the logits of every token the pattern does not allow to
``-inf``. Once the listing is complete the end token is the only choice left, so generation
stops there. Rows are independent (left padding and the KV cache are the model's business; the
processor reads only the tokens after the prompt), so a batch writes what one-at-a-time
decoding writes.

Greedy decoding and sampling work; beam search does not (beams reorder rows behind the
processor's back) and is refused by :class:`~vlmtune.inference.args.GenerationArgs`.
"""

from __future__ import annotations

import weakref
from typing import Any

import llguidance
import llguidance.hf
import llguidance.numpy
import numpy as np
import torch
from transformers import LogitsProcessor

from vlmtune.data.prompts import FIELD_LABELS
from vlmtune.inference.listing_schema import ListingSchema, listing_regex

__all__ = ["ListingConstraint", "ListingLogitsProcessor", "max_listing_tokens"]

_MAX_UTF8 = 4
_TOKENIZERS: weakref.WeakKeyDictionary[Any, dict[int, Any]] = weakref.WeakKeyDictionary()
"""llguidance's view of each HF tokenizer (about 1 s to build for a 32k vocabulary), by end token."""


class ListingConstraint:
    """The compiled listing pattern for one tokenizer; makes a logits processor per batch."""

    def __init__(self, schema: ListingSchema, tokenizer: Any, end_token_id: int) -> None:
        self.schema = schema
        self.regex = listing_regex(schema)
        self.vocab_size = len(tokenizer)
        self.end_token_id = end_token_id
        ll_tokenizer = _ll_tokenizer(tokenizer, end_token_id)
        grammar = llguidance.grammar_from("regex", self.regex)
        self._matcher = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
        if self._matcher.is_error():
            raise ValueError(
                f"llguidance cannot compile the listing regex: {self._matcher.get_error()}"
            )

    def accepts(self, token_ids: list[int]) -> bool:
        """True when ``token_ids`` are a complete listing followed by the end token."""
        matcher = self._matcher.deep_copy()
        ok = matcher.consume_tokens([*token_ids, self.end_token_id])
        return ok and matcher.is_stopped() and not matcher.is_error()

    def processor(self, batch_size: int) -> ListingLogitsProcessor:
        """A fresh processor for one ``generate`` call over ``batch_size`` rows."""
        matchers = [self._matcher.deep_copy() for _ in range(batch_size)]
        return ListingLogitsProcessor(matchers, self.vocab_size, self.end_token_id)


class ListingLogitsProcessor(LogitsProcessor):
    """Masks each row's logits to the tokens its llguidance matcher allows next.

    ``scores`` is ``(batch, model vocab)``; ids at or beyond the tokenizer's vocabulary
    (embedding rows a model pads its vocabulary with) are never allowed.
    """

    def __init__(self, matchers: list[Any], vocab_size: int, end_token_id: int) -> None:
        self.matchers = matchers
        self.vocab_size = vocab_size
        self.end_token_id = end_token_id
        self._done = [False] * len(matchers)
        self._prompt_len: int | None = None
        self._consumed = 0
        self._bitmask = llguidance.numpy.allocate_token_bitmask(len(matchers), vocab_size)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != len(self.matchers):
            raise ValueError(
                f"constrained decoding got {input_ids.shape[0]} rows for {len(self.matchers)} "
                "matchers (beam search is not supported)"
            )
        if self._prompt_len is None:
            self._prompt_len = input_ids.shape[1]
        new = input_ids[:, self._prompt_len + self._consumed :].tolist()
        self._consumed += len(new[0])
        live = []
        for row, (matcher, tokens) in enumerate(zip(self.matchers, new, strict=True)):
            for token in tokens:
                if not self._done[row]:  # after its end token a row is padded: nothing to read
                    matcher.consume_token(token)
                    self._done[row] = token == self.end_token_id
            if matcher.is_error():
                raise RuntimeError(f"constrained decoding, row {row}: {matcher.get_error()}")
            if not self._done[row]:
                live.append((matcher, row))
        self._bitmask.fill(-1)  # finished rows: anything (generate pads them anyway)
        for matcher, row in live:  # one thread: llguidance's pool stalls on a busy 2-core machine
            llguidance.numpy.fill_next_token_bitmask(matcher, self._bitmask, row)
        return _mask(scores, _allowed(self._bitmask, self.vocab_size))


def max_listing_tokens(schema: ListingSchema) -> int:
    """Most tokens a listing of ``schema`` can take, its end token included.

    Every token the pattern allows spells at least one byte, so the longest listing in UTF-8
    bytes (4 per title character, a space between each two) bounds it.
    """
    values = {
        "title": schema.title_max_chars * (_MAX_UTF8 + 1),
        "category": max(len(c.encode("utf-8")) for c in schema.categories),
        "price": schema.price_max_digits + 1 + max(schema.price_decimals),
    }
    labels = sum(len(f"{FIELD_LABELS[f]}: ") for f in schema.fields) + 2 * (len(schema.fields) - 1)
    return labels + sum(values[f] for f in schema.fields) + 1


def _ll_tokenizer(tokenizer: Any, end_token_id: int) -> Any:
    by_end = _TOKENIZERS.setdefault(tokenizer, {})
    if end_token_id not in by_end:
        by_end[end_token_id] = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=len(tokenizer), eos_token=end_token_id
        )
    return by_end[end_token_id]


def _allowed(bitmask: np.ndarray, vocab_size: int) -> np.ndarray:
    """``(batch, words)`` int32 bitmask -> ``(batch, vocab_size)`` bool: token ``i`` is bit ``i % 32``
    of word ``i // 32`` (little-endian words, so bit ``i % 8`` of byte ``i // 8``)."""
    bits = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")
    return bits[:, :vocab_size].astype(bool)


def _mask(scores: torch.Tensor, allowed: np.ndarray) -> torch.Tensor:
    """``scores`` with every token not ``allowed`` (and every id past the vocabulary) at -inf.

    On CPU in place through numpy: torch's element-wise kernels spin their thread pool, which
    costs more than the mask itself on a shared machine."""
    vocab = allowed.shape[1]
    if scores.device.type == "cpu":
        view = scores.detach().numpy()
        view[:, vocab:] = -np.inf
        view[:, :vocab][~allowed[:, : view.shape[1]]] = -np.inf
        return scores
    keep = torch.zeros(scores.shape, dtype=torch.bool)
    keep[:, :vocab] = torch.from_numpy(allowed[:, : scores.shape[1]])
    return scores.masked_fill_(~keep.to(scores.device), float("-inf"))

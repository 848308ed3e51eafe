"""The prompt contract: one place that turns a catalog row into a conversation and back.

A training example is the user turn (the image tag and a question, rendered with
the Phi-3 chat format) followed by the answer the model learns to write::

    <|user|>\\n<|image_1|>\\nWhat is shown in this image?<|end|>\\n<|assistant|>\\n
    Product: {title}, Category: {category3_code}, Full Price: {full_price}<|end|>

The ``seed`` style reproduces, byte for byte, the string of the public Phi-3
cookbook fine-tuning script this project replaces (no newline after the user's
``<|end|>``, the image tag glued to the question, prices printed as Python
floats). :func:`parse_listing` reads the fields back from generated text and
says, per field, what could not be read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from vlmtune.data.catalog import CatalogColumns, PriceError, parse_price

__all__ = [
    "END_TOKEN",
    "FIELD_LABELS",
    "ParsedListing",
    "PromptArgs",
    "PromptTemplate",
    "end_token_of",
    "format_price",
    "parse_listing",
    "record_from_row",
]

END_TOKEN = "<|end|>"
IMAGE_TAG = "<|image_1|>"
FIELD_LABELS: dict[str, str] = {"title": "Product", "category": "Category", "price": "Full Price"}
"""The listing's fields, in the default order, with their labels."""

_SPECIAL = re.compile(r"<\|[a-z_0-9]+\|>|</?s>")
_END_TOKENS = re.compile(r"<\|end\|>|<\|endoftext\|>|</s>|<\|im_end\|>|<end_of_turn>")
"""Tokens that end a generated answer (Phi-3's end of turn and end of text, Llama's ``</s>``)."""


@dataclass
class PromptArgs:
    """How rows become prompts and answers."""

    style: Literal["chat", "seed"] = "chat"
    """``chat``: the model's chat template; ``seed``: the cookbook's exact string."""
    question: str = "What is shown in this image?"
    """The user's question after the image tag."""
    fields: list[str] = field(default_factory=lambda: ["title", "category", "price"])
    """Fields of the answer, in order (any of title, category, price)."""

    def __post_init__(self) -> None:
        unknown = [f for f in self.fields if f not in FIELD_LABELS]
        if unknown:
            raise ValueError(
                f"fields: {unknown[0]!r} is not a field; choose from {', '.join(FIELD_LABELS)}"
            )
        if not self.fields or len(set(self.fields)) != len(self.fields):
            raise ValueError(f"fields: {self.fields!r} must be a non-empty list without repeats")
        if not self.question.strip():
            raise ValueError("question must not be empty")


@dataclass
class ParsedListing:
    """Fields read from generated text; ``errors`` names each field that could not be read and why."""

    title: str | None = None
    category: str | None = None
    price: float | None = None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every expected field was read."""
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "category": self.category,
            "price": self.price,
            "errors": dict(self.errors),
        }


def format_price(value: float, style: str = "chat") -> str:
    """Price as written in the answer: ``1290`` / ``1290.50`` (chat) or ``1290.0`` (seed, Python's float)."""
    value = float(value)
    if style == "seed":
        return str(value)
    return f"{value:.0f}" if value.is_integer() else f"{value:.2f}"


def record_from_row(row: Mapping[str, Any], columns: CatalogColumns) -> dict[str, Any]:
    """Map a catalog row onto the listing's logical fields (title, category, price)."""
    return {
        "title": str(row[columns.title]),
        "category": str(row[columns.category]),
        "price": float(row[columns.price]),
    }


class PromptTemplate:
    """Renders prompts and answers and parses answers back, for one :class:`PromptArgs`."""

    def __init__(self, args: PromptArgs | None = None) -> None:
        self.args = args or PromptArgs()

    def user_text(self) -> str:
        """The user's message: the image tag and the question."""
        sep = "" if self.args.style == "seed" else "\n"
        return f"{IMAGE_TAG}{sep}{self.args.question}"

    def prompt(self, tokenizer: Any = None) -> str:
        """The text up to and including ``<|assistant|>\\n``, where generation starts.

        ``tokenizer`` may be a model family's processor: with ``style="chat"`` its own chat
        rendering of the image and the question (``render_prompt``) is the prompt. With a
        tokenizer that carries a chat template, the template renders it; otherwise the Phi-3
        chat format is written directly.
        """
        if self.args.style == "seed":
            return f"<|user|>\n{self.user_text()}{END_TOKEN}<|assistant|>\n"
        render = getattr(tokenizer, "render_prompt", None)
        if render is not None:
            return render(self.args.question)
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": self.user_text()}]
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return f"<|user|>\n{self.user_text()}{END_TOKEN}\n<|assistant|>\n"

    def answer(self, record: Mapping[str, Any]) -> str:
        """``Product: ..., Category: ..., Full Price: ...`` (without the end token)."""
        parts = []
        for name in self.args.fields:
            value = record[name]
            text = format_price(value, self.args.style) if name == "price" else str(value)
            parts.append(f"{FIELD_LABELS[name]}: {text}")
        return ", ".join(parts)

    def conversation(self, record: Mapping[str, Any], tokenizer: Any = None) -> tuple[str, str]:
        """(prompt, target): the target is the answer followed by the end-of-turn token
        (``tokenizer``'s ``end_token`` when it is a family's processor, else ``<|end|>``), what
        is trained on."""
        prefix = getattr(tokenizer, "answer_prefix", "")  # e.g. SmolVLM's space after "Assistant:"
        return self.prompt(tokenizer), f"{prefix}{self.answer(record)}{end_token_of(tokenizer)}"

    def parse(self, text: str) -> ParsedListing:
        """Read this template's fields back from generated text (see :func:`parse_listing`)."""
        return parse_listing(text, self.args.fields)


def end_token_of(processor: Any) -> str:
    """The end-of-turn token of a family's processor (``end_token``); ``<|end|>`` otherwise."""
    token = getattr(processor, "end_token", None)
    return token if isinstance(token, str) else END_TOKEN


def parse_listing(
    text: str, fields: Sequence[str] = ("title", "category", "price")
) -> ParsedListing:
    """Parse ``Product: ..., Category: ..., Full Price: ...`` from generated text.

    The text ends at the first end token (``<|end|>``, ``<|endoftext|>``,
    ``</s>``): whatever a model writes after it is not part of the answer.
    Labels are matched case-insensitively with any spacing around the colon,
    in any order; a value runs to the next label (its separating comma dropped)
    or to the end. Other special tokens become spaces. Prices may carry
    currency symbols or codes, thousands separators and a sentence's final
    period (``Full Price: 1290.``). Every expected field that is missing, empty
    or (for the price) not a positive number is named in ``errors`` with the
    reason.
    """
    clean = _SPECIAL.sub(" ", _END_TOKENS.split(text, maxsplit=1)[0])
    spans = _label_spans(clean, fields)
    result = ParsedListing()
    ordered = sorted(spans.items(), key=lambda item: item[1][0])
    for idx, (name, (_, value_start)) in enumerate(ordered):
        end = ordered[idx + 1][1][0] if idx + 1 < len(ordered) else len(clean)
        value = re.sub(r"\s+", " ", clean[value_start:end]).strip().rstrip(",;").strip()
        _set_field(result, name, value)
    for name in fields:
        if name not in spans:
            result.errors[name] = f"label {FIELD_LABELS[name]!r} not found"
    return result


def _label_spans(text: str, fields: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Position (label start, value start) of each field's first label, longest labels first."""
    taken: list[tuple[int, int]] = []
    spans: dict[str, tuple[int, int]] = {}
    for name in sorted(fields, key=lambda n: -len(FIELD_LABELS[n])):
        words = r"\s+".join(map(re.escape, FIELD_LABELS[name].split()))
        for match in re.finditer(rf"(?<![\w]){words}\s*:", text, flags=re.IGNORECASE):
            if all(match.end() <= a or match.start() >= b for a, b in taken):
                spans[name] = (match.start(), match.end())
                taken.append((match.start(), match.end()))
                break
    return spans


def _set_field(result: ParsedListing, name: str, value: str) -> None:
    if not value:
        result.errors[name] = f"{FIELD_LABELS[name]!r} is empty"
    elif name == "price":
        try:
            result.price = parse_price(value.removesuffix("."))  # "...: 1290." ends a sentence
        except PriceError as err:
            result.errors[name] = str(err)
    else:
        setattr(result, name, value)

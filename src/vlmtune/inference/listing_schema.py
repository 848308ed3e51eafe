"""The listing schema: what a trained model's listings may say, and the regex that says it.

A :class:`ListingSchema` is computed from the training split by ``train`` (the categories
the model was trained on, the longest title, how prices were written) and saved beside
the processor files of every model folder it writes as ``listing_schema.json``.
:func:`listing_regex` turns it into the pattern constrained decoding enforces::

    Product: <title>, Category: <one of the known codes>, Full Price: <number>

in the training prompt's field order. The regex uses only what every structured-generation
engine reads (literals, classes, alternation, bounded repeats; no lookaround, no
backreferences), so the same string constrains llguidance here and vLLM's structured outputs
(``guided_regex`` / ``structured_outputs={"regex": ...}``) for a merged model.

What the regex accepts is what :func:`vlmtune.data.prompts.parse_listing` reads back
unchanged: a title is non-empty, has single spaces only between words, does not end with
``,`` or ``;`` (the parser drops those) and holds no ``:`` or ``<`` (so it can hold neither
a field label such as ``Category:`` nor a special token such as ``<|end|>``); a category is
one of the codes the parser reads back whole; a price is a positive number with at most one
more integer digit than the training prices and the decimals they were written with.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlmtune.data.prepared import PreparedDataset, PreparedDatasetError, load_prepared
from vlmtune.data.prompts import FIELD_LABELS, PromptArgs, format_price, parse_listing
from vlmtune.utils.errors import UserError
from vlmtune.utils.io import atomic_write_json

__all__ = [
    "SCHEMA_FILE",
    "ListingSchema",
    "ListingSchemaError",
    "find_schema",
    "listing_regex",
    "load_schema",
    "resolve_schema",
    "save_schema",
    "schema_from_dataset",
    "schema_from_records",
]

SCHEMA_FILE = "listing_schema.json"
_VERSION = 1
_WHITESPACE = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
"""Every character Python's ``\\s`` matches (the parser collapses runs of them into one space)."""
_TITLE_EXCLUDED = ":<"
_META = set(r"\.^$|?*+()[]{}/-&~#")


class ListingSchemaError(UserError):
    """No usable listing schema: the message names where it was looked for and the fix."""


@dataclass(frozen=True)
class ListingSchema:
    """What a model's listings may contain, learnt from its training split."""

    categories: tuple[str, ...]
    """Category codes of the training split that the parser reads back whole, sorted."""
    title_max_chars: int
    """Most non-space characters of a title (the longest training title's length)."""
    price_max_digits: int
    """Most integer digits of a price: one more than the largest training price has."""
    price_decimals: tuple[int, ...]
    """Decimal places the training answers wrote prices with (``0`` for ``1290``, ``2`` for ``12.50``)."""
    price_below_one: bool = False
    """True when a training price was below 1 (then ``0.xx`` prices are allowed)."""
    fields: tuple[str, ...] = ("title", "category", "price")
    """The answer's fields in the training prompt's order."""

    def __post_init__(self) -> None:
        if not self.categories:
            raise ValueError("categories: a listing schema needs at least one category")
        if self.title_max_chars < 1 or self.price_max_digits < 1 or not self.price_decimals:
            raise ValueError("title_max_chars, price_max_digits and price_decimals must be set")
        unknown = [f for f in self.fields if f not in FIELD_LABELS]
        if unknown or not self.fields:
            raise ValueError(f"fields: {list(self.fields)!r} are not listing fields")

    def as_dict(self) -> dict[str, Any]:
        return {"version": _VERSION, **asdict(self)}


def schema_from_records(
    records: Iterable[Mapping[str, Any]], prompt: PromptArgs | None = None
) -> ListingSchema:
    """The schema of training ``records`` (``title``, ``category``, ``price``) as ``prompt`` writes them.

    Category codes that the parser would not read back whole (one holding ``Full Price:``,
    a special token or leading spaces) are left out: the model could not be scored on them.
    """
    prompt = prompt or PromptArgs()
    rows = list(records)
    if not rows:
        raise ValueError("no training rows to learn a listing schema from")
    prices = [format_price(r["price"], prompt.style) for r in rows]
    return ListingSchema(
        categories=tuple(sorted({str(r["category"]) for r in rows} & _readable_codes(rows))),
        title_max_chars=max(len(str(r["title"]).replace(" ", "")) for r in rows),
        price_max_digits=max(len(p.split(".")[0]) for p in prices) + 1,
        price_decimals=tuple(sorted({len(p.partition(".")[2]) for p in prices})),
        price_below_one=any(float(r["price"]) < 1 for r in rows),
        fields=tuple(prompt.fields),
    )


def schema_from_dataset(
    dataset: PreparedDataset, prompt: PromptArgs | None = None
) -> ListingSchema:
    """The schema of a prepared split (normally ``train``), read through its catalog columns."""
    cols = dataset.columns
    records = (
        {"title": row[cols.title], "category": row[cols.category], "price": float(row[cols.price])}
        for row in dataset.frame[[cols.title, cols.category, cols.price]].to_dict("records")
    )
    return schema_from_records(records, prompt)


def save_schema(schema: ListingSchema, folder: str | Path) -> Path:
    """Write ``folder/listing_schema.json`` atomically."""
    return atomic_write_json(Path(folder) / SCHEMA_FILE, schema.as_dict())


def load_schema(path: str | Path) -> ListingSchema:
    """Read a schema file (or ``folder/listing_schema.json``); a damaged one is a :class:`ListingSchemaError`."""
    path = Path(path)
    path = path / SCHEMA_FILE if path.is_dir() else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data.pop("version", None)
        return ListingSchema(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise ListingSchemaError(
            f"{str(path)!r} is not a readable listing schema ({err}); train the model again "
            "or give the dataset it was trained on with --schema-from DATA"
        ) from None


def find_schema(*folders: Path | None) -> ListingSchema | None:
    """The schema saved in the first of ``folders`` that holds one (None when none does)."""
    for folder in folders:
        if folder is not None and (Path(folder) / SCHEMA_FILE).is_file():
            return load_schema(Path(folder) / SCHEMA_FILE)
    return None


def resolve_schema(
    model_dir: Path, schema_from: Path | None = None, prompt: PromptArgs | None = None
) -> ListingSchema:
    """The schema constrained decoding uses: the ``train`` split of the prepared dataset
    ``schema_from`` when given, else ``model_dir/listing_schema.json``.

    Raises a one-line :class:`ListingSchemaError` naming the fix when there is neither (and
    the dataset's own error when ``schema_from`` is not a prepared dataset with a train split).
    """
    if schema_from is not None:
        try:
            return schema_from_dataset(load_prepared(schema_from, "train"), prompt)
        except PreparedDatasetError as err:
            raise ListingSchemaError(f"--schema-from: {err}") from None
    schema = find_schema(model_dir)
    if schema is None:
        raise ListingSchemaError(
            f"constrained decoding needs a listing schema, and {str(model_dir)!r} has no "
            f"{SCHEMA_FILE} (models trained by `vlmtune train` have one); give the dataset it "
            "was trained on with --schema-from DATA, or decode freely with --no-constrained"
        )
    return schema


def listing_regex(schema: ListingSchema) -> str:
    """The regex of a complete listing (without the end token), for llguidance and vLLM alike."""
    values = {
        "title": _title_regex(schema.title_max_chars),
        "category": "(?:" + "|".join(_escape(c) for c in schema.categories) + ")",
        "price": _price_regex(schema),
    }
    return ", ".join(f"{_escape(FIELD_LABELS[f])}: {values[f]}" for f in schema.fields)


# --------------------------------------------------------------------------- helpers


def _title_regex(max_chars: int) -> str:
    """Words of allowed characters joined by single spaces, not ending in ``,`` or ``;``."""
    excluded = _class_escape(_WHITESPACE + _TITLE_EXCLUDED)
    char = f"[^{excluded}]"
    last = f"[^{excluded},;]"
    return f"(?:{char} ?){{0,{max_chars - 1}}}{last}"


def _price_regex(schema: ListingSchema) -> str:
    whole = f"[1-9][0-9]{{0,{schema.price_max_digits - 1}}}"
    decimals = [d for d in schema.price_decimals if d > 0]
    fraction = "|".join(f"[0-9]{{{d}}}" for d in decimals)
    if not decimals:
        return whole
    optional = "?" if 0 in schema.price_decimals else ""
    number = f"{whole}(?:\\.(?:{fraction})){optional}"
    if schema.price_below_one:  # 0.x with at least one non-zero decimal
        tails = [f"0{{{i}}}[1-9][0-9]{{{d - 1 - i}}}" for d in decimals for i in range(d)]
        number = f"(?:{number}|0\\.(?:{'|'.join(tails)}))"
    return number


def _readable_codes(rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Codes that come back unchanged from a listing in every field position."""
    codes = {str(r["category"]) for r in rows}
    fields = ("title", "category", "price")
    return {
        code
        for code in codes
        if parse_listing(f"Product: x, Category: {code}, Full Price: 1", fields).category == code
        and parse_listing(f"Category: {code}", ("category",)).category == code
    }


def _escape(text: str) -> str:
    """Escape regex metacharacters (only those: engines differ on escapes of other characters)."""
    return "".join(f"\\{c}" if c in _META else _unicode(c) for c in text)


def _class_escape(chars: str) -> str:
    return "".join(f"\\{c}" if c in "\\]^-[" else _unicode(c) for c in dict.fromkeys(chars))


def _unicode(char: str) -> str:
    """Printable characters as themselves, others as ``\\uXXXX`` (read by Python, Rust and xgrammar)."""
    if char.isprintable() and not char.isspace() or char == " ":
        return char
    code = ord(char)
    return f"\\u{code:04X}" if code <= 0xFFFF else char

"""The listing schema and its regex: the regex accepts exactly the listings the parser reads back
unchanged (within its documented limits), and llguidance with the tiny model's tokenizer agrees."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from eval_fixtures import ROWS, EvalInputs
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vlmtune.data.prepared import load_prepared
from vlmtune.data.prompts import PromptArgs, PromptTemplate, parse_listing
from vlmtune.inference.constrained import ListingConstraint
from vlmtune.inference.generate import stop_token_ids
from vlmtune.inference.listing_schema import (
    SCHEMA_FILE,
    ListingSchema,
    ListingSchemaError,
    listing_regex,
    load_schema,
    resolve_schema,
    save_schema,
    schema_from_dataset,
    schema_from_records,
)
from vlmtune.models.phi3v import Phi3VProcessor

CODES = ["bags", "Scarves, small", "衬衫", "a.b+c (x)", "t-shirts", "x Full Price: 2", " padded"]
TRAINING = [
    {"title": "Check Wool Scarf", "category": code, "price": price}
    for code, price in zip(CODES, [450.0, 12.5, 1290.0, 3.0, 99.99, 5.0, 7.0], strict=True)
]
SCHEMA = schema_from_records(TRAINING)
REGEX = re.compile(listing_regex(SCHEMA))
TEMPLATE = PromptTemplate()
PIECES = ["Check", "wool", " ", "  ", ",", ";", ":", "<", "<|end|>", "</s>", "Category:", "full price :",
          "product:", "\t", "\u00a0", "\u2028", "é", "衬衫", "(", "|", "-", ".", "0"]  # fmt: skip
"""Pieces of titles that test the parser: labels, special tokens, separators, odd spaces."""
TITLES = st.lists(
    st.sampled_from(PIECES) | st.characters(codec="utf-8", exclude_categories=("Cs",)),
    max_size=10,
).map("".join)
PRICES = st.one_of(
    st.integers(1, 10**6).map(float),
    st.integers(1, 10**7).map(lambda cents: cents / 100),
    st.floats(0.001, 0.99).map(lambda v: round(v, 2)).filter(lambda v: v > 0),
)


@pytest.fixture(scope="module")
def tokenizer(eval_inputs: EvalInputs):
    """The tiny model's byte-level BPE, trained on the catalog by init-model."""
    return Phi3VProcessor.from_pretrained(eval_inputs.checkpoint).tokenizer


@pytest.fixture(scope="module")
def constraint(tokenizer) -> ListingConstraint:
    return ListingConstraint(SCHEMA, tokenizer, stop_token_ids(tokenizer)[0])


@pytest.fixture(scope="module")
def encode(tokenizer):
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


def test_schema_keeps_the_codes_the_parser_reads_back_and_the_price_format():
    assert SCHEMA.categories == tuple(sorted(c for c in CODES if c not in CODES[-2:]))
    assert SCHEMA.price_decimals == (0, 2) and SCHEMA.price_max_digits == 5
    assert SCHEMA.title_max_chars == len("CheckWoolScarf") and not SCHEMA.price_below_one
    seed = schema_from_records(TRAINING, PromptArgs(style="seed", fields=["category", "price"]))
    assert seed.price_decimals == (1, 2) and seed.fields == ("category", "price")
    assert re.fullmatch(listing_regex(seed), "Category: bags, Full Price: 450.0")
    assert not re.fullmatch(listing_regex(seed), "Category: bags, Full Price: 450")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(title=TITLES, category=st.sampled_from(CODES), price=PRICES)
@example(title="Check;", category="bags", price=450.0)
@example(title="Check ,", category="bags", price=450.0)
@example(title="a:b", category="bags", price=450.0)
@example(title="a<|end|>b", category="bags", price=450.0)
@example(title="x  y", category="bags", price=450.0)
@example(title=" x", category="bags", price=450.0)
@example(title="x ", category="bags", price=450.0)
@example(title="x\xa0y", category="bags", price=450.0)
@example(title="Check Wool Scarf", category="bags", price=450.0)
@example(title="", category="bags", price=450.0)
@example(title="衬衫 (red)", category="bags", price=450.0)
@example(title="Tote", category="bags", price=123456.0)  # one digit more than allowed
@example(title="Tote", category="bags", price=0.5)
@example(title="Tote", category="x Full Price: 2", price=5.0)
def test_regex_accepts_a_listing_exactly_when_the_parser_reads_it_back(
    constraint: ListingConstraint, encode, title: str, category: str, price: float
):
    text = TEMPLATE.answer({"title": title, "category": category, "price": price})
    parsed = parse_listing(text)
    read_back = (parsed.ok, parsed.title, parsed.category, parsed.price) == (
        True,
        title,
        category,
        price,
    )
    within_limits = (  # the regex's documented limits beyond the parser's
        not set(title) & set(":<")
        and len(title.replace(" ", "")) <= SCHEMA.title_max_chars
        and len(str(int(price))) <= SCHEMA.price_max_digits
        and price >= 1
    )
    assert bool(REGEX.fullmatch(text)) == (read_back and within_limits), text
    assert constraint.accepts(encode(text)) == bool(REGEX.fullmatch(text)), text


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.from_regex(REGEX, fullmatch=True))
def test_every_string_of_the_regex_parses_to_its_own_fields(
    constraint: ListingConstraint, encode, text: str
):
    parsed = parse_listing(text)
    assert parsed.ok and parsed.category in SCHEMA.categories, text
    price_text = text.rsplit(": ", 1)[1]
    rebuilt = f"Product: {parsed.title}, Category: {parsed.category}, Full Price: {price_text}"
    assert rebuilt == text and parsed.price == float(price_text)
    assert constraint.accepts(encode(text)), text  # llguidance agrees with re


def test_the_tiny_models_tokenizer_works_with_the_library(constraint: ListingConstraint, encode):
    listing = "Product: Check Wool Scarf, Category: bags, Full Price: 450"
    assert constraint.accepts(encode(listing))
    for wrong in (
        listing.replace("bags", "coats"),  # not a trained category
        listing + "0000",  # more digits than any training price
        listing.replace("Check", "Check:"),
        listing.removesuffix(" 450"),
    ):
        assert not constraint.accepts(encode(wrong)), wrong


def test_schema_files_round_trip_and_resolve(eval_inputs: EvalInputs, tmp_path: Path):
    schema = schema_from_dataset(load_prepared(eval_inputs.data, "train"))
    assert schema.categories == tuple(sorted({c for _, _, c, _, s in ROWS if s == "train"}))
    save_schema(schema, tmp_path)
    assert load_schema(tmp_path) == schema == resolve_schema(tmp_path)
    assert resolve_schema(eval_inputs.checkpoint, schema_from=eval_inputs.data) == schema
    with pytest.raises(ListingSchemaError, match="--schema-from DATA") as err:
        resolve_schema(eval_inputs.checkpoint)  # init-model output: never trained, no schema
    assert "\n" not in str(err.value) and SCHEMA_FILE in str(err.value)
    with pytest.raises(ListingSchemaError, match="--schema-from"):
        resolve_schema(eval_inputs.checkpoint, schema_from=tmp_path / "nowhere")
    (tmp_path / SCHEMA_FILE).write_text('{"categories": []}')
    with pytest.raises(ListingSchemaError, match="not a readable listing schema"):
        load_schema(tmp_path)
    with pytest.raises(ValueError, match="at least one category"):
        ListingSchema(categories=(), title_max_chars=3, price_max_digits=2, price_decimals=(0,))


def test_the_unpacked_mask_is_llguidances_own(constraint: ListingConstraint, encode):
    import llguidance.numpy
    import numpy as np

    from vlmtune.inference.constrained import _allowed

    matcher = constraint._matcher.deep_copy()
    for prefix in ("", "Product: Check Wool", ", Category: ba"):
        assert matcher.consume_tokens(encode(prefix)) if prefix else True
        bitmask = llguidance.numpy.allocate_token_bitmask(1, constraint.vocab_size)
        llguidance.numpy.fill_next_token_bitmask(matcher, bitmask, 0)
        bias = np.frombuffer(matcher.compute_logit_bias(), dtype=np.uint8)[: constraint.vocab_size]
        allowed = _allowed(bitmask, constraint.vocab_size)[0]
        assert np.array_equal(allowed, bias > 0) and 0 < allowed.sum() < constraint.vocab_size

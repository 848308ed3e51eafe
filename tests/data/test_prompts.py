"""The prompt contract: rendering rows into conversations and parsing listings back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmtune.data.prompts import PromptArgs, PromptTemplate, parse_listing

RECORD = {"title": "Check Cashmere Scarf", "category": "SCARVES", "price": 590.0}


def test_chat_prompt_and_answer():
    prompt, target = PromptTemplate().conversation(RECORD)
    assert prompt == "<|user|>\n<|image_1|>\nWhat is shown in this image?<|end|>\n<|assistant|>\n"
    assert target == "Product: Check Cashmere Scarf, Category: SCARVES, Full Price: 590<|end|>"


def test_seed_style_is_the_cookbook_string_byte_for_byte():
    prompt, target = PromptTemplate(PromptArgs(style="seed")).conversation(RECORD)
    assert prompt + target == (
        "<|user|>\n<|image_1|>What is shown in this image?<|end|><|assistant|>\n"
        "Product: Check Cashmere Scarf, Category: SCARVES, Full Price: 590.0<|end|>"
    )


def test_chat_template_of_the_tokenizer_is_used():
    class Tok:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert add_generation_prompt and not tokenize
            return f"[{messages[0]['role']}]{messages[0]['content']}[gen]"

    assert PromptTemplate().prompt(Tok()) == "[user]<|image_1|>\nWhat is shown in this image?[gen]"


def test_field_order_is_configurable_and_validated():
    template = PromptTemplate(PromptArgs(fields=["price", "title"]))
    assert template.answer(RECORD) == "Full Price: 590, Product: Check Cashmere Scarf"
    parsed = template.parse("Full Price: $1,290.00, Product: Tote")
    assert parsed.ok and parsed.price == 1290.0 and parsed.title == "Tote"
    with pytest.raises(ValueError, match="'colour' is not a field"):
        PromptArgs(fields=["title", "colour"])


def test_parse_tolerates_case_spacing_currency_and_end_token():
    parsed = parse_listing(
        "  product :Check  Cashmere Scarf ,CATEGORY:  SCARVES,full price: $1,290.00<|end|>"
    )
    assert parsed.ok
    assert (parsed.title, parsed.category, parsed.price) == (
        "Check Cashmere Scarf",
        "SCARVES",
        1290.0,
    )


@pytest.mark.parametrize("end", ["<|end|>", "<|endoftext|>", "</s>"])
def test_parse_stops_at_the_first_end_token(end):
    parsed = parse_listing(f"Product: Tote, Category: BAGS, Full Price: $1290{end} Product: X, 9")
    assert parsed.ok and (parsed.title, parsed.category, parsed.price) == ("Tote", "BAGS", 1290.0)
    cut = parse_listing(f"Product: Tote{end}, Category: BAGS, Full Price: 5")
    assert cut.title == "Tote" and set(cut.errors) == {"category", "price"}


@pytest.mark.parametrize(
    ("text", "price"),
    [("Full Price: 1290.", 1290.0), ("Full Price: USD 1,290.00.", 1290.0),
     ("Full Price: $45.50.<|end|>", 45.5), ("Full Price: 1290.\n", 1290.0)],
)  # fmt: skip
def test_parse_accepts_a_final_period_after_the_price(text, price):
    parsed = parse_listing(f"Product: Tote\nCategory: BAGS\n{text}")
    assert parsed.ok and parsed.price == price
    twice = parse_listing("Product: T, Category: B, Full Price: 1290..")
    assert "not a number" in twice.errors["price"]  # one sentence-ending period, not any dots


def test_parse_reports_each_failed_field():
    parsed = parse_listing("Product: Belt, Full Price: cheap")
    assert parsed.title == "Belt" and parsed.category is None and parsed.price is None
    assert set(parsed.errors) == {"category", "price"}
    assert "not found" in parsed.errors["category"] and "not a number" in parsed.errors["price"]
    assert not parse_listing("garbage").ok
    assert parse_listing("Product: , Category: X, Full Price: 5").errors == {
        "title": "'Product' is empty"
    }


_word = st.text(
    alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters="-'&围巾"),
    min_size=1,
    max_size=12,
)
_phrase = st.lists(_word, min_size=1, max_size=5).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(
    title=_phrase,
    category=_phrase,
    price=st.integers(min_value=1, max_value=10**7),
    cents=st.integers(0, 99),
    after_end=st.text(max_size=40),
)
def test_parse_inverts_format(title, category, price, cents, after_end):
    value = price + cents / 100
    for style in ("chat", "seed"):
        template = PromptTemplate(PromptArgs(style=style))
        _, target = template.conversation({"title": title, "category": category, "price": value})
        parsed = template.parse(target + after_end)  # what follows the end token is ignored
        assert parsed.ok, parsed.errors
        assert (parsed.title, parsed.category) == (title, category)
        assert parsed.price == pytest.approx(value, abs=0.005)

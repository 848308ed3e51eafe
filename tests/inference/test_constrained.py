"""Constrained generation on tiny real Phi-3-V models: every listing parses with a known category,
in batches as one at a time, and a model that already writes listings is left unchanged."""

from __future__ import annotations

import pytest
from eval_fixtures import LISTING, EvalInputs
from PIL import Image

from vlmtune.data.prepared import load_prepared
from vlmtune.data.prompts import PromptTemplate
from vlmtune.inference.args import GenerationArgs
from vlmtune.inference.generate import generate_listings
from vlmtune.inference.listing_schema import ListingSchemaError, schema_from_dataset
from vlmtune.models.phi3v import Phi3VForCausalLM, Phi3VProcessor


def _images(n: int) -> list[Image.Image]:
    # different aspect ratios -> different crop grids -> prompts of different lengths (padding)
    return [
        Image.new("RGB", (60 + 37 * i, 170 - 17 * i), (30 * i, 200 - 25 * i, 90)) for i in range(n)
    ]


@pytest.mark.slow
def test_untrained_model_parses_every_listing_only_when_constrained(eval_inputs: EvalInputs):
    model = Phi3VForCausalLM.from_pretrained(eval_inputs.checkpoint).eval()
    processor = Phi3VProcessor.from_pretrained(eval_inputs.checkpoint, num_crops=4)
    schema = schema_from_dataset(load_prepared(eval_inputs.data, "train"))
    template, images = PromptTemplate(), _images(4)
    # as many tokens as the constrained listings take here (it raises max_new_tokens to fit any)
    free = generate_listings(model, processor, images, template, GenerationArgs(max_new_tokens=32))
    args = GenerationArgs(max_new_tokens=32, batch_size=4, constrained=True)
    batched = generate_listings(model, processor, images, template, args, schema)
    args = GenerationArgs(max_new_tokens=32, batch_size=1, constrained=True)
    single = generate_listings(model, processor, images, template, args, schema)
    free_parsed = [template.parse(text) for text in free]
    parsed = [template.parse(text) for text in batched]
    assert sum(p.ok for p in free_parsed) / len(free) < 1.0, free  # random weights write noise
    assert all(p.ok for p in parsed), batched  # parse rate 1.0
    assert {p.category for p in parsed} <= set(schema.categories)
    assert batched == single  # left padding and the cache change nothing under the constraint
    assert len(set(batched)) > 1, "the constraint leaves the model its choices"


def test_constraint_leaves_a_listing_model_unchanged_and_needs_a_schema(eval_inputs: EvalInputs):
    model = Phi3VForCausalLM.from_pretrained(eval_inputs.listing_model).eval()
    processor = Phi3VProcessor.from_pretrained(eval_inputs.listing_model)
    schema = schema_from_dataset(load_prepared(eval_inputs.data, "train"))
    args = GenerationArgs(batch_size=2, constrained=True)
    texts = generate_listings(model, processor, _images(3), PromptTemplate(), args, schema)
    assert texts == [LISTING] * 3
    with pytest.raises(ListingSchemaError, match="--schema-from DATA"):
        generate_listings(model, processor, _images(1), PromptTemplate(), args)
    with pytest.raises(ValueError, match="num_beams"):
        GenerationArgs(constrained=True, num_beams=2)

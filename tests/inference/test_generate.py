"""Batched generation on tiny real Phi-3-V models: left padding, stopping, max_new_tokens."""

from __future__ import annotations

import pytest
import torch
from eval_fixtures import LISTING, EvalInputs
from PIL import Image

from vlmtune.data.prompts import PromptTemplate
from vlmtune.inference.args import GenerationArgs
from vlmtune.inference.generate import generate_listings, stop_token_ids
from vlmtune.models.phi3v import Phi3VForCausalLM, Phi3VProcessor


def _images(n: int) -> list[Image.Image]:
    # different aspect ratios -> different crop grids -> prompts of different lengths
    return [
        Image.new("L" if i == 0 else "RGB", (60 + 45 * i, 170 - 20 * i), 40 + 25 * i)
        for i in range(n)
    ]


def test_listing_model_writes_its_listing_and_stops_at_end(eval_inputs: EvalInputs):
    model = Phi3VForCausalLM.from_pretrained(eval_inputs.listing_model)
    processor = Phi3VProcessor.from_pretrained(eval_inputs.listing_model)
    texts = generate_listings(
        model,
        processor,
        _images(5),
        PromptTemplate(),
        GenerationArgs(max_new_tokens=48, batch_size=2),
    )
    assert texts == [LISTING] * 5  # nothing after <|end|>, no special tokens, last batch of one


def test_max_new_tokens_cuts_the_listing(eval_inputs: EvalInputs):
    model = Phi3VForCausalLM.from_pretrained(eval_inputs.listing_model)
    processor = Phi3VProcessor.from_pretrained(eval_inputs.listing_model)
    (text,) = generate_listings(
        model, processor, _images(1), PromptTemplate(), GenerationArgs(max_new_tokens=3)
    )
    assert text and LISTING.startswith(text) and len(text) < len(LISTING) // 2


def test_batched_generation_equals_one_at_a_time(eval_inputs: EvalInputs):
    model = Phi3VForCausalLM.from_pretrained(eval_inputs.checkpoint)
    processor = Phi3VProcessor.from_pretrained(eval_inputs.checkpoint, num_crops=4)
    images = _images(4)
    prompt = PromptTemplate().prompt(processor.tokenizer)
    mask = processor(
        text=[prompt] * 4, images=[[im] for im in images], padding_side="left", return_tensors="pt"
    )["attention_mask"]
    assert (
        len(set(mask.sum(dim=1).tolist())) > 1 and (mask[:, 0] == 0).any()
    )  # padding really happens, on the left
    args = GenerationArgs(max_new_tokens=8, batch_size=4)
    batched = generate_listings(model, processor, images, PromptTemplate(), args)
    single = generate_listings(
        model, processor, images, PromptTemplate(), GenerationArgs(max_new_tokens=8, batch_size=1)
    )
    assert batched == single
    assert all(isinstance(t, str) for t in batched) and len(batched) == 4


def test_generation_builds_no_autograd_graph_and_leaves_the_mode_alone(eval_inputs: EvalInputs):
    model = Phi3VForCausalLM.from_pretrained(eval_inputs.checkpoint)
    processor = Phi3VProcessor.from_pretrained(eval_inputs.checkpoint)
    model.eval()
    seen: list[tuple[bool, bool]] = []  # (grad mode, logits part of a graph) at every forward

    def probe(module, args, kwargs, output):
        seen.append((torch.is_grad_enabled(), output.logits.requires_grad))

    handle = model.register_forward_hook(probe, with_kwargs=True)
    try:
        model(input_ids=torch.tensor([[1, 5, 9]]))  # the probe sees a graph where there is one
        assert seen == [(True, True)]
        seen.clear()
        generate_listings(
            model, processor, _images(2), PromptTemplate(), GenerationArgs(max_new_tokens=3)
        )
    finally:
        handle.remove()
    assert len(seen) >= 2 and set(seen) == {(False, False)}  # prefill and decoding steps
    assert not model.training and torch.is_grad_enabled()


def test_stop_tokens_are_end_and_eos(eval_inputs: EvalInputs):
    tokenizer = Phi3VProcessor.from_pretrained(eval_inputs.checkpoint).tokenizer
    stops = stop_token_ids(tokenizer)
    assert stops == [tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id]


@pytest.mark.parametrize(
    "field,value", [("max_new_tokens", 0), ("batch_size", -1), ("num_beams", 1.5)]
)
def test_generation_args_are_validated(field: str, value: object):
    with pytest.raises(ValueError, match=field):
        GenerationArgs(**{field: value})

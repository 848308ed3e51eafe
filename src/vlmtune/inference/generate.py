"""Batched listing generation: many product photos per ``generate`` call.

Each batch holds the same prompt for every image, tokenised by the processor
with **left** padding so that every row's last prompt token sits at the same
position and new tokens are appended on the right; the model decodes with its
KV cache (images enter only on the prefill step) and each row stops at
the processor's end-of-turn token (``<|end|>`` for Phi-3) or the tokenizer's EOS. Greedy decoding by default. Only the new
tokens are decoded, cut at the first stop token, without special tokens.

With ``generation.constrained`` the answer is forced into the model's listing pattern
(:mod:`vlmtune.inference.constrained`, the schema from :mod:`vlmtune.inference.listing_schema`)
and ends with ``<|end|>``; ``max_new_tokens`` is raised to the longest listing the pattern
allows, so no listing is cut short.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from PIL import Image

from vlmtune.data.prompts import END_TOKEN, PromptTemplate, end_token_of
from vlmtune.inference.args import GenerationArgs
from vlmtune.inference.constrained import ListingConstraint, max_listing_tokens
from vlmtune.inference.listing_schema import ListingSchema, ListingSchemaError
from vlmtune.utils.logging import get_logger

__all__ = [
    "GenerationEval",
    "check_image",
    "generate_listings",
    "listing_constraint",
    "stop_token_ids",
]

log = get_logger(__name__)

_CONSTRAINTS: weakref.WeakKeyDictionary[Any, dict[Any, ListingConstraint]] = (
    weakref.WeakKeyDictionary()
)
"""Compiled constraints by tokenizer and (schema, end token): eval calls generate per batch."""


def stop_token_ids(tokenizer: Any, end_token: str = END_TOKEN) -> list[int]:
    """Ids that end a listing: the end-of-turn token (``<|end|>`` for Phi-3; when the vocabulary
    has it) and the EOS token."""
    ids: list[int] = []
    end_id = tokenizer.convert_tokens_to_ids(end_token)
    if isinstance(end_id, int) and end_id != getattr(tokenizer, "unk_token_id", None):
        ids.append(end_id)
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int) and eos not in ids:
        ids.append(eos)
    if not ids:
        raise ValueError(
            "the tokenizer has neither <|end|> nor an EOS token: generation could not stop"
        )
    return ids


def check_image(processor: Any, image: Image.Image) -> None:
    """Raise ``ValueError`` when the processor cannot take ``image`` (e.g. too elongated for the
    HD transform), so that callers can report that one image instead of failing its whole batch."""
    count = getattr(processor, "num_image_tokens", None)
    if callable(count):
        count(_rgb(image))


@torch.no_grad()
def generate_listings(
    model: Any,
    processor: Any,
    images: Sequence[Image.Image],
    template: PromptTemplate,
    args: GenerationArgs | None = None,
    schema: ListingSchema | None = None,
) -> list[str]:
    """Generate one listing text per image, ``args.batch_size`` images per ``generate`` call.

    ``model`` is a vision-language causal LM of a supported family (possibly PEFT-wrapped) and
    ``processor`` its family's processor (the prompt is its chat rendering, the stop tokens its
    end of turn and EOS); images are converted to RGB. Returns the decoded new text of
    each image, in order, without special tokens. The caller chooses the mode
    (``model.eval()``); this function only disables gradients. ``schema`` (the model's
    listing schema) is required when ``args.constrained`` is on.
    """
    args = args or GenerationArgs()
    tokenizer = processor.tokenizer
    prompt = template.prompt(processor)
    stops = stop_token_ids(tokenizer, end_token_of(processor))
    constraint = listing_constraint(tokenizer, schema, stops[0]) if args.constrained else None
    kwargs = _generate_kwargs(args, stops, tokenizer)
    if constraint is not None:
        kwargs["max_new_tokens"] = max(args.max_new_tokens, max_listing_tokens(constraint.schema))
    texts: list[str] = []
    for batch in _batches(list(images), args.batch_size):
        inputs = processor(
            text=[prompt] * len(batch),
            images=[[_rgb(image)] for image in batch],
            padding_side="left",
            return_tensors="pt",
        )
        if constraint is not None:
            kwargs["logits_processor"] = [constraint.processor(len(batch))]
        output = model.generate(**_to_model(inputs, model), **kwargs)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        texts += [_decode(tokenizer, row.tolist(), stops) for row in new_tokens]
    return texts


def listing_constraint(
    tokenizer: Any, schema: ListingSchema | None, end_token_id: int
) -> ListingConstraint:
    """The compiled listing constraint of ``schema`` for ``tokenizer`` (cached per tokenizer).

    Raises :class:`ListingSchemaError` (one line naming the fix) when there is no schema."""
    if schema is None:
        raise ListingSchemaError(
            "generation.constrained=true needs the listing schema saved with a model trained by "
            "`vlmtune train` (listing_schema.json); give the dataset it was trained on with "
            "--schema-from DATA, or set generation.constrained=false"
        )
    by_schema = _CONSTRAINTS.setdefault(tokenizer, {})
    key = (schema, end_token_id)
    if key not in by_schema:
        by_schema[key] = ListingConstraint(schema, tokenizer, end_token_id)
        log.info(
            "constrained decoding: %d categories, at most %d new tokens per listing",
            len(schema.categories),
            max_listing_tokens(schema),
        )
    return by_schema[key]


def _generate_kwargs(args: GenerationArgs, stops: list[int], tokenizer: Any) -> dict[str, Any]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[-1]
    kwargs: dict[str, Any] = {
        "max_new_tokens": args.max_new_tokens,
        "eos_token_id": stops,
        "pad_token_id": pad,
        "do_sample": args.do_sample,
        "num_beams": args.num_beams,
        "use_cache": True,
    }
    if not args.do_sample:  # silence sampling knobs a checkpoint's generation_config may carry
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def _to_model(inputs: Any, model: Any) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    moved = {}
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor):
            continue
        value = value.to(device)
        moved[key] = value.to(dtype) if key == "pixel_values" else value
    return moved


def _decode(tokenizer: Any, ids: list[int], stops: list[int]) -> str:
    cut = next((i for i, tok in enumerate(ids) if tok in stops), len(ids))
    return tokenizer.decode(ids[:cut], skip_special_tokens=True).strip()


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class GenerationEval(Protocol):
    """Scores generated listings during training: ``(model, processor) -> (metrics, rows)``.

    Built by the evaluation layer (:func:`vlmtune.evaluation.evaluate.make_generation_eval`) and
    injected into training by the CLI, so that training and evaluation never import each other."""

    def __call__(
        self, model: Any, processor: Any, /
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """(model, processor) -> (metrics by name, one row per evaluated sample)."""
        ...

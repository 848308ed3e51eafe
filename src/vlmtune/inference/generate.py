"""Batched listing generation: many product photos per ``generate`` call.

Each batch holds the same prompt for every image, tokenised by the processor
with **left** padding so that every row's last prompt token sits at the same
position and new tokens are appended on the right; the model decodes with its
KV cache (images enter only on the prefill step) and each row stops at
the processor's end-of-turn token (``<|end|>`` for Phi-3) or the tokenizer's EOS. Greedy decoding by default. Only the new
tokens are decoded, cut at the first stop token, without special tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from PIL import Image

from vlmtune.data.prompts import END_TOKEN, PromptTemplate, end_token_of
from vlmtune.inference.args import GenerationArgs

__all__ = ["GenerationEval", "check_image", "generate_listings", "stop_token_ids"]


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
) -> list[str]:
    """Generate one listing text per image, ``args.batch_size`` images per ``generate`` call.

    ``model`` is a vision-language causal LM of a supported family (possibly PEFT-wrapped) and
    ``processor`` its family's processor (the prompt is its chat rendering, the stop tokens its
    end of turn and EOS); images are converted to RGB. Returns the decoded new text of
    each image, in order, without special tokens. The caller chooses the mode
    (``model.eval()``); this function only disables gradients.
    """
    args = args or GenerationArgs()
    tokenizer = processor.tokenizer
    prompt = template.prompt(processor)
    stops = stop_token_ids(tokenizer, end_token_of(processor))
    texts: list[str] = []
    for batch in _batches(list(images), args.batch_size):
        inputs = processor(
            text=[prompt] * len(batch),
            images=[[_rgb(image)] for image in batch],
            padding_side="left",
            return_tensors="pt",
        )
        output = model.generate(
            **_to_model(inputs, model), **_generate_kwargs(args, stops, tokenizer)
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        texts += [_decode(tokenizer, row.tolist(), stops) for row in new_tokens]
    return texts


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

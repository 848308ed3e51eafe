"""Benchmark: the cost per generated token of listing-constrained decoding, against unconstrained.

For each model (the random tiny Phi-3-V models of ``bench_generate.py``, and any model folder given
with ``--model``), one batch of ``--images`` photos is generated constrained (llguidance mask
computed for every row at every step, applied to the logits) and then unconstrained with
``min_new_tokens = max_new_tokens =`` the constrained run's step count, so both runs decode
exactly the same number of steps over the same prompts; the two alternate ``--repeats`` times
and the medians are compared. Also reported: the time spent inside the logits processor per
step (mask computation and application), and that every constrained listing parses.

With ``--tokenizer DIR`` (e.g. the real Phi-3-V tokenizer in ``../shared/golden/phi3v/checkpoint``)
the logits processor alone is timed on that vocabulary: ``--images`` rows stepping through a
training listing's tokens, milliseconds per step (no model of that size runs here).

Run: ``python bench/bench_constrained.py [--images 8] [--repeats 3] [--threads 1] [--model RUN]
[--tokenizer DIR]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from bench_generate import SIZES, _images, _machine, _processor_and_model

from vlmtune.data.prompts import PromptTemplate
from vlmtune.inference.args import GenerationArgs
from vlmtune.inference.constrained import max_listing_tokens
from vlmtune.inference.generate import (
    _generate_kwargs,
    _to_model,
    listing_constraint,
    stop_token_ids,
)
from vlmtune.inference.listing_schema import resolve_schema, schema_from_records
from vlmtune.inference.loading import load_model_and_processor, resolve_model_dir


class _Timed:
    """Wraps a logits processor and adds up the seconds spent in it."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.inner(input_ids, scores)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def _bench_schema() -> Any:
    """The schema of the listings ``bench_generate``'s tokenizer was trained on."""
    rows = [("Check Wool Scarf", "scarves"), ("Leather Tote", "bags"), ("Cotton Polo", "shirts")]
    return schema_from_records(
        {"title": t, "category": c, "price": 100.0 + 37 * i} for i, (t, c) in enumerate(rows * 20)
    )


def _run(model: Any, processor: Any, images: list, schema: Any, repeats: int) -> dict:
    tokenizer, template = processor.tokenizer, PromptTemplate()
    stops = stop_token_ids(tokenizer)
    constraint = listing_constraint(tokenizer, schema, stops[0])
    inputs = _to_model(
        processor(
            text=[template.prompt(tokenizer)] * len(images),
            images=[[im] for im in images],
            padding_side="left",
            return_tensors="pt",
        ),
        model,
    )
    prompt_len = inputs["input_ids"].shape[1]
    kwargs = _generate_kwargs(GenerationArgs(), stops, tokenizer)
    kwargs["max_new_tokens"] = max_listing_tokens(schema)
    timed_c, timed_u, in_processor, texts, steps = [], [], [], [], 0
    for _ in range(repeats + 1):  # the first pair warms up
        wrapped = _Timed(constraint.processor(len(images)))
        start = time.perf_counter()
        output = model.generate(**inputs, **kwargs, logits_processor=[wrapped])
        seconds = time.perf_counter() - start
        steps = output.shape[1] - prompt_len
        texts = [tokenizer.decode(row[prompt_len:], skip_special_tokens=True) for row in output]
        fixed = {**kwargs, "max_new_tokens": steps, "min_new_tokens": steps}
        start = time.perf_counter()
        model.generate(**inputs, **fixed)
        timed_c.append(seconds)
        timed_u.append(time.perf_counter() - start)
        in_processor.append(wrapped.seconds / max(wrapped.calls, 1))
    c, u = statistics.median(timed_c[1:]), statistics.median(timed_u[1:])
    return {
        "steps": steps,
        "constrained_ms_per_step": 1000 * c / steps,
        "unconstrained_ms_per_step": 1000 * u / steps,
        "ratio": c / u,
        "processor_ms_per_step": 1000 * statistics.median(in_processor[1:]),
        "vocab": len(tokenizer),
        "all_parse": all(template.parse(t).ok for t in texts),
        "categories": len(schema.categories),
    }


def _processor_only(folder: Path, rows: int, repeats: int) -> str:
    """Milliseconds per step of the logits processor alone over a listing, on ``folder``'s tokenizer."""
    from vlmtune.models.phi3v import Phi3VProcessor

    tokenizer = Phi3VProcessor.from_pretrained(folder).tokenizer
    template, schema = PromptTemplate(), _bench_schema()
    start = time.perf_counter()
    constraint = listing_constraint(tokenizer, schema, stop_token_ids(tokenizer)[0])
    built = time.perf_counter() - start
    prompt = template.prompt(tokenizer)
    answer = template.answer({"title": "Check Wool Scarf", "category": "scarves", "price": 137.0})
    skip = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    tokens = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"][skip:]
    vocab = len(tokenizer) + 19  # Phi-3-V's logits are 32064 wide for a 32045-token vocabulary
    times = []
    for _ in range(repeats + 1):
        processor = constraint.processor(rows)
        ids = torch.zeros(rows, 4, dtype=torch.long)
        processor(ids, torch.zeros(rows, vocab))
        start = time.perf_counter()
        for token in tokens:
            ids = torch.cat([ids, torch.full((rows, 1), token)], dim=1)
            processor(ids, torch.zeros(rows, vocab))
        times.append((time.perf_counter() - start) / len(tokens))
    return (
        f"{folder}: vocabulary {len(tokenizer)}, {rows} rows, {len(tokens)} steps: "
        f"**{1000 * statistics.median(times[1:]):.2f} ms per step** (median of {repeats}; first "
        f"pass {1000 * times[0]:.2f} ms); llguidance's tokenizer built in {built:.1f} s (once)"
    )


def _row(name: str, r: dict) -> str:
    return (
        f"| {name} | {r['vocab']} | {r['categories']} | {r['steps']} | "
        f"{r['unconstrained_ms_per_step']:.2f} | {r['constrained_ms_per_step']:.2f} | "
        f"**{r['ratio']:.2f}x** | {r['processor_ms_per_step']:.2f} | {r['all_parse']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--model", type=Path, action="append", default=[], help="a trained model")
    parser.add_argument("--tokenizer", type=Path, default=None, help="time the processor alone")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    images = _images(opts.images)
    print(f"machine: {_machine()}")
    print(
        f"batch of {opts.images} images, greedy, same step count both ways, median of {opts.repeats}"
    )
    print(
        "| model | vocab | categories | steps | unconstrained ms/step | constrained ms/step "
        "| ratio | in processor ms/step | all parse |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, size in SIZES.items():
        processor, model = _processor_and_model(size)
        r = _run(model.eval(), processor, images, _bench_schema(), opts.repeats)
        print(_row(f"random, {name}", r))
    for path in opts.model:
        model, processor = load_model_and_processor(path, device="cpu")
        schema = resolve_schema(resolve_model_dir(path).model_dir)
        print(_row(str(path), _run(model, processor, images, schema, opts.repeats)))
    if opts.tokenizer is not None:
        print(_processor_only(opts.tokenizer, opts.images, opts.repeats))


if __name__ == "__main__":
    main()

"""Builders of the evaluation tests' inputs (imported by conftest.py and the tests; unique module name).

Also used by ``tests/inference`` and ``tests/cli/test_eval_cli.py``, which load this file by
path; :func:`shared_eval_inputs` builds the inputs once per test session for all.

- ``write_prepared_dataset``: a prepared dataset folder as ``vlmtune prepare`` writes it;
- ``build_eval_inputs``: that dataset (``ROWS``: 12 rows, 112x140 JPEGs, splits train/val/test,
  test rows chosen so that every metric of a constant answer is worked out by hand), a tiny random
  Phi-3-V saved in the official layout by ``init_model`` (hidden 32, 2 layers, 56 px crops, BPE
  vocabulary trained on the dataset), and ``listing_model``: the same model trained for a few
  dozen steps to answer every photo with ``LISTING`` and stop at ``<|end|>``, so that generation,
  stopping, parsing and scoring are checked end to end against known answers.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image

from tiny_model import tiny_sizes
from vlmtune.data.prompts import END_TOKEN, PromptTemplate
from vlmtune.models.phi3v import Phi3VForCausalLM, Phi3VProcessor
from vlmtune.training.init_model import InitModelArgs, init_model

LISTING = "Product: Check Wool Scarf, Category: scarves, Full Price: 450"

# (id, title, category, price, split)
ROWS = [
    ("A1", "Check Wool Scarf", "scarves", 420.0, "train"),
    ("A2", "Check Wool Scarf", "scarves", 480.0, "train"),
    ("A3", "Leather Tote", "bags", 900.0, "train"),
    ("A4", "Trench Coat", "coats", 2000.0, "train"),
    ("A5", "Check Wool Scarf", "scarves", 450.0, "train"),
    ("A6", "Polo Shirt", "shirts", 300.0, "train"),
    ("V1", "Leather Tote", "bags", 950.0, "val"),
    ("V2", "Trench Coat", "coats", 1900.0, "val"),
    ("T1", "Check Wool Scarf", "scarves", 450.0, "test"),
    ("T2", "check  wool scarf", "Scarves", 500.0, "test"),
    ("T3", "Leather Tote Bag", "bags", 900.0, "test"),
    ("T4", "Trench Coat", "coats", 2000.0, "test"),
]


@dataclass(frozen=True)
class EvalInputs:
    data: Path
    checkpoint: Path
    listing_model: Path


def write_prepared_dataset(root: Path, rows: list[tuple[str, str, str, float, str]]) -> Path:
    """A prepared dataset folder as ``vlmtune prepare`` writes it (manifest, images, column info)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, (pid, title, category, price, split) in enumerate(rows):
        path = root / "images" / f"{pid}.jpg"
        Image.new("RGB", (112, 140), (20 * i, 90 + 10 * i, 220 - 15 * i)).save(path, quality=90)
        records.append(
            {
                "product_code": pid,
                "title": title,
                "category3_code": category,
                "full_price": price,
                "imageurl": f"https://example.invalid/{pid}.jpg",
                "local_image_path": f"images/{pid}.jpg",
                "image_width": 112,
                "image_height": 140,
                "image_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "split": split,
            }
        )
    pd.DataFrame(records).to_parquet(root / "dataset.parquet", index=False)
    (root / "vlmtune_dataset.json").write_text(json.dumps({"columns": {}}), encoding="utf-8")
    return root


def train_to_answer(
    checkpoint: Path, images: list[Image.Image], answer: str, out: Path, steps: int = 40
) -> Path:
    """Fine-tune ``checkpoint`` (all weights, AdamW) to answer every image with ``answer<|end|>``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide model: threads only contend on a shared 2-core machine
    try:
        torch.manual_seed(0)
        model = Phi3VForCausalLM.from_pretrained(checkpoint)
        processor = Phi3VProcessor.from_pretrained(checkpoint)
        prompt = PromptTemplate().prompt(processor.tokenizer)
        batch = processor(
            text=[prompt + answer + END_TOKEN] * len(images),
            images=[[im] for im in images],
            return_tensors="pt",
        )
        prompt_len = processor(text=[prompt], images=[images[:1]], return_tensors="pt")[
            "input_ids"
        ].shape[1]
        labels = batch["input_ids"].clone()
        labels[:, :prompt_len] = -100
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(steps):
            loss = model(**batch, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        assert loss.item() < 0.1, (
            f"the tiny model did not learn the listing (loss {loss.item():.3f})"
        )
        model.eval()
        model.save_pretrained(out)
        processor.save_pretrained(out)
    finally:
        torch.set_num_threads(threads)
    return out


def build_eval_inputs(root: Path) -> EvalInputs:
    """Dataset, random checkpoint and listing model under ``root`` (about 5 s on one core)."""
    data = write_prepared_dataset(root / "data", ROWS)
    checkpoint = Path(init_model(InitModelArgs(data=data, out=root / "checkpoint", **tiny_sizes())))
    images = [Image.open(data / "images" / f"{pid}.jpg").convert("RGB") for pid, *_ in ROWS[:4]]
    listing_model = train_to_answer(checkpoint, images, LISTING, root / "listing-model")
    return EvalInputs(data=data, checkpoint=checkpoint, listing_model=listing_model)


def shared_eval_inputs(factory: Any) -> EvalInputs:
    """:func:`build_eval_inputs` once per test session (``factory``: the session's ``tmp_path_factory``)."""
    return _inputs_under(factory.getbasetemp())


@functools.cache
def _inputs_under(basetemp: Path) -> EvalInputs:
    return build_eval_inputs(basetemp / "shared-eval-inputs")

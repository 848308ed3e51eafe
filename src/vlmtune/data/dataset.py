"""Supervised fine-tuning examples from a prepared image dataset.

Each row becomes one example through the prompt contract
(:meth:`vlmtune.data.prompts.PromptTemplate.conversation`). Ids and labels are
built in the same pass, as nanochat's ``render_conversation`` does:

* the prompt is the processor's own chat rendering of the image and the question
  (``processor.render_prompt``); its ids come from the processor
  (``processor(text=[prompt], images=[[image]])``), which expands the image tag into the
  image's tokens (Phi-3-V: negative placeholder ids ``-k``);
* answer ids (``answer`` + the processor's end-of-turn token, ``<|end|>`` for Phi-3) are the tokens the tokenizer gives them *after the
  prompt*, not alone: a SentencePiece tokenizer such as the real Phi-3's writes a first
  word alone as ``▁Product`` but after ``<|assistant|>`` as ``Product``. The prompt's text
  after its last image tag is tokenized in front of each answer and its ids cut off again,
  so a sample's ids are those of the whole conversation tokenized at once (what the
  official processor gives); a tokenizer that merges tokens across that boundary falls
  back to the answer tokenized alone;
* labels are ``-100`` over the prompt and the image placeholders and equal the
  ids over the answer and its end token, so only what the model must write is
  trained on and no negative id can reach the loss.

Image decoding and the HD transform happen in ``__getitem__`` (so in DataLoader
workers). A sample whose image is missing or unreadable, or whose length exceeds
``max_length``, is not truncated: it is returned as a *skipped* marker that the
collator drops and the trainer counts. The processor is passed in; this module
never imports the model package.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image

from vlmtune.data.prepared import PreparedDataset
from vlmtune.data.prompts import PromptTemplate, record_from_row
from vlmtune.utils.errors import UserError

__all__ = [
    "IGNORE_INDEX",
    "BadImagesError",
    "SkippedSample",
    "VisionSFTDataset",
    "answer_ids",
    "bad_images_message",
    "check_images",
    "drop_bad_images",
]

IGNORE_INDEX = -100
"""Label value ignored by the loss (prompt, image placeholders, padding)."""
_IMAGE_TAG = re.compile(r"<\|image_\d+\|>")


class BadImagesError(UserError, RuntimeError):
    """Too many training images are missing or unreadable; the message lists them.

    A :class:`~vlmtune.utils.errors.UserError` (exit 2) wherever it is found, before or
    during training: the fix is the user's (re-run prepare, or raise the allowed fraction)."""


@dataclass(frozen=True)
class SkippedSample:
    """Why a sample was left out: ``reason`` is ``bad_image`` or ``too_long``."""

    sample_id: str
    image_path: str
    reason: str
    detail: str


class VisionSFTDataset(torch.utils.data.Dataset):
    """Rows of a prepared dataset as ``input_ids``/``labels``/``pixel_values``/``image_sizes`` examples.

    ``__getitem__`` returns a dict with ``input_ids`` and ``labels`` ``[T]`` (long),
    ``pixel_values`` ``[1, num_crops + 1, 3, S, S]``, ``image_sizes`` ``[1, 2]``,
    ``sample_id`` and ``image_path``; or ``{"skipped": SkippedSample}``.
    """

    def __init__(
        self,
        prepared: PreparedDataset,
        processor: Any,
        template: PromptTemplate,
        max_length: int,
        limit: int | None = None,
    ) -> None:
        self.root = Path(prepared.root)
        self.columns = prepared.columns
        self.processor = processor
        self.template = template
        self.max_length = max_length
        self._prompt = template.prompt(processor)
        self.frame = prepared.frame if limit is None else prepared.frame.head(limit)

    @property
    def frame(self) -> pd.DataFrame:
        """The rows (manifest columns); setting it re-reads ids, paths and answers."""
        return self._frame

    @frame.setter
    def frame(self, frame: pd.DataFrame) -> None:
        self._frame = frame.reset_index(drop=True)
        tokenizer = self.processor.tokenizer
        # Plain per-row values, read once: pandas row access would dominate __getitem__'s time.
        records = self._frame.to_dict("records")
        answers = [
            self.template.conversation(record_from_row(row, self.columns), self.processor)[1]
            for row in records
        ]
        self._rows = [
            (str(row[self.columns.id]), str(row["local_image_path"]), answer, ids)
            for row, answer, ids in zip(
                records, answers, answer_ids(tokenizer, self._prompt, answers), strict=True
            )
        ]
        self._counts: dict[str, list[int]] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def sample_id(self, index: int) -> str:
        """The catalog id of row ``index``."""
        return self._rows[index][0]

    def image_path(self, index: int) -> Path:
        """Absolute path of row ``index``'s image."""
        return self.root / self._rows[index][1]

    def answer(self, index: int) -> str:
        """The target text of row ``index`` (answer + ``<|end|>``)."""
        return self._rows[index][2]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_id, path = self.sample_id(index), self.image_path(index)
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except (OSError, ValueError) as err:
            return {
                "skipped": SkippedSample(
                    sample_id, str(path), "bad_image", f"{type(err).__name__}: {err}"
                )
            }
        example = self.encode(image, self._rows[index][3])
        length = int(example["input_ids"].shape[0])
        if length > self.max_length:
            detail = f"{length} tokens > max_length {self.max_length}"
            return {"skipped": SkippedSample(sample_id, str(path), "too_long", detail)}
        return {**example, "sample_id": sample_id, "image_path": str(path)}

    def encode(self, image: Image.Image, target_ids: list[int]) -> dict[str, torch.Tensor]:
        """Ids, labels and pixels of one (image, answer) pair; labels are -100 outside the answer.

        ``target_ids``: the answer + ``<|end|>`` as :func:`answer_ids` tokenizes it.
        """
        inputs = self.processor(text=[self._prompt], images=[[image]], return_tensors="pt")
        prompt_ids = inputs["input_ids"][0].long()
        target = torch.tensor(target_ids, dtype=torch.long)
        input_ids = torch.cat([prompt_ids, target])
        labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), target])
        # the processor's per-token inputs (Qwen-VL's mm_token_type_ids) continue with 0 (text)
        per_token = {
            key: torch.cat([inputs[key][0].long(), torch.zeros_like(target)])
            for key in getattr(self.processor, "token_input_keys", ())
        }
        keys = getattr(self.processor, "image_input_keys", ("pixel_values", "image_sizes"))
        images = {key: inputs[key] for key in keys}
        return {"input_ids": input_ids, "labels": labels} | per_token | images

    def lengths(self) -> list[int]:
        """Token length of every row (image tokens included), without decoding the images."""
        return self.token_counts()["length"]

    def token_counts(self) -> dict[str, list[int]]:
        """Per row: ``length`` (all tokens), ``image_tokens`` and ``label_tokens`` (answer + end).

        The processor runs once per distinct (width, height) of the manifest on a
        blank image of that size, which gives the exact image-token count, and the
        answers are tokenized in one call; no image is decoded. Used to drop
        over-long rows before training, to group by length and for the preflight.
        """
        if self._counts is None:
            prompt = self._prompt_counts()
            answer_ids = [row[3] for row in self._rows]
            sizes = [
                (int(w), int(h))
                for w, h in zip(self.frame["image_width"], self.frame["image_height"], strict=True)
            ]
            self._counts = {
                "length": [
                    prompt[size][0] + len(ids) for size, ids in zip(sizes, answer_ids, strict=True)
                ],
                "image_tokens": [prompt[size][1] for size in sizes],
                "label_tokens": [len(ids) for ids in answer_ids],
            }
        return self._counts

    def _prompt_counts(self) -> dict[tuple[int, int], tuple[int, int]]:
        """(prompt tokens, image tokens) per distinct image size.

        The prompt is processed once for real; when the processor can count an
        image's tokens from its size alone (``num_image_tokens``), the other sizes
        only swap that count, otherwise each size is processed on a blank image.
        """
        sizes = sorted(
            {
                (int(w), int(h))
                for w, h in zip(self.frame["image_width"], self.frame["image_height"], strict=True)
            }
        )
        if not sizes:
            return {}
        counter = getattr(self.processor, "num_image_tokens", None)
        first = self._processed_counts(sizes[0])
        if counter is None:
            return {size: self._processed_counts(size) for size in sizes}
        text_tokens = first[0] - first[1]
        out = {}
        for width, height in sizes:
            image_tokens = int(counter(Image.new("L", (max(width, 1), max(height, 1)))))
            out[(width, height)] = (text_tokens + image_tokens, image_tokens)
        return out

    def _processed_counts(self, size: tuple[int, int]) -> tuple[int, int]:
        blank = Image.new("RGB", (max(size[0], 1), max(size[1], 1)), "white")
        ids = self.processor(text=[self._prompt], images=[[blank]], return_tensors="pt")[
            "input_ids"
        ][0]
        mask = getattr(self.processor, "image_token_mask", None)
        images = mask(ids) if mask is not None else ids < 0
        return int(ids.shape[0]), int(images.sum())

    def subset(self, indices: Sequence[int]) -> VisionSFTDataset:
        """A dataset over the given rows only (same processor and template)."""
        indices = list(indices)
        clone = object.__new__(VisionSFTDataset)
        clone.__dict__.update(self.__dict__)
        counts = self._counts
        clone.frame = self.frame.iloc[indices]
        if counts is not None:
            clone._counts = {key: [values[i] for i in indices] for key, values in counts.items()}
        return clone


def answer_ids(tokenizer: Any, prompt: str, answers: Sequence[str]) -> list[list[int]]:
    """Token ids of each answer as they come out after ``prompt`` (see the module docstring).

    The processor tokenizes the text after the last image tag as one chunk, so that text
    (``\nWhat is shown in this image?<|end|>\n<|assistant|>\n``) is put in front of each
    answer and its ids removed; if the joint ids do not start with them, the tokenizer merged
    across the boundary and the answer is tokenized alone.
    """
    if not answers:
        return []
    tail = _IMAGE_TAG.split(prompt)[-1]
    head = tokenizer(tail, add_special_tokens=False)["input_ids"]
    joint = tokenizer([tail + a for a in answers], add_special_tokens=False)["input_ids"]
    out = []
    for answer, ids in zip(answers, joint, strict=True):
        if ids[: len(head)] == head:
            out.append(list(ids[len(head) :]))
        else:
            out.append(list(tokenizer(answer, add_special_tokens=False)["input_ids"]))
    return out


def check_images(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    """Open the header of every image; return (path, reason) for each missing or unreadable one."""
    bad = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.size  # noqa: B018 - reading the header is the check
        except FileNotFoundError:
            bad.append((Path(path), "missing"))
        except (OSError, ValueError) as err:
            bad.append((Path(path), f"unreadable ({type(err).__name__}: {err})"))
    return bad


def drop_bad_images(
    dataset: VisionSFTDataset, max_fraction: float
) -> tuple[VisionSFTDataset, list[SkippedSample]]:
    """Leave out rows whose image is missing or unreadable; raise when too many are.

    Returns the dataset without those rows and one :class:`SkippedSample` per row
    left out. Raises :class:`BadImagesError` listing the files when their fraction
    exceeds ``max_fraction``.
    """
    paths = [dataset.image_path(i) for i in range(len(dataset))]
    bad = dict(check_images(paths))
    if not bad:
        return dataset, []
    if len(bad) / max(len(paths), 1) > max_fraction:
        raise BadImagesError(bad_images_message(list(bad.items()), len(paths), max_fraction))
    keep = [i for i, path in enumerate(paths) if path not in bad]
    skipped = [
        SkippedSample(dataset.sample_id(i), str(path), "bad_image", bad[path])
        for i, path in enumerate(paths)
        if path in bad
    ]
    return dataset.subset(keep), skipped


def bad_images_message(
    bad: Sequence[tuple[Path | str, str]], total: int, max_fraction: float
) -> str:
    """One message naming how many images are bad, the allowed fraction, and the files."""
    listing = "\n".join(f"  {path}: {reason}" for path, reason in bad[:50])
    more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
    return (
        f"{len(bad)} of {total} training images are missing or unreadable "
        f"({len(bad) / max(total, 1):.1%} > data.max_bad_image_fraction={max_fraction:.1%}); "
        f"re-run `vlmtune prepare` to fetch them again, or raise data.max_bad_image_fraction:\n"
        f"{listing}{more}"
    )

"""Fixtures for the Phi-3-V tests: the golden folder (skipped with a reason when absent), tiny
random models and small images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmtune.models.phi3v import Phi3VImageProcessor, build_tiny_phi3v

REPO = Path(__file__).resolve().parents[3]


def golden_dir() -> Path | None:
    """``$VLMTUNE_GOLDEN_DIR`` or ``<repo>/../shared/golden/phi3v`` when it exists."""
    candidate = Path(
        os.environ.get("VLMTUNE_GOLDEN_DIR") or REPO.parent / "shared" / "golden" / "phi3v"
    )
    return candidate if (candidate / "README.md").is_file() else None


@pytest.fixture(scope="session")
def golden() -> Path:
    folder = golden_dir()
    if folder is None:
        reason = "Phi-3-V golden vectors not found (set VLMTUNE_GOLDEN_DIR or place them at ../shared/golden/phi3v)"
        if os.environ.get("CI"):  # CI has them beside the clone: parity must never vanish quietly
            pytest.fail(reason)
        pytest.skip(reason)
    return folder


@pytest.fixture(scope="session")
def golden_cases(golden: Path) -> dict[str, dict]:
    cases = json.loads((golden / "model.json").read_text())["cases"]
    return {case["name"]: case for case in cases}


@pytest.fixture(scope="session")
def golden_tensors(golden: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(golden / "model_tensors.safetensors")


def golden_image(golden: Path, name: str) -> Image.Image:
    with Image.open(golden / "images" / name) as image:
        image.load()
        return image.copy()


@pytest.fixture(scope="session")
def tiny_model():
    """Tiny random Phi-3-V (vocab 128, crops of 56 px, patch 14). Do not modify it in tests."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return build_tiny_phi3v(vocab_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="session")
def tiny_image_processor() -> Phi3VImageProcessor:
    return Phi3VImageProcessor(num_crops=4, crop_size=56, patch_size=14)


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def tiny_batch(tiny_image_processor):
    """Two samples: sample 0 has one image, sample 1 has two; ids built by hand as the
    official processor lays them out (placeholders ``-k`` repeated per image)."""
    images = [random_image(80, 60, 1), random_image(50, 120, 2), random_image(56, 56, 3)]
    out = tiny_image_processor(images, return_tensors="pt")
    n = out["num_img_tokens"].tolist()
    rows = [
        [1, 5, 6] + [-1] * n[0] + [1, 7, 8, 9],
        [1, 10] + [-1] * n[1] + [1, 11] + [-2] * n[2] + [1, 12, 13, 14, 15],
    ]
    return {
        "rows": rows,
        "pixel_values": out["pixel_values"],
        "image_sizes": out["image_sizes"],
        "counts": n,
    }


def pad_rows(
    rows: list[list[int]], side: str, pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(row) for row in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        span = slice(longest - len(row), longest) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row)
        mask[i, span] = 1
    return ids, mask

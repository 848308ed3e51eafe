"""Fixtures of the training tests: a prepared synthetic dataset and a tiny Phi-3-V checkpoint.

Both are made by the real pipeline (``generate_catalog`` -> ``prepare_dataset`` -> ``init_model``)
once per session: 40 products with 112x140 images, a model with hidden size 32, 2 layers,
56 px crops and a 512-token BPE vocabulary trained on the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tiny_model import tiny_sizes
from vlmtune.data.prepare import PrepareArgs, prepare_dataset
from vlmtune.data.synthetic.generate import SynthArgs, generate_catalog
from vlmtune.models.phi3v import Phi3VForCausalLM
from vlmtune.training.args import DataArgs, ModelArgs, TrainArgs, TrainConfig
from vlmtune.training.init_model import InitModelArgs, init_model


@dataclass(frozen=True)
class TinyInputs:
    """A prepared dataset folder and a checkpoint folder."""

    data: Path
    checkpoint: Path

    def config(self, out: Path, **train: object) -> TrainConfig:
        """A fast training config over these inputs; ``train`` overrides TrainArgs fields."""
        settings = dict(
            output_dir=out,
            mode="lora",
            max_steps=4,
            per_device_batch_size=4,
            logging_steps=1,
            eval_steps=None,
            save_steps=2,
            learning_rate=1e-3,
            lr_scheduler="constant",
            warmup_ratio=0.0,
            seed=0,
        )
        settings.update(train)
        return TrainConfig(
            model=ModelArgs(path=self.checkpoint),
            data=DataArgs(path=self.data, eval_limit=8, preflight_samples=8),
            train=TrainArgs(**settings),
        )


def build_tiny_inputs(root: Path, n: int = 40, family: str = "phi3v") -> TinyInputs:
    """Synthesise, prepare and initialise the tiny training inputs (a ``family`` model) under ``root``."""
    csv = generate_catalog(
        SynthArgs(out=root / "synth", n=n, seed=0, image_size="112x140", broken_frac=0.0, workers=1)
    )
    data = root / "data"
    prepare_dataset(
        PrepareArgs(source=str(csv), out=data, split="0.7,0.2,0.1", progress=False, concurrency=2)
    )
    checkpoint = init_model(
        InitModelArgs(
            data=data, out=root / "checkpoint", family=family, **tiny_sizes(vocab_size=512)
        )
    )
    return TinyInputs(data=data, checkpoint=Path(checkpoint))


@pytest.fixture(scope="session")
def tiny_inputs(tmp_path_factory: pytest.TempPathFactory) -> TinyInputs:
    return build_tiny_inputs(tmp_path_factory.mktemp("tiny-train"))


@pytest.fixture(scope="session", params=["phi3v", "qwen2_5_vl", "smolvlm", "gemma3"])
def family_inputs(request, tmp_path_factory) -> tuple[str, TinyInputs]:
    """(family name, tiny inputs with a checkpoint of that family), for every supported family."""
    if request.param == "phi3v":
        return request.param, request.getfixturevalue("tiny_inputs")
    root = tmp_path_factory.mktemp(f"tiny-{request.param}")
    return request.param, build_tiny_inputs(root, family=request.param)


@pytest.fixture()
def count_models(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per ``Phi3VForCausalLM`` built from now on (loads included)."""
    built: list[int] = []
    original = Phi3VForCausalLM.__init__

    def counting(self: Phi3VForCausalLM, *args: object, **kwargs: object) -> None:
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Phi3VForCausalLM, "__init__", counting)
    return built

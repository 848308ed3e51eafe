"""seed_everything: one seed fixes Python's, NumPy's and torch's draws, and touches nothing else."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from vlmtune.utils.seeding import seed_everything


def _draws() -> tuple[float, list[float], list[float]]:
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_same_seed_gives_the_same_draws_in_every_library():
    seed_everything(123)
    first = _draws()
    _draws()  # move every generator on, so the second seeding has something to undo
    seed_everything(123)
    assert _draws() == first


def test_different_seeds_give_different_draws_in_every_library():
    seed_everything(1)
    one = _draws()
    seed_everything(2)
    two = _draws()
    for library, a, b in zip(("random", "numpy", "torch"), one, two, strict=True):
        assert a != b, library


def test_a_seed_beyond_numpy_range_is_folded_into_it():
    seed_everything(2**32 + 7)
    big = np.random.rand(3).tolist()
    seed_everything(7)
    assert np.random.rand(3).tolist() == big


def test_environment_is_left_alone(monkeypatch):
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    before = dict(os.environ)
    seed_everything(5)
    assert dict(os.environ) == before


@pytest.fixture
def restore_torch_determinism():
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def test_deterministic_asks_torch_for_deterministic_kernels(restore_torch_determinism):
    torch.use_deterministic_algorithms(False)
    seed_everything(0)
    assert not torch.are_deterministic_algorithms_enabled()
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()

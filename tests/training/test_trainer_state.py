"""Optimizer, scheduler and RNG states round-trip through safetensors + JSON, without pickle."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from vlmtune.training.trainer_state import (
    TrainerStateError,
    load_json_state,
    load_optimizer_state,
    load_rng_state,
    save_json_state,
    save_optimizer_state,
    save_rng_state,
)


def _stepped(
    model: torch.nn.Module, steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(
        [{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}], lr=1e-2
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    for _ in range(steps):
        model(torch.ones(2, 3)).square().sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return optimizer, scheduler


def test_adamw_and_scheduler_continue_exactly_after_a_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer, scheduler = _stepped(model, 3)
    save_optimizer_state(optimizer.state_dict(), tmp_path / "optimizer.safetensors")
    save_json_state(scheduler.state_dict(), tmp_path / "scheduler.json")

    copy = torch.nn.Linear(3, 2)
    copy.load_state_dict(model.state_dict())
    fresh, fresh_scheduler = _stepped(copy, 0)
    load_optimizer_state(fresh, tmp_path / "optimizer.safetensors")
    load_json_state(fresh_scheduler, tmp_path / "scheduler.json")
    assert fresh.param_groups[0]["betas"] == optimizer.param_groups[0]["betas"]
    assert isinstance(fresh.param_groups[0]["betas"], tuple)
    assert fresh.param_groups[1]["weight_decay"] == 0.0
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    for opt, net in ((optimizer, model), (fresh, copy)):
        net(torch.ones(2, 3)).square().sum().backward()
        opt.step()
    torch.testing.assert_close(copy.weight, model.weight, atol=0, rtol=0)
    torch.testing.assert_close(copy.bias, model.bias, atol=0, rtol=0)


def test_rng_states_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_rng_state(tmp_path / "rng_state.safetensors")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    load_rng_state(tmp_path / "rng_state.safetensors")
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_a_state_json_cannot_hold_is_refused_by_name(tmp_path):
    with pytest.raises(TrainerStateError, match="writes no pickles"):
        save_json_state({"lr_lambdas": [object()]}, tmp_path / "scheduler.json")
    assert not (tmp_path / "scheduler.json").exists()

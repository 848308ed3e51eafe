"""The seam between ``VlmTrainer`` and transformers' ``Trainer``: overrides that still override,
the best-model reload in place, and the arguments whose meaning changed in transformers 5."""

from __future__ import annotations

import inspect
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer

from vlmtune.models.phi3v import Phi3VForCausalLM
from vlmtune.training.args import TrainArgs, TrainConfig
from vlmtune.training.train import training_arguments
from vlmtune.training.trainer import OWN_METHODS, VlmTrainer, load_full_weights
from vlmtune.training.trainer_state import TrainerStateError

OVERRIDES = sorted(
    name
    for name, value in vars(VlmTrainer).items()
    if inspect.isfunction(value) and name not in OWN_METHODS
)


def test_the_overrides_are_the_expected_ones():
    # a method added to VlmTrainer is either listed in OWN_METHODS or guarded below
    assert sorted(
        [
            "compute_loss", "prediction_step", "_get_train_sampler", "_get_eval_sampler",
            "evaluation_loop", "save_model", "_save_optimizer_and_scheduler",
            "_load_optimizer_and_scheduler", "_save_scaler", "_load_scaler", "_save_rng_state",
            "_load_rng_state", "_load_from_checkpoint", "_load_best_model",
        ]
    ) == OVERRIDES  # fmt: skip


@pytest.mark.parametrize("name", OVERRIDES)
def test_each_override_exists_on_the_trainer_with_a_compatible_signature(name):
    """A transformers release that renames a hook or changes its parameters fails here,
    instead of silently skipping our code (e.g. the RNG state would be pickled again)."""
    assert hasattr(Trainer, name), f"transformers.Trainer has no {name} any more"
    theirs = list(inspect.signature(getattr(Trainer, name)).parameters.values())
    ours = list(inspect.signature(getattr(VlmTrainer, name)).parameters.values())
    assert [(p.name, p.kind) for p in ours] == [(p.name, p.kind) for p in theirs], name
    for mine, upstream in zip(ours, theirs, strict=True):
        if upstream.default is not inspect.Parameter.empty:  # callers may leave it out
            assert mine.default == upstream.default, f"{name}({mine.name}=...)"


@pytest.mark.parametrize("name", [n for n in OVERRIDES if n.startswith("_")])
def test_each_private_override_is_still_called_by_the_trainer(name):
    uses = re.findall(rf"self\.{name}\b", inspect.getsource(Trainer))  # called or passed on
    assert uses, f"Trainer no longer uses {name}, so our override would never run"


def test_a_warmup_ratio_reaches_transformers_as_a_fraction_of_the_steps():
    config = TrainConfig(train=TrainArgs(warmup_ratio=0.03, ddp_find_unused_parameters=False))
    args = training_arguments(config, Path("run"), model=None)
    assert args.get_warmup_steps(100) == 3 and args.get_warmup_steps(1000) == 30
    config.train.warmup_ratio = 0.0
    assert training_arguments(config, Path("run"), model=None).get_warmup_steps(100) == 0


def test_full_weights_are_reloaded_in_place_without_a_second_model(tiny_inputs, count_models):
    model = Phi3VForCausalLM.from_pretrained(tiny_inputs.checkpoint)
    params_before = {n: p.data_ptr() for n, p in model.named_parameters()}
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    count_models.clear()
    load_full_weights(model, tiny_inputs.checkpoint)
    assert count_models == [], "no second model is built to reload the weights"
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == params_before, "in place"
    saved = load_file(str(tiny_inputs.checkpoint / "model.safetensors"))
    state = model.state_dict()
    assert saved.keys() <= state.keys()
    for key, tensor in saved.items():
        torch.testing.assert_close(state[key], tensor, atol=0, rtol=0, msg=key)


def test_a_checkpoint_that_does_not_fit_fails_naming_the_keys(tiny_inputs, tmp_path):
    model = Phi3VForCausalLM.from_pretrained(tiny_inputs.checkpoint)
    folder = tmp_path / "checkpoint-2"
    shutil.copytree(tiny_inputs.checkpoint, folder)
    weights = load_file(str(folder / "model.safetensors"))
    weights.pop("model.norm.weight")
    weights["model.extra.weight"] = torch.zeros(2)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(TrainerStateError, match=r"model\.norm\.weight.*model\.extra\.weight"):
        load_full_weights(model, folder)


def test_a_checkpoint_of_another_shape_is_refused_before_any_weight_changes(tiny_inputs, tmp_path):
    model = Phi3VForCausalLM.from_pretrained(tiny_inputs.checkpoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folder = tmp_path / "checkpoint-2"
    shutil.copytree(tiny_inputs.checkpoint, folder)
    weights = {k: v + 1 for k, v in load_file(str(folder / "model.safetensors")).items()}
    weights["model.norm.weight"] = torch.zeros(3)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(TrainerStateError, match=r"model\.norm\.weight has shape \(3,\)"):
        load_full_weights(model, folder)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[key]), f"{key} changed by a refused reload"

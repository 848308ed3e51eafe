"""End-to-end ``train()`` runs on the tiny model: outputs, resume exactness, stops, best checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmtune.training.callbacks import read_metrics
from vlmtune.training.run_folder import resolve_resume
from vlmtune.training.train import train
from vlmtune.training.trainer import NonFiniteLossError
from vlmtune.training.trainer_state import TrainerStateError
from vlmtune.utils.config import ConfigError
from vlmtune.utils.errors import RunFailure, UserError
from vlmtune.utils.outputs import read_marker


def _losses(run: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_metrics(run / "metrics.jsonl") if "loss" in e}


def _loss_steps(run: Path) -> list[int]:
    """The step of every logged training loss, in file order (a duplicate shows twice)."""
    return [e["step"] for e in read_metrics(run / "metrics.jsonl") if "loss" in e]


def _tear_last_line(path: Path) -> None:
    """Cut the last record in the middle, as a kill while it was being written leaves it."""
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: start + (len(data) - start) // 2])
    with pytest.raises(ValueError):
        json.loads(path.read_bytes()[start:])


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    name = (
        "adapter_model.safetensors"
        if (folder / "adapter_model.safetensors").is_file()
        else "model.safetensors"
    )
    return load_file(str(folder / name))


def test_lora_run_writes_the_run_folder(tiny_inputs, tmp_path):
    run = tmp_path / "run"
    result = train(tiny_inputs.config(run, max_steps=4, save_steps=2, save_total_limit=1))
    assert result.model_dir == run / "model" and result.interrupted_by is None
    assert (run / "config.yaml").is_file()
    adapter = json.loads((run / "model" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_inputs.checkpoint.resolve())
    assert (run / "model" / "adapter_model.safetensors").is_file()
    assert (run / "model" / "tokenizer.json").is_file() and (
        run / "model" / "preprocessor_config.json"
    ).is_file()
    checkpoints = sorted(p.name for p in run.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-4"]  # save_total_limit=1 keeps the last only
    state = {p.name for p in (run / "checkpoint-4").iterdir()}
    assert {"optimizer.safetensors", "scheduler.json", "rng_state.safetensors"} <= state
    for folder in (run / "checkpoint-4", run / "model"):
        for path in folder.rglob("*"):
            if path.is_file():  # torch.save writes zip files (.pt, .pth, .bin): none at all
                assert path.suffix not in {".bin", ".pt", ".pth", ".pkl"}, path
                assert path.read_bytes()[:4] != b"PK\x03\x04", f"{path} is a torch.save zip"
    losses = _losses(run)
    assert sorted(losses) == [1, 2, 3, 4] and all(v == v for v in losses.values())
    summary = json.loads((run / "train_summary.json").read_text())
    params = summary["parameters"]
    assert params["lora"] > 0 and params["language_model"] == params["vision_tower"] == 0
    assert 0 < summary["label_token_fraction"] < 1
    assert summary["effective_batch_size"] == 4 and summary["global_step"] == 4
    assert summary["image_tokens"]["min"] > 0
    assert read_marker(run)["verb"] == "train", "the run folder is marked as a train output"
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(tiny_inputs.config(run, max_steps=4))  # a fresh run never mixes with an old one


@pytest.mark.parametrize(("mode", "torn_log"), [("lora", True), ("full", False)])
def test_resume_is_exact(tiny_inputs, tmp_path, mode, torn_log, count_models):
    """6 steps in one run == 3 steps, then a resumed run to 6: same weights, same logged losses.

    With ``torn_log`` the first run's metrics.jsonl ends in half a record (killed while
    writing it): the resume drops that line and the curves are still whole."""
    one = tmp_path / "one"
    train(tiny_inputs.config(one, mode=mode, max_steps=6, save_steps=3))
    two = tmp_path / "two"
    train(tiny_inputs.config(two, mode=mode, max_steps=3, save_steps=3))
    if torn_log:
        _tear_last_line(two / "metrics.jsonl")
    count_models.clear()
    resumed = train(tiny_inputs.config(two, mode=mode, max_steps=6, save_steps=3, resume="auto"))
    assert resumed.summary["global_step"] == 6
    assert len(count_models) == 1, "the checkpoint's weights load into the one model built"
    assert _loss_steps(two) == [1, 2, 3, 4, 5, 6], "every step's loss once, no gap"
    losses_one, losses_two = _losses(one), _losses(two)
    for step in range(1, 7):
        assert losses_two[step] == pytest.approx(losses_one[step], abs=1e-6), step
    a, b = _weights(one / "model"), _weights(two / "model")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)
    # and the weights did move away from the start, so the comparison is not trivially true
    start = _weights(two / "checkpoint-3")
    assert any(not torch.allclose(start[k], a[k]) for k in a)

    # resuming a run that reached its last step trains nothing more (the Trainer alone would
    # run a 7th step) and writes the same final model
    again = train(tiny_inputs.config(two, mode=mode, max_steps=6, save_steps=3, resume="auto"))
    assert again.summary["global_step"] == 6 and _loss_steps(two) == [1, 2, 3, 4, 5, 6]
    assert not (two / "checkpoint-7").exists()
    c = _weights(two / "model")
    for key in a:
        torch.testing.assert_close(c[key], b[key], atol=0, rtol=0, msg=key)


def test_nonfinite_loss_stops_with_step_and_batch_ids(tiny_inputs, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_inputs.checkpoint.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    weights = load_file(str(broken / "model.safetensors"))
    key = next(k for k in weights if k.endswith("lm_head.weight"))
    weights[key][0, 0] = float("nan")
    from safetensors.torch import save_file

    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    config = tiny_inputs.config(tmp_path / "run", mode="full")
    config.model.path = broken
    with pytest.raises(NonFiniteLossError, match=r"at step 1 .*batch sample ids: \S+"):
        train(config)
    assert NonFiniteLossError.exit_code == 3 and issubclass(NonFiniteLossError, RunFailure)
    assert read_marker(tmp_path / "run")["verb"] == "train", "marked at the start, before step 1"


def test_resume_setting_is_resolved(tmp_path):
    run = tmp_path / "run"
    assert resolve_resume("auto", run) is None  # nothing to resume: a fresh start
    for step in (3, 12):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        for name in ("trainer_state.json", "optimizer.safetensors", "scheduler.json"):
            (run / f"checkpoint-{step}" / name).write_text("{}")
    assert resolve_resume("auto", run) == str(run / "checkpoint-12")
    assert resolve_resume(str(run / "checkpoint-3"), run) == str(run / "checkpoint-3")
    with pytest.raises(ConfigError, match="not a checkpoint folder"):
        resolve_resume(str(tmp_path), run)
    with pytest.raises(ConfigError, match="already holds checkpoints.*adding --resume auto"):
        resolve_resume(None, run)
    (run / "checkpoint-12" / "scheduler.json").unlink()
    with pytest.raises(TrainerStateError, match="no scheduler.json"):
        resolve_resume("auto", run)


def test_a_checkpoint_without_its_optimizer_state_is_not_resumed_silently(tiny_inputs, tmp_path):
    run = tmp_path / "run"
    train(tiny_inputs.config(run, max_steps=2, save_steps=2))
    (run / "checkpoint-2" / "optimizer.safetensors").unlink()
    before = (run / "config.yaml").read_bytes()
    with pytest.raises(TrainerStateError, match="optimizer.safetensors.*--model"):
        train(tiny_inputs.config(run, max_steps=4, save_steps=2, resume="auto"))
    assert (run / "config.yaml").read_bytes() == before, "refused before any work"
    assert issubclass(TrainerStateError, UserError)

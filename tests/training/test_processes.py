"""Runs in real subprocesses: 2-process data parallel (gloo on CPU) and SIGTERM checkpointing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmtune.training.callbacks import read_metrics
from vlmtune.training.train import train

PYTHON = sys.executable


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli(tiny_inputs, out: Path, *overrides: str) -> list[str]:
    return [
        "-m", "vlmtune.cli.main", "train", "--model", str(tiny_inputs.checkpoint), "--data", str(tiny_inputs.data),
        "--out", str(out), "--no-generation-eval", "train.eval_steps=null", "train.logging_steps=1",
        "train.lr_scheduler=constant", "train.warmup_ratio=0", "train.learning_rate=1e-3", "train.seed=0", *overrides,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _losses(run: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_metrics(run / "metrics.jsonl") if "loss" in e}


@pytest.mark.slow
def test_two_process_data_parallel_matches_one_process(tiny_inputs, tmp_path):
    single = tmp_path / "single"
    train(
        tiny_inputs.config(single, mode="full", max_steps=3, save_steps=3, per_device_batch_size=4)
    )
    ddp = tmp_path / "ddp"
    launcher = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
    ]
    args = _cli(
        tiny_inputs,
        ddp,
        "--mode",
        "full",
        "train.max_steps=3",
        "train.save_steps=3",
        "train.per_device_batch_size=2",
    )
    done = subprocess.run(
        [*launcher, *args], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world size 2" in done.stderr
    summary = json.loads((ddp / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["effective_batch_size"] == 4
    one, two = _losses(single), _losses(ddp)
    assert sorted(two) == [1, 2, 3]
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-4)
    a, b = (
        load_file(str(single / "model" / "model.safetensors")),
        load_file(str(ddp / "model" / "model.safetensors")),
    )
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_a_checkpoint_then_resume_continues(tiny_inputs, tmp_path, signum):
    run = tmp_path / "run"
    args = _cli(
        tiny_inputs,
        run,
        "train.max_steps=10000",
        "train.save_steps=5000",
        "train.per_device_batch_size=2",
    )
    proc = subprocess.Popen(
        [PYTHON, *args], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while (
            time.monotonic() < deadline
            and len(_losses(run) if (run / "metrics.jsonl").exists() else {}) < 3
        ):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert f"stopped by {signum.name}" in stderr and "--resume auto" in stderr
    checkpoints = list(run.glob("checkpoint-*"))
    assert len(checkpoints) == 1, "the signal, not save_steps, wrote the checkpoint"
    step = int(checkpoints[0].name.split("-")[1])
    assert step >= 3 and max(_losses(run)) == step
    assert not (run / "model").exists()
    assert json.loads((run / "train_summary.json").read_text())["interrupted_by"] == signum.name
    resumed = train(
        tiny_inputs.config(run, max_steps=step + 2, per_device_batch_size=2, resume="auto")
    )
    assert resumed.summary["global_step"] == step + 2
    assert sorted(_losses(run)) == list(range(1, step + 3))


@pytest.mark.slow
def test_two_process_data_parallel_with_packing_matches_one_process(tiny_inputs, tmp_path):
    """A packed row per rank == one process accumulating the same two rows."""
    packing = ["data.packing=true", "data.max_length=256", "data.pack_max_tokens=420"]
    single = tmp_path / "single"
    config = tiny_inputs.config(
        single, mode="full", max_steps=2, save_steps=2, per_device_batch_size=1, grad_accum=2
    )
    config.data.packing, config.data.max_length, config.data.pack_max_tokens = True, 256, 420
    train(config)
    ddp = tmp_path / "ddp"
    launcher = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    args = _cli(tiny_inputs, ddp, "--mode", "full", "train.max_steps=2", "train.save_steps=2")
    args += ["train.per_device_batch_size=1", *packing]
    done = subprocess.run(
        [*launcher, f"--master_port={_free_port()}", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((ddp / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["packing"]["samples_per_row"] > 1
    one, two = _losses(single), _losses(ddp)
    assert sorted(two) == [1, 2]
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-4)
    a, b = (
        load_file(str(single / "model" / "model.safetensors")),
        load_file(str(ddp / "model" / "model.safetensors")),
    )
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4, msg=key)

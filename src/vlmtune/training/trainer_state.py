"""The Trainer's resumable state without pickle: optimizer, LR scheduler and RNG states.

transformers' ``Trainer`` writes ``optimizer.pt``, ``scheduler.pt`` and
``rng_state.pth`` with ``torch.save`` (pickle). vlmtune checkpoints hold no
pickle, so the same state is written here as safetensors (every tensor) plus
JSON (every other value), and read back into the live objects:

* ``optimizer.safetensors``: ``state.{param_index}.{name}`` tensors (``exp_avg``,
  ``exp_avg_sq``, ``step``...); the safetensors metadata holds the non-tensor
  per-parameter values and the ``param_groups`` as JSON;
* ``scheduler.json``: ``lr_scheduler.state_dict()``, which is plain numbers and lists
  (``scaler.json`` likewise for the fp16 gradient scaler);
* ``rng_state[_RANK].safetensors``: the torch CPU (and CUDA) generator states as
  tensors, NumPy's MT19937 key as a tensor, and Python's ``random`` state in the metadata.

JSON has no tuples, so values that are tuples in the live object (AdamW's
``betas``) are restored as tuples from the live object's own structure.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vlmtune.utils.errors import UserError
from vlmtune.utils.io import atomic_path, atomic_write_json

__all__ = [
    "OPTIMIZER_FILE",
    "SCALER_FILE",
    "SCHEDULER_FILE",
    "TrainerStateError",
    "load_optimizer_state",
    "load_rng_state",
    "load_json_state",
    "rng_state_file",
    "save_optimizer_state",
    "save_rng_state",
    "save_json_state",
]

OPTIMIZER_FILE = "optimizer.safetensors"
SCHEDULER_FILE = "scheduler.json"
SCALER_FILE = "scaler.json"


class TrainerStateError(UserError, RuntimeError):
    """A checkpoint's weights, optimizer, scheduler or RNG state is missing or does not fit the run.

    A :class:`~vlmtune.utils.errors.UserError`: the checkpoint the user resumes cannot be used
    as it is, and the message says what to do instead (exit 2, no traceback)."""


def save_optimizer_state(state_dict: Mapping[str, Any], path: Path) -> None:
    """Write ``optimizer.state_dict()`` to ``path`` (safetensors + JSON metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    metadata = {
        "param_groups": _to_json(state_dict["param_groups"], "optimizer param_groups"),
        "scalars": _to_json(scalars, "optimizer state"),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_optimizer_state(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Load the state written by :func:`save_optimizer_state` into ``optimizer``."""
    tensors = load_file(str(path))
    metadata = _metadata(path)
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    for index, values in json.loads(metadata["scalars"]).items():
        state.setdefault(int(index), {}).update(values)
    groups = json.loads(metadata["param_groups"])
    live = optimizer.state_dict()["param_groups"]
    if len(groups) != len(live):
        raise TrainerStateError(
            f"{path} has {len(groups)} parameter group(s), the optimizer has {len(live)}"
        )
    groups = [_like(saved, current) for saved, current in zip(groups, live, strict=True)]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_json_state(state_dict: Mapping[str, Any], path: Path) -> None:
    """Write a state dict of plain values (LR scheduler, gradient scaler) to ``path`` as JSON."""
    _to_json(dict(state_dict), f"state written to {Path(path).name}")  # fails before writing
    atomic_write_json(path, dict(state_dict))


def load_json_state(target: Any, path: Path) -> None:
    """Load the state written by :func:`save_json_state` into ``target`` (``load_state_dict``)."""
    saved = json.loads(Path(path).read_text(encoding="utf-8"))
    target.load_state_dict(_like(saved, target.state_dict()))


def rng_state_file(process_index: int, world_size: int) -> str:
    """``rng_state.safetensors`` for one process, ``rng_state_{rank}.safetensors`` for several."""
    return "rng_state.safetensors" if world_size <= 1 else f"rng_state_{process_index}.safetensors"


def save_rng_state(path: Path) -> None:
    """Write this process's Python, NumPy, torch CPU and CUDA generator states to ``path``."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    tensors = {
        "torch_cpu": torch.random.get_rng_state(),
        "numpy_key": torch.from_numpy(key.astype(np.int64)),
    }
    if torch.cuda.is_available():
        for device, state in enumerate(torch.cuda.random.get_rng_state_all()):
            tensors[f"torch_cuda.{device}"] = state
    version, internal, gauss_next = random.getstate()
    metadata = {
        "python": json.dumps([version, list(internal), gauss_next]),
        "numpy": json.dumps([kind, int(pos), int(has_gauss), float(cached)]),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_rng_state(path: Path) -> None:
    """Restore the generator states written by :func:`save_rng_state`."""
    tensors = load_file(str(path))
    metadata = _metadata(path)
    version, internal, gauss_next = json.loads(metadata["python"])
    random.setstate((version, tuple(internal), gauss_next))
    kind, pos, has_gauss, cached = json.loads(metadata["numpy"])
    key = tensors["numpy_key"].numpy().astype(np.uint32)
    np.random.set_state((kind, key, pos, has_gauss, cached))
    torch.random.set_rng_state(tensors["torch_cpu"])
    cuda = {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("torch_cuda.")}
    if cuda and torch.cuda.is_available():
        for device in range(min(len(cuda), torch.cuda.device_count())):
            torch.cuda.random.set_rng_state(cuda[device], device)


# --------------------------------------------------------------------------- helpers


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def _to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, allow_nan=True)
    except TypeError as err:
        raise TrainerStateError(
            f"the {what} holds a value JSON cannot store ({err}); vlmtune writes no pickles"
        ) from err


def _like(saved: Any, live: Any) -> Any:
    """``saved`` (from JSON) with the live value's tuples restored, recursively."""
    if isinstance(live, tuple) and isinstance(saved, list):
        return tuple(_like(s, v) for s, v in zip(saved, live, strict=False)) + tuple(
            saved[len(live) :]
        )
    if isinstance(live, dict) and isinstance(saved, dict):
        return {k: _like(v, live[k]) if k in live else v for k, v in saved.items()}
    if isinstance(live, list) and isinstance(saved, list):
        return [_like(s, v) for s, v in zip(saved, live, strict=False)] + saved[len(live) :]
    return saved

"""Where and in what precision a model runs: device and dtype names, checked before any work.

One place turns the user's text (``--device cuda:1``, ``model.dtype=bfloat16``) into
torch objects, so every verb accepts the same names and refuses the same mistakes
with the same message: a device this torch build cannot use (``cuda`` on a CPU-only
build, ``cuda:3`` on a 2-GPU machine) or a name that is no device (``gpu0``).
"""

from __future__ import annotations

from typing import Literal

import torch

from vlmtune.utils.errors import UserError

__all__ = [
    "DTYPE_NAMES",
    "DtypeName",
    "default_dtype",
    "dtype_name",
    "resolve_device",
    "resolve_dtype",
    "torch_dtype",
]

DtypeName = Literal["float32", "bfloat16", "float16"]
DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def torch_dtype(name: str) -> torch.dtype:
    """``torch.float32`` for ``"float32"`` (also ``bfloat16``, ``float16``; ``torch_dtype`` spellings too)."""
    key = str(name).removeprefix("torch.")
    if key not in _DTYPES:
        raise UserError(f"dtype {name!r} is not one of {', '.join(DTYPE_NAMES)}")
    return _DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """``"bfloat16"`` for ``torch.bfloat16``: the spelling of ``config.json``'s ``torch_dtype``."""
    return str(dtype).removeprefix("torch.")


def default_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """bfloat16 on a CUDA device that supports it, float32 elsewhere (CPU, older GPUs)."""
    device = torch.device(device) if device is not None else resolve_device(None)
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(name: str | None, device: torch.device | str | None = None) -> torch.dtype:
    """``name`` as a torch dtype; ``None`` or ``"auto"`` give :func:`default_dtype` of ``device``."""
    if name is None or name == "auto":
        return default_dtype(device)
    return torch_dtype(name)


def resolve_device(text: str | None) -> torch.device:
    """The torch device named by ``text``, checked against this machine; default cuda, else cpu.

    Raises :class:`~vlmtune.utils.errors.UserError` for a name that is no device and for a
    device this torch build or machine does not have, naming what is available.
    """
    if text is None or not str(text).strip():
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(text).strip()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(
            f"--device {text!r} is not a device; use cpu, cuda, cuda:N or mps"
        ) from None
    if device.type not in _DEVICE_TYPES:
        raise UserError(f"--device {text!r} is not supported; use cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        _check_cuda(text, device)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(
            f"--device {text!r}: MPS is not available on this machine; use --device cpu"
        )
    elif device.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise UserError(f"--device {text!r}: no XPU is available on this machine; use --device cpu")
    return device


def _check_cuda(text: str, device: torch.device) -> None:
    if torch.version.cuda is None:
        raise UserError(
            f"--device {text!r}: this torch ({torch.__version__}) is a CPU-only build; use --device cpu, "
            "or install a CUDA build (make ... TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128)"
        )
    if not torch.cuda.is_available():
        raise UserError(f"--device {text!r}: no CUDA GPU is visible; use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise UserError(
            f"--device {text!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
        )

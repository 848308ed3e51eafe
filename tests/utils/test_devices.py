"""Device and dtype names: every verb accepts the same ones and refuses the same mistakes."""

from __future__ import annotations

import pytest
import torch

from vlmtune.utils.devices import (
    default_dtype,
    dtype_name,
    resolve_device,
    resolve_dtype,
    torch_dtype,
)
from vlmtune.utils.errors import UserError


def test_dtype_names_round_trip():
    for name in ("float32", "bfloat16", "float16"):
        assert dtype_name(torch_dtype(name)) == name
    assert torch_dtype("torch.bfloat16") is torch.bfloat16  # config.json's old spelling
    with pytest.raises(UserError, match="'fp8' is not one of float32, bfloat16, float16"):
        torch_dtype("fp8")


def test_auto_is_float32_on_cpu():
    assert default_dtype("cpu") is torch.float32
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype(None, "cpu") is torch.float32
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16


def test_devices_are_checked_against_this_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" cpu ") == torch.device("cpu")
    with pytest.raises(UserError, match="'gpu0' is not a device; use cpu, cuda"):
        resolve_device("gpu0")


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_cuda_without_a_gpu_is_a_clear_error():
    assert resolve_device(None) == torch.device("cpu")
    for text in ("cuda", "cuda:1"):
        with pytest.raises(UserError, match="use --device cpu"):
            resolve_device(text)

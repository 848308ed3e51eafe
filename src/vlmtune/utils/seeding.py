"""Seeding of every random number generator a run touches (Python, NumPy, torch).

``PYTHONHASHSEED`` is deliberately left alone: the interpreter reads it once at
start-up, so setting it here would not make this process's ``str`` hashes
reproducible, and it would silently change the environment of every child
process. Nothing in vlmtune depends on ``hash()`` of a string (splits and file
names use hashlib); set the variable before launching when something does.
"""

from __future__ import annotations

import random

__all__ = ["seed_everything"]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and all CUDA devices).

    With ``deterministic=True`` torch is also asked for deterministic kernels,
    which is slower on GPU but makes two runs bit-identical.
    """
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    import torch

    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

"""Fixtures of the evaluation tests (built by ``eval_fixtures``; see its docstring)."""

from __future__ import annotations

import pytest
from eval_fixtures import EvalInputs, shared_eval_inputs


@pytest.fixture(scope="session")
def eval_inputs(tmp_path_factory: pytest.TempPathFactory) -> EvalInputs:
    return shared_eval_inputs(tmp_path_factory)

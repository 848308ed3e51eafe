"""Fixtures of the inference tests: the evaluation tests' inputs (dataset, random checkpoint,
listing model), built once per session by ``tests/evaluation/eval_fixtures.py``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

_FIXTURES = Path(__file__).resolve().parents[1] / "evaluation" / "eval_fixtures.py"


def eval_fixtures() -> ModuleType:
    """The evaluation tests' input builders (one module object for every test folder)."""
    if "eval_fixtures" not in sys.modules:
        spec = importlib.util.spec_from_file_location("eval_fixtures", _FIXTURES)
        module = importlib.util.module_from_spec(spec)
        sys.modules["eval_fixtures"] = module
        spec.loader.exec_module(module)
    return sys.modules["eval_fixtures"]


eval_fixtures()  # the test modules here import it by name (``from eval_fixtures import LISTING``)


@pytest.fixture(scope="session")
def eval_inputs(tmp_path_factory: pytest.TempPathFactory):
    return eval_fixtures().shared_eval_inputs(tmp_path_factory)

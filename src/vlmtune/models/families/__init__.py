"""Model families behind one interface (:class:`~vlmtune.models.families.base.ModelFamily`).

A checkpoint's family is found from its ``config.json`` ``model_type``; an unknown type stops
with the list of supported ones. Adding a family is one module in this package that defines
``FAMILY`` (a ``ModelFamily`` whose processor fulfils ``ChatProcessor``; for a family on
transformers' own classes, a :class:`~vlmtune.models.families.hf.TransformersFamily`): it is
found here, and nothing else names it.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path
from typing import Any

from torch import nn

from vlmtune.models.families.base import COMPONENTS, ChatProcessor, ModelFamily, TinySizes
from vlmtune.utils.errors import UserError

__all__ = [
    "COMPONENTS",
    "FAMILIES",
    "ChatProcessor",
    "ModelFamily",
    "TinySizes",
    "UnknownFamilyError",
    "family_named",
    "family_of",
    "family_of_folder",
    "family_of_type",
]


def _discover() -> dict[str, ModelFamily]:
    """The ``FAMILY`` of every module of this package, by name, in the order of the module names."""
    found: dict[str, ModelFamily] = {}
    for module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
        family = getattr(importlib.import_module(f"{__name__}.{module}"), "FAMILY", None)
        if family is not None:
            found[family.name] = family
    return found


FAMILIES: dict[str, ModelFamily] = _discover()
"""Every supported family by its ``--family`` name."""


class UnknownFamilyError(UserError, ValueError):
    """A model type or family name vlmtune does not support; the message lists the supported ones."""


def _supported_types() -> str:
    return ", ".join(t for family in FAMILIES.values() for t in family.model_types)


def family_named(name: str) -> ModelFamily:
    """The family called ``name`` (``--family``)."""
    if name not in FAMILIES:
        raise UnknownFamilyError(
            f"unknown model family {name!r}; supported families: {', '.join(FAMILIES)}"
        )
    return FAMILIES[name]


def family_of_type(model_type: str | None, where: str = "the model") -> ModelFamily:
    """The family whose checkpoints have ``config.json`` ``model_type`` ``model_type``."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise UnknownFamilyError(
        f"{where} has model_type {model_type!r}, which vlmtune does not support; "
        f"supported model types: {_supported_types()}"
    )


def family_of_folder(folder: str | Path) -> ModelFamily:
    """The family of the checkpoint folder ``folder`` (its ``config.json`` ``model_type``)."""
    path = Path(folder) / "config.json"
    try:
        model_type = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        raise UnknownFamilyError(f"{str(path)!r} is not a readable model config ({err})") from None
    return family_of_type(model_type, where=repr(str(folder)))


def family_of(model: nn.Module | Any) -> ModelFamily:
    """The family of a loaded model (also PEFT-wrapped), from its config's ``model_type``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return family_of_type(getattr(base.config, "model_type", None))

"""What every command shares: building its typed config from --config, flags and key=value overrides."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import typer

from vlmtune.utils.config import load_config

__all__ = ["CONFIG_OPTION", "OVERRIDES_ARGUMENT", "build_config"]

T = TypeVar("T")

CONFIG_OPTION = typer.Option(
    None,
    "--config",
    "-c",
    help="YAML file whose sections map 1:1 onto this command's config.",
    exists=False,
)
OVERRIDES_ARGUMENT = typer.Argument(
    None,
    help="Dotted key=value overrides applied last, e.g. train.learning_rate=1e-4.",
    show_default=False,
)


def build_config(
    cls: type[T],
    config_file: Path | None,
    overrides: Sequence[str] | None,
    flags: Mapping[str, Any] | None = None,
) -> T:
    """Config of ``cls`` from the YAML file, then the command's flags (dotted keys), then overrides.

    Flags left at ``None`` are not applied, so the YAML file's value stands. The
    others are set as typer parsed them: turning them back into text for the
    ``key=value`` parser would let YAML rewrite them (``--out "o #2"`` -> ``o``).
    Raises ``ConfigError`` naming the key for an unknown key or a bad value.
    """
    values = {key: value for key, value in (flags or {}).items() if value is not None}
    return load_config(cls, config_file, overrides or [], values=values)

"""``vlmtune init-model``: write a small random model in its family's checkpoint layout, for offline runs.

It is saved exactly like a downloaded checkpoint (config.json, safetensors with the
official key names, tokenizer files trained on the catalog's text, preprocessor
config), so train, eval and predict treat it like the real one. Sizes are
overridable as KEY=VALUE, e.g. hidden_size=256 num_hidden_layers=4 crop_size=112.
"""

from __future__ import annotations

import click

from vlmtune.training.init_model import InitModelArgs

__all__ = ["CONFIG", "run"]

CONFIG = InitModelArgs


def run(args: InitModelArgs) -> None:
    from vlmtune.training.init_model import init_model

    click.echo(f"wrote {init_model(args)}")

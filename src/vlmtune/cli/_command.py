"""One source for every option: click commands generated from the typed config dataclasses.

A verb module declares its configuration class (``CONFIG``) and the function
that runs it (``run``). Each field of the configuration tree declared with
:func:`vlmtune.utils.config.flag` becomes a command-line option (or a
positional argument); its help is the field's docstring, its documented default
the field's default, and its dotted key (``train.learning_rate``) is shown so
that the YAML key and the ``key=value`` override are the same name. Nothing
about an option is written twice, so help, YAML keys and overrides cannot drift.

Values are merged in this order (later wins): the dataclass defaults, the YAML
file (``--config``), the flags that were given, then ``key=value`` overrides.
A flag that was not given stays out of the merge (its click default is None),
so a recipe's value is not overwritten by the flag's documented default.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import click

from vlmtune.utils.config import FLAG, field_docs, load_config

__all__ = ["FlagSpec", "build_command", "flag_specs", "split_items"]

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
_ITEMS = "items"
_CONFIG = "config_file"


@dataclass(frozen=True)
class FlagSpec:
    """One command-line option or argument generated from a config field."""

    key: str
    """Dotted key of the field in the config tree (``train.output_dir``)."""
    names: tuple[str, ...]
    """Its flags (``--out``, ``-o``); empty for a positional argument."""
    annotation: Any
    """The field's type annotation."""
    default: Any
    """The field's default (``dataclasses.MISSING`` when it has none)."""
    help: str
    """The field's docstring."""

    @property
    def argument(self) -> bool:
        """True for a positional argument."""
        return not self.names

    @property
    def param(self) -> str:
        """The click parameter name (the dotted key made an identifier)."""
        return "opt_" + self.key.replace(".", "__")

    @property
    def many(self) -> bool:
        """True when the field is a list (an option given several times, or many positionals)."""
        return get_origin(_bare(self.annotation)) in (list, tuple)


def flag_specs(cls: type, prefix: str = "") -> list[FlagSpec]:
    """Every ``flag()`` field of dataclass ``cls`` and of its nested config dataclasses, in order."""
    hints = get_type_hints(cls)
    docs = field_docs(cls)
    specs: list[FlagSpec] = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        key = f"{prefix}{field.name}"
        meta = field.metadata.get(FLAG)
        if meta is not None:
            names = () if meta["argument"] else tuple(meta["names"])
            default = _default_of(field)
            specs.append(FlagSpec(key, names, hints[field.name], default, docs.get(field.name, "")))
        elif dataclasses.is_dataclass(_bare(hints[field.name])):
            specs += flag_specs(_bare(hints[field.name]), f"{key}.")
    return specs


def build_command(
    name: str, config_cls: type, run: Callable[[Any], int | None], help_text: str
) -> click.Command:
    """A click command for ``config_cls`` that builds the config and calls ``run`` with it.

    Positional words are the config's positional fields, in order, and ``key=value``
    overrides (any word of that shape that names no existing file). The command
    returns ``run``'s result (an exit code or None).
    """
    specs = flag_specs(config_cls)
    positionals = [s for s in specs if s.argument]
    params: list[click.Parameter] = [_option(s) for s in specs if not s.argument]
    params.append(
        click.Option(
            [_CONFIG, "--config", "-c"],
            type=click.Path(path_type=Path, dir_okay=False),
            help="YAML file whose sections map 1:1 onto this command's configuration.",
        )
    )
    params.append(click.Argument([_ITEMS], nargs=-1, metavar=_metavar(positionals)))

    def callback(**given: Any) -> int | None:
        words, overrides = split_items(given.pop(_ITEMS), accept_paths=bool(positionals))
        values = {s.key: given[s.param] for s in specs if not s.argument}
        values = {k: v for k, v in values.items() if v is not None and v != ()}
        values |= _assign_positionals(positionals, words)
        config = load_config(config_cls, given.pop(_CONFIG), overrides, values=values)
        return run(config)

    return click.Command(
        name,
        params=params,
        callback=callback,
        help=help_text + _overrides_epilog(),
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
        no_args_is_help=False,
    )


def split_items(items: Sequence[str], accept_paths: bool = True) -> tuple[list[str], list[str]]:
    """(positional words, ``key=value`` overrides): a word is an override when it looks like
    ``a.b=c`` and names no existing file (``photos/a=b.jpg`` stays a path)."""
    words, overrides = [], []
    for item in items:
        is_override = bool(_OVERRIDE.match(item)) and not Path(item).exists()
        if is_override:
            overrides.append(item)
        elif accept_paths:
            words.append(item)
        else:
            raise click.UsageError(
                f"unexpected argument {item!r}: this command takes only key=value overrides "
                "(e.g. train.learning_rate=1e-4) after its options"
            )
    return words, overrides


# --------------------------------------------------------------------------- helpers


def _option(spec: FlagSpec) -> click.Option:
    bare = _bare(spec.annotation)
    kwargs: dict[str, Any] = {"default": None, "help": _help(spec)}
    if bare is bool:
        if not any("/" in n for n in spec.names):
            kwargs["is_flag"], kwargs["flag_value"] = True, True
    elif spec.many:
        kwargs["multiple"] = True
        kwargs["type"] = _click_type(get_args(bare)[0] if get_args(bare) else str)
    else:
        kwargs["type"] = _click_type(bare)
    return click.Option([spec.param, *spec.names], **kwargs)


def _click_type(tp: Any) -> click.ParamType:
    tp = _bare(tp)
    if get_origin(tp) is Literal:
        return click.Choice([str(a) for a in get_args(tp)])
    simple = {int: click.INT, float: click.FLOAT, str: click.STRING}
    if tp in simple:
        return simple[tp]
    if tp is Path:
        return click.Path(path_type=Path)
    return click.STRING


def _bare(tp: Any) -> Any:
    """``X`` for ``X | None``; other annotations unchanged."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _help(spec: FlagSpec) -> str:
    text = " ".join(spec.help.split()).replace("``", "`")  # reST literals read as `x` in a terminal
    default = spec.default
    shown = ""
    unset = default is dataclasses.MISSING or default is None or default in ([], ())
    if not unset and (not isinstance(default, bool) or default):
        shown = f"; default: {default}"
    return f"{text} [{spec.key}{shown}]"


def _metavar(positionals: list[FlagSpec]) -> str:
    words = [s.key.rsplit(".", 1)[-1].upper() + ("..." if s.many else "") for s in positionals]
    return " ".join([*words, "[KEY=VALUE]..."])


def _assign_positionals(specs: list[FlagSpec], words: list[str]) -> dict[str, Any]:
    if not specs:
        return {}
    if len(specs) == 1 and specs[0].many:
        return {specs[0].key: list(words)} if words else {}
    if len(words) > len(specs):
        extra = words[len(specs) :]
        raise click.UsageError(
            f"unexpected argument(s) {', '.join(map(repr, extra))}; expected {_metavar(specs)}"
        )
    return {spec.key: word for spec, word in zip(specs, words, strict=False)}


def _overrides_epilog() -> str:
    return (
        "\n\nAny configuration key (shown in brackets after each option) can also be set as "
        "KEY=VALUE after the options, dotted for nested sections; --config FILE.yaml sets many "
        "at once. Later sources win: defaults < --config < flags < KEY=VALUE."
    )

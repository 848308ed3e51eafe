"""Typed configuration: dataclasses filled from YAML files and ``key=value`` overrides.

Every command's configuration is a tree of dataclasses (one per concern, as in
litgpt's ``args.py``). This module turns nested mappings into those dataclasses
and checks every value against the field's type annotation, so a typo or a bad
value fails before any work starts with a message that names the dotted key,
the value and what is allowed. Dataclasses validate their own invariants in
``__post_init__``; a ``ValueError`` raised there is reported with the section's key.
A command's flags arrive typed and are set as they are; ``key=value`` text is read
as YAML, except for string and path fields, whose text is kept as typed.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from vlmtune.utils.errors import UserError
from vlmtune.utils.io import atomic_write_text

__all__ = [
    "FLAG",
    "ConfigError",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "field_docs",
    "flag",
    "load_config",
    "parse_overrides",
    "save_config",
]

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A configuration key or value is not allowed; the message names the key."""


def load_config(
    cls: type[T],
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
    values: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from ``base``, a YAML file, typed ``values``, then ``key=value`` overrides.

    Later sources win. ``values`` maps dotted keys to values that already have
    their type (a command's flags) and are used as given, never read as YAML.
    Raises :class:`ConfigError` for an unknown key, a value of the wrong type,
    or an invariant broken in a dataclass's ``__post_init__``.
    """
    data: dict[str, Any] = _deep_copy(base or {})
    if config_file is not None:
        data = _merge(data, _read_yaml(Path(config_file)))
    data = apply_overrides(data, values or {})
    data = apply_overrides(data, parse_overrides(overrides, cls))
    return config_from_dict(cls, data)


def parse_overrides(items: Iterable[str], cls: type | None = None) -> dict[str, Any]:
    """Parse ``a.b=value`` strings into a dotted-key mapping.

    Values are read as YAML scalars, except where ``cls`` says the key is a
    string or a path: that text is kept as typed, because YAML would cut
    ``my data #1.csv`` at the ``#``, read ``0123`` as the octal 83 and ``on`` as
    true. There only ``null`` (or ``~``) means None, and only when the field allows it.
    """
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"override {item!r} is not of the form key=value (e.g. train.learning_rate=1e-4)"
            )
        field_type = _field_type(cls, key) if cls is not None else None
        parsed[key] = _override_value(raw, field_type)
    return parsed


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``data`` with each dotted key of ``overrides`` set."""
    out = _deep_copy(data)
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return out


def config_from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from ``data``, checking keys and value types recursively."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(_unknown_key_message(prefix, unknown[0], list(fields)))
    missing = [
        f for f in fields.values()
        if f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]  # fmt: skip
    if missing:
        raise ConfigError(f"missing required setting {_describe_field(missing[0], prefix)}")
    hints = get_type_hints(cls)
    kwargs = {
        name: _coerce(hints[name], value, _join(prefix, name)) for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from err


def config_to_dict(obj: Any) -> Any:
    """Plain (YAML-safe) nested dict of a dataclass tree; paths become strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init
        }
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: config_to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_config(obj: Any, path: str | Path) -> Path:
    """Write the resolved configuration as YAML (atomically); it loads back with :func:`load_config`."""
    text = yaml.safe_dump(config_to_dict(obj), sort_keys=False, allow_unicode=True)
    return atomic_write_text(path, text)


FLAG = "vlmtune.flag"
"""Key of a field's ``metadata`` holding its command-line names (see :func:`flag`)."""


def flag(*names: str, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING,
         argument: bool = False) -> Any:  # fmt: skip
    """A dataclass field that is also a command-line option (or, with ``argument``, a positional).

    The field is declared once: its name is the YAML key and the dotted override,
    ``names`` are its flags (``"--out", "-o"``; a boolean may give ``"--progress/--no-progress"``),
    its docstring is the help text and its default the documented default. The CLI
    generates the option from this; nothing repeats it.
    """
    return dataclasses.field(
        default=default,
        default_factory=default_factory,
        metadata={FLAG: {"names": tuple(names), "argument": argument}},
    )


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass ``cls`` (and its bases), by field name.

    Read from the class's source (the attribute-docstring convention of litgpt's
    ``args.py``); a class whose source is unavailable gives ``{}``.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


# --------------------------------------------------------------------------- helpers


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def _override_value(raw: str, field_type: Any) -> Any:
    if field_type is not None and _is_text(field_type):
        allows_none = type(None) in get_args(field_type)
        return None if allows_none and raw.strip() in ("null", "~") else raw
    if not raw.strip():
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _field_type(cls: Any, dotted: str) -> Any:
    """Annotation of the field that ``dotted`` names in dataclass ``cls``; None if it names none."""
    tp = cls
    for part in dotted.split("."):
        tp = _without_none(tp)
        if not dataclasses.is_dataclass(tp):
            return None
        if part not in {f.name for f in dataclasses.fields(tp) if f.init}:
            return None  # config_from_dict reports the unknown key with a suggestion
        tp = get_type_hints(tp)[part]
    return tp


def _without_none(tp: Any) -> Any:
    """``X`` for ``X | None``; any other annotation unchanged."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _is_text(tp: Any) -> bool:
    """True for ``str``, ``Path`` and their unions with None: fields whose override is plain text."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        return bool(rest) and all(a in (str, Path) for a in rest)
    return tp in (str, Path)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert where the conversion is lossless."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {_describe(tp)}"
        )
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(
            f"{key}: {value!r} is not allowed; choose one of {', '.join(map(repr, args))}"
        )
    if dataclasses.is_dataclass(tp):
        return config_from_dict(tp, value if value is not None else {}, key)
    if origin in (list, tuple):
        return _coerce_sequence(tp, origin, args, value, key)
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return _coerce_scalar(tp, value, key)


def _coerce_sequence(tp: Any, origin: Any, args: tuple, value: Any, key: str) -> Any:
    if isinstance(value, str):  # "a,b,c" on the command line
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
    item_tp = args[0] if args else Any
    items = [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _coerce_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    else:
        return value
    raise ConfigError(f"{key}: {value!r} is not a valid {_describe(tp)}")


def _describe(tp: Any) -> str:
    names = {
        bool: "boolean (true/false)",
        int: "integer",
        float: "number",
        str: "string",
        Path: "path",
    }
    if tp in names:
        return names[tp]
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _unknown_key_message(prefix: str, key: str, allowed: list[str]) -> str:
    full = _join(prefix, key)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {_join(prefix, close[0])!r}?)" if close else ""
    where = f"in {prefix!r}" if prefix else "at the top level"
    return f"unknown key {full!r}{hint}; allowed keys {where}: {', '.join(sorted(allowed))}"


def _describe_field(field: dataclasses.Field, prefix: str) -> str:
    """``out (--out)``: the key and, for a command-line field, its flag or argument."""
    key = _join(prefix, field.name)
    meta = field.metadata.get(FLAG)
    if meta is None:
        return key
    if meta["argument"]:
        return f"{key} (the {field.name.upper()} argument)"
    return f"{key} ({meta['names'][0]})"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _merge(base: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    out = _deep_copy(base)
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = _deep_copy(value) if isinstance(value, Mapping) else value
    return out


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}

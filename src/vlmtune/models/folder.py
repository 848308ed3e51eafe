"""Check a model folder before any work: config present, weights present, complete and safetensors.

A load that fails after minutes of dataset preparation, or with a traceback from deep inside
safetensors, is what this prevents. :func:`check_model_folder` reads no weights: for a checkpoint
(``config.json``) or a PEFT adapter (``adapter_config.json``) it checks that

- the config is a JSON object (with a ``model_type`` for a checkpoint);
- the weights are there: ``model.safetensors``, or ``model.safetensors.index.json`` and every
  shard it names (inside the folder, holding the tensors the index puts there); for an adapter
  ``adapter_model.safetensors``;
- every safetensors file is whole: its 8-byte header length and JSON header parse, each tensor's
  byte range fits its dtype and shape, and the file is exactly as long as the data the header
  describes (a truncated copy is caught here, by size);
- pickle weights (``pytorch_model.bin``, ``*.pt``...) are refused: vlmtune never unpickles, since
  loading a pickle can run arbitrary code.

:func:`copy_remote_code` carries a checkpoint's remote-code files (``*.py``, which vlmtune never
runs) over to a model folder derived from it, so other runtimes load it where they loaded the base.

Each problem is a :class:`ModelFolderError` (a :class:`~vlmtune.utils.errors.UserError`) whose
one-line message names the file and the fix.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vlmtune.utils.errors import UserError
from vlmtune.utils.io import atomic_path

__all__ = [
    "CorruptWeightsError",
    "FolderConfigError",
    "MissingWeightsError",
    "ModelFolder",
    "ModelFolderError",
    "PickleWeightsError",
    "check_model_folder",
    "copy_remote_code",
]

_SINGLE = "model.safetensors"
_INDEX = "model.safetensors.index.json"
_ADAPTER = "adapter_model.safetensors"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
_REFETCH = "re-copy or re-download it"


class ModelFolderError(UserError):
    """A model folder that cannot be loaded; the message names the file and the fix."""


class FolderConfigError(ModelFolderError):
    """``config.json`` (or ``adapter_config.json``) is missing or is not a usable JSON object."""


class MissingWeightsError(ModelFolderError):
    """No weights, or a shard the index names is missing."""


class CorruptWeightsError(ModelFolderError):
    """A safetensors file is truncated or its header does not parse."""


class PickleWeightsError(ModelFolderError):
    """Only pickle weights (``pytorch_model.bin`` ...), which vlmtune never loads."""


@dataclass(frozen=True)
class ModelFolder:
    """What :func:`check_model_folder` found."""

    path: Path
    """The folder."""
    kind: Literal["checkpoint", "adapter"]
    """A full checkpoint (``config.json``) or a PEFT adapter (``adapter_config.json``)."""
    config: dict[str, Any]
    """``config.json`` (checkpoint) or ``adapter_config.json`` (adapter)."""
    weight_files: tuple[Path, ...]
    """The safetensors files, each checked whole."""
    tensor_names: frozenset[str]
    """Every tensor name the weight files hold."""

    @property
    def model_type(self) -> str | None:
        """``config.json``'s ``model_type`` (None for an adapter)."""
        return self.config.get("model_type") if self.kind == "checkpoint" else None


def check_model_folder(path: str | os.PathLike[str]) -> ModelFolder:
    """Check the checkpoint or adapter folder ``path`` without loading weights (see the module
    docstring); raise a :class:`ModelFolderError` naming the file and the fix."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise FolderConfigError(
            f"model folder {str(folder)!r} {what}; give the folder that holds config.json and "
            "the weights"
        )
    if (folder / "adapter_config.json").is_file():
        config = _read_config(folder / "adapter_config.json", folder, require_model_type=False)
        files = [_required(folder, _ADAPTER, "adapter", "adapter_model.bin")]
        return _checked(folder, "adapter", config, files)
    if not (folder / "config.json").is_file():
        hint = f"; did you mean {str(folder / 'model')!r}?" if (folder / "model").is_dir() else ""
        raise FolderConfigError(
            f"{str(folder)!r} is not a model folder: config.json is missing{hint} (give a "
            "checkpoint folder with config.json and safetensors weights, or a LoRA adapter folder)"
        )
    config = _read_config(folder / "config.json", folder, require_model_type=True)
    if (folder / _INDEX).is_file() and not (folder / _SINGLE).is_file():
        return _checked_shards(folder, config)
    files = [_required(folder, _SINGLE, "model", "pytorch_model.bin")]
    return _checked(folder, "checkpoint", config, files)


def copy_remote_code(source: str | Path, folder: str | Path) -> list[str]:
    """Copy the ``*.py`` files of checkpoint folder ``source`` (its remote code) into ``folder``,
    atomically each, following symbolic links (hub caches link to blobs). Returns their names."""
    source, folder = Path(source), Path(folder)
    copied = []
    for path in sorted(source.glob("*.py")):
        if path.is_file():
            with atomic_path(folder / path.name) as tmp:
                shutil.copyfile(path, tmp)
            copied.append(path.name)
    return copied


def _read_config(path: Path, folder: Path, require_model_type: bool) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FolderConfigError(
            f"{path.name} in {str(folder)!r} is not valid JSON ({_short(err)}); {_REFETCH}"
        ) from None
    except OSError as err:
        raise FolderConfigError(
            f"{path.name} in {str(folder)!r} cannot be read: {err.strerror}"
        ) from None
    if not isinstance(data, dict):
        raise FolderConfigError(f"{path.name} in {str(folder)!r} is not a JSON object; {_REFETCH}")
    if require_model_type and not isinstance(data.get("model_type"), str):
        raise FolderConfigError(
            f"config.json in {str(folder)!r} has no model_type, so the model family is unknown; "
            f"{_REFETCH} from the model's own repository"
        )
    return data


def _required(folder: Path, name: str, what: str, pickle_name: str) -> Path:
    """``folder / name``; else the error for pickle-only or missing weights."""
    if (folder / name).is_file():
        return folder / name
    pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(_PICKLE_SUFFIXES))
    if pickles:
        raise PickleWeightsError(
            f"{str(folder)!r} holds only pickle weights ({', '.join(pickles[:3])}); vlmtune never "
            "loads pickle files (unpickling can run code): use the safetensors version of this "
            f"{what}, or convert it where you trust it (save_pretrained(..., safe_serialization=True))"
        )
    raise MissingWeightsError(
        f"{str(folder)!r} has no weights: {name} is missing (a {what} folder needs it; "
        f"{pickle_name} is never read); copy the weights into it or give another folder"
    )


def _checked_shards(folder: Path, config: dict[str, Any]) -> ModelFolder:
    """A sharded checkpoint: the index parses and every shard it names is there and whole."""
    index = _read_config(folder / _INDEX, folder, require_model_type=False)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptWeightsError(f"{_INDEX} in {str(folder)!r} has no weight_map; {_REFETCH}")
    by_shard: dict[str, set[str]] = {}
    for tensor, shard in weight_map.items():
        by_shard.setdefault(str(shard), set()).add(tensor)
    paths = []
    for shard in sorted(by_shard):
        path = folder / shard
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise CorruptWeightsError(
                f"{_INDEX} in {str(folder)!r} names shard {shard!r}, which is not a file of the "
                f"folder; {_REFETCH}"
            )
        if not path.is_file():
            raise MissingWeightsError(
                f"shard {shard} named by {_INDEX} is missing from {str(folder)!r}; copy every "
                "shard of the checkpoint into the folder"
            )
        paths.append(path)
    result = _checked(folder, "checkpoint", config, paths)
    for shard, names in by_shard.items():
        missing = names - set(_header_names(folder / shard))
        if missing:
            raise CorruptWeightsError(
                f"{shard} in {str(folder)!r} lacks {len(missing)} tensor(s) that {_INDEX} puts "
                f"there (e.g. {sorted(missing)[0]}); the shards and the index do not belong "
                f"together: {_REFETCH}"
            )
    return result


def _checked(
    folder: Path, kind: Literal["checkpoint", "adapter"], config: dict[str, Any], files: list[Path]
) -> ModelFolder:
    names: set[str] = set()
    for path in files:
        names.update(_header_names(path))
    return ModelFolder(folder, kind, config, tuple(files), frozenset(names))


def _header_names(path: Path) -> list[str]:
    """Tensor names of a safetensors file, after checking the file is whole (see module docs)."""
    where = f"{path.name} in {str(path.parent)!r}"
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise CorruptWeightsError(
                    f"{where} is truncated ({size} bytes, not even a header); {_REFETCH}"
                )
            (length,) = struct.unpack("<Q", head)
            if length > _MAX_HEADER or 8 + length > size:
                raise CorruptWeightsError(
                    f"{where} is truncated or not safetensors (its header claims {length} bytes, "
                    f"the file has {size}); {_REFETCH}"
                )
            raw = handle.read(length)
    except OSError as err:
        raise CorruptWeightsError(f"{where} cannot be read: {err.strerror}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CorruptWeightsError(f"{where} has a damaged header; {_REFETCH}") from None
    if not isinstance(header, dict):
        raise CorruptWeightsError(f"{where} has a damaged header; {_REFETCH}")
    data_end = _data_end(header, where)
    expected = 8 + length + data_end
    if size < expected:
        raise CorruptWeightsError(f"{where} is truncated ({size} of {expected} bytes); {_REFETCH}")
    if size > expected:
        raise CorruptWeightsError(
            f"{where} has {size - expected} bytes after its data ({size} of {expected} bytes); "
            f"{_REFETCH}"
        )
    return [name for name in header if name != "__metadata__"]


def _data_end(header: dict[str, Any], where: str) -> int:
    """End of the data section the header describes; checks each tensor's byte range."""
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(v) for v in info["data_offsets"])
            bits = _DTYPE_BITS[info["dtype"]]
            count = math.prod(int(d) for d in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise CorruptWeightsError(
                f"{where} has a damaged header entry for {name!r}; {_REFETCH}"
            ) from None
        if not 0 <= start <= stop or stop - start != (count * bits + 7) // 8:
            raise CorruptWeightsError(
                f"{where}: tensor {name!r} has a byte range that does not fit its shape; {_REFETCH}"
            )
        end = max(end, stop)
    return end


def _short(err: json.JSONDecodeError | UnicodeDecodeError) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"line {err.lineno}: {err.msg}"
    return "not UTF-8 text"

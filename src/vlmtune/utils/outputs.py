"""Who may write where: the output policy every vlmtune verb that writes follows.

A verb owns its output folder. Before any work it *claims* the folder
(:func:`claim_output_dir`), which succeeds only when the folder

* does not exist, or is empty;
* holds an earlier output of the same verb, recognised by the marker file
  :data:`MARKER` that the verb wrote there (and, when the verb gives an
  ``identity`` such as the catalog it was built from, the same identity);
* or holds anything else and the user said ``--overwrite``.

A folder that is one of the command's own inputs, or contains one (the run being
merged, the base model, the dataset being read), is refused even with
``--overwrite``: replacing it would destroy what the command reads. A path that
names a file is refused too. Every refusal is an :class:`OutputError` (a
:class:`~vlmtune.utils.errors.UserError`: one line, exit 2) naming what is there
and what to do.

A verb that builds its whole output at the end replaces the old one atomically
with :func:`replace_dir`: the new folder is built beside the old one and swapped
into place in one ``rename``, so an interrupted run leaves the old output whole.
A verb that writes in place (resumable ``prepare``, a training run) writes its
marker first with :func:`write_marker`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vlmtune.utils.errors import UserError
from vlmtune.utils.io import atomic_write_json

__all__ = [
    "MARKER",
    "OutputClaim",
    "OutputError",
    "claim_output_dir",
    "claim_output_file",
    "read_marker",
    "replace_dir",
    "write_marker",
]

MARKER = ".vlmtune-output.json"
"""Marker file a verb writes into its output folder: ``{"verb", "identity", "created", "version"}``."""

_IGNORABLE = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
_STAGING = ".vlmtune-staging-"
_LISTED = 3


class OutputError(UserError):
    """The output location cannot be used; the message names what is there and the fix."""


@dataclass(frozen=True)
class OutputClaim:
    """The outcome of a claim: where the verb writes and what was there before."""

    path: Path
    """The output folder or file (absolute)."""
    state: Literal["missing", "empty", "own", "overwrite"]
    """``own``: an earlier output of the same verb (same identity); ``overwrite``: anything else, allowed
    by ``--overwrite``."""
    previous: dict[str, Any] | None = None
    """The marker of the earlier output, when there was one."""

    @property
    def existed(self) -> bool:
        """True when something was already at the path."""
        return self.state in ("own", "overwrite")


def read_marker(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker of ``folder`` (None when it has none or it is unreadable)."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("verb"), str) else None


def write_marker(
    folder: str | os.PathLike[str], verb: str, identity: Mapping[str, Any] | None = None
) -> Path:
    """Mark ``folder`` as ``verb``'s output (created if missing); return the marker's path."""
    from vlmtune import __version__

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "verb": verb,
        "identity": dict(identity or {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "version": __version__,
    }
    return atomic_write_json(folder / MARKER, record)


def claim_output_dir(
    path: str | os.PathLike[str],
    verb: str,
    *,
    inputs: Mapping[str, str | os.PathLike[str] | None] | None = None,
    overwrite: bool = False,
    identity: Mapping[str, Any] | None = None,
    legacy: Callable[[Path], bool] | None = None,
    option: str = "--out",
) -> OutputClaim:
    """Decide, before any work, whether ``verb`` may write its output folder at ``path``.

    ``inputs`` maps a description ("the run being merged") to each folder or file
    the command reads; ``identity`` (JSON-able) tells one output of the verb from
    another (an earlier output with another identity needs ``overwrite``);
    ``legacy`` recognises an output of the verb written before markers existed.
    Raises :class:`OutputError`; returns the :class:`OutputClaim` otherwise.
    """
    target = _absolute(path)
    _refuse_inputs(target, inputs, option)
    _remove_stale_staging(target)
    if target.exists() and not target.is_dir():
        raise OutputError(
            f"{option} {str(path)!r} is a file; {verb} writes a folder there: give a folder path"
        )
    if not target.exists():
        return OutputClaim(target, "missing")
    entries = _entries(target)
    if not entries:
        return OutputClaim(target, "empty")
    marker = read_marker(target)
    if marker is not None and marker["verb"] == verb:
        if identity is None or _same_identity(marker.get("identity"), identity):
            return OutputClaim(target, "own", marker)
        if overwrite:
            return OutputClaim(target, "overwrite", marker)
        raise OutputError(
            f"{option} {str(path)!r} holds an earlier `vlmtune {verb}` output made from "
            f"{_describe_identity(marker.get('identity'))}, not from {_describe_identity(identity)}; "
            f"pass --overwrite to replace it, or choose another {option}"
        )
    if marker is None and legacy is not None and legacy(target):
        return OutputClaim(target, "own")
    if overwrite:
        return OutputClaim(target, "overwrite", marker)
    what = (
        f"the output of `vlmtune {marker['verb']}`"
        if marker is not None
        else f"files that vlmtune {verb} did not write ({_listing(entries)})"
    )
    raise OutputError(
        f"{option} {str(path)!r} is not empty: it holds {what}; choose an empty or new folder, "
        f"or pass --overwrite to replace it"
    )


def claim_output_file(
    path: str | os.PathLike[str],
    verb: str,
    *,
    inputs: Mapping[str, str | os.PathLike[str] | None] | None = None,
    overwrite: bool = False,
    is_own: Callable[[Path], bool] | None = None,
    option: str = "--out",
) -> OutputClaim:
    """Decide, before any work, whether ``verb`` may write its output *file* at ``path``.

    An existing file is replaced only when ``is_own`` recognises it as an earlier
    output of the verb, or with ``overwrite``; a folder at ``path`` is refused.
    """
    target = _absolute(path)
    _refuse_inputs(target, inputs, option)
    if target.is_dir():
        raise OutputError(
            f"{option} {str(path)!r} is a folder; {verb} writes a file there: give a file path "
            f"(e.g. {str(Path(path) / 'predictions.csv')!r})"
        )
    if not target.exists():
        parent = next((p for p in target.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise OutputError(f"{option} {str(path)!r}: {str(parent)!r} is a file, not a folder")
        return OutputClaim(target, "missing")
    if is_own is not None and is_own(target):
        return OutputClaim(target, "own")
    if overwrite:
        return OutputClaim(target, "overwrite")
    raise OutputError(
        f"{option} {str(path)!r} already exists and is not a `vlmtune {verb}` output; "
        "choose another file name, or pass --overwrite to replace it"
    )


@contextlib.contextmanager
def replace_dir(
    path: str | os.PathLike[str], verb: str, identity: Mapping[str, Any] | None = None
) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; on success mark it and swap it into place.

    The old folder (if any) is replaced in one atomic exchange where the platform
    has one (Linux ``renameat2``), else by two renames a moment apart; either way an
    exception or a kill before the swap leaves the old folder untouched, and the
    staging folder is removed (or, after a kill, on the next claim). A folder that
    is or holds the working directory is refused (:class:`OutputError`): swapping
    it out would leave the user's shell in a deleted folder.
    """
    target = _absolute(path)
    _refuse_replacing_cwd(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}{_STAGING}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        write_marker(staging, verb, identity)
        _swap_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- helpers


def _absolute(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def _refuse_inputs(
    target: Path, inputs: Mapping[str, str | os.PathLike[str] | None] | None, option: str
) -> None:
    """An output that is, or contains, one of the inputs would destroy it: always refused."""
    resolved_target = target.resolve()
    for label, value in (inputs or {}).items():
        if value is None:
            continue
        source = Path(value).expanduser().resolve()
        if source == resolved_target or resolved_target in source.parents:
            relation = "is" if source == resolved_target else "contains"
            raise OutputError(
                f"{option} {str(target)!r} {relation} {label} ({str(value)!r}); writing there would "
                f"destroy it, even with --overwrite: choose another {option}"
            )


def _entries(folder: Path) -> list[str]:
    return sorted(
        name
        for name in os.listdir(folder)
        if name not in _IGNORABLE and _STAGING not in name and name != MARKER
    ) or (["<marker>"] if (folder / MARKER).exists() else [])


def _listing(entries: list[str]) -> str:
    shown = ", ".join(entries[:_LISTED])
    return shown + (f" and {len(entries) - _LISTED} more" if len(entries) > _LISTED else "")


def _same_identity(previous: Any, current: Mapping[str, Any]) -> bool:
    return json.loads(json.dumps(previous, default=str)) == json.loads(
        json.dumps(dict(current), default=str)
    )


def _describe_identity(identity: Any) -> str:
    if not identity:
        return "unrecorded inputs"
    return ", ".join(f"{k}={v}" for k, v in dict(identity).items())


def _refuse_replacing_cwd(target: Path) -> None:
    cwd = Path.cwd().resolve()
    resolved = target.resolve()
    if target.exists() and (cwd == resolved or resolved in cwd.parents):
        raise OutputError(
            f"{str(target)!r} is the folder you are working in (or holds it), so it cannot be "
            "replaced: run from another folder, or choose another output folder"
        )


def _remove_stale_staging(target: Path) -> None:
    """Staging folders of earlier runs that died before their swap (their process is gone)."""
    parent = target.parent
    if not parent.is_dir():
        return
    prefix = f".{target.name}{_STAGING}"
    for entry in parent.iterdir():
        if entry.name.startswith(prefix) and not _alive(entry.name[len(prefix) :]):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid_text: str) -> bool:
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _swap_into_place(staging: Path, target: Path) -> None:
    """Put ``staging`` at ``target``; the old ``target`` ends up at ``staging`` (removed by the caller)."""
    if not target.exists():
        os.rename(staging, target)
        return
    if _rename_exchange(staging, target):
        return
    aside = staging.with_name(staging.name + "-old")
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(aside, target)
        raise
    os.rename(aside, staging)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(
        _AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), ctypes.c_uint(_RENAME_EXCHANGE)
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))

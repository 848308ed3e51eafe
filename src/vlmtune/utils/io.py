"""Atomic file writes: write to a temporary file in the same folder, fsync, rename.

A reader (or a crashed writer's next run) therefore sees either the old file or
the complete new one, never a partial file. ``os.replace`` is atomic on POSIX
and on Windows when source and target are on the same filesystem, which a
sibling temporary file guarantees.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]

_SERIAL = itertools.count()  # with the pid and thread: a temporary name no other writer uses


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    The caller writes the whole file to the yielded path (with any library that
    takes a path: pandas, PIL, safetensors). On an exception the temporary file
    is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name[:64]}.", suffix=".tmp", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically; return the target path.

    One descriptor does the whole write: the temporary file is created exclusively
    with mode ``0o666`` (the kernel applies the umask: the usual file mode), written,
    fsynced, closed and renamed onto ``target``. That is half the system calls of
    :func:`atomic_path`, which matters where a file is written per image.
    """
    target = Path(target)
    tmp = target.with_name(
        f".{target.name[:64]}.{os.getpid()}-{threading.get_ident()}-{next(_SERIAL)}.tmp"
    )
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(tmp, flags, 0o666)
    except FileNotFoundError:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return target


def atomic_write_text(target: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``target`` atomically; return the target path."""
    return atomic_write_bytes(target, text.encode(encoding))


def atomic_write_json(target: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as UTF-8 JSON (non-ASCII kept as is) atomically; return the target path."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=False, default=str)
    return atomic_write_text(target, text + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())

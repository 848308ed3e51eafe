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
import stat
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
    tmp, fd = _new_temporary(target)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    with _committed(tmp, target):
        yield tmp
        _fsync_file(tmp)
        # A library may replace the path with a file of its own (safetensors renames a private
        # 0600 temporary onto it): the result gets the mode every new file gets (0666 - umask).
        os.chmod(tmp, mode)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically; return the target path.

    One descriptor does the whole write (create, write, fsync, close, rename): half
    the system calls of :func:`atomic_path`, which matters where a file is written
    per image.
    """
    target = Path(target)
    tmp, fd = _new_temporary(target)
    with _committed(tmp, target), os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return target


def atomic_write_text(target: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``target`` atomically; return the target path."""
    return atomic_write_bytes(target, text.encode(encoding))


def atomic_write_json(target: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as UTF-8 JSON (non-ASCII kept as is) atomically; return the target path."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=False, default=str)
    return atomic_write_text(target, text + "\n")


def _new_temporary(target: Path) -> tuple[Path, int]:
    """Create ``.NAME.<pid>-<thread>-<n>.tmp`` beside ``target``; return it and its open descriptor.

    Created exclusively with mode ``0o666``, so the kernel applies the umask and the file
    gets the usual mode; the name is unique per process, thread and call.
    """
    tmp = target.with_name(
        f".{target.name[:64]}.{os.getpid()}-{threading.get_ident()}-{next(_SERIAL)}.tmp"
    )
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        return tmp, os.open(tmp, flags, 0o666)
    except FileNotFoundError:
        target.parent.mkdir(parents=True, exist_ok=True)
        return tmp, os.open(tmp, flags, 0o666)


@contextlib.contextmanager
def _committed(tmp: Path, target: Path) -> Iterator[None]:
    """Rename ``tmp`` onto ``target`` when the block succeeds; remove ``tmp`` when it fails."""
    try:
        yield
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())

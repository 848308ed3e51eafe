"""Reading the JSON-lines files vlmtune appends to (``metrics.jsonl``, the prepare journal).

These files grow one line per event and are written by processes that can be
killed at any moment, so the last line may be cut in the middle of a record.
That torn tail is expected: it is dropped with a warning naming the file and the
line, and the records before it are returned. A line that does not parse
anywhere else means the file was damaged some other way; that is an error
naming the file and the line number, never silently skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlmtune.utils.errors import UserError
from vlmtune.utils.logging import get_logger

__all__ = ["JsonlError", "append_jsonl", "read_jsonl"]

log = get_logger(__name__)


class JsonlError(UserError, ValueError):
    """A JSON-lines file has a bad line before its last one; the message names file and line."""


def read_jsonl(path: str | os.PathLike[str], *, missing_ok: bool = True) -> list[dict[str, Any]]:
    """Records of ``path``, one per non-blank line, in order.

    A last line that does not parse (a writer killed mid-record) is dropped with
    a warning. Any other line that does not parse, or that is not a JSON object,
    raises :class:`JsonlError` naming the file and its line number (1-based).
    A missing file gives ``[]`` unless ``missing_ok`` is false.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return []
        raise
    lines = raw.split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records: list[dict[str, Any]] = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            if index == last and not raw.endswith(b"\n"):
                log.warning(
                    "%s: line %d is cut short (a run stopped while writing it); dropped it",
                    path,
                    index + 1,
                )
                break
            raise JsonlError(
                f"{path}: line {index + 1} is not valid JSON ({err}); "
                "the file was damaged: restore it or remove that line"
            ) from err
        if not isinstance(record, dict):
            raise JsonlError(f"{path}: line {index + 1} is not a JSON object")
        records.append(record)
    return records


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append ``record`` as one line; a torn last line left by a killed writer is cut first.

    Without the cut, the new record would be glued to the torn one and both would be lost.
    """
    path = Path(path)
    line = json.dumps(record, ensure_ascii=False, default=str).encode("utf-8") + b"\n"
    with open(path, "ab+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                _cut_torn_tail(handle, size)
        handle.write(line)
        handle.flush()


def _cut_torn_tail(handle: Any, size: int) -> None:
    """Truncate ``handle`` after its last newline (or to empty when it has none)."""
    chunk = 1 << 16
    end = size
    while end > 0:
        start = max(0, end - chunk)
        handle.seek(start)
        data = handle.read(end - start)
        newline = data.rfind(b"\n")
        if newline >= 0:
            handle.truncate(start + newline + 1)
            handle.seek(0, os.SEEK_END)
            return
        end = start
    handle.truncate(0)
    handle.seek(0)

"""The resume journal of ``vlmtune prepare``: which images earlier runs stored.

Each image is appended to ``.prepare_journal.jsonl`` in the output folder as soon
as it is written (one JSON line, flushed), so a run killed at any point (Ctrl-C,
SIGKILL) resumes where it stopped; a successful run folds the journal into the
manifest and removes it. The journal is read with
:func:`vlmtune.utils.jsonl.read_jsonl`: the half-written last line of a killed
run is dropped with a warning and its image is fetched again; appending after it
cuts that torn tail first (:func:`vlmtune.utils.jsonl.append_jsonl`).

An earlier image is offered for reuse only when it was stored with the same
image settings (``max_side``, ``max_pixels``); the pool still checks that the
reference is the same and that the file's SHA-256 matches before reusing it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vlmtune.data.catalog import CatalogColumns
from vlmtune.data.prepared import DATASET_INFO
from vlmtune.utils.jsonl import append_jsonl, read_jsonl
from vlmtune.utils.logging import get_logger

__all__ = ["JOURNAL", "MANIFEST", "Journal", "Stored", "previous_images"]

LOG = get_logger(__name__)
JOURNAL = ".prepare_journal.jsonl"
MANIFEST = "dataset.parquet"


@dataclass
class Stored:
    """An image written to the output folder: its path (relative), SHA-256 and size in pixels."""

    path: str
    sha256: str
    width: int
    height: int


class Journal:
    """Append-only record of the images this run stores (see the module docstring)."""

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        self.path = Path(out) / JOURNAL
        self.settings = settings

    def record(self, product_id: str, ref: str, stored: Stored) -> None:
        """Append one stored image (flushed: a SIGKILL right after loses nothing)."""
        append_jsonl(
            self.path, {"id": product_id, "ref": ref, **asdict(stored), "settings": self.settings}
        )

    def remove(self) -> None:
        """Drop the journal once the manifest holds everything it recorded."""
        self.path.unlink(missing_ok=True)


def previous_images(
    out: Path, settings: dict[str, Any], columns: CatalogColumns
) -> dict[str, dict[str, Any]]:
    """Images stored by earlier runs with the same image settings: id -> record (manifest + journal).

    A record holds ``ref``, ``path``, ``sha256``, ``width`` and ``height``.
    """
    records = _from_manifest(Path(out), settings, columns)
    for rec in read_jsonl(Path(out) / JOURNAL):
        if rec.get("settings") == settings and "id" in rec:
            records[str(rec["id"])] = rec
    return records


def _from_manifest(
    out: Path, settings: dict[str, Any], columns: CatalogColumns
) -> dict[str, dict[str, Any]]:
    info_path, manifest_path = out / DATASET_INFO, out / MANIFEST
    if not (info_path.is_file() and manifest_path.is_file()):
        return {}
    records: dict[str, dict[str, Any]] = {}
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("image_settings") != settings:
            return {}
        image_col = info.get("columns", {}).get("image", columns.image)
        id_col = info.get("columns", {}).get("id", columns.id)
        for rec in pd.read_parquet(manifest_path).to_dict("records"):
            records[str(rec[id_col])] = {
                "ref": str(rec[image_col]).strip(),
                "path": rec["local_image_path"],
                "sha256": rec["image_sha256"],
                "width": int(rec["image_width"]),
                "height": int(rec["image_height"]),
            }
    except (OSError, ValueError, KeyError) as err:
        LOG.warning("ignoring the earlier manifest in %s: %s", out, err)
        return {}
    return records
